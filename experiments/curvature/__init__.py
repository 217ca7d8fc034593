"""Curvature along the trajectory, at averaged vs raw vs side-trip points, and the shell law (issue 14).

The paper's analysis (Sec. 4, Lemma 1) is a quadratic model whose Hessian sets
the stationary shell; it never measures the curvature of the networks it
trains. This experiment does, with the probes of
:mod:`trajax.probes.curvature`, on training batches (BatchNorm in training
mode, the loss a step differentiates, so the running statistics never enter):

* lambda_1 >= ... >= lambda_k, the top-k eigenvalues of H_b = hess L_b(theta)
  (Lanczos, ``exp.lanczos_iters`` HVPs), and tr H_b (Hutchinson,
  ``exp.probes`` Rademacher probes, with its standard error), at the parent's
  checkpoints theta_s, s = every ``exp.every`` steps (default the config's
  checkpoint cadence), on ``exp.batches`` training batches s, s+1, ... of the
  run's own stream; the mean over batches is reported with the per-batch values;
* beside the learning rate eta_s and the paper's effective rate eta_s/(1 - beta):
  the edge-of-stability references of full-batch GD, 2/lambda_1, and of
  heavy-ball momentum beta, 2(1+beta)/lambda_1 (a quadratic direction with
  curvature lambda is stable under GD with momentum iff eta lambda <
  2(1+beta)); and eps_max = |g_b|^2 / (g_b^T H_b g_b) of the companion notes on
  the same batch (the best step along that batch's gradient);
* the same probes, on the same training batches T, T+1, ..., at eight points
  around the last window [S, T], S = T - k (k = ``exp.window``, default
  ``averaging.gap``): the raw endpoints theta_S, theta_T; the averages that
  :mod:`trajax.averaging` started at S reaches at T (``exp.averages``:
  two-point (theta_S + theta_T)/2 (paper Sec. 4), SWA (1/k) sum_{j=1..k}
  theta_{S+j}, EMA with the config's decay delta, pinned at theta_S), from one
  replay of the parent's steps S..T with the engine's step (its distance to
  the parent's theta_T is recorded: 0 is a bit-exact replay); and their
  equivalent side-trips (``exp.sidetrips``): :func:`trajax.sidetrip.run_sidetrip`
  of kind 'equivalent' from S for k steps under the Table 1 schedule
  (:func:`trajax.schedules.equivalent_schedule`; two-point: eta/2, SWA:
  eta (k - j)/k, EMA: eta (1 - (1 - delta)^{k-j})).

The shell law (``exp.shell``, :func:`shell_law`): pairs of constant-rate
side-trips (:func:`experiments.parents.stepper`, the engine's step) from theta_S at f * eta,
f in ``exp.shell_factors`` (1, 1/2, 1/4, 1/8), for L = ``exp.shell_steps``
(default k) steps, one on the parent's batch order and one on an order the
parent never saw. Sampled at ``exp.shell_points`` times over [L/2, L]:

* the pair distance |a - c| and each sample's distance to the pair's common
  centre (the mean of all samples of both trips: the running average), each
  split into the span of the top ``exp.shell_k`` Hessian eigenvectors at
  theta_S ("fast" directions; training batch S) and the rest ("slow"); the
  exponent p of distance ~ f^p is fitted by least squares on log-log with its
  standard error, for every split (Lemma 1 predicts 1/2 on the shell);
* quasi-stationarity, per trip and split: the mean over the later half of the
  sampling times is within 10 % of the earlier half's (or within
  :data:`STATIONARY_SE` = 3 standard errors of the difference, from the halves'
  sample spread over sqrt(n), samples taken as independent), and, for the fast split, L/2 is at least
  :data:`RELAXATIONS` relaxation times (1 - beta)/(f eta lambda_k) of the
  slowest of the top-k directions (heavy-ball's rate on a quadratic
  direction). Trips that are not quasi-stationary are reported as such and
  no claim that reads them passes;
* the drift/drag split (``exp.drag_steps`` further updates after L, Fig. 4a):
  each update Delta_t split into its component along the direction back to the
  centre (drag) and the orthogonal remainder (drift), exponents fitted the same way;
* the quadratic model's midpoint drop (Fig. 4b): at the end of the trip, on
  the training batches T, T+1, ... (which neither trip stepped on when L <= k),
  (L_b(a) + L_b(c))/2 - L_b((a+c)/2) beside (1/8) (a - c)^T H_b((a+c)/2) (a - c)
  (:func:`trajax.probes.curvature.midpoint_gap`), equal for a quadratic loss.

Claims (:data:`CLAIMS`, records as :mod:`experiments.claims` writes them,
criteria and thresholds fixed in :mod:`~experiments.curvature.criteria`
before any run), judged over the demo's seeds or ``--exp.seeds``:

* ``curv.contracting``: the paper's Appendix A assumes every eigenvalue of
  Gamma = I - lambda Omega lies in (0, 1), i.e. 0 < lambda omega < 1 for every
  curvature omega of the loss. With momentum beta the paper's lambda is the
  effective rate eta/(1 - beta); the test is eta_eff * lambda_max < 1 at every
  probed checkpoint (lambda_max of training-batch Hessians, mean over
  ``exp.batches`` batches: a batch Hessian's top eigenvalue is biased up
  relative to the full-data Omega, so a narrow failure is not conclusive).
* ``curv.sqrt_lambda_shell``: Lemma 1 -- every trip quasi-stationary in the
  fast directions and the fast-direction pair-distance exponent within
  :data:`SHELL_TOLERANCE` of 1/2.
* ``curv.drift_drag``: Fig. 4a -- every trip quasi-stationary and the drag
  exponent within :data:`SHELL_TOLERANCE` of 1/2, the drift's of 1.
* ``curv.average_inside_shell``: Sec. 4 / Fig. 4b -- at every f, on
  quasi-stationary trips, the midpoint's loss sits below the pair's mean loss
  (gap > 0) by the amount the quadratic model predicts from the measured
  curvature, within :data:`QUADRATIC_MATCH` (the "match" band of
  :data:`experiments.claims.MATCH_TOLERANCE`): |gap / ((1/8) d^T H d) - 1| <= 0.5.
* ``curv.average_flatter`` (companion notes, Izmailov et al.) -- the two-point
  average has a smaller lambda_max and a smaller trace than both raw
  endpoints, on the same training batches, the trace by more than
  :data:`FLAT_SE` standard errors of the difference (Hutchinson SE).
* ``curv.swa_flatter`` (companion notes, Izmailov et al.) -- the same test for
  the SWA average over (S, T].

Not measured here: the full-data Hessian (batch Hessians of ``exp.batches``
batches stand in for it), and a shell for the slow directions: on the default
config their share of the pair distance keeps growing over the trip (a
diffusion, exponent near 1), which the stationarity test reports.

Usage: a stage of ``make demo`` (``experiments/demo.py``, sized by its
``DEMO_EXP``: 4 trajectory points, 2 batches, 24 Lanczos steps, 10 probes, the
window [5100, 6000]; 40-85 s per seed on 2 shared CPU cores, docs/benchmarks.md).
On its own, one parent run per seed (about 15 s each), then at the module's
default sizes about 1-2.5 min of probes, replays and side-trips::

  python -m experiments.curvature --config=configs/mnist1d.py --workdir=workdirs/curv
  python -m experiments.curvature --config=configs/mnist1d.py --workdir=workdirs/curv \\
    --exp.seeds='(0, 1, 2)'

Longer sweeps behind flags: ``--exp.shell_steps=3000`` (trips three times the
window, for the slow directions), ``--exp.every=500`` (a denser trajectory),
``--exp.shell_factors='(1, 0.5, 0.25, 0.125, 0.0625)'``, ``--exp.batches=8``; the
demo shrinks the cadence, window, batches, Lanczos steps and probes (its
``DEMO_EXP``) and keeps the shell's defaults.

Layout: one module per study, the shared probes in one place --
:mod:`~experiments.curvature.shared` (:func:`measure`, the window's length),
:mod:`~experiments.curvature.trajectory` (the trajectory and its learning
rate), :mod:`~experiments.curvature.window` (the last window's raw, averaged
and side-trip points), :mod:`~experiments.curvature.shell` (the shell law),
:mod:`~experiments.curvature.drift_drag` (Fig. 4a),
:mod:`~experiments.curvature.midpoint` (Fig. 4b),
:mod:`~experiments.curvature.criteria` (the claims and their records),
:mod:`~experiments.curvature.plot`; this module runs them (:func:`run`,
:func:`run_seeds`, ``python -m experiments.curvature``) and re-exports their
public names.

Writes ``WORKDIR/curvature.{json,png}`` (one seed) or ``WORKDIR/seed_N/...``
and ``WORKDIR/curvature_claims.json`` (seeds); the equivalent side-trips live
in ``WORKDIR/curvature_trips/<method>_S<S>_k<k>``.
"""

