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
criteria and thresholds fixed here before any run), judged over the demo's
seeds or ``--exp.seeds``:

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

Writes ``WORKDIR/curvature.{json,png}`` (one seed) or ``WORKDIR/seed_N/...``
and ``WORKDIR/curvature_claims.json`` (seeds); the equivalent side-trips live
in ``WORKDIR/curvature_trips/<method>_S<S>_k<k>``.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np

from experiments import cli, evaluation, parents, plotting

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


def _window(config, exp) -> int:
  T = int(config.total_steps)
  k = int(exp.window if exp.window is not None else config.averaging.gap)
  if not 1 <= k < T:
    raise ValueError(
      f"exp.window (default averaging.gap) must lie in [1, total_steps={T}), got {k}"
    )
  return k


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
  return every, _window(config, exp)


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints the stage reads: every ``exp.every`` steps, T - k and T."""
  every, k = _validate(config, exp)
  T = int(config.total_steps)
  return sorted(set(range(every, T + 1, every)) | {T, T - k})


def measure(loss_fn, params, batch_stats, batches, exp, key) -> dict:
  """Top-k eigenvalues, Hutchinson trace and eps_max of ``params`` on each batch."""
  import jax

  from trajax import probes

  out = {"eigenvalues": [], "trace": [], "trace_stderr": [], "eps_max": [], "residuals": []}
  for i, b in enumerate(batches):
    bb = evaluation.with_batch_stats(b, batch_stats)
    kb = jax.random.fold_in(key, i)
    eig = probes.hessian_top_eigs(
      loss_fn, params, bb, int(exp.k), key=kb, num_iters=int(exp.lanczos_iters)
    )
    tr = probes.hutchinson_trace(
      loss_fn, params, bb, int(exp.probes), key=jax.random.fold_in(kb, 1)
    )
    em = probes.epsilon_max(loss_fn, params, bb)
    out["eigenvalues"].append(np.asarray(eig.eigenvalues).tolist())
    out["residuals"].append(np.asarray(eig.residuals).tolist())
    out["trace"].append(float(tr.trace))
    out["trace_stderr"].append(float(tr.stderr))
    out["eps_max"].append(float(em.eps_max))
  lam = np.asarray(out["eigenvalues"])
  se = np.asarray(out["trace_stderr"])
  out["lambda_max"] = float(lam[:, 0].mean())
  out["lambda_max_spread"] = float(lam[:, 0].std(ddof=1)) if len(batches) > 1 else 0.0
  out["trace_mean"] = float(np.mean(out["trace"]))
  # SE of the batch mean from the probes alone (batches' own spread is reported separately).
  out["trace_mean_stderr"] = float(np.sqrt(np.sum(se**2)) / len(batches))
  out["eps_max_mean"] = float(np.mean(out["eps_max"]))
  return out


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
  trajectory = []
  for s in steps:
    rs = states[s]
    batches = [evaluation.train_batch(r.dataset, s + i) for i in range(m)]
    cur = measure(loss_fn, rs.params, rs.batch_stats, batches, exp, key)
    lr = float(schedule(s))
    cur.update(
      step=s,
      lr=lr,
      eff_lr=lr / (1.0 - beta),
      gd_edge=2.0 / cur["lambda_max"],
      momentum_edge=2.0 * (1.0 + beta) / cur["lambda_max"],
    )
    trajectory.append(cur)
    cli.log(
      f"curvature step {s}: lambda_max {cur['lambda_max']:.4g} trace {cur['trace_mean']:.4g}"
      f" +- {cur['trace_mean_stderr']:.2g}, lr {lr:.3g} vs 2/lambda_max {cur['gd_edge']:.3g},"
      f" eps_max {cur['eps_max_mean']:.3g}"
    )
  t_traj = time.perf_counter() - t0

  # The last window [S, T]: raw endpoints, averages, equivalent side-trips, on batches T, T+1, ...
  t1 = time.perf_counter()
  batches = [evaluation.train_batch(r.dataset, T + i) for i in range(m)]
  a, b = states[S], states[T]
  named = {f"raw_{S}": (a.params, "raw"), f"raw_{T}": (b.params, "raw")}
  replay_l2 = None
  methods = tuple(exp.averages)
  averages = {meth: parents.window_average(config, meth, k) for meth in methods}
  if methods:
    replay, avgs = parents.replay_averages(r, states[S], T, averages)
    replay_l2 = evaluation.l2(replay.params, b.params)
    for meth in methods:
      named[f"{meth}_average"] = (avgs[meth], "average")
  trip_dirs = {}
  if exp.sidetrips:
    for meth in methods:
      tdir = parents.equivalent_sidetrip(
        parent,
        r.config_at(S),
        S,
        os.path.join(workdir, "curvature_trips", f"{meth}_S{S}_k{k}"),
        average=averages[meth],
        window=k,
        eval_at=(k,),
      )
      trip_dirs[meth] = tdir
      named[f"{meth}_sidetrip"] = (runs.open_run(tdir).state_at(T).params, "sidetrip")
  # BN in training mode normalises with each batch's own statistics, so the
  # running statistics do not enter the loss; theta_T's are passed along.
  points = {}
  for name, (params, kind) in named.items():
    points[name] = measure(loss_fn, params, b.batch_stats, batches, exp, key) | {"kind": kind}
    cli.log(
      f"curvature {name}: lambda_max {points[name]['lambda_max']:.4g} trace "
      f"{points[name]['trace_mean']:.4g} +- {points[name]['trace_mean_stderr']:.2g}"
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
    shell = shell_law(r, states[S], loss_fn, exp, key, T, batches)
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
  _plot(res, png, plotting.run_label(config, f"window [{S}, {T}]"))
  return {
    **summary,
    "files": ["curvature.json", "curvature.png"],
    "measured": measured(res),
    "png": png,
    "seconds": seconds,
  }


def _factor_ticks(a, f) -> None:
  a.set_xticks(list(f))
  a.set_xticklabels([f"{x:g}" for x in f])
  a.minorticks_off()


def _plot(res: dict, path: str, label: str) -> None:
  sh = res.get("shell")
  fig, ax = plotting.new_figure(2, 3, width=4.8, height=3.9)
  tr = res["trajectory"]
  s = np.asarray([t["step"] for t in tr])
  lam = np.asarray([np.mean(t["eigenvalues"], axis=0) for t in tr])
  a = ax[0][0]
  for i in range(lam.shape[1]):
    a.plot(s, lam[:, i], f"C{i}-o", ms=3, label=rf"$\lambda_{i + 1}$")
  a.set_xlabel("training step s")
  a.set_ylabel("Hessian eigenvalue (nats per unit parameter$^2$)")
  a.set_title("top eigenvalues of the training-batch Hessian")
  a.legend(fontsize=7)
  a = ax[0][1]
  a.errorbar(
    s,
    [t["trace_mean"] for t in tr],
    yerr=[3 * t["trace_mean_stderr"] for t in tr],
    fmt="C3-o",
    ms=3,
    label="Hutchinson trace (±3 SE)",
  )
  a.set_xlabel("training step s")
  a.set_ylabel("tr H (nats per unit parameter$^2$)")
  a.set_title("Hessian trace")
  a.legend(fontsize=7)
  a = ax[0][2]
  a.semilogy(s, [t["lr"] for t in tr], "k-", label=r"learning rate $\eta_s$")
  a.semilogy(s, [t["eff_lr"] for t in tr], "k:", label=r"effective rate $\eta_s/(1-\beta)$")
  a.semilogy(s, [t["gd_edge"] for t in tr], "C0-o", ms=3, label=r"$2/\lambda_{max}$ (GD edge)")
  a.semilogy(
    s,
    [t["momentum_edge"] for t in tr],
    "C0--",
    label=rf"$2(1+\beta)/\lambda_{{max}}$, β={res['momentum']:g}",
  )
  a.semilogy(s, [t["eps_max_mean"] for t in tr], "C2-s", ms=3, label=r"$\epsilon_{max}$ (batch)")
  pts = list(res["points"].values())
  a.plot(
    [res["total_steps"]] * len(pts),
    [2.0 / p["lambda_max"] for p in pts],
    "C3^",
    ms=4,
    label=r"$2/\lambda_{max}$ at the window's 8 points",
  )
  a.set_xlabel("training step s")
  a.set_ylabel("step size")
  a.set_title("learning rate vs curvature references")
  a.legend(fontsize=6)

  # The last window's points: raw, averages, side-trips, on the same batches.
  a = ax[1][0]
  names = list(res["points"])
  colours = {"raw": "k", "average": "C0", "sidetrip": "C3"}
  x = np.arange(len(names))
  pts = [res["points"][n] for n in names]
  for i, p in enumerate(pts):
    a.errorbar(
      [x[i]],
      [p["trace_mean"]],
      yerr=[2 * p["trace_mean_stderr"]],
      fmt="o",
      color=colours[p["kind"]],
      ms=5,
    )
  a.set_xticks(x)
  a.set_xticklabels([n.replace("_", " ") for n in names], rotation=35, ha="right", fontsize=6)
  a.set_ylabel("tr H (±2 SE), dots")
  b = a.twinx()
  b.plot(x, [p["lambda_max"] for p in pts], "s", mfc="none", color="C1", ms=7)
  b.set_ylabel(r"$\lambda_{max}$ (open squares)", color="C1")
  a.set_title(
    f"window [{res['branch_step']}, {res['total_steps']}]: raw (black), averages (blue), "
    "side-trips (red)",
    fontsize=8,
  )
  if not sh:
    for a in (ax[1][1], ax[1][2]):
      a.axis("off")
    plotting.save_figure(fig, path, label)
    return
  a = ax[1][1]
  f = np.asarray(sh["factors"])
  series = [
    ("total", "pair_distance", "k-o", "pair distance"),
    ("fast", "pair_distance_fast", "C0-o", f"pair distance, top-{sh['fast_k']} dirs"),
    ("slow", "pair_distance_slow", "C1-o", "pair distance, other dirs"),
    ("centre_fast", "centre_distance_fast", "C0:^", "distance to centre, top dirs"),
  ]
  for d, key_, style, name in series:
    fit = sh["fit"][d]
    y = [np.mean(t[key_]) for t in sh["trips"]]
    a.loglog(f, y, style, ms=3, label=f"{name}: p = {fit['exponent']:.2f} ± {fit['stderr']:.2f}")
  if "drag" in sh["fit"]:
    for d, key_, style in (("drag", "mean_abs_drag", "C2--s"), ("drift", "mean_drift", "C3--s")):
      fit = sh["fit"][d]
      y = [t["drift_drag"][key_] for t in sh["trips"]]
      a.loglog(
        f, y, style, ms=3, label=f"|{d}| per step: p = {fit['exponent']:.2f} ± {fit['stderr']:.2f}"
      )
  for t in sh["trips"]:
    if not t["stationary"]:
      a.axvline(t["factor"], color="r", lw=0.6, ls=":")
  _factor_ticks(a, f)
  a.set_xlabel(r"learning-rate factor f (side-trip at f$\eta$; red dotted: not stationary)")
  a.set_ylabel("L2 distance (parameter units)")
  a.set_title(f"shell law from step {sh['branch_step']} ({sh['steps']} steps)")
  a.legend(fontsize=6)
  a = ax[1][2]
  gap = np.asarray([t["midpoint"]["gap"] for t in sh["trips"]])
  quad = np.asarray([t["midpoint"]["quadratic"] for t in sh["trips"]])
  a.loglog(f, np.abs(gap), "k-o", ms=4, label=r"$|(L(a)+L(c))/2 - L(\frac{a+c}{2})|$ measured")
  a.loglog(f, np.abs(quad), "C0--s", ms=4, label=r"$\frac{1}{8}(a-c)^T H (a-c)$ at midpoint")
  for fi, g in zip(f, gap, strict=True):
    if g <= 0:
      a.plot([fi], [abs(g)], "rx", ms=8)
  _factor_ticks(a, f)
  a.set_xlabel("learning-rate factor f")
  a.set_ylabel("loss drop (nats, training batches)")
  a.set_title("midpoint drop vs quadratic model (x: gap <= 0)", fontsize=10)
  a.legend(fontsize=6)
  plotting.save_figure(fig, path, label)


# ----------------------------------------------------------------------------
# the sqrt(lambda) shell law (Lemma 1)

STATIONARY_CHANGE = 0.1  # quasi-stationary: later half's mean within 10 % of the earlier half's
# ... or within 3 standard errors of their difference: a drift must be resolved
# to count. (2 SE would flag ~5 % of stationary trips by chance, about one in
# the 12 trips of a 3-seed demo.)
STATIONARY_SE = 3.0
RELAXATIONS = 3.0  # fast directions: L/2 >= 3 relaxation times (offset decayed to e^-3 = 5 %)


def fit_exponent(factors, values) -> dict:
  """Least-squares slope p of log(values) on log(factors), with its standard error."""
  x, y = np.log(np.asarray(factors, float)), np.log(np.asarray(values, float))
  if x.size < 3:
    raise ValueError(f"fit_exponent needs >= 3 learning rates, got {x.size}")
  a = np.stack([x, np.ones_like(x)], axis=1)
  coef, *_ = np.linalg.lstsq(a, y, rcond=None)
  resid = y - a @ coef
  sigma2 = float(resid @ resid) / (x.size - 2)
  cov = sigma2 * np.linalg.inv(a.T @ a)
  return {"exponent": float(coef[0]), "stderr": float(np.sqrt(cov[0, 0]))}


def stationarity(series) -> dict:
  """Whether a series sampled over a trip's second half has stopped drifting.

  Splits it into an earlier and a later half (means m1, m2, standard errors
  from each half's sample spread over sqrt(n), samples taken as independent):
  stationary when |m2 - m1| <= :data:`STATIONARY_CHANGE` * m1 or
  |m2 - m1| <= :data:`STATIONARY_SE` * sqrt(se1^2 + se2^2).
  """
  x = np.asarray(series, np.float64)
  if x.size < 2:
    raise ValueError(f"stationarity needs >= 2 samples, got {x.size}")
  half = x.size // 2
  lo, hi = x[:half], x[half:]
  m1, m2 = float(lo.mean()), float(hi.mean())

  def se(v):
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0

  diff_se = float(np.hypot(se(lo), se(hi)))
  change = abs(m2 - m1) / m1 if m1 > 0 else None
  return {
    "earlier_mean": m1,
    "later_mean": m2,
    "relative_change": change,
    "change_in_se": abs(m2 - m1) / diff_se if diff_se > 0 else None,
    "stationary": bool(
      (change is not None and change <= STATIONARY_CHANGE)
      or abs(m2 - m1) <= STATIONARY_SE * diff_se
    ),
  }


def _drift_drag(runner, centre, steps: int) -> dict:
  """Splits ``steps`` further updates of ``runner`` into drag and drift (paper Fig. 4a).

  The quasi-stationary centre c is the running average of the trip's samples
  over its second half (both batch orders, the shell's measurement times).
  For each update Delta_t = theta_{t+1} - theta_t, with r_t = (c - theta_t) /
  |c - theta_t|: drag_t = <Delta_t, r_t> (the pull back toward the centre,
  Sec. 4's -lambda gamma theta), drift_t = |Delta_t - drag_t r_t| (the
  orthogonal remainder, Sec. 4's xi). Fig. 4's caption: |drag| ~ sqrt(lambda),
  drift ~ lambda.
  """
  from jax.flatten_util import ravel_pytree

  prev = np.asarray(ravel_pytree(runner.params)[0], np.float64)
  drag, drift, size = [], [], []
  for _ in range(steps):
    runner.advance_to(runner.step + 1)
    cur = np.asarray(ravel_pytree(runner.params)[0], np.float64)
    delta, r = cur - prev, centre - prev
    r = r / np.linalg.norm(r)
    g = float(delta @ r)
    drag.append(g)
    drift.append(float(np.linalg.norm(delta - g * r)))
    size.append(float(np.linalg.norm(delta)))
    prev = cur
  return {
    "steps": steps,
    "centre": "mean of the trip's samples over its second half, both batch orders",
    "mean_drag": float(np.mean(drag)),
    "mean_abs_drag": float(np.mean(np.abs(drag))),
    "mean_drift": float(np.mean(drift)),
    "mean_update_norm": float(np.mean(size)),
  }


def midpoint_check(loss_fn, a, c, batches, batch_stats) -> dict:
  """Fig. 4b's midpoint drop on each batch beside the quadratic model's (1/8) d^T H d."""
  from trajax.probes import curvature as curv

  gaps, quads, la, lm = [], [], [], []
  for b in batches:
    g = curv.midpoint_gap(loss_fn, a, c, evaluation.with_batch_stats(b, batch_stats))
    gaps.append(float(g.gap))
    quads.append(float(g.quadratic))
    la.append(0.5 * (float(g.loss_a) + float(g.loss_c)))
    lm.append(float(g.loss_mid))
  gap, quad = float(np.mean(gaps)), float(np.mean(quads))
  return {
    "gap": gap,
    "quadratic": quad,
    "ratio": gap / quad if quad > 0 else None,
    "gap_per_batch": gaps,
    "quadratic_per_batch": quads,
    "pair_mean_loss": float(np.mean(la)),
    "midpoint_loss": float(np.mean(lm)),
  }


def shell_law(run, state, loss_fn, exp, key, total_steps: int, batches) -> dict:
  """Pairs of constant-rate side-trips at f * eta from theta_S on two batch orders.

  For each factor f two copies of the parent state at S run L steps with the
  engine's train step at f * eta, one on the parent's batch order, one on
  batches offset by total_steps (positions the parent never reached). Lemma 1
  (quadratic model): each settles on a shell of radius proportional to
  sqrt(f eta) around the minimum, and two independent samples on it are a
  distance ~ sqrt(2) x radius apart, so the pair distance d(f) ~ f^(1/2) once
  stationary; so is each sample's distance to the common centre (the mean of
  all samples). Distances are split into the span of the top ``exp.shell_k``
  Hessian eigenvectors at theta_S (training batch S, Lanczos) -- the fast
  directions, which equilibrate within L steps when f eta lambda_i is not
  small -- and the rest (slow directions, where L steps of diffusion need not
  reach the shell). Measured at ``exp.shell_points`` times over [L/2, L];
  quasi-stationarity per :func:`stationarity` (fast split: also L/2 >=
  :data:`RELAXATIONS` relaxation times). At L, :func:`midpoint_check` on
  ``batches``; then ``exp.drag_steps`` updates of the first trip split by
  :func:`_drift_drag`.
  """
  import jax
  from jax.flatten_util import ravel_pytree

  from trajax import probes

  factors = [float(f) for f in exp.shell_factors]
  if len(factors) < 3 or any(not f > 0 for f in factors) or len(set(factors)) != len(factors):
    raise ValueError(f"exp.shell_factors must be >= 3 distinct positive factors, got {factors}")
  S = int(state.step)
  cfg = run.config_at(S)
  L = int(exp.shell_steps if exp.shell_steps is not None else _window(cfg, exp))
  if L < 2:
    raise ValueError(f"exp.shell_steps must be >= 2, got {L}")
  if int(exp.shell_points) < 4:
    raise ValueError(f"exp.shell_points must be >= 4, got {exp.shell_points!r}")
  beta = float(cfg.optimizer.get("momentum", 0.0) or 0.0)
  lr = float(cfg.optimizer.lr)
  b = evaluation.with_batch_stats(evaluation.train_batch(run.dataset, S), state.batch_stats)
  eig = probes.hessian_top_eigs(
    loss_fn,
    state.params,
    b,
    int(exp.shell_k),
    key=key,
    num_iters=max(int(exp.lanczos_iters), int(exp.shell_k)),
  )
  u = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(eig.eigenvectors), np.float64)
  lam_k = float(np.asarray(eig.eigenvalues)[-1])
  times = sorted({int(round(t)) for t in np.linspace(L / 2, L, int(exp.shell_points))})
  trips = []
  t0 = time.perf_counter()
  for f in factors:
    a = parents.stepper(run, state, lr_factor=f, stream_offset=0)
    c = parents.stepper(run, state, lr_factor=f, stream_offset=int(total_steps))
    total, fast, from_s, samples = [], [], [], []
    theta_s = np.asarray(ravel_pytree(state.params)[0], np.float64)
    for t in times:
      a.advance_to(S + t)
      c.advance_to(S + t)
      pa = np.asarray(ravel_pytree(a.params)[0], np.float64)
      pc = np.asarray(ravel_pytree(c.params)[0], np.float64)
      samples += [pa, pc]
      diff = pa - pc
      total.append(float(np.linalg.norm(diff)))
      fast.append(float(np.linalg.norm(u @ diff)))
      from_s.append(float(np.linalg.norm(pa - theta_s)))
    total_a, fast_a = np.asarray(total), np.asarray(fast)
    slow = np.sqrt(np.maximum(total_a**2 - fast_a**2, 0.0))
    centre = np.mean(samples, axis=0)
    dev = np.asarray(samples) - centre
    to_centre = np.linalg.norm(dev, axis=1)
    to_centre_fast = np.linalg.norm(dev @ u.T, axis=1)
    # Per sampling time: the mean over the two trips' samples.
    cen = to_centre.reshape(-1, 2).mean(axis=1)
    cen_fast = to_centre_fast.reshape(-1, 2).mean(axis=1)
    st_total, st_fast = stationarity(total_a), stationarity(fast_a)
    # No positive curvature in the fast span: no relaxation, never stationary.
    relax = (1.0 - beta) / (f * lr * lam_k) if lam_k > 0 else None
    relaxed = relax is not None and L / 2 >= RELAXATIONS * relax
    midpoint = midpoint_check(loss_fn, a.params, c.params, batches, state.batch_stats)
    split = _drift_drag(a, centre, int(exp.drag_steps)) if int(exp.drag_steps) > 0 else None
    trips.append(
      {
        "factor": f,
        "lr": f * lr,
        "times": times,
        "pair_distance": total,
        "pair_distance_fast": fast,
        "pair_distance_slow": slow.tolist(),
        "centre_distance": cen.tolist(),
        "centre_distance_fast": cen_fast.tolist(),
        "distance_from_branch": from_s,
        "stationarity": st_total,
        "stationarity_fast": st_fast,
        "relative_change": st_total["relative_change"],
        "stationary": st_total["stationary"],
        "relaxation_steps_fast": relax,
        "stationary_fast": bool(st_fast["stationary"] and relaxed),
        "midpoint": midpoint,
        "drift_drag": split,
      }
    )
    cli.log(
      f"shell f={f:g}: pair distance {total_a.mean():.4g} (fast {fast_a.mean():.3g}); "
      f"stationary {st_total['stationary']} (fast {st_fast['stationary'] and relaxed}); "
      f"midpoint gap {midpoint['gap']:.4g} vs quadratic {midpoint['quadratic']:.4g}"
    )
  fit = {
    d: fit_exponent(factors, [np.mean(t[key_]) for t in trips])
    for d, key_ in (
      ("total", "pair_distance"),
      ("fast", "pair_distance_fast"),
      ("slow", "pair_distance_slow"),
      ("centre", "centre_distance"),
      ("centre_fast", "centre_distance_fast"),
    )
  }
  if int(exp.drag_steps) > 0:
    for d, key_ in (("drag", "mean_abs_drag"), ("drift", "mean_drift")):
      fit[d] = fit_exponent(factors, [t["drift_drag"][key_] for t in trips])
  return {
    "branch_step": S,
    "steps": L,
    "factors": factors,
    "fast_k": int(exp.shell_k),
    "top_eigenvalues_at_branch": np.asarray(eig.eigenvalues).tolist(),
    "fast_directions": f"span of the top {int(exp.shell_k)} Hessian eigenvectors at theta_S "
    "(training batch S, BN in training mode)",
    "slow_directions": "the orthogonal complement of the fast span",
    "trips": trips,
    "fit": fit,
    "seconds": time.perf_counter() - t0,
  }


# ----------------------------------------------------------------------------
# claims

SHELL_TOLERANCE = 0.15  # |fitted exponent - predicted| allowed by "proportional to sqrt" / "to λ"
FLAT_SE = 2.0  # the average's trace must sit this many SE of the difference below
CONTRACTION = 1.0  # Appendix A: eigenvalues of I - lambda Omega in (0, 1)
# "by the amount the quadratic model predicts": the measured drop within 50 % of
# (1/8) d^T H d -- the band in which experiments.claims reads "match"
# (claims.MATCH_TOLERANCE, recovered fraction 50 %-150 %).
QUADRATIC_MATCH = 0.5


def _contracting(m: dict) -> bool:
  return m["max_eff_lr_times_lambda_max"] < CONTRACTION


def _join(*parts: str) -> str:
  return "; ".join(p for p in parts if p)


def _fit_text(fit: dict, name: str) -> str:
  return f"{name} {fit['exponent']:.2f} ± {fit['stderr']:.2f}"


def _not_stationary_note(factors, flags, what: str) -> str:
  bad = [f for f, ok in zip(factors, flags, strict=True) if not ok]
  return f"not quasi-stationary ({what}) at f = {', '.join(f'{f:g}' for f in bad)}" if bad else ""


def _shell(m: dict) -> bool:
  return bool(m["all_stationary_fast"]) and abs(m["exponent_fast"] - 0.5) <= SHELL_TOLERANCE


def _drift_drag_claim(m: dict) -> bool:
  return (
    bool(m["all_stationary"])
    and abs(m["exponent_drag"] - 0.5) <= SHELL_TOLERANCE
    and abs(m["exponent_drift"] - 1.0) <= SHELL_TOLERANCE
  )


def _inside_shell(m: dict) -> bool:
  rows = m["factors"]
  return (
    bool(rows)
    and bool(m["all_stationary"])
    and all(
      r["gap"] > 0 and r["ratio"] is not None and abs(r["ratio"] - 1.0) <= QUADRATIC_MATCH
      for r in rows
    )
  )


def _flatter(m: dict) -> bool:
  return (
    m["lambda_max_average"] < min(m["lambda_max_endpoints"]) and m["trace_margin_in_se"] > FLAT_SE
  )


_IZMAILOV = (
  "observe that the solutions found by SWA are broader in the sense that even if the training "
  "loss might be slightly higher, the model is not as sensitive to perturbations of the parameters"
)


def _claims():
  from experiments import claims

  return {
    c.id: c
    for c in (
      claims.Claim(
        "curv.contracting",
        "Appendix A",
        "assuming that all eigenvalues κ_k of Γ are characterized by $0 < \\kappa_k < 1$",
        "at every probed checkpoint of the parent trajectory, eta/(1 - beta) * lambda_max < 1 "
        "(lambda_max: mean over the probed training batches of the batch Hessian's top "
        "eigenvalue, Lanczos; eta/(1 - beta) the paper's lambda for SGD with momentum beta)",
        _contracting,
        control="a trajectory point with eta_eff * lambda_max = 1.05 fails "
        "(tests/test_curvature.py)",
        effect="max_eff_lr_times_lambda_max",
      ),
      claims.Claim(
        "curv.sqrt_lambda_shell",
        "Lemma 1",
        "the trajectory will stabilize at an ellipsoid of a fixed size proportional to the "
        "square root of the learning rate",
        "pairs of constant-rate side-trips from theta_{T-k} at f * eta, f in exp.shell_factors, "
        "on two batch orders, every trip quasi-stationary in the fast directions (the later half "
        "of the sampling times within 10 % or 3 SE of the earlier, and half the trip >= 3 "
        "relaxation times): the least-squares exponent p of pair distance ~ f^p, in the span "
        f"of the top exp.shell_k Hessian eigenvectors at theta_{{T-k}}, has |p - 1/2| <= "
        f"{SHELL_TOLERANCE:g}",
        _shell,
        control="the same fit in the remaining (slow) directions, in total and for the distance "
        "to the centre is reported beside it; an exponent of 1 or a non-stationary trip fails "
        "(tests/test_curvature.py)",
        effect="exponent_fast",
      ),
      claims.Claim(
        "curv.drift_drag",
        "Fig. 4a",
        "The magnitude of the drag component changes as $\\sqrt{\\lambda}$, while the magnitude "
        "of the drift component is proportional to λ",
        "over exp.drag_steps updates after each quasi-stationary constant-rate side-trip at "
        "f * eta, the mean |component toward the running-average centre| (drag) and mean "
        f"orthogonal remainder (drift) fit f^p with |p_drag - 1/2| <= {SHELL_TOLERANCE:g} and "
        f"|p_drift - 1| <= {SHELL_TOLERANCE:g}",
        _drift_drag_claim,
        control="the update norm and the signed mean drag are reported beside them; a "
        "non-stationary trip fails (tests/test_curvature.py)",
        effect="exponent_drag",
      ),
      claims.Claim(
        "curv.average_inside_shell",
        "Sec. 4, Fig. 4b",
        "Geometrically, the interpolation between two points on a random trajectory results in "
        "a point inside the sphere (Figure 4b), which translates to a lower loss.",
        "for every f, the pair (a, c) of quasi-stationary constant-rate side-trips at f * eta "
        "after L steps, on fresh training batches: gap = (L(a) + L(c))/2 - L((a+c)/2) > 0, and "
        "gap matches the quadratic model's (1/8) (a-c)^T H (a-c) (H: the same batches' Hessian "
        f"at the midpoint, HVPs): |gap / prediction - 1| <= {QUADRATIC_MATCH:g}",
        _inside_shell,
        control="a quartic loss (no quadratic term at the midpoint) and a Hessian of another "
        "batch fail (tests/test_curvature.py)",
        effect="max_ratio_deviation",
      ),
      claims.Claim(
        "curv.average_flatter",
        "companion notes (Izmailov et al.)",
        "Averaging Weights Leads to Wider Optima and Better Generalization.",
        "the two-point average (theta_{T-k} + theta_T)/2 has a smaller lambda_max than both raw "
        f"endpoints and a trace smaller than both by more than {FLAT_SE:g} standard errors of the "
        "difference, on the same training batches",
        _flatter,
        control="the raw endpoints themselves, on the same batches (their difference is reported)",
        effect="trace_drop_fraction",
        source="notes",
      ),
      claims.Claim(
        "curv.swa_flatter",
        "companion notes (Izmailov et al.)",
        _IZMAILOV,
        "the SWA average (1/k) sum_{j=1..k} theta_{T-k+j} (replayed) has a smaller lambda_max "
        f"than both raw endpoints theta_{{T-k}}, theta_T and a trace smaller than both by more "
        f"than {FLAT_SE:g} standard errors of the difference, on the same training batches",
        _flatter,
        control="the raw endpoints themselves, and the SWA side-trip (Table 1), on the same "
        "batches (reported)",
        effect="trace_drop_fraction",
        source="notes",
      ),
    )
  }


def _flat_record(points: dict, name: str, ends: list[dict]) -> dict:
  avg = points[name]
  margins = [
    (e["trace_mean"] - avg["trace_mean"])
    / np.hypot(e["trace_mean_stderr"], avg["trace_mean_stderr"])
    for e in ends
  ]
  lowest = min(e["trace_mean"] for e in ends)
  out = {
    "point": name,
    "lambda_max_average": avg["lambda_max"],
    "lambda_max_endpoints": [e["lambda_max"] for e in ends],
    "trace_average": avg["trace_mean"],
    "trace_endpoints": [e["trace_mean"] for e in ends],
    "trace_margin_in_se": float(min(margins)),
    "trace_drop_fraction": float((lowest - avg["trace_mean"]) / lowest),
  }
  trip = points.get(name.replace("_average", "_sidetrip"))
  if trip is not None:
    out["lambda_max_sidetrip"] = trip["lambda_max"]
    out["trace_sidetrip"] = trip["trace_mean"]
  out["note"] = _join(
    f"λ_max {avg['lambda_max']:.3g} vs endpoints "
    + ", ".join(f"{e['lambda_max']:.3g}" for e in ends)
    + f"; trace margin {out['trace_margin_in_se']:.2g} SE",
    f"side-trip λ_max {trip['lambda_max']:.3g}" if trip is not None else "",
  )
  return out


def measured(res: dict) -> dict:
  """``{claim id: measured}`` for :data:`CLAIMS` from one seed's result."""
  beta = float(res["momentum"])
  traj = res["trajectory"]
  pts = res["points"]
  ends = [p for p in pts.values() if p.get("kind", "raw") == "raw"]
  out = {
    "curv.contracting": {
      "steps": [t["step"] for t in traj],
      "eff_lr_times_lambda_max": [t["lr"] / (1 - beta) * t["lambda_max"] for t in traj],
      "max_eff_lr_times_lambda_max": max(t["lr"] / (1 - beta) * t["lambda_max"] for t in traj),
      "batches_per_point": len(traj[0]["trace"]),
      "note": "η/(1−β)·λ_max at steps "
      + ", ".join(f"{t['step']}: {t['lr'] / (1 - beta) * t['lambda_max']:.3g}" for t in traj),
    },
  }
  if "two_point_average" in pts:
    out["curv.average_flatter"] = _flat_record(pts, "two_point_average", ends)
  if "swa_average" in pts:
    out["curv.swa_flatter"] = _flat_record(pts, "swa_average", ends)
  if res.get("shell"):
    sh = res["shell"]
    f = sh["factors"]
    trips = sh["trips"]
    stat = [t["stationary"] for t in trips]
    stat_fast = [t["stationary_fast"] for t in trips]
    fit = sh["fit"]
    fast_name = f"top-{sh['fast_k']} Hessian directions"
    note = _join(
      f"p (fit SE): {_fit_text(fit['fast'], fast_name)}, "
      f"{_fit_text(fit['slow'], 'other directions')}, {_fit_text(fit['total'], 'all')}",
      _not_stationary_note(f, stat_fast, "fast directions"),
    )
    out["curv.sqrt_lambda_shell"] = {
      "factors": f,
      "exponent_fast": sh["fit"]["fast"]["exponent"],
      "exponent_fast_stderr": sh["fit"]["fast"]["stderr"],
      "exponent_slow": sh["fit"]["slow"]["exponent"],
      "exponent_slow_stderr": sh["fit"]["slow"]["stderr"],
      "exponent_total": sh["fit"]["total"]["exponent"],
      "exponent_total_stderr": sh["fit"]["total"]["stderr"],
      "exponent_centre_fast": sh["fit"]["centre_fast"]["exponent"],
      "exponent_centre_fast_stderr": sh["fit"]["centre_fast"]["stderr"],
      "stationary_fast": stat_fast,
      "all_stationary_fast": all(stat_fast),
      "relative_change_fast": [t["stationarity_fast"]["relative_change"] for t in trips],
      "relaxation_steps_fast": [t["relaxation_steps_fast"] for t in trips],
      "fast_directions": sh["fast_directions"],
      "slow_directions": sh["slow_directions"],
      "note": note,
    }
    note = _not_stationary_note(f, stat, "total pair distance")
    if "drag" in sh["fit"]:
      dd_note = _join(
        f"p (fit SE), all directions: {_fit_text(fit['drag'], 'drag')}, "
        f"{_fit_text(fit['drift'], 'drift')}",
        note,
      )
      out["curv.drift_drag"] = {
        "factors": f,
        "exponent_drag": sh["fit"]["drag"]["exponent"],
        "exponent_drag_stderr": sh["fit"]["drag"]["stderr"],
        "exponent_drift": sh["fit"]["drift"]["exponent"],
        "exponent_drift_stderr": sh["fit"]["drift"]["stderr"],
        "mean_signed_drag": [t["drift_drag"]["mean_drag"] for t in trips],
        "mean_update_norm": [t["drift_drag"]["mean_update_norm"] for t in trips],
        "stationary": stat,
        "all_stationary": all(stat),
        "relative_change": [t["relative_change"] for t in trips],
        "directions": "all parameters (centre: mean of the pair's samples over [L/2, L])",
        "note": dd_note,
      }
    rows = [
      {
        "factor": t["factor"],
        "gap": t["midpoint"]["gap"],
        "quadratic": t["midpoint"]["quadratic"],
        "ratio": t["midpoint"]["ratio"],
        "pair_distance": t["pair_distance"][-1],
      }
      for t in trips
    ]
    dev = [abs(r["ratio"] - 1.0) for r in rows if r["ratio"] is not None]
    out["curv.average_inside_shell"] = {
      "factors": rows,
      "stationary": stat,
      "all_stationary": all(stat),
      "max_ratio_deviation": max(dev) if len(dev) == len(rows) else None,
      "directions": "all parameters (d = a - c, the pair's full difference)",
      "note": _join(
        "gap / (1/8) dᵀHd at f = "
        + ", ".join(
          f"{r['factor']:g}: " + ("–" if r["ratio"] is None else f"{r['ratio']:.2f}") for r in rows
        ),
        note,
      ),
    }
  return out


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
    for c in CLAIMS.values()
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


CLAIMS = _claims()


def main(argv=None):
  return cli.cli(NAME, _cli_run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
