#!/usr/bin/env bash
# One prepared GPU command (issues 12 and 22): images/s and MFU of the engine's train step for
# ResNet-34 and ResNet-50 in bf16 at the paper's batch (512) on one GPU, two input paths:
#
#   device  the batch already on the device (compute only; bench.bench_train --mode=device's
#           measurement),
#   host    ImageNet/TFDS-shaped host batches (float32 [B, 224, 224, 3] and int32 labels, as
#           tf.data hands them to the loop) through the engine's own host path: a
#           trajax.host.Prefetch thread and trajax.state.global_batch every step, as
#           trajax.loop.fit feeds a streamed source. The batches are NumPy arrays made once
#           (the GPU image has no TensorFlow/TFDS/clu/ml-collections), so this measures the
#           loop's transfer and prefetch cost with a tf.data that keeps up, not JPEG decoding.
#
# Both paths share one compiled step per model (make_train_step, donated state). Needs jax with
# CUDA, flax, optax and numpy only. Prints one JSON line per (model, path) and a table; the
# whole run takes about 3-5 minutes on an H100 (compiles included), under 8.
#
#   bash bench/gpu_bench.sh                       # the paper's setting
#   MODELS=resnet18 BATCH=8 IMAGE=32 STEPS=2 bash bench/gpu_bench.sh   # CPU smoke run
#
# Results also land in ${OUT:-/tmp/gpu_bench}/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_bench}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MODELS="${MODELS:-resnet34 resnet50}" BATCH="${BATCH:-512}" IMAGE="${IMAGE:-224}"
export STEPS="${STEPS:-50}" WARMUP="${WARMUP:-3}" RESULTS="$out/results.jsonl"
: >"$RESULTS"
timeout "${TIMEOUT_S:-470}" python - <<'EOF'
import itertools, json, os, time, types

import jax
import jax.numpy as jnp
import numpy as np

from bench import bench_train
from trajax import host, models, state, train

batch, image = int(os.environ["BATCH"]), int(os.environ["IMAGE"])
steps, warmup = int(os.environ["STEPS"]), int(os.environ["WARMUP"])
kind = jax.devices()[0].device_kind
peak = next((v for k, v in bench_train.PEAK_BF16_TFLOPS.items() if k in kind), None)
shape, classes = (image, image, 3), 1000
rows = []


def timed(step_fn, st, batches, n):
  for _ in range(n):
    st, metrics = step_fn(st, next(batches))
  jax.block_until_ready((st.params, metrics))
  return st


class Section(types.SimpleNamespace):
  """A config section without ml_collections: attribute, item and .get access."""

  def get(self, key, default=None):
    return getattr(self, key, default)

  def __getitem__(self, key):
    return getattr(self, key)

  def __contains__(self, key):
    return hasattr(self, key)


def section(ns):
  if isinstance(ns, types.SimpleNamespace):
    return Section(**{k: section(v) for k, v in vars(ns).items()})
  return ns


for name in os.environ["MODELS"].split():
  # The ImageNet config's training fields (bench_train's plain namespaces).
  c = section(bench_train._device_config(name, batch, "bfloat16", total_steps=10 * (steps + warmup)))
  model = models.create_model(c.model, num_classes=classes)
  mesh = state.make_mesh(c)
  st, shardings = state.create_train_state(c, model, shape, mesh)
  step_fn = train.make_train_step(c, model, mesh, shardings)
  sharding = state.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  # Two distinct host batches, cycled: float32 images and int32 labels, as tf.data yields them.
  host_batches = [
    {
      "image": rng.standard_normal((batch, *shape), dtype=np.float32),
      "label": rng.integers(0, classes, batch).astype(np.int32),
    }
    for _ in range(2)
  ]
  on_device = state.global_batch(host_batches[0], sharding)
  t = time.perf_counter()
  st = timed(step_fn, st, itertools.repeat(on_device), warmup)
  compile_s = time.perf_counter() - t
  fwd = models.model_flops_per_example(c.model, shape, classes)
  for path in ("device", "host"):
    if path == "device":
      batches = itertools.repeat(on_device)
    else:
      prefetch = host.Prefetch(itertools.cycle(host_batches), sharding, threads=1)
      batches = (b for _, b in prefetch)
      st = timed(step_fn, st, batches, 2)  # fill the prefetch queue
    t = time.perf_counter()
    st = timed(step_fn, st, batches, steps)
    wall = time.perf_counter() - t
    if path == "host":
      prefetch.close()
    rate = steps * batch / wall
    row = {
      "model": name, "path": path, "dtype": "bfloat16", "batch": batch, "image": image,
      "steps": steps, "images_per_s": rate, "step_ms": 1e3 * wall / steps,
      "mfu": 3 * fwd * rate / (peak * 1e12 * jax.device_count()) if peak else None,
      "fwd_gflop_per_image": fwd / 1e9, "compile_s": compile_s, "device": kind,
      "devices": jax.device_count(), "peak_bf16_tflops": peak,
    }
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(os.environ["RESULTS"], "a") as f:
      f.write(json.dumps(row) + "\n")

print(f"\n{'model':<10} {'path':<7} {'batch':>5} {'images/s':>10} {'ms/step':>8} {'MFU':>6}  device")
for r in rows:
  mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
  print(
    f"{r['model']:<10} {r['path']:<7} {r['batch']:>5} {r['images_per_s']:>10,.0f} "
    f"{r['step_ms']:>8.1f} {mfu:>6}  {r['device']}"
  )
EOF
