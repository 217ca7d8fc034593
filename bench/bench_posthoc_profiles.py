"""Post-hoc EMAs from saved snapshots, with and without in-training profiles (issue 13).

The anchor is Karras et al. 2024 ("Analyzing and Improving the Training
Dynamics of Diffusion Models"): two power-function EMA profiles
(β_t = (1 − 1/t)^{γ+1}, σ_rel = 0.05 and 0.10, i.e. γ ≈ 16.97 and 6.94)
saved at intervals, any EMA rebuilt post hoc from their snapshots. One run of
the mnist1d default config (``configs/mnist1d.py``: 6 000 steps, constant
η = 0.05, in-training two-point average) with a checkpoint every N steps, all
kept, and ``averaging.profiles`` =

  profiles[0], [1]   power EMA, γ = 16.97, 6.94           (Karras's pair)
  profiles[2], [3]   EMA, δ = 1e-3, 1e-2                   (two plain EMA profiles)
  profiles[4 …]      EMA at every δ of the grid            (the truth: in-training EMAs)

For every δ of the grid (20 decays, 1e-4 … 0.1, as the CLI's default sweep)
the EMA at step 6 000 is rebuilt (:func:`trajax.posthoc.plan`, least squares
in schedule-weight space) from

  (a) params     θ_t at the saved steps only
  (b) power      the two power-EMA profiles' snapshots only (Karras's setup)
  (c) ema        the two EMA profiles' snapshots only
  (d) params+power  both
  (e) params+avg the saved params and the run's own two-point average (what a run
                 without profiles offers)

The EMAs are debiased by default (``--no-debias``: plain, from a_0 = θ_0):
a plain EMA keeps (1 − δ)^T of θ_0, 0.55 at δ = 1e-4 and T = 6 000, and no
checkpoint holds θ_0 (a power EMA gives it no weight).

and compared with the true in-training EMA of that δ (its profile, never a
column): the kernel residual ‖Bx − c‖₁, the schedule residual
‖W(Bx − c)‖/‖W(c)‖, the parameter error ‖a_posthoc − a_true‖ relative to the
averaging displacement ‖a_true − θ_T‖, and the test-loss gap
|L(a_posthoc) − L(a_true)| (BatchNorm statistics recomputed for both, as the CLI).

It also re-measures issue 13's cost target on this run: a 20-decay sweep
(plans, one pass, 20 evaluations) against 20 evaluations + one pass over the
saved checkpoints (target < 2).

  python -m bench.bench_posthoc_profiles --workdir=/tmp/bench_php/run --every=500

``--workdir`` without a committed step 6000 is trained first (python -m
trajax.main with the same overrides would do the same).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from bench.bench_posthoc import sweep_cost
from configs import mnist1d
from trajax import averaging, loop, posthoc, runs
from trajax import checkpoint as ckpt_lib

POWER = (16.97, 6.94)  # σ_rel = 0.05, 0.10
EMAS = (1e-3, 1e-2)
SETUPS = {
  "params": ("params",),
  "power": ("profiles[0]", "profiles[1]"),
  "ema": ("profiles[2]", "profiles[3]"),
  "params+power": ("params", "profiles[0]", "profiles[1]"),
  "params+avg": ("params", "average"),
}


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def make_config(every: int, decays, debias: bool):
  config = mnist1d.get_config()
  profiles = [{"method": "power_ema", "gamma": g} for g in POWER]
  profiles += [{"method": "ema", "decay": float(d), "debias": debias} for d in EMAS]
  profiles += [{"method": "ema", "decay": float(d), "debias": debias} for d in decays]
  config.checkpoint_every_steps = every
  config.checkpoint.max_to_keep = None
  config.averaging.profiles = tuple(profiles)
  return config


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="/tmp/bench_php/run")
  ap.add_argument("--every", type=int, default=500, help="checkpoint every N steps")
  ap.add_argument("--decays", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--out", default=None, help="write the rows as JSON here")
  ap.add_argument(
    "--debias",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="debiased EMAs (targets, truth and EMA profiles): no weight on θ_0, which no "
    "checkpoint holds (a plain EMA from θ_0 keeps (1 − δ)^6000 = 0.55 of it at δ = 1e-4)",
  )
  args = ap.parse_args()

  decays = [float(d) for d in np.geomspace(1e-4, 0.1, args.decays)]
  config = make_config(args.every, decays, args.debias)
  ckpts = os.path.join(args.workdir, "checkpoints")
  if ckpt_lib.committed_steps(ckpts)[-1:] != [config.total_steps]:
    os.makedirs(os.path.dirname(os.path.abspath(args.workdir)), exist_ok=True)
    t = time.perf_counter()
    loop.train_and_evaluate(config, args.workdir)
    print(f"trained in {time.perf_counter() - t:.0f}s ({len(config.averaging.profiles)} profiles)")
  run = runs.open_run(args.workdir)
  end = run.steps[-1]
  evaluate = posthoc.Evaluator(run)
  last = run.state_at(end)
  truth = averaging.profile_averages(last.opt_state, last.params)[len(POWER) + len(EMAS) :]
  theta_t = _flat(last.params)

  def loss(params, stats):
    return evaluate(*evaluate.variables(params, stats))["loss"]

  rows = []
  for setup, sources in SETUPS.items():
    plans = [
      posthoc.plan(
        run, posthoc.target("ema", end=end, decay=d, debias=args.debias), sources=sources
      )
      for d in decays
    ]
    for d, plan, avg, true in zip(decays, plans, posthoc.combine(run, plans), truth, strict=True):
      a, b = _flat(avg.params), _flat(true)
      true_params = jax.tree.map(lambda x, p: np.asarray(x, p.dtype), true, last.params)
      rows.append(
        {
          "setup": setup,
          "decay": d,
          "columns": len(plan.coefficients),
          "kernel_residual": plan.residual,
          "schedule_residual": plan.schedule_residual,
          "param_error": float(np.linalg.norm(a - b) / np.linalg.norm(b - theta_t)),
          "param_error_abs": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
          "loss_gap": abs(loss(avg.params, avg.batch_stats) - loss(true_params, last.batch_stats)),
        }
      )
  print(
    f"\n{jax.devices()[0].platform}, jax {jax.__version__}; run {args.workdir}: "
    f"{len(run.steps)} checkpoints every {args.every} steps, {len(decays)} decays "
    f"{decays[0]:.0e} … {decays[-1]:.0e}{', debiased' if args.debias else ''}"
  )
  header = "decay     " + "".join(f"{s:>26}" for s in SETUPS)
  print("kernel residual / schedule residual / param error (‖a − a_true‖/‖a_true − θ_T‖)")
  print(header)
  for d in decays:
    cells = []
    for s in SETUPS:
      r = next(r for r in rows if r["setup"] == s and r["decay"] == d)
      cells.append(
        f"{r['kernel_residual']:8.3f} {r['schedule_residual']:8.4f} {r['param_error']:8.4f}"
      )
    print(f"{d:9.2e} " + "".join(f"{c:>26}" for c in cells))
  for s in SETUPS:
    mine = [r for r in rows if r["setup"] == s]
    print(
      f"{s:>13}: median param error {np.median([r['param_error'] for r in mine]):.4f}, "
      f"max {max(r['param_error'] for r in mine):.4f}; median schedule residual "
      f"{np.median([r['schedule_residual'] for r in mine]):.4f}; max test-loss gap "
      f"{max(r['loss_gap'] for r in mine):.2e}"
    )

  # Issue 13's cost target on this run (sources: params + the power profiles).
  one = posthoc.posthoc_average(run, "ema", decay=1e-3, sources=SETUPS["params+power"])
  evaluate(*evaluate.variables(one.params, one.batch_stats))
  costs = []
  for _ in range(args.repeats):
    cost, _, _ = sweep_cost(
      run, evaluate, decays, one, sources=SETUPS["params+power"], debias=args.debias
    )
    costs.append(cost)
    print(json.dumps(cost))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "costs": costs, "steps": run.steps}, f, indent=1)


if __name__ == "__main__":
  main()