from __future__ import annotations

import copy
import os
import time

from experiments import cli, evaluation, parents, plotting
from experiments.curvature import criteria, plot, window
from experiments.curvature import shell as shell_lib
from experiments.curvature import trajectory as trajectory_lib
from experiments.curvature.criteria import (
  CLAIMS,
  CONTRACTION,
  FLAT_SE,
  QUADRATIC_MATCH,
  SHELL_TOLERANCE,
  measured,
)
from experiments.curvature.drift_drag import drift_drag
from experiments.curvature.midpoint import midpoint_check
from experiments.curvature.shared import measure, window_length
from experiments.curvature.shell import (
  RELAXATIONS,
  STATIONARY_CHANGE,
  STATIONARY_SE,
  fit_exponent,
  shell_law,
  stationarity,
)

__all__ = [
  "CLAIMS",
  "CONTRACTION",
  "FLAT_SE",
  "METHODS",
  "NAME",
  "QUADRATIC_MATCH",
  "RELAXATIONS",
  "SHELL_TOLERANCE",
  "STATIONARY_CHANGE",
  "STATIONARY_SE",
  "branch_steps",
  "drift_drag",
  "experiment_defaults",
  "fit_exponent",
  "main",
  "measure",
  "measured",
  "midpoint_check",
  "run",
  "run_seeds",
  "shell_law",
  "stationarity",
]

