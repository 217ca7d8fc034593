"""Cost of a post-hoc EMA sweep on the mnist1d default run (issue 13).

Target: a sweep over 20 decays costs less than 2 × (20 evaluations + one pass
over the saved checkpoints). Measured in one process, warm (each jitted
function compiled once before timing):

* ``pass_s``: one read of every committed checkpoint (``Run.state_at``, blocked);
* ``eval_s``: 20 evaluations of one averaged model (BatchNorm policy + test split);
* ``sweep_s``: the sweep itself — 20 plans (kernels, least squares),
  :func:`trajax.posthoc.combine` (checkpoints streamed once, all 20 averages
  accumulated in that pass), and the 20 evaluations.

  python -m bench.bench_posthoc --workdir=/tmp/ph_bench/run

``--workdir`` without a committed step 6000 is trained first with
``configs/mnist1d.py`` unchanged (python -m trajax.main would do the same).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from configs import mnist1d
from trajax import checkpoint as ckpt_lib
from trajax import loop, posthoc, runs


def _block(tree):
  jax.tree.map(lambda x: np.asarray(x), tree)


def sweep_cost(run, evaluate, decays, one, *, sources=None, debias=False):
  """One timing of the issue's target: ``(row, averages, metrics)``.

  ``row``: ``pass_s`` (every committed checkpoint read once), ``eval_s``
  (``len(decays)`` evaluations of the warm average ``one``), ``plan_s``,
  ``combine_s`` and ``sweep_s`` (plans + one combine pass + the evaluations)
  and ``ratio`` = sweep_s / (eval_s + pass_s), target < 2. ``sources`` and
  ``debias`` as :func:`trajax.posthoc.plan` and :func:`trajax.posthoc.target`.
  """
  end = run.steps[-1]
  t = time.perf_counter()
  for s in run.steps:
    _block(run.state_at(s))
  pass_s = time.perf_counter() - t

  t = time.perf_counter()
  for _ in decays:
    evaluate(*evaluate.variables(one.params, one.batch_stats))
  eval_s = time.perf_counter() - t

  t = time.perf_counter()
  plans = [
    posthoc.plan(
      run, posthoc.target("ema", end=end, decay=float(d), debias=debias), sources=sources
    )
    for d in decays
  ]
  plan_s = time.perf_counter() - t
  averages = posthoc.combine(run, plans)
  combine_s = time.perf_counter() - t - plan_s
  metrics = [evaluate(*evaluate.variables(a.params, a.batch_stats)) for a in averages]
  sweep_s = time.perf_counter() - t
  row = {
    "checkpoints": len(run.steps),
    "pass_s": round(pass_s, 3),
    "eval_s": round(eval_s, 3),
    "sweep_s": round(sweep_s, 3),
    "plan_s": round(plan_s, 3),
    "combine_s": round(combine_s, 3),
    "ratio": round(sweep_s / (eval_s + pass_s), 3),
  }
  return row, averages, metrics


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="/tmp/bench_posthoc/run")
  ap.add_argument("--decays", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args()

  config = mnist1d.get_config()
  if ckpt_lib.committed_steps(os.path.join(args.workdir, "checkpoints"))[-1:] != [
    config.total_steps
  ]:
    os.makedirs(os.path.dirname(os.path.abspath(args.workdir)), exist_ok=True)
    t = time.perf_counter()
    loop.train_and_evaluate(config, args.workdir)
    print(f"trained the default run in {time.perf_counter() - t:.0f}s")
  run = runs.open_run(args.workdir)
  decays = np.geomspace(1e-4, 0.1, args.decays)
  evaluate = posthoc.Evaluator(run)

  # Warm-up: compile restore, evaluation and BatchNorm recomputation once.
  one = posthoc.posthoc_average(run, "ema", decay=1e-3)
  evaluate(*evaluate.variables(one.params, one.batch_stats))

  rows, metrics, averages = [], None, None
  for _ in range(args.repeats):
    row, averages, metrics = sweep_cost(run, evaluate, decays, one)
    rows.append(row)
    print(json.dumps(row))
  best = min(rows, key=lambda r: r["ratio"])
  print(
    f"\n{jax.devices()[0].platform}, jax {jax.__version__}; run {args.workdir} "
    f"(steps {run.steps}); {args.decays} decays {decays[0]:.0e} … {decays[-1]:.0e}"
  )
  print(
    f"sweep {best['sweep_s']:.2f}s vs 20 evals {best['eval_s']:.2f}s + one pass "
    f"{best['pass_s']:.2f}s: ratio {best['ratio']:.2f} (target < 2)"
  )
  for d, m, a in zip(decays, metrics, averages, strict=True):
    print(
      f"  decay {d:.2e}: loss {m['loss']:.4f} acc {m['accuracy']:.4f} residual {a.plan.residual:.3f} "
      f"sched {a.plan.schedule_residual:.3f}"
    )


if __name__ == "__main__":
  main()
