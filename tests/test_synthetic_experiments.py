"""Smoke tests of the synthetic experiments at tiny sizes: they run, write
JSON and PNG, the numbers are finite and show the effect each one claims."""

import json
import math
import os

import pytest

from experiments import synthetic_equivalence, synthetic_fast_slow, synthetic_lemma1


def _load(outdir, name):
  assert os.path.getsize(os.path.join(outdir, name + ".png")) > 1000
  with open(os.path.join(outdir, name + ".json")) as f:
    return json.load(f)


def _all_finite(x):
  if isinstance(x, dict):
    return all(_all_finite(v) for v in x.values())
  if isinstance(x, (list, tuple)):
    return all(_all_finite(v) for v in x)
  return not isinstance(x, float) or math.isfinite(x)


def test_fast_slow_via_command_line(tmp_path):
  """Through main (absl flags, --config overrides): EMA on λ0 ends far below
  λ0 in loss, mostly in the fast modes, and reaches the slow-coordinate level
  well before λ1 does."""
  out = str(tmp_path)
  synthetic_fast_slow.main(
    [
      "--config.num_fast=4",
      "--config.num_slow=4",
      "--config.num_steps=8000",
      "--config.num_seeds=2",
      "--config.record_every=20",
      f"--outdir={out}",
    ]
  )
  s = _load(out, "fast_slow")
  assert _all_finite(s)
  r = s["runs"]
  assert s["config"]["num_steps"] == 8000
  assert r["lr0_ema"]["stationary_loss"] < 0.6 * r["lr0"]["stationary_loss"]
  assert s["ema_over_lr0_fast"] < 0.1 < s["ema_over_lr0_slow"]
  lr0, ema, lr1 = (r[k]["steps_to_slow_level"] for k in ("lr0", "lr0_ema", "lr1"))
  assert lr0 < ema < lr1 and ema - lr0 < 2 * 450 and lr1 > 2 * lr0
  # The Monte Carlo overlay agrees with the exact curve at this tiny size (2 seeds).
  assert r["lr0"]["stationary_loss_monte_carlo"] == pytest.approx(
    r["lr0"]["stationary_loss"], rel=0.25
  )


def test_lemma1_sqrt_lr(tmp_path):
  config = synthetic_lemma1.get_config()
  config.dim, config.num_lrs, config.lr_min, config.lr_max = 100, 3, 0.01, 0.1
  config.measure_steps = 2000
  s = synthetic_lemma1.run(config, str(tmp_path))
  assert _all_finite(_load(str(tmp_path), "lemma1"))
  assert s["loglog_slope"] == pytest.approx(0.5, abs=0.05)
  assert max(abs(e) for e in s["relative_error_vs_exact"]) < 0.05


def test_equivalence_side_trips(tmp_path):
  config = synthetic_equivalence.get_config()
  config.num_fast = config.num_slow = 3
  # θ_0 = 1 starts near the stationary state, the regime Lemma 2 is about.
  config.theta0, config.start, config.window, config.ema_decay = 1.0, 300, 40, 0.05
  config.num_seeds, config.eq20_max_gap = 2, 100
  config.methods = "two_point,ema"  # SWA's schedule is covered by test_schedules
  s = synthetic_equivalence.run(config, str(tmp_path))
  assert _all_finite(_load(str(tmp_path), "equivalence"))
  for method, m in s["methods"].items():
    # Averaging and its side-trip both land below the constant-λ run, near each other.
    assert m["loss_average"] < m["loss_plain"] and m["loss_side_trip"] < m["loss_plain"], method
    assert m["side_trip_over_average"] == pytest.approx(1.0, abs=0.25), method
    assert m["path_distance_average_to_side_trip"] < m["path_distance_average_to_plain"], method
  # eq. 20: λ̂/λ falls from ≈1 at Δ = 1 towards 1/2, fastest for the largest κ.
  by_kappa = s["eq20"]["by_kappa"]
  fast = by_kappa[str(max(config.eq20_kappas))]["paper_over_lr"]
  slow = by_kappa[str(min(config.eq20_kappas))]["paper_over_lr"]
  assert fast[0] > 0.95 and fast[-1] < 0.55 and slow[-1] > fast[-1]
