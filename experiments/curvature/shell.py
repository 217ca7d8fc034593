"""Study 3: the sqrt(lambda) shell of Lemma 1, from pairs of constant-rate side-trips.

:func:`shell_law` runs the pairs (the engine's step,
:func:`experiments.parents.stepper`) and measures, on the same trips, the
shell (pair distance and distance to the common centre, split into fast and
slow directions, with quasi-stationarity per :func:`stationarity`), then hands
the trips' ends to :mod:`experiments.curvature.midpoint` (Fig. 4b) and
:mod:`experiments.curvature.drift_drag` (Fig. 4a). Exponents p of
distance ~ f^p by :func:`fit_exponent`. Claim ``curv.sqrt_lambda_shell``.
"""

from __future__ import annotations

import time

import numpy as np

from experiments import cli, evaluation, parents
from experiments.curvature.drift_drag import drift_drag
from experiments.curvature.midpoint import midpoint_check
from experiments.curvature.shared import window_length

__all__ = [
  "RELAXATIONS",
  "STATIONARY_CHANGE",
  "STATIONARY_SE",
  "fit_exponent",
  "shell_law",
  "stationarity",
]

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
  :data:`RELAXATIONS` relaxation times). At L, :func:`experiments.curvature.midpoint.midpoint_check` on
  ``batches``; then ``exp.drag_steps`` updates of the first trip split by
  :func:`experiments.curvature.drift_drag.drift_drag`.
  """
  import jax
  from jax.flatten_util import ravel_pytree

  from trajax import probes

  factors = [float(f) for f in exp.shell_factors]
  if len(factors) < 3 or any(not f > 0 for f in factors) or len(set(factors)) != len(factors):
    raise ValueError(f"exp.shell_factors must be >= 3 distinct positive factors, got {factors}")
  S = int(state.step)
  cfg = run.config_at(S)
  L = int(exp.shell_steps if exp.shell_steps is not None else window_length(cfg, exp))
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
    split = drift_drag(a, centre, int(exp.drag_steps)) if int(exp.drag_steps) > 0 else None
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
