"""Side-trip start cost on the offline default config (configs/mnist1d.py).

Issue 6 asks that a side-trip start (restore the parent's state + its first
step) take seconds on the offline default config, compiled once per kind.
This script trains a short parent with the default config's model, data and
optimizer (only ``total_steps``, the checkpoint cadence and the two-point gap
shortened: the start cost does not depend on how long the parent ran), then,
for each kind, branches two side-trips from two different steps in one
process and reports:

* ``restore_s``: plain file checks + abstract state + read-only Orbax restore;
* ``first_step_s``: the first step, blocked on (compilation included when the
  kind has not been compiled yet in this process);
* ``compiled``: whether that first step compiled (False for the second trip
  of a kind: S, η_S, f and k are traced arguments);
* ``wall_s``: the whole ``run_sidetrip`` call for ``--steps`` steps, one
  evaluation on the 10 000-example test split and one checkpoint included;
* ``cpu_s``: CPU time of this process over that call (all threads): less
  sensitive than wall time to other jobs sharing the cores.

  .venv/bin/python -m bench.bench_sidetrip                  # defaults below
  .venv/bin/python -m bench.bench_sidetrip --steps=200 --workdir=/tmp/bench_sidetrip

Set ``--jax_cache`` off (the default) to measure cold compilations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax

from configs import mnist1d
from trajax import checkpoint as ckpt_lib
from trajax import loop, sidetrip

KIND_FIELDS = {
  "equivalent": dict(kind="equivalent", method="two_point", gap=50),
  "fixed_batch": dict(kind="fixed_batch", lr_factor=1.0),
  "schedule": dict(kind="schedule", schedule="constant", lr_factor=0.5),
}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench_sidetrip"))
  ap.add_argument("--parent_steps", type=int, default=200)
  ap.add_argument("--steps", type=int, default=50)
  ap.add_argument("--kinds", default=",".join(KIND_FIELDS))
  ap.add_argument("--jax_cache", default=None, help="persistent compilation cache directory")
  args = ap.parse_args()
  if args.jax_cache:
    jax.config.update("jax_compilation_cache_dir", args.jax_cache)

  config = mnist1d.get_config()
  config.total_steps = args.parent_steps
  config.checkpoint_every_steps = args.parent_steps // 2
  config.eval_every_steps = args.parent_steps
  config.checkpoint.max_to_keep = None
  config.averaging.gap = min(config.averaging.gap, args.parent_steps)  # must fit the short run
  parent = os.path.join(args.workdir, "parent")
  if ckpt_lib.committed_steps(os.path.join(parent, "checkpoints"))[-1:] != [args.parent_steps]:
    shutil.rmtree(parent, ignore_errors=True)
    os.makedirs(args.workdir, exist_ok=True)
    t = time.perf_counter()
    loop.train_and_evaluate(config, parent)
    print(f"parent: {args.parent_steps} steps in {time.perf_counter() - t:.1f}s")
  branch = [args.parent_steps // 2, args.parent_steps]

  rows = []
  for kind in args.kinds.split(","):
    fields = dict(KIND_FIELDS[kind])
    fields.setdefault("steps", args.steps)
    if kind == "equivalent":
      fields["window"] = fields.pop("steps")
      fields["gap"] = fields["window"]
    for s in branch:
      out = os.path.join(args.workdir, f"{kind}-{s}")
      shutil.rmtree(out, ignore_errors=True)
      cfg = sidetrip.with_sidetrip(config, eval_at=(), **fields)
      t, cpu = time.perf_counter(), time.process_time()
      result = sidetrip.run_sidetrip(cfg, parent, s, out)
      wall, cpu = time.perf_counter() - t, time.process_time() - cpu
      row = {
        "kind": kind,
        "step": s,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.timings.items()},
      }
      rows.append(row)
      print(json.dumps(row))

  print(
    f"\n{jax.devices()[0].platform} x{jax.device_count()}, jax {jax.__version__}; "
    f"mnist1d default config (cnn1d width {config.model.width}, batch {config.batch_size}); "
    f"{args.steps}-step side-trips"
  )
  print(
    f"{'kind':12s} {'S':>5s} {'restore_s':>10s} {'first_step_s':>13s} {'compiled':>9s} "
    f"{'start_s':>8s} {'wall_s':>7s} {'cpu_s':>6s}"
  )
  for r in rows:
    start = r["restore_s"] + r["first_step_s"]
    print(
      f"{r['kind']:12s} {r['step']:5d} {r['restore_s']:10.3f} {r['first_step_s']:13.3f} "
      f"{str(r['compiled']):>9s} {start:8.3f} {r['wall_s']:7.2f} {r['cpu_s']:6.2f}"
    )


if __name__ == "__main__":
  main()
