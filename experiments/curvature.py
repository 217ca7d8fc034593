"""Curvature along the trajectory and at the averaged vs raw points (issue 14).

The paper's analysis (Sec. 4, Lemma 1) is a quadratic model whose Hessian sets
the stationary shell; it never measures the curvature of the networks it
trains. This experiment does, with the probes of
:mod:`trajax.probes.curvature`, on training batches (BatchNorm in training
mode, the loss a step differentiates):

* lambda_1 >= ... >= lambda_k, the top-k eigenvalues of H_b = hess L_b(theta)
  (Lanczos, ``exp.lanczos_iters`` HVPs), and tr H_b (Hutchinson,
  ``exp.probes`` Rademacher probes, with its standard error), at the parent's
  checkpoints theta_s, s = every ``exp.every`` steps (default the config's
  checkpoint cadence), on ``exp.batches`` training batches s, s+1, ... of the
  run's own stream; the mean over batches is reported with the per-batch values;
* the same at the two-point average (theta_{T-h} + theta_T)/2 (paper Sec. 4;
  h = ``averaging.gap``) vs the raw endpoints theta_{T-h}, theta_T, on the
  same training batches T, T+1, ... (Izmailov et al.: averages sit in flatter
  regions -- smaller lambda_max and trace is the prediction);
* beside the learning rate eta_s: the edge-of-stability references of full-batch
  GD, 2/lambda_1, and of heavy-ball momentum beta, 2(1+beta)/lambda_1 (a
  quadratic direction with curvature lambda is stable under GD with momentum
  iff eta lambda < 2(1+beta)); and eps_max = |g_b|^2 / (g_b^T H_b g_b) of the
  companion notes on the same batch (the best step along that batch's gradient).

With ``--exp.shell=True`` (:func:`shell_law`): pairs of constant-rate
side-trips from theta_{T-h} at f * eta, f = 1, 1/2, 1/4, 1/8, on two batch
orders; the exponent p of pair distance ~ f^p, fitted with its standard error,
in the top-k Hessian eigendirections at the branch ("fast") and the rest.

Not measured here (beyond what fits, issue 14): the drift/drag split of each
update; SWA/EMA and side-trip points other than the two-point average.

Claims (:data:`CLAIMS`, records as :mod:`experiments.claims` writes them,
criteria fixed here before any run), judged over ``--exp.seeds``:

* ``curv.contracting``: the paper's Appendix A assumes every eigenvalue of
  Gamma = I - lambda Omega lies in (0, 1), i.e. 0 < lambda omega < 1 for every
  curvature omega of the loss. With momentum beta the paper's lambda is the
  effective rate eta/(1 - beta); the test is eta_eff * lambda_max < 1 at every
  checkpoint of the trajectory (lambda_max of training-batch Hessians, mean
  over ``exp.batches`` batches: a batch Hessian's top eigenvalue is biased up
  relative to the full-data Omega, so a narrow failure is not conclusive).
* ``curv.sqrt_lambda_shell`` (with ``--exp.shell=True``): Lemma 1 -- the
  fast-direction exponent lies within 0.15 of 1/2.
* ``curv.average_flatter``: Izmailov et al. (companion notes) -- the two-point
  average has a smaller lambda_max and a smaller trace than both raw
  endpoints, on the same training batches, the trace by more than 2 standard
  errors of the difference (Hutchinson SE).

Usage (not part of the default ``make demo``; one parent run per seed, about
1-3 min each on 2 CPU cores, plus ~1 min of probes)::

  python -m experiments.curvature --config=configs/mnist1d.py --workdir=workdirs/curv
  python -m experiments.curvature --config=configs/mnist1d.py --workdir=workdirs/curv \
    --exp.seeds='(0, 1, 2)' --exp.shell=True

Writes ``WORKDIR/curvature.{json,png}`` (one seed) or ``WORKDIR/seed_N/...``
and ``WORKDIR/curvature_claims.json`` (seeds).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from experiments import common

NAME = "curvature"


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  e.every = mlc.FieldReference(None, field_type=int)  # default checkpoint_every_steps
  e.k = 3  # top-k eigenvalues
  e.lanczos_iters = 30  # HVPs per Lanczos run (bench: top-5 to 1 % in <= 24)
  e.probes = 20  # Hutchinson probes per batch
  e.batches = 4  # training batches per point
  # Seeds for the claim records (curvature_claims.json); empty: one run at config.seed.
  e.seeds = ()
  e.seed = 0  # Lanczos / Hutchinson key
  e.parent = ""  # reuse an existing parent WORKDIR
  # The sqrt(lambda) shell law (off by default: 2 x len(shell_factors) side-trips).
  e.shell = False
  e.shell_factors = (1.0, 0.5, 0.25, 0.125)  # lr factors f of the side-trip pairs
  e.shell_steps = mlc.FieldReference(None, field_type=int)  # L; default averaging.gap
  e.shell_points = 6  # measurement times over the trip's second half
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
  h = int(config.averaging.gap)
  if not 1 <= h < T:
    raise ValueError(f"averaging.gap must lie in [1, total_steps={T}), got {h}")
  return every, h


def measure(loss_fn, params, batch_stats, batches, exp, key) -> dict:
  """Top-k eigenvalues, Hutchinson trace and eps_max of ``params`` on each batch."""
  import jax

  from trajax import probes

  out = {"eigenvalues": [], "trace": [], "trace_stderr": [], "eps_max": [], "residuals": []}
  for i, b in enumerate(batches):
    bb = common.with_batch_stats(b, batch_stats)
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
  """Curvature along the trajectory and at the averaged point; writes JSON + PNG."""
  import jax

  from trajax import config_validation, state

  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  every, h = _validate(config, exp)
  T = int(config.total_steps)
  steps = sorted(set(range(every, T + 1, every)) | {T, T - h})
  if parent is None:
    parent = common.parent_dir(config, exp, workdir, steps)
  schedule = state.make_schedule(config.optimizer, T)
  beta = float(config.optimizer.get("momentum", 0.0) or 0.0)
  key = jax.random.key(int(exp.seed))
  m = int(exp.batches)

  t0 = time.perf_counter()
  restored = {s: common.restore(parent, s) for s in steps}
  r = restored[T]
  loss_fn = common.make_loss_fn(r.model, None, train=True)
  trajectory = []
  for s in steps:
    rs = restored[s]
    batches = [common.train_batch(r.dataset, s + i) for i in range(m)]
    cur = measure(loss_fn, rs.state.params, rs.state.batch_stats, batches, exp, key)
    lr = float(schedule(s))
    cur.update(
      step=s,
      lr=lr,
      gd_edge=2.0 / cur["lambda_max"],
      momentum_edge=2.0 * (1.0 + beta) / cur["lambda_max"],
    )
    trajectory.append(cur)
    common.log(
      f"curvature step {s}: lambda_max {cur['lambda_max']:.4g} trace {cur['trace_mean']:.4g}"
      f" +- {cur['trace_mean_stderr']:.2g}, lr {lr:.3g} vs 2/lambda_max {cur['gd_edge']:.3g}"
    )
  # The two-point average vs its raw endpoints, on the same batches T, T+1, ...
  batches = [common.train_batch(r.dataset, T + i) for i in range(m)]
  a, b = restored[T - h].state, restored[T].state
  avg_params = common.midpoint(a.params, b.params)
  # BN in training mode normalises with the batch's own statistics, so the
  # running statistics do not enter the loss; the endpoint's are passed along.
  points = {
    f"raw_{T - h}": measure(loss_fn, a.params, a.batch_stats, batches, exp, key),
    f"raw_{T}": measure(loss_fn, b.params, b.batch_stats, batches, exp, key),
    "two_point_average": measure(loss_fn, avg_params, b.batch_stats, batches, exp, key),
  }
  seconds = time.perf_counter() - t0
  avg, raw = points["two_point_average"], points[f"raw_{T}"]
  summary = {
    "lambda_max_final": raw["lambda_max"],
    "lambda_max_average": avg["lambda_max"],
    "trace_final": raw["trace_mean"],
    "trace_average": avg["trace_mean"],
    "average_flatter_lambda_max": avg["lambda_max"]
    < min(p["lambda_max"] for p in points.values() if p is not avg),
    "average_flatter_trace": avg["trace_mean"]
    < min(p["trace_mean"] for p in points.values() if p is not avg),
    # Average minus final raw point, with the probes' SE (Hutchinson only;
    # Lanczos values are exact to the bench's 1 % at these iteration counts).
    "trace_average_minus_final": avg["trace_mean"] - raw["trace_mean"],
    "trace_average_minus_final_stderr": float(
      np.hypot(avg["trace_mean_stderr"], raw["trace_mean_stderr"])
    ),
    "lambda_max_average_over_final": avg["lambda_max"] / raw["lambda_max"],
    "max_lr_times_lambda_max": max(t["lr"] * t["lambda_max"] for t in trajectory),
    "lr_below_gd_edge_everywhere": all(t["lr"] < t["gd_edge"] for t in trajectory),
  }
  shell = None
  if exp.shell:
    shell = shell_law(restored[T - h], loss_fn, exp, key, T)
    summary.update({f"shell_exponent_{d}": v["exponent"] for d, v in shell["fit"].items()})
    summary["shell_all_stationary"] = all(t["stationary"] for t in shell["trips"])
  res = {
    "shell": shell,
    "steps": steps,
    "total_steps": T,
    "gap": h,
    "momentum": beta,
    "parent": parent,
    "seed": int(config.seed),
    "exp": exp.to_dict(),
    "data": f"training stream batches s, ..., s+{m - 1} at each step s (batches T.. for the "
    "average and its endpoints); BN in training mode",
    "trajectory": trajectory,
    "points": points,
    "summary": summary,
    "seconds": seconds,
  }
  for k_, v in summary.items():
    common.log(f"curvature {k_}: {v}")
  common.write_json(os.path.join(workdir, "curvature.json"), {"config": config.to_dict(), **res})
  png = os.path.join(workdir, "curvature.png")
  _plot(res, png, common.run_label(config, f"h={h}"))
  return {**summary, "files": ["curvature.json", "curvature.png"], "png": png}


def _plot(res: dict, path: str, label: str) -> None:
  sh = res.get("shell")
  fig, ax = common.new_figure(1, 4 if sh else 3, width=4.6)
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
  names = list(res["points"])
  a.legend(fontsize=7)
  a = ax[0][2]
  a.semilogy(s, [t["lr"] for t in tr], "k-", label=r"learning rate $\eta_s$")
  a.semilogy(s, [t["gd_edge"] for t in tr], "C0-o", ms=3, label=r"$2/\lambda_{max}$ (GD edge)")
  a.semilogy(
    s,
    [t["momentum_edge"] for t in tr],
    "C0--",
    label=rf"$2(1+\beta)/\lambda_{{max}}$, β={res['momentum']:g}",
  )
  a.semilogy(s, [t["eps_max_mean"] for t in tr], "C2-s", ms=3, label=r"$\epsilon_{max}$ (batch)")
  for i, n in enumerate(names):
    p = res["points"][n]
    a.plot([res["total_steps"]], [2.0 / p["lambda_max"]], f"C{4 + i}^", label=f"2/λmax at {n}")
  a.set_xlabel("training step s")
  a.set_ylabel("step size")
  a.set_title("learning rate vs curvature references")
  a.legend(fontsize=6)
  if sh:
    a = ax[0][3]
    f = np.asarray(sh["factors"])
    series = [
      ("total", "pair_distance", "k-o", "pair distance"),
      (
        "fast",
        "pair_distance_fast",
        "C0-o",
        f"pair distance, top-{len(sh['top_eigenvalues_at_branch'])} dirs",
      ),
      ("slow", "pair_distance_slow", "C1-o", "pair distance, other dirs"),
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
          f,
          y,
          style,
          ms=3,
          label=f"|{d}| per step: p = {fit['exponent']:.2f} ± {fit['stderr']:.2f}",
        )
    a.set_xlabel(r"learning-rate factor f (side-trip at f$\eta$)")
    a.set_ylabel("L2 distance (parameter units)")
    a.set_title(f"shell law from step {sh['branch_step']} ({sh['steps']} steps)")
    a.legend(fontsize=6)
  common.save_figure(fig, path, label)


# ----------------------------------------------------------------------------
# the sqrt(lambda) shell law (Lemma 1)

STATIONARY_CHANGE = 0.1  # quasi-stationary: second-half mean distance within 10 % of first


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


def _drift_drag(runner, samples, steps: int) -> dict:
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

  centre = np.mean(samples, axis=0)
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
    "centre": f"mean of {len(samples)} samples of the trip's second half, both batch orders",
    "mean_drag": float(np.mean(drag)),
    "mean_abs_drag": float(np.mean(np.abs(drag))),
    "mean_drift": float(np.mean(drift)),
    "mean_update_norm": float(np.mean(size)),
  }


def shell_law(restored, loss_fn, exp, key, total_steps: int) -> dict:
  """Pairs of constant-rate side-trips at f * eta from theta_S on two batch orders.

  For each factor f two copies of the parent state at S run L steps with the
  engine's train step at f * eta, one on the parent's batch order, one on
  batches offset by total_steps (positions the parent never reached). Lemma 1
  (quadratic model): each settles on a shell of radius proportional to
  sqrt(f eta) around the minimum, and two independent samples on it are a
  distance ~ sqrt(2) x radius apart, so the pair distance d(f) ~ f^(1/2) once
  stationary. d is split into the component in the span of the top
  ``exp.shell_k`` Hessian eigenvectors at theta_S (training batch S, Lanczos)
  -- the fast directions, which equilibrate within L steps when f eta
  lambda_i is not small -- and the rest (slow directions, where L steps of
  diffusion need not reach the shell). Measured at ``exp.shell_points`` times
  over [L/2, L]; a trip is quasi-stationary when the mean distance over the
  later half of those times is within 10 % of the earlier half's.
  """
  import jax
  from jax.flatten_util import ravel_pytree

  from trajax import probes

  factors = [float(f) for f in exp.shell_factors]
  if len(factors) < 3 or any(not f > 0 for f in factors) or len(set(factors)) != len(factors):
    raise ValueError(f"exp.shell_factors must be >= 3 distinct positive factors, got {factors}")
  L = int(exp.shell_steps if exp.shell_steps is not None else restored.config.averaging.gap)
  if L < 2:
    raise ValueError(f"exp.shell_steps must be >= 2, got {L}")
  if int(exp.shell_points) < 2:
    raise ValueError(f"exp.shell_points must be >= 2, got {exp.shell_points!r}")
  S = int(restored.step)
  b = common.with_batch_stats(common.train_batch(restored.dataset, S), restored.state.batch_stats)
  eig = probes.hessian_top_eigs(
    loss_fn,
    restored.state.params,
    b,
    int(exp.shell_k),
    key=key,
    num_iters=max(int(exp.lanczos_iters), int(exp.shell_k)),
  )
  u = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(eig.eigenvectors), np.float64)
  times = sorted({int(round(t)) for t in np.linspace(L / 2, L, int(exp.shell_points))})
  trips = []
  t0 = time.perf_counter()
  for f in factors:
    a = common.Runner(restored, lr_factor=f, stream_offset=0)
    c = common.Runner(restored, lr_factor=f, stream_offset=int(total_steps))
    total, fast, from_s, samples = [], [], [], []
    theta_s = np.asarray(ravel_pytree(restored.state.params)[0], np.float64)
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
    half = len(times) // 2
    change = abs(total_a[half:].mean() - total_a[:half].mean()) / total_a[:half].mean()
    split = _drift_drag(a, samples, int(exp.drag_steps)) if int(exp.drag_steps) > 0 else None
    trips.append(
      {
        "factor": f,
        "lr": f * float(restored.config.optimizer.lr),
        "times": times,
        "pair_distance": total,
        "pair_distance_fast": fast,
        "pair_distance_slow": slow.tolist(),
        "distance_from_branch": from_s,
        "relative_change": float(change),
        "stationary": bool(change < STATIONARY_CHANGE),
        "drift_drag": split,
      }
    )
    common.log(f"shell f={f:g}: pair distance {total_a.mean():.4g} (fast {fast_a.mean():.3g})")
  fit = {
    d: fit_exponent(factors, [np.mean(t[key_]) for t in trips])
    for d, key_ in (
      ("total", "pair_distance"),
      ("fast", "pair_distance_fast"),
      ("slow", "pair_distance_slow"),
    )
  }
  if int(exp.drag_steps) > 0:
    for d, key_ in (("drag", "mean_abs_drag"), ("drift", "mean_drift")):
      fit[d] = fit_exponent(factors, [t["drift_drag"][key_] for t in trips])
  return {
    "branch_step": S,
    "steps": L,
    "factors": factors,
    "top_eigenvalues_at_branch": np.asarray(eig.eigenvalues).tolist(),
    "fast_directions": f"span of the top {int(exp.shell_k)} Hessian eigenvectors at theta_S "
    "(training batch S, BN in training mode)",
    "trips": trips,
    "fit": fit,
    "seconds": time.perf_counter() - t0,
  }


# ----------------------------------------------------------------------------
# claims

SHELL_TOLERANCE = 0.15  # |fitted fast-direction exponent - 1/2| allowed by "proportional to sqrt"
FLAT_SE = 2.0  # the average's trace must sit this many SE of the difference below
CONTRACTION = 1.0  # Appendix A: eigenvalues of I - lambda Omega in (0, 1)


def _contracting(m: dict) -> bool:
  return m["max_eff_lr_times_lambda_max"] < CONTRACTION


def _shell(m: dict) -> bool:
  return abs(m["exponent_fast"] - 0.5) <= SHELL_TOLERANCE


def _drift_drag_claim(m: dict) -> bool:
  return (
    abs(m["exponent_drag"] - 0.5) <= SHELL_TOLERANCE
    and abs(m["exponent_drift"] - 1.0) <= SHELL_TOLERANCE
  )


def _flatter(m: dict) -> bool:
  return (
    m["lambda_max_average"] < min(m["lambda_max_endpoints"]) and m["trace_margin_in_se"] > FLAT_SE
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
        "at every checkpoint of the parent trajectory, eta/(1 - beta) * lambda_max < 1 "
        "(lambda_max: mean over the probed training batches of the batch Hessian's top "
        "eigenvalue, Lanczos; eta/(1 - beta) the paper's lambda for SGD with momentum beta)",
        _contracting,
        control="",
        effect="max_eff_lr_times_lambda_max",
      ),
      claims.Claim(
        "curv.sqrt_lambda_shell",
        "Lemma 1",
        "the trajectory will stabilize at an ellipsoid of a fixed size proportional to the "
        "square root of the learning rate",
        "pairs of constant-rate side-trips from theta_{T-h} at f * eta, f in exp.shell_factors, "
        "on two batch orders: the least-squares exponent p of pair distance ~ f^p, in the span "
        f"of the top exp.shell_k Hessian eigenvectors, satisfies |p - 1/2| <= {SHELL_TOLERANCE:g}",
        _shell,
        control="the same fit in the remaining (slow) directions and in total is reported beside "
        "it, with each trip's quasi-stationarity",
        effect="exponent_fast",
      ),
      claims.Claim(
        "curv.drift_drag",
        "Fig. 4a",
        "The magnitude of the drag component changes as $\\sqrt{\\lambda}$, while the magnitude "
        "of the drift component is proportional to λ",
        "over exp.drag_steps updates after each constant-rate side-trip at f * eta, the mean "
        "|component toward the running-average centre| (drag) and mean orthogonal remainder "
        f"(drift) fit f^p with |p_drag - 1/2| <= {SHELL_TOLERANCE:g} and "
        f"|p_drift - 1| <= {SHELL_TOLERANCE:g}",
        _drift_drag_claim,
        control="the update norm and the signed mean drag are reported beside them",
        effect="exponent_drag",
      ),
      claims.Claim(
        "curv.average_flatter",
        "companion notes (Izmailov et al.)",
        "Averaging Weights Leads to Wider Optima and Better Generalization.",
        "the two-point average (theta_{T-h} + theta_T)/2 has a smaller lambda_max than both raw "
        f"endpoints and a trace smaller than both by more than {FLAT_SE:g} standard errors of the "
        "difference, on the same training batches",
        _flatter,
        control="the raw endpoints themselves, on the same batches (their difference is reported)",
        effect="trace_drop_fraction",
        source="notes",
      ),
    )
  }


def measured(res: dict) -> dict:
  """``{claim id: measured}`` for :data:`CLAIMS` from one seed's result JSON."""
  beta = float(res["momentum"])
  traj = res["trajectory"]
  pts = res["points"]
  avg = pts["two_point_average"]
  ends = [p for k, p in pts.items() if k != "two_point_average"]
  margins = [
    (e["trace_mean"] - avg["trace_mean"])
    / np.hypot(e["trace_mean_stderr"], avg["trace_mean_stderr"])
    for e in ends
  ]
  lowest = min(e["trace_mean"] for e in ends)
  out = {}
  if res.get("shell"):
    sh = res["shell"]
    out["curv.sqrt_lambda_shell"] = {
      "factors": sh["factors"],
      "exponent_fast": sh["fit"]["fast"]["exponent"],
      "exponent_fast_stderr": sh["fit"]["fast"]["stderr"],
      "exponent_slow": sh["fit"]["slow"]["exponent"],
      "exponent_total": sh["fit"]["total"]["exponent"],
      "stationary": [t["stationary"] for t in sh["trips"]],
      "fast_directions": sh["fast_directions"],
    }
    if "drag" in sh["fit"]:
      out["curv.drift_drag"] = {
        "factors": sh["factors"],
        "exponent_drag": sh["fit"]["drag"]["exponent"],
        "exponent_drag_stderr": sh["fit"]["drag"]["stderr"],
        "exponent_drift": sh["fit"]["drift"]["exponent"],
        "exponent_drift_stderr": sh["fit"]["drift"]["stderr"],
        "mean_signed_drag": [t["drift_drag"]["mean_drag"] for t in sh["trips"]],
        "mean_update_norm": [t["drift_drag"]["mean_update_norm"] for t in sh["trips"]],
      }
  return out | {
    "curv.contracting": {
      "steps": [t["step"] for t in traj],
      "eff_lr_times_lambda_max": [t["lr"] / (1 - beta) * t["lambda_max"] for t in traj],
      "max_eff_lr_times_lambda_max": max(t["lr"] / (1 - beta) * t["lambda_max"] for t in traj),
      "batches_per_point": len(traj[0]["trace"]),
    },
    "curv.average_flatter": {
      "lambda_max_average": avg["lambda_max"],
      "lambda_max_endpoints": [e["lambda_max"] for e in ends],
      "trace_average": avg["trace_mean"],
      "trace_endpoints": [e["trace_mean"] for e in ends],
      "trace_margin_in_se": float(min(margins)),
      "trace_drop_fraction": float((lowest - avg["trace_mean"]) / lowest),
    },
  }


def run_seeds(config, exp, workdir: str) -> dict:
  """``run`` per seed in ``exp.seeds`` (``WORKDIR/seed_N``) and the claim records."""
  import copy

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
    run(cfg, exp, sdir)
    with open(os.path.join(sdir, "curvature.json")) as f:
      per_seed.append((seed, measured(json.load(f))))
  records = [
    claims.judge(c, [(s, m[c.id]) for s, m in per_seed])
    for c in CLAIMS.values()
    if all(c.id in m for _, m in per_seed)
  ]
  common.write_json(os.path.join(workdir, "curvature_claims.json"), {"claims": records})
  for r in records:
    common.log(f"claim {r['id']}: {r['verdict']}")
  return {"claims": {r["id"]: r["verdict"] for r in records}, "seeds": seeds}


def _cli_run(config, exp, workdir: str) -> dict:
  if tuple(exp.seeds):
    return run_seeds(config, exp, workdir)
  return run(config, exp, workdir)


CLAIMS = _claims()


def main(argv=None):
  return common.cli(NAME, _cli_run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