NAME = "curvature"
METHODS = ("two_point", "swa", "ema")


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  e.every = mlc.FieldReference(None, field_type=int)  # default checkpoint_every_steps
  e.window = mlc.FieldReference(None, field_type=int)  # k of the last window; default averaging.gap
  e.k = 3  # top-k eigenvalues
  e.lanczos_iters = 30  # HVPs per Lanczos run (bench: top-5 to 1 % in <= 24)
  e.probes = 20  # Hutchinson probes per batch
  e.batches = 4  # training batches per point
  e.averages = METHODS  # averages over [T - k, T] measured beside the raw endpoints
  e.sidetrips = True  # and their Table 1 equivalent side-trips from T - k
  # Seeds for the claim records (curvature_claims.json); empty: one run at config.seed.
  e.seeds = ()
  e.seed = 0  # Lanczos / Hutchinson key
  e.parent = ""  # reuse an existing parent WORKDIR
  # The sqrt(lambda) shell law (2 x len(shell_factors) constant-rate side-trips).
  e.shell = True
  e.shell_factors = (1.0, 0.5, 0.25, 0.125)  # lr factors f of the side-trip pairs
  e.shell_steps = mlc.FieldReference(None, field_type=int)  # L; default window
  e.shell_points = 20  # sampling times over the trip's second half
  e.shell_k = 5  # top Hessian eigenvectors at the branch spanning the "fast" directions
  e.drag_steps = 100  # steps after L split into drag (toward the centre) and drift; 0: off
  return e


