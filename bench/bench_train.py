r"""Training throughput, input-wait fraction and MFU of the trajax train step.

Host-pipeline mode (CPU; the path ``trajax.loop.fit`` takes for a *streamed*
source such as TFDS: host batches through the engine's prefetcher, beside a
hand-written loop on the same batches)::

  python -m bench.bench_train --mode=pipeline --workload=mnist1d
  python -m bench.bench_train --mode=pipeline --workload=cifar_resnet34 --batch=64

reports examples/s of both, their ratio, and the fraction of wall time the
engine's loop spent blocked on input (target <= 5 %). The dataset is wrapped
as a stream so the engine would not keep it on the device (in-memory sources
take the device-resident path, measured by ``bench.bench_engine_vs_hand``).
``cifar_resnet34`` feeds CIFAR-shaped uint8 images (random, 50 000 in memory,
pad-crop-flip augmentation) through the ``ArrayDataset`` the CIFAR path uses,
so no download is needed.

Device mode (GPU/TPU, data already on the device, no TensorFlow needed)::

  python -m bench.bench_train --mode=device --model=resnet34 --batch=256 --dtype=bfloat16
  python -m bench.bench_train --mode=device --model=resnet50 --batch=256 --dtype=bfloat16

reports examples/s and model-FLOPs utilisation
``MFU = 3 · F_fwd · examples/s / peak``, training ≈ 3 × forward. F_fwd is
given two ways: ``trajax.models.model_flops_per_example`` (2 FLOPs per
multiply-add, ≈ 7.3 GFLOP for ResNet-34 at 224², the convention of hardware
peaks), and the "3.6 GFLOP" (ResNet-34) / "4.1 GFLOP" (ResNet-50) figures of the
ResNet paper, which count multiply-adds; the second MFU is half the first.
The peak is the dense bf16 tensor-core figure of the detected device
(``--peak_tflops`` overrides).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peaks (TFLOP/s, without sparsity), by substring of device_kind.
PEAK_BF16_TFLOPS = {
  "H100 PCIe": 756.0,
  "H100": 989.4,
  "H200": 989.4,
  "A100": 312.0,
  "L4": 121.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
}
PAPER_FWD_GFLOP = {"resnet34": 3.6, "resnet50": 4.1}


def _config(workload: str, batch: int | None, dtype: str):
  from configs import cifar10_resnet34, mnist1d

  if workload == "mnist1d":
    c = mnist1d.get_config()
  elif workload in ("cifar_resnet34", "resnet34", "resnet50", "resnet18"):
    c = cifar10_resnet34.get_config()
    c.model.name = workload if workload.startswith("cifar") else workload
    c.dataset.name = "cifar10"
  else:
    raise ValueError(f"--workload must be mnist1d or cifar_resnet34, got {workload!r}")
  if batch:
    c.batch_size = batch
  c.model.dtype = dtype
  c.averaging.method = "two_point" if workload == "mnist1d" else "none"
  return c


def _cifar_like_dataset(c):
  from trajax.data import DatasetInfo
  from trajax.data.offline import ArrayDataset, PadCropFlip

  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, size=50_000).astype(np.int32)
  info = DatasetInfo("cifar10", 10, (32, 32, 3), 50_000, 1000)
  return ArrayDataset(
    info,
    train_images=x,
    train_labels=y,
    test_images=x[:1000],
    test_labels=y[:1000],
    seed=0,
    label_noise=0.0,
    batch_size=c.batch_size,
    eval_batch_size=1000,
    process_index=0,
    process_count=1,
    augment=PadCropFlip(pad=4, flip=True),
    scale=1 / 255.0,
    mean=np.array([0.49, 0.48, 0.45], np.float32),
    std=np.array([0.25, 0.24, 0.26], np.float32),
  )


class _Streamed:
  """A dataset seen as a stream (``info`` + ``train_batches`` only), as TFDS sources are.

  ``trajax.data.device.device_pool`` returns None for it, so the engine takes
  its host path: batches prepared on the host and prefetched to the devices.
  """

  def __init__(self, dataset):
    self.info, self.train_batches = dataset.info, dataset.train_batches


def bench_pipeline(
  workload: str, batch: int | None, steps: int, warmup: int, threads: int = 1
) -> dict:
  """The engine's host path for streamed data beside a hand-written loop on the same batches.

  engine: ``host.Prefetch(stream, batch_sharding, threads=1)`` feeding the
  jitted, donated step, exactly as ``trajax.loop.fit`` does for a streamed
  source; hand: ``step(state, jax.device_put(next(stream), sharding))``, no
  prefetch. The hand loop runs before and after the engine (A-B-A) and its
  rate is the mean of the two, so a drifting machine load biases neither.
  """
  from trajax import data, host, models, train

  c = _config(workload, batch, "float32")
  dataset = _Streamed(data.get_dataset(c) if workload == "mnist1d" else _cifar_like_dataset(c))
  model = models.create_model(c.model, num_classes=dataset.info.num_classes)
  mesh = train.make_mesh(c)
  state, shardings = train.create_train_state(c, model, tuple(dataset.info.input_shape), mesh)
  step_fn = train.make_train_step(c, model, mesh, shardings)
  sharding = train.batch_sharding(mesh)

  def hand(state, start):
    it = dataset.train_batches(start)
    for _ in range(warmup):
      state, metrics = step_fn(state, jax.device_put(next(it), sharding))
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = step_fn(state, jax.device_put(next(it), sharding))
    jax.block_until_ready((state.params, metrics))
    return state, time.perf_counter() - t0

  state, hand_a = hand(state, 0)
  prefetch = host.Prefetch(dataset.train_batches(0), sharding, threads=threads)
  try:
    for _ in range(warmup):
      _, b = next(prefetch)
      state, metrics = step_fn(state, b)
    jax.block_until_ready(metrics)
    wait0, t0 = prefetch.wait_s, time.perf_counter()
    for _ in range(steps):
      _, b = next(prefetch)
      state, metrics = step_fn(state, b)
    jax.block_until_ready((state.params, metrics))
    wall = time.perf_counter() - t0
    wait = prefetch.wait_s - wait0
  finally:
    prefetch.close()
  state, hand_b = hand(state, 0)
  hand_wall = (hand_a + hand_b) / 2
  return {
    "mode": "pipeline",
    "path": "host (streamed source)",
    "workload": workload,
    "batch": c.batch_size,
    "steps": steps,
    "examples_per_s": steps * c.batch_size / wall,
    "hand_loop_examples_per_s": steps * c.batch_size / hand_wall,
    "ratio_to_hand_loop": hand_wall / wall,
    "input_wait_fraction": wait / wall,
    "prefetch_threads": threads,
    "device": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
  }


def _device_config(model_name: str, batch: int, dtype: str, *, total_steps: int):
  """The ImageNet config's training fields as plain namespaces (no ml_collections on GPU images)."""
  from types import SimpleNamespace as NS

  return NS(
    seed=0,
    total_steps=total_steps,
    batch_size=batch,
    model=NS(name=model_name, width=64, dtype=dtype),
    optimizer=NS(
      lr=0.05,
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,
      schedule="constant",
      warmup_steps=0,
      step_boundaries=(),
      step_factor=0.1,
    ),
    averaging=NS(
      method="none",
      decay=1e-4,
      start_step=0,
      every=1,
      gap=5000,
      n=2,
      debias=False,
      batch_norm="recompute",
      bn_recompute_batches=50,
    ),
    mesh=NS(data=-1, shard_params=False),
    nonfinite=NS(skip=False, max_consecutive_skips=10),
  )


