r"""Replicated, pooled estimators with bootstrap intervals for the "match" and "improves" claims.

One evaluation of one trajectory is a noisy number: on the offline default
the raw test loss moves by ≈ 0.03 nats between points 100 steps apart while
the averaging gain L_raw − L_avg is 0.04–0.07 nats, so a ratio of two such
differences read at one point can land anywhere. Every claim that compares an
averaging method with its equivalent side-trip (paper Sec. 5, Table 1,
Lemma 2) or says averaging "improves" is therefore judged on *replicates*:

* a replicate is one batch order from a branch point S (the training stream
  is a pure function of (seed, i), so reading it from a far offset gives an
  independent order at no cost; :func:`experiments.parents.stepper`), and it
  is evaluated at several horizons h;
* values are "lower is better" numbers (a loss, or an error rate 1 − accuracy)
  in arrays ``[R_b, H_b]`` per branch b (replicates × horizons).

The pooled recovered fraction (the statistic of paper Table 1's "match") is

    r = Σ_b mean_b(L_raw − L_trip) / Σ_b mean_b(L_raw − L_avg),

means over replicates × horizons of branch b: the share of the pooled
averaging gain the side-trip recovers (r = 1: the side-trip lands where the
average does; r = 0: no better than the raw endpoint). The pooled gain is
g = Σ_b mean_b(L_raw − L_avg) / n_branches.

Uncertainty: a percentile bootstrap over replicates, stratified by branch
(each resample draws R_b replicates of branch b with replacement, keeping a
replicate's horizons together, since they lie on one trajectory). Horizons are
not independent and are never resampled. With the demo's three batch orders a
branch has only ten distinct resamples; the pooled interval over three
branches has 10³ and is what the criteria read (small-sample percentile
intervals are somewhat narrow, which errs towards *rejecting* a control).

A ratio whose bootstrap denominator is ≤ 0 in more than (1 − level)/2 of the
resamples has no finite interval: ``ci = (-inf, inf)`` (written as nulls);
so has any statistic with a branch of a single replicate (nothing to resample).

Decision rules (:func:`match_holds`, :func:`gain_holds`): a "match" holds when
the pooled r lies in ``1 ± tol`` **and** its interval excludes 0 **and** the
pooled gain's interval excludes 0 (there is a gain to match); an "improves"
holds when the gain's interval lies above 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
  "LEVEL",
  "MATCH_TOLERANCE",
  "N_BOOT",
  "Estimate",
  "as_branches",
  "ci_excludes_zero",
  "gain",
  "gain_holds",
  "match_holds",
  "matching_factor",
  "ratio",
  "specificity_margin",
]

N_BOOT = 2000
LEVEL = 0.95
# Table 1's "match": the side-trip recovers 50 %–150 % of the averaging gain.
MATCH_TOLERANCE = 0.5


class Estimate(NamedTuple):
  """A pooled statistic: ``value`` (None when undefined), its bootstrap ``ci``, replicates pooled."""

  value: float | None
  ci: tuple[float, float] | None
  n_replicates: int

  def as_dict(self) -> dict:
    """JSON form: ``ci`` is ``[low, high]``, an unbounded end written as None."""
    fin = lambda x: float(x) if x is not None and math.isfinite(x) else None  # noqa: E731
    ci = [None, None] if self.ci is None else [fin(self.ci[0]), fin(self.ci[1])]
    value = None if self.value is None else fin(float(self.value))
    return {"value": value, "ci": ci, "n_replicates": int(self.n_replicates)}


def as_branches(values) -> list[np.ndarray]:
  """Branches of values -> list of 2-D float arrays ``[replicates, horizons]``.

  A NumPy array (``[R]`` or ``[R, H]``) or a list of scalars is one branch; any
  other list holds one such entry per branch.
  """
  if isinstance(values, np.ndarray) or (
    isinstance(values, (list, tuple)) and values and all(np.ndim(v) == 0 for v in values)
  ):
    values = [values]
  out = []
  for i, v in enumerate(values):
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 1:
      a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
      raise ValueError(f"branch {i}: values must be [replicates, horizons], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"branch {i}: values must be finite, got {a.tolist()}")
    out.append(a)
  if not out:
    raise ValueError("no branch to pool")
  return out


def _check_same(*groups):
  shapes = [[a.shape for a in g] for g in groups]
  if any(s != shapes[0] for s in shapes):
    raise ValueError(f"raw / average / side-trip values differ in shape: {shapes}")


def _boot_means(diffs: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, np.ndarray]:
  """Pooled Σ_b mean_b(d) and its ``n_boot`` stratified bootstrap replicates."""
  rng = np.random.default_rng(seed)
  point = 0.0
  boot = np.zeros(n_boot)
  for d in diffs:
    rows = d.mean(axis=1)  # one number per replicate (its horizons averaged)
    point += rows.mean()
    idx = rng.integers(0, len(rows), size=(n_boot, len(rows)))
    boot += rows[idx].mean(axis=1)
  return float(point), boot


def _unresolved(branches: list[np.ndarray]) -> bool:
  """A branch with one replicate has no spread to resample: no interval can be given."""
  return min(a.shape[0] for a in branches) < 2


_NONE = (-math.inf, math.inf)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
  alpha = (1.0 - level) / 2.0
  return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1.0 - alpha))


def gain(raw, other, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Estimate:
  """Pooled mean of ``raw − other`` per branch, averaged over branches, with its interval."""
  raw, other = as_branches(raw), as_branches(other)
  _check_same(raw, other)
  nb = len(raw)
  point, boot = _boot_means([a - b for a, b in zip(raw, other, strict=True)], n_boot, seed)
  n = sum(a.shape[0] for a in raw)
  if _unresolved(raw):
    return Estimate(point / nb, _NONE, n)
  lo, hi = _interval(boot / nb, level)
  return Estimate(point / nb, (lo, hi), n)


def ratio(
  raw, average, trip, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> Estimate:
  """Pooled recovered fraction r = Σ mean(raw − trip) / Σ mean(raw − average), with its interval.

  Numerator and denominator are resampled together (the same replicates), so
  their correlation is kept. ``value`` is None when the pooled gain is ≤ 0
  (nothing to recover); then ``ci`` is None too.
  """
  raw, average, trip = as_branches(raw), as_branches(average), as_branches(trip)
  _check_same(raw, average, trip)
  n = sum(a.shape[0] for a in raw)
  num, bnum = _boot_means([a - t for a, t in zip(raw, trip, strict=True)], n_boot, seed)
  den, bden = _boot_means([a - v for a, v in zip(raw, average, strict=True)], n_boot, seed)
  if not den > 0:
    return Estimate(None, None, n)
  if _unresolved(raw):
    return Estimate(num / den, _NONE, n)
  ok = bden > 0
  if np.mean(~ok) > (1.0 - level) / 2.0:
    return Estimate(num / den, (-math.inf, math.inf), n)
  return Estimate(num / den, _interval(bnum[ok] / bden[ok], level), n)


def _crossing(fs: np.ndarray, rs: np.ndarray) -> float:
  """The factor where the piecewise-linear r(f) first crosses 1 (r falls as f grows); nan if none."""
  for i in range(len(fs) - 1):
    a, b = rs[i] - 1.0, rs[i + 1] - 1.0
    if a == 0:
      return float(fs[i])
    if a * b < 0 or b == 0:
      return float(fs[i] + (fs[i + 1] - fs[i]) * a / (a - b))
  return math.nan


def _ratio_boot(raw, average, trip, n_boot, seed):
  num, bnum = _boot_means([a - t for a, t in zip(raw, trip, strict=True)], n_boot, seed)
  den, bden = _boot_means([a - v for a, v in zip(raw, average, strict=True)], n_boot, seed)
  with np.errstate(divide="ignore", invalid="ignore"):
    boot = np.where(bden > 0, bnum / bden, np.nan)
  return (num / den if den > 0 else math.nan), boot


def matching_factor(
  raw, average, trips: Mapping[float, object], *, n_boot=N_BOOT, level=LEVEL, seed=0
) -> Estimate:
  """f*: the rate factor at which a constant f·λ side-trip recovers exactly the averaging gain.

  r(f) from the pooled ratio at each measured factor, interpolated linearly
  between them; f* is where it crosses 1 (Table 1 predicts f* = 1/2 for the
  two-point average). A resample with no crossing inside the measured factors
  makes the interval unbounded.
  """
  raw, average = as_branches(raw), as_branches(average)
  fs = np.array(sorted(float(f) for f in trips))
  if len(fs) < 2:
    raise ValueError(f"matching_factor needs >= 2 factors, got {list(fs)}")
  pts, boots = [], []
  for f in fs:
    t = as_branches(trips[f] if f in trips else trips[str(f)])
    _check_same(raw, average, t)
    p, b = _ratio_boot(raw, average, t, n_boot, seed)
    pts.append(p)
    boots.append(b)
  n = sum(a.shape[0] for a in raw)
  point = _crossing(fs, np.array(pts)) if np.all(np.isfinite(pts)) else math.nan
  if not math.isfinite(point):
    return Estimate(None, None, n)
  if _unresolved(raw):
    return Estimate(point, _NONE, n)
  boots = np.stack(boots, axis=1)
  fstar = np.array([_crossing(fs, row) if np.all(np.isfinite(row)) else math.nan for row in boots])
  if np.mean(~np.isfinite(fstar)) > (1.0 - level) / 2.0:
    return Estimate(point, (-math.inf, math.inf), n)
  return Estimate(point, _interval(fstar[np.isfinite(fstar)], level), n)


def specificity_margin(
  raw,
  average,
  trips: Mapping[float, object],
  predicted: float,
  *,
  n_boot=N_BOOT,
  level=LEVEL,
  seed=0,
) -> Estimate:
  """D = min_{f ≠ f_pred} |r(f) − 1| − |r(f_pred) − 1|: how much nearer r = 1 the predicted rate is.

  D > 0: the predicted factor (Table 1's λ/2) matches the average better than
  every other factor measured; the interval is over the same resamples.
  """
  raw, average = as_branches(raw), as_branches(average)
  others = [float(f) for f in trips if float(f) != float(predicted)]
  if float(predicted) not in [float(f) for f in trips] or not others:
    raise ValueError(
      f"trips {sorted(trips)} must hold the predicted factor {predicted} and another"
    )
  key = {float(f): f for f in trips}
  res = {}
  for f in [float(predicted), *others]:
    t = as_branches(trips[key[f]])
    _check_same(raw, average, t)
    res[f] = _ratio_boot(raw, average, t, n_boot, seed)
  n = sum(a.shape[0] for a in raw)
  pts = {f: p for f, (p, _) in res.items()}
  if not all(math.isfinite(p) for p in pts.values()):
    return Estimate(None, None, n)
  point = min(abs(pts[f] - 1) for f in others) - abs(pts[float(predicted)] - 1)
  if _unresolved(raw):
    return Estimate(point, _NONE, n)
  with np.errstate(invalid="ignore"):
    boot = np.min(np.stack([np.abs(res[f][1] - 1) for f in others]), axis=0) - np.abs(
      res[float(predicted)][1] - 1
    )
  if np.mean(~np.isfinite(boot)) > (1.0 - level) / 2.0:
    return Estimate(point, (-math.inf, math.inf), n)
  return Estimate(point, _interval(boot[np.isfinite(boot)], level), n)


def ci_excludes_zero(est: Estimate | dict) -> bool:
  """Whether the interval lies strictly on one side of 0 (False when undefined)."""
  ci = est["ci"] if isinstance(est, dict) else est.ci
  if ci is None or ci[0] is None or ci[1] is None:
    return False
  return bool(ci[0] > 0 or ci[1] < 0)


def _value(est):
  return est["value"] if isinstance(est, dict) else est.value


def _ci(est):
  return est["ci"] if isinstance(est, dict) else est.ci


def gain_holds(g: Estimate | dict) -> bool:
  """An "improves": the pooled gain's interval lies above 0."""
  ci = _ci(g)
  return ci is not None and ci[0] is not None and ci[0] > 0


def match_holds(r: Estimate | dict, g: Estimate | dict, tol: float = MATCH_TOLERANCE) -> bool:
  """A "match": r in 1 ± tol, r's interval excludes 0, and there is a gain (its interval > 0)."""
  v = _value(r)
  if v is None or not math.isfinite(v):
    return False
  ci = _ci(r)
  r_pos = ci is not None and ci[0] is not None and ci[0] > 0
  return bool(abs(v - 1.0) <= tol and r_pos and gain_holds(g))