def _validate(config, exp) -> tuple[int, int]:
  for name, low in (("k", 1), ("lanczos_iters", 1), ("probes", 2), ("batches", 1)):
    if int(exp[name]) < low:
      raise ValueError(f"exp.{name} must be >= {low}, got {exp[name]!r}")
  if int(exp.lanczos_iters) < int(exp.k):
    raise ValueError(f"exp.lanczos_iters must be >= exp.k = {exp.k}, got {exp.lanczos_iters!r}")
  T = int(config.total_steps)
  every = int(exp.every if exp.every is not None else config.checkpoint_every_steps)
  if not 1 <= every <= T:
    raise ValueError(f"exp.every must lie in [1, total_steps={T}], got {every}")
  bad = [m for m in exp.averages if m not in METHODS]
  if bad or len(set(exp.averages)) != len(tuple(exp.averages)):
    raise ValueError(
      f"exp.averages must be distinct methods of {list(METHODS)}, got {tuple(exp.averages)!r}"
    )
  return every, window_length(config, exp)


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints the stage reads: every ``exp.every`` steps, T - k and T."""
  every, k = _validate(config, exp)
  T = int(config.total_steps)
  return sorted(set(range(every, T + 1, every)) | {T, T - k})


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Curvature along the trajectory, at the averages, side-trips and shell; writes JSON + PNG."""
  import jax

  from trajax import config_validation, runs, state

  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  every, k = _validate(config, exp)
  T = int(config.total_steps)
  S = T - k
  steps = sorted(set(range(every, T + 1, every)) | {T})
  if parent is None:
    parent = parents.parent_dir(config, exp, workdir, branch_steps(config, exp))
  schedule = state.make_schedule(config.optimizer, T)
  beta = float(config.optimizer.get("momentum", 0.0) or 0.0)
  key = jax.random.key(int(exp.seed))
  m = int(exp.batches)

  t0 = time.perf_counter()
  r = runs.open_run(parent)
  states = {s: r.state_at(s) for s in sorted(set(steps) | {S})}
  loss_fn = evaluation.make_loss_fn(r.model, None, train=True)
  trajectory = trajectory_lib.trajectory(r, states, steps, loss_fn, exp, key, schedule, beta)
  t_traj = time.perf_counter() - t0

  # The last window [S, T]: raw endpoints, averages, equivalent side-trips, on batches T, T+1, ...
  t1 = time.perf_counter()
  batches = [evaluation.train_batch(r.dataset, T + i) for i in range(m)]
  points, replay_l2, trip_dirs = window.window_points(
    config, exp, r, parent, {S: states[S], T: states[T]}, loss_fn, key, batches, workdir
  )
  t_points = time.perf_counter() - t1
  raw, ends = points[f"raw_{T}"], [points[f"raw_{S}"], points[f"raw_{T}"]]
  summary = {
    "lambda_max_final": raw["lambda_max"],
    "trace_final": raw["trace_mean"],
    "max_lr_times_lambda_max": max(t["lr"] * t["lambda_max"] for t in trajectory),
    "max_eff_lr_times_lambda_max": max(t["eff_lr"] * t["lambda_max"] for t in trajectory),
    "lr_below_gd_edge_everywhere": all(t["lr"] < t["gd_edge"] for t in trajectory),
    "min_eps_max_over_lr": min(t["eps_max_mean"] / t["lr"] for t in trajectory),
  }
  for name, p in points.items():
    if p["kind"] != "raw":
      summary[f"{name}_lambda_max_over_final"] = p["lambda_max"] / raw["lambda_max"]
      summary[f"{name}_flatter_than_endpoints"] = bool(
        p["lambda_max"] < min(e["lambda_max"] for e in ends)
        and p["trace_mean"] < min(e["trace_mean"] for e in ends)
      )
  shell = None
  t2 = time.perf_counter()
  if exp.shell:
    shell = shell_lib.shell_law(r, states[S], loss_fn, exp, key, T, batches)
    for d, v in shell["fit"].items():
      summary[f"shell_exponent_{d}"] = v["exponent"]
    summary["shell_all_stationary"] = all(t["stationary"] for t in shell["trips"])
    summary["shell_all_stationary_fast"] = all(t["stationary_fast"] for t in shell["trips"])
    summary["midpoint_gap_over_quadratic"] = [t["midpoint"]["ratio"] for t in shell["trips"]]
  seconds = time.perf_counter() - t0
  res = {
    "shell": shell,
    "steps": steps,
    "total_steps": T,
    "window": k,
    "branch_step": S,
    "momentum": beta,
    "decay": float(config.averaging.decay),
    "parent": parent,
    "seed": int(config.seed),
    "exp": exp.to_dict(),
    "data": f"training stream batches s, ..., s+{m - 1} at each step s (batches T, ..., "
    f"T+{m - 1} for the points of the last window and the midpoint gap); BN in training mode",
    "trajectory": trajectory,
    "points": points,
    "replay_vs_parent_l2": replay_l2,
    "sidetrip_dirs": trip_dirs,
    "summary": summary,
    "seconds": seconds,
    "seconds_by_part": {
      "trajectory": t_traj,
      "points": t_points,
      "shell": time.perf_counter() - t2 if exp.shell else 0.0,
    },
  }
  for k_, v in summary.items():
    cli.log(f"curvature {k_}: {v}")
  cli.write_json(os.path.join(workdir, "curvature.json"), {"config": config.to_dict(), **res})
  png = os.path.join(workdir, "curvature.png")
  plot.plot(res, png, plotting.run_label(config, f"window [{S}, {T}]"))
  return {
    **summary,
    "files": ["curvature.json", "curvature.png"],
    "measured": criteria.measured(res),
    "png": png,
    "seconds": seconds,
  }


def run_seeds(config, exp, workdir: str) -> dict:
  """``run`` per seed in ``exp.seeds`` (``WORKDIR/seed_N``) and the claim records."""
  from experiments import claims

  seeds = [int(s) for s in exp.seeds]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"exp.seeds must be distinct, got {tuple(exp.seeds)!r}")
  if exp.parent:
    raise ValueError("exp.parent cannot be combined with exp.seeds (one parent per seed)")
  per_seed = []
  for seed in seeds:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.seed = seed
    sdir = os.path.join(os.path.abspath(workdir), f"seed_{seed}")
    out = run(cfg, exp, sdir)
    per_seed.append((seed, out["measured"], out["seconds"]))
  records = [
    claims.judge(c, [(s, m[c.id]) for s, m, _ in per_seed])
    for c in criteria.CLAIMS.values()
    if all(c.id in m for _, m, _ in per_seed)
  ]
  cli.write_json(
    os.path.join(workdir, "curvature_claims.json"),
    {"claims": records, "seconds_per_seed": {str(s): t for s, _, t in per_seed}},
    allow_nan=True,
  )
  for r in records:
    cli.log(f"claim {r['id']}: {r['verdict']}")
  return {"claims": {r["id"]: r["verdict"] for r in records}, "seeds": seeds}


def _cli_run(config, exp, workdir: str) -> dict:
  if tuple(exp.seeds):
    return run_seeds(config, exp, workdir)
  return run(config, exp, workdir)


def main(argv=None):
  return cli.cli(NAME, _cli_run, experiment_defaults, argv)