def bench_device(
  model_name: str,
  batch: int,
  dtype: str,
  image: int,
  steps: int,
  warmup: int,
  peak_tflops: float | None,
) -> dict:
  """Train steps on a batch already on the device: compute only."""
  from trajax import models, train

  c = _device_config(model_name, batch, dtype, total_steps=steps + warmup + 1)
  num_classes = 1000
  shape = (image, image, 3)
  model = models.create_model(c.model, num_classes=num_classes)
  mesh = train.make_mesh(c)
  state, shardings = train.create_train_state(c, model, shape, mesh)
  step_fn = train.make_train_step(c, model, mesh, shardings)
  bsh = train.batch_sharding(mesh)
  key = jax.random.PRNGKey(0)
  batch_arr = {
    "image": jax.device_put(jax.random.normal(key, (c.batch_size, *shape), jnp.float32), bsh),
    "label": jax.device_put(jax.random.randint(key, (c.batch_size,), 0, num_classes), bsh),
  }
  t_compile = time.perf_counter()
  for _ in range(warmup):
    state, metrics = step_fn(state, batch_arr)
  jax.block_until_ready(metrics)
  t_compile = time.perf_counter() - t_compile
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch_arr)
  jax.block_until_ready((state.params, metrics))
  wall = time.perf_counter() - t0
  rate = steps * c.batch_size / wall
  fwd = models.model_flops_per_example(c.model, shape, num_classes)
  kind = jax.devices()[0].device_kind
  if peak_tflops is None:
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)
  out = {
    "mode": "device",
    "model": model_name,
    "dtype": dtype,
    "image": image,
    "batch": c.batch_size,
    "steps": steps,
    "examples_per_s": rate,
    "step_ms": 1000 * wall / steps,
    "warmup_s": t_compile,
    "fwd_gflop_per_example_2x_macs": fwd / 1e9,
    "device": kind,
    "devices": jax.device_count(),
    "peak_bf16_tflops": peak_tflops,
    "loss": float(metrics["loss"]),
  }
  if peak_tflops:
    peak = peak_tflops * 1e12 * jax.device_count()
    out["mfu"] = 3 * fwd * rate / peak
    if model_name in PAPER_FWD_GFLOP and image == 224:
      out["mfu_paper_flops"] = 3 * PAPER_FWD_GFLOP[model_name] * 1e9 * rate / peak
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=["pipeline", "device"], default="pipeline")
  p.add_argument("--workload", default="mnist1d", help="pipeline mode: mnist1d | cifar_resnet34")
  p.add_argument("--model", default="resnet34", help="device mode: resnet34 | resnet50 | ...")
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  p.add_argument("--image", type=int, default=224)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument(
    "--threads",
    type=int,
    default=1,
    help="pipeline mode: prefetch threads (0/1; the engine uses 1)",
  )
  a = p.parse_args()
  if a.mode == "pipeline":
    out = bench_pipeline(a.workload, a.batch, a.steps, a.warmup, a.threads)
  else:
    out = bench_device(a.model, a.batch or 256, a.dtype, a.image, a.steps, a.warmup, a.peak_tflops)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
