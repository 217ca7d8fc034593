"""Cost of the post-hoc defaults of ``configs/mnist1d.py`` on the default run (issue 24: ≤ 3 %).

The offline default now carries two power-EMA profiles (γ = 16.97, 6.94) and
keeps every checkpoint, 500 steps apart (12), where it kept the last 3 of a
checkpoint every 1 000 steps without profiles. Two measurements, in one
process, the variants interleaved so that machine load hits both alike:

1. the jitted engine train step (``trajax.train.make_train_step``, the
   default's cnn1d, batch 64 of mnist1d-shaped inputs), old vs new layout:
   blocks of ``--steps`` steps per variant per round, the paired per-round
   ratio's median and IQR;
2. the whole run (``train_and_evaluate``: data, eval, checkpoints) of
   ``--total_steps`` steps, old vs new config, ``--runs`` alternating pairs:
   wall time per step and the paired ratio.

    python -m bench.bench_posthoc_defaults [--steps 200] [--repeats 15] [--total_steps 6000] [--runs 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time

import jax
import numpy as np


def configs():
  """``{'old': …, 'new': …}``: the default before and after the post-hoc defaults."""
  from configs import mnist1d

  new = mnist1d.get_config()
  old = copy.deepcopy(new)
  with old.unlocked():
    old.averaging.profiles = ()
    old.checkpoint_every_steps = 1000
    old.checkpoint.max_to_keep = 3
  return {"old": old, "new": new}


def step_ratio(steps: int, repeats: int) -> dict:
  from trajax import models, train
  from trajax import state as state_lib

  rng = np.random.default_rng(0)
  runs = {}
  for name, c in configs().items():
    model = models.create_model(c.model, num_classes=10)
    mesh = state_lib.make_mesh(c)
    state, shardings = train.create_train_state(c, model, (40, 1), mesh)
    step = train.make_train_step(c, model, mesh, shardings)
    batch = {
      "image": jax.device_put(
        rng.normal(size=(c.batch_size, 40, 1)).astype(np.float32), state_lib.batch_sharding(mesh)
      ),
      "label": jax.device_put(
        rng.integers(0, 10, c.batch_size).astype(np.int32), state_lib.batch_sharding(mesh)
      ),
    }
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    runs[name] = [step, state, batch]
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, entry in runs.items():
      step, state, batch = entry
      t0 = time.perf_counter()
      for _ in range(steps):
        state, _ = step(state, batch)
      jax.block_until_ready(state)
      times[name].append((time.perf_counter() - t0) / steps)
      entry[1] = state
  r = np.asarray(times["new"]) / np.asarray(times["old"])
  return {
    "old_ms": 1e3 * float(np.median(times["old"])),
    "new_ms": 1e3 * float(np.median(times["new"])),
    "ratio": float(np.median(r)),
    "iqr": [float(x) for x in np.percentile(r, [25, 75])],
  }


def run_ratio(total_steps: int, runs: int) -> dict:
  from trajax import loop

  out = {"old": [], "new": []}
  root = tempfile.mkdtemp(prefix="bench_posthoc_defaults_")
  try:
    for i in range(runs):
      for name, c in configs().items():
        with c.unlocked():
          c.total_steps = total_steps
        wd = os.path.join(root, f"{name}{i}")
        t0 = time.perf_counter()
        loop.train_and_evaluate(c, wd)
        out[name].append((time.perf_counter() - t0) / total_steps)
        shutil.rmtree(wd)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  r = np.asarray(out["new"]) / np.asarray(out["old"])
  return {
    "old_ms": [1e3 * t for t in out["old"]],
    "new_ms": [1e3 * t for t in out["new"]],
    "ratios": [float(x) for x in r],
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--total_steps", type=int, default=6000)
  parser.add_argument("--runs", type=int, default=2)
  args = parser.parse_args()
  s = step_ratio(args.steps, args.repeats)
  print(
    f"train step: old {s['old_ms']:.3f} ms, new {s['new_ms']:.3f} ms, paired ratio "
    f"{s['ratio']:.3f} (IQR {s['iqr'][0]:.3f}-{s['iqr'][1]:.3f}; {args.repeats} rounds of "
    f"{args.steps} steps)"
  )
  if args.runs:
    w = run_ratio(args.total_steps, args.runs)
    print(
      f"whole run ({args.total_steps} steps): old {', '.join(f'{t:.3f}' for t in w['old_ms'])} "
      f"ms/step, new {', '.join(f'{t:.3f}' for t in w['new_ms'])} ms/step, ratios "
      f"{', '.join(f'{x:.3f}' for x in w['ratios'])}"
    )


if __name__ == "__main__":
  main()
