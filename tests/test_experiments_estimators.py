"""experiments.estimators against independent references: NumPy formulas, exact bootstrap, Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from experiments import estimators as est


def _branches(rng, true_r, gain, n_branches=3, reps=3, horizons=4, sd=0.03):
  raw, avg, trip = [], [], []
  for b in range(n_branches):
    base = 1.0 + 0.1 * b
    raw.append(base + sd * rng.standard_normal((reps, horizons)))
    avg.append(base - gain + sd * rng.standard_normal((reps, horizons)))
    trip.append(base - true_r * gain + sd * rng.standard_normal((reps, horizons)))
  return raw, avg, trip


def test_pooled_ratio_and_gain_are_the_numpy_formulas():
  rng = np.random.default_rng(0)
  raw, avg, trip = _branches(rng, 0.8, 0.05)
  r = est.ratio(raw, avg, trip)
  num = sum((a - t).mean() for a, t in zip(raw, trip, strict=True))
  den = sum((a - v).mean() for a, v in zip(raw, avg, strict=True))
  assert r.value == pytest.approx(num / den, rel=1e-12)
  assert r.n_replicates == 9
  g = est.gain(raw, avg)
  assert g.value == pytest.approx(
    np.mean([(a - v).mean() for a, v in zip(raw, avg, strict=True)]), rel=1e-12
  )
  assert g.ci[0] <= g.value <= g.ci[1]
  d = r.as_dict()
  assert set(d) == {"value", "ci", "n_replicates"} and len(d["ci"]) == 2
  assert est.Estimate(1.0, (-math.inf, math.inf), 1).as_dict()["ci"] == [None, None]
  # No pooled gain: nothing to recover, the ratio is undefined.
  assert est.ratio(avg, raw, trip).value is None


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
  # One branch of 4 replicates: all 4^4 equally likely resamples, enumerated.
  raw = np.array([[1.00, 1.02], [0.97, 0.99], [1.05, 1.01], [0.99, 1.03]])
  avg = raw - np.array([[0.06, 0.05], [0.03, 0.04], [0.08, 0.07], [0.02, 0.05]])
  trip = raw - np.array([[0.04, 0.05], [0.01, 0.02], [0.07, 0.05], [0.03, 0.01]])
  num_rows = (raw - trip).mean(axis=1)
  den_rows = (raw - avg).mean(axis=1)
  exact = [
    num_rows[list(idx)].mean() / den_rows[list(idx)].mean()
    for idx in itertools.product(range(4), repeat=4)
  ]
  lo, hi = np.quantile(exact, [0.025, 0.975])
  r = est.ratio(raw, avg, trip, n_boot=40_000, seed=3)
  assert r.ci[0] == pytest.approx(lo, abs=0.03)
  assert r.ci[1] == pytest.approx(hi, abs=0.03)


def test_interval_covers_the_true_ratio_in_monte_carlo():
  rng = np.random.default_rng(1)
  true_r, hits, n_sim = 0.8, 0, 200
  for i in range(n_sim):
    raw, avg, trip = _branches(rng, true_r, 0.05, n_branches=2, reps=25, horizons=2)
    r = est.ratio(raw, avg, trip, n_boot=400, seed=i)
    hits += r.ci[0] <= true_r <= r.ci[1]
  # Nominal 95 %; the percentile bootstrap of a ratio is a little narrow.
  assert 0.85 <= hits / n_sim <= 0.995


def test_decision_rules_and_the_negative_control():
  rng = np.random.default_rng(2)
  raw, avg, trip = _branches(rng, 1.0, 0.06, sd=0.01)
  r, g = est.ratio(raw, avg, trip), est.gain(raw, avg)
  assert est.match_holds(r, g) and est.gain_holds(g) and est.ci_excludes_zero(r)
  # The control: an independent λ run in place of the side-trip recovers nothing (r ≈ 0).
  control = [a + 0.01 * rng.standard_normal(a.shape) for a in raw]
  rc = est.ratio(raw, avg, control)
  assert abs(rc.value) < 0.3 and not est.match_holds(rc, g)
  # One point in band but an interval through 0 is not a match; nor is a match without a gain.
  assert not est.match_holds(est.Estimate(1.0, (-0.2, 2.0), 9), g)
  assert not est.match_holds(r, est.Estimate(0.01, (-0.01, 0.03), 9))
  assert not est.match_holds(est.Estimate(1.6, (1.2, 2.0), 9), g)
  assert not est.match_holds(est.Estimate(None, None, 9), g)
  # Dicts (as written to report.json) are read the same way.
  assert est.match_holds(r.as_dict(), g.as_dict())
  # A gain whose bootstrap denominator is often <= 0: no finite interval.
  flat = [a + 1e-4 * rng.standard_normal(a.shape) for a in raw]
  wide = est.ratio(raw, flat, trip)
  assert wide.value is None or wide.ci == (-math.inf, math.inf)
  # One replicate: a point, no interval (a degenerate [v, v] would "exclude 0" for free).
  one = est.ratio(raw[0][:1], avg[0][:1], trip[0][:1])
  assert one.ci == (-math.inf, math.inf) and not est.match_holds(one, g)
  assert est.gain(raw[0][:1], avg[0][:1]).ci == (-math.inf, math.inf)


def test_matching_factor_and_specificity_on_a_known_rate_curve():
  raw = np.ones((3, 2))
  avg = raw - 0.1
  # r(f) = 2 (1 − f): the λ/2 trip recovers the gain exactly (Table 1's factor).
  trips = {f: raw - 0.1 * 2 * (1 - f) for f in (0.25, 0.5, 0.75)}
  f = est.matching_factor(raw, avg, trips)
  assert f.value == pytest.approx(0.5) and f.ci[0] == pytest.approx(0.5)
  d = est.specificity_margin(raw, avg, trips, 0.5)
  assert d.value == pytest.approx(0.5)  # |r(¼) − 1| = |r(¾) − 1| = 0.5, |r(½) − 1| = 0
  # Shifted curve r(f) = 2 (1 − f) + 0.6: λ/2 is no longer the nearest.
  shifted = {k: v - 0.06 for k, v in trips.items()}
  assert est.specificity_margin(raw, avg, shifted, 0.5).value < 0
  # r(¾) = 1.1 > 1: no crossing inside the measured factors, f* is not resolved.
  assert est.matching_factor(raw, avg, shifted).value is None
  # With f = 1 measured (r = 0.6): r crosses 1 between ¾ and 1, at 0.75 + 0.25 · 0.1/0.5.
  wider = shifted | {1.0: raw - 0.06}
  assert est.matching_factor(raw, avg, wider).value == pytest.approx(0.8)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="differ in shape"):
    est.ratio(np.ones((3, 2)), np.ones((3, 2)), np.ones((2, 2)))
  with pytest.raises(ValueError, match="finite"):
    est.gain(np.array([1.0, math.nan]), np.ones(2))
  with pytest.raises(ValueError, match="predicted factor"):
    est.specificity_margin(np.ones(3), np.zeros(3), {0.25: np.ones(3), 0.75: np.ones(3)}, 0.5)
