"""Cost of the per-leaf checkpoint digests (issue 11) on a ResNet-34 train state.

The state is the one ``configs/imagenet_resnet34.py`` trains (1000 classes,
SGD momentum and a two-point average in the optimizer state): its shapes come
from ``jax.eval_shape`` (nothing is initialised), filled with random float32.
Reported:

* ``digest``: single-thread throughput and time over the whole state of each
  candidate (``zlib.crc32``, ``zlib.adler32``, ``hashlib.sha256``,
  ``hashlib.blake2b``, ``hashlib.md5``) -- the bytes every leaf is hashed over;
* ``tree_digests_s``: :func:`trajax.checkpoint.tree_digests` (the code a save
  runs, in its background thread);
* ``save``: a :class:`trajax.checkpoint.Checkpointer` save of the state: the
  time ``save()`` blocks the training thread and the time to the commit,
  against a plain Orbax ``CheckpointManager`` save (no digests) of the same tree.

  PYTHONPATH=. .venv/bin/python -m bench.bench_checkpoint
  PYTHONPATH=. .venv/bin/python -m bench.bench_checkpoint --config=cifar10_resnet34 --repeats=5
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
import zlib

import jax
import numpy as np

from trajax import checkpoint as ckpt_lib
from trajax import models, train

ALGORITHMS = {
  "crc32": zlib.crc32,
  "adler32": zlib.adler32,
  "sha256": lambda b: hashlib.sha256(b).digest(),
  "blake2b": lambda b: hashlib.blake2b(b, digest_size=16).digest(),
  "md5": lambda b: hashlib.md5(b).digest(),
}


def state_tree(config_name: str) -> dict:
  """The train state's nested dict with random float32 (int leaves zero)."""
  config = importlib.import_module(f"configs.{config_name}").get_config()
  num_classes = {"imagenet_resnet34": 1000, "cifar100_resnet34": 100}.get(config_name, 10)
  model = models.create_model(config.model, num_classes=num_classes)
  input_shape = {"imagenet_resnet34": (224, 224, 3)}.get(config_name, (32, 32, 3))
  optimizer = train.make_optimizer(config)
  abstract = jax.eval_shape(
    lambda rng: train.init_state(rng, model=model, optimizer=optimizer, input_shape=input_shape),
    jax.random.key(0),
  )
  from flax import serialization

  rng = np.random.default_rng(0)

  def fill(x):
    if np.issubdtype(x.dtype, np.floating):
      return rng.standard_normal(x.shape, np.float32).astype(x.dtype)
    return np.zeros(x.shape, x.dtype)

  return serialization.to_state_dict(jax.tree.map(fill, abstract))


def bench_digests(tree, repeats: int) -> dict:
  leaves = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in jax.tree.leaves(tree)]
  nbytes = sum(x.nbytes for x in leaves)
  out = {}
  for name, fn in ALGORITHMS.items():
    best = float("inf")
    for _ in range(repeats):
      t = time.perf_counter()
      for x in leaves:
        fn(x)
      best = min(best, time.perf_counter() - t)
    out[name] = {"s": round(best, 4), "MB_per_s": round(nbytes / best / 1e6)}
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    ckpt_lib.tree_digests(tree)
    best = min(best, time.perf_counter() - t)
  return {"state_MB": round(nbytes / 1e6, 1), "digest": out, "tree_digests_s": round(best, 4)}


def bench_save(tree, workdir: str, repeats: int) -> dict:
  import orbax.checkpoint as ocp

  device_tree = jax.device_put(tree)
  meta = {"step": 0, "data_position": 0}
  ours, plain = [], []
  for r in range(repeats):
    d = os.path.join(workdir, f"ours{r}")
    ck = ckpt_lib.Checkpointer(os.path.join(d, "checkpoints"))
    t = time.perf_counter()
    ck.save(1, device_tree, dict(meta))
    blocked = time.perf_counter() - t
    ck.wait()
    ours.append((blocked, time.perf_counter() - t))
    ck.close()
    shutil.rmtree(d)

    d = os.path.join(workdir, f"plain{r}")
    mngr = ocp.CheckpointManager(
      os.path.join(d, "checkpoints"),
      options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True, create=True),
      item_names=("state", "meta"),
    )
    t = time.perf_counter()
    mngr.save(
      1,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(device_tree), meta=ocp.args.JsonSave(dict(meta))
      ),
    )
    blocked = time.perf_counter() - t
    mngr.wait_until_finished()
    plain.append((blocked, time.perf_counter() - t))
    mngr.close()
    shutil.rmtree(d)

  def best(runs):
    return {
      "blocking_s": round(min(b for b, _ in runs), 4),
      "commit_s": round(min(c for _, c in runs), 4),
    }

  return {"trajax_checkpointer": best(ours), "plain_orbax": best(plain)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="imagenet_resnet34")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench_checkpoint"))
  ap.add_argument("--no_save", action="store_true", help="digests only")
  args = ap.parse_args()
  tree = state_tree(args.config)
  result = {"config": args.config, "backend": jax.default_backend()}
  result.update(bench_digests(tree, args.repeats))
  if not args.no_save:
    os.makedirs(args.workdir, exist_ok=True)
    try:
      result["save"] = bench_save(tree, args.workdir, args.repeats)
    finally:
      shutil.rmtree(args.workdir, ignore_errors=True)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
