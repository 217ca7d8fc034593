"""Smoke tests of the real-trajectory figures 6/8, 7 and 14 at a tiny size.

One tiny cosine-schedule mnist1d parent (40 steps, width 8) is trained once
and shared by the three modules (``--exp.parent``); each module must write its
JSON and PNG, with finite numbers of the expected shapes and the properties
that hold exactly whatever the size (distances zero where two runs coincide,
bit-exact replays of the parent, cosines of a gradient with itself equal to
1), checked against NumPy where a number can be recomputed independently.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

from experiments import cli, evaluation, fig6_8_distances, fig7_alignment, fig14_cosine, parents
from trajax import averaging, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mnist1d.py") + ":runlocal,cosine"
TINY = {
  "total_steps": 40,
  "checkpoint_every_steps": 10,
  "eval_every_steps": 40,
  # No average in the parent: a smaller train step to compile (the figures
  # build their own averages).
  "averaging.method": "none",
  "log_every_steps": 10,
  "averaging.gap": 10,
  "model.width": 8,
}


def _finite(x) -> bool:
  if isinstance(x, dict):
    return all(_finite(v) for v in x.values())
  if isinstance(x, (list, tuple)):
    return all(_finite(v) for v in x)
  return not isinstance(x, float) or math.isfinite(x)


def _load(workdir, name):
  assert os.path.getsize(os.path.join(workdir, name + ".png")) > 5000
  with open(os.path.join(workdir, name + ".json")) as f:
    return json.load(f)


def _flat(tree) -> np.ndarray:
  import jax

  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """A finished tiny parent with checkpoints at every 10 steps (all branch points)."""
  config = cli.load_config(CONFIG, TINY)
  work = str(tmp_path_factory.mktemp("figs"))
  return config, parents.ensure_parent(config, work, [10, 20, 30, 40], quiet=True)


def test_fig6_8_distances(parent, tmp_path):
  config, pdir = parent
  exp = fig6_8_distances.experiment_defaults()
  exp.points, exp.train_eval_batches, exp.parent = 5, 2, pdir
  out = str(tmp_path)
  summary = fig6_8_distances.run(config, exp, out)

  f6 = _load(out, "fig6_distances")
  assert _finite(f6)
  assert (f6["branch_step"], f6["window"]) == (30, 10)  # 0.75 * 40, averaging.gap
  assert f6["j"] == [0, 1, 2, 4, 6, 8, 10]
  n = len(f6["j"])
  for key in ("dist_avg_vs_half", "dist_batch_orders", "dist_travel_lambda", "dist_travel_half"):
    assert len(f6[key]) == n and f6[key][0] == 0.0 and min(f6[key]) >= 0.0
  assert sorted(f6["evals"], key=int) == ["1", "10"]
  # One step: (theta_S + theta_S+1)/2 and the lambda/2 step agree to rounding
  # (same batch, same gradient, same momentum trace: Lemma 2 is exact here).
  assert f6["dist_avg_vs_half"][1] < 1e-3 * f6["dist_travel_lambda"][1]
  assert f6["dist_batch_orders"][-1] > 0.0
  # The lambda run is the parent replayed bit-for-bit.
  assert f6["replay_vs_parent_l2"] == 0.0
  # Distance travelled by the replay vs NumPy on the parent's own checkpoints.
  a = _flat(runs.open_run(pdir).state_at(40).params)
  b = _flat(runs.open_run(pdir).state_at(30).params)
  assert f6["dist_travel_lambda"][-1] == pytest.approx(np.linalg.norm(a - b), rel=1e-5)
  assert f6["norm_theta_S"] == pytest.approx(np.linalg.norm(b), rel=1e-5)

  f8 = _load(out, "fig8_basin")
  assert f8["burnin_step"] == 20 and f8["t"][0] == 20 and f8["t"][-1] == 40
  m = len(f8["t"])
  for key in (
    "dist_main_to_alt_final",
    "dist_alt_to_main_final",
    "dist_parallel",
    "dist_main_to_main_final",
  ):
    assert len(f8[key]) == m and all(math.isfinite(v) and v >= 0 for v in f8[key])
  assert f8["dist_parallel"][0] == 0.0  # both runs start at theta_B
  assert f8["dist_main_to_main_final"][-1] == 0.0 == f8["replay_vs_parent_l2"]
  # At t = T all three of these are ||theta_T - theta'_T||.
  end = f8["dist_parallel"][-1]
  assert end > 0
  assert f8["dist_main_to_alt_final"][-1] == pytest.approx(end, rel=1e-5)
  assert f8["dist_alt_to_main_final"][-1] == pytest.approx(end, rel=1e-5)
  assert summary["fig8"]["end"] == pytest.approx(end, rel=1e-6)
  assert summary["fig6"]["dist_avg_vs_half"] == f6["dist_avg_vs_half"][-1]


def test_fig7_alignment_via_command_line(parent, tmp_path, monkeypatch):
  _, pdir = parent
  out = str(tmp_path)
  argv = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in TINY.items()]
  argv += ["--exp.points=5", f"--exp.parent={pdir}", f"--workdir={out}"]
  # ml_collections finds --config.<field> overrides in sys.argv (cli.cli
  # does not pass its argv on as sys_argv), so the command line is set there too.
  monkeypatch.setattr(sys, "argv", ["fig7_alignment", *argv])
  summary = fig7_alignment.main(argv)

  r = _load(out, "fig7_alignment")
  assert _finite(r)
  assert r["branch_step"] == 30 and r["window"] == 10
  n = len(r["j"])
  assert r["j"][0] == 0 and r["j"][-1] == 10
  for s in ("constant", "linear"):
    assert len(r["cosine"][s]) == len(r["norm_ratio"][s]) == len(r["fixed_batch_loss"][s]) == n
    assert r["cosine"][s][0] == 1.0 and r["norm_ratio"][s][0] == 1.0
    assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in r["cosine"][s])
    assert all(v > 0 for v in r["norm_ratio"][s])
    # Both side-trips start at theta_S: same fixed-batch loss there.
    assert r["fixed_batch_loss"][s][0] == pytest.approx(r["fixed_batch_loss"]["constant"][0])
  assert (
    len(r["parallel_cosine"])
    == len(r["independent_batch_cosine"])
    == len(r["train_batch_loss"])
    == n
  )
  assert r["parallel_cosine"][0] == pytest.approx(1.0, abs=1e-5)
  # One step with the same rate: the linear trip's first step equals the constant one's.
  assert r["cosine"]["linear"][1] == pytest.approx(r["cosine"]["constant"][1], abs=1e-5)
  # Independent batches are far less aligned than one batch with itself along the trip.
  assert summary["mean_abs_independent_cosine"] < summary["final_parallel_cosine"]
  assert summary["min_cosine_constant"] == min(r["cosine"]["constant"])


def test_fig14_cosine(parent, tmp_path):
  config, pdir = parent
  exp = fig14_cosine.experiment_defaults()
  exp.branch_fractions, exp.train_eval_batches, exp.parent = (0.25, 0.5), 2, pdir
  out = str(tmp_path)
  summary = fig14_cosine.run(config, exp, out)

  r = _load(out, "fig14_cosine")
  assert _finite(r)
  assert summary["branch_steps"] == [10, 20] and r["window"] == 10 and r["method"] == "swa"
  for b in r["branches"]:
    assert b["trip_steps"] == [1, 10]  # eval points 1, 10, ..., k
    assert len(b["trip_test_loss"]) == len(b["trip_test_accuracy"]) == 2
    assert b["replay_vs_parent_l2"] == 0.0
    # never_moved: θ_S itself, the negative control of the pooled match.
    for who in ("raw", "average", "sidetrip", "never_moved"):
      assert set(b[who]) == {"test_loss", "test_accuracy", "train_loss", "train_accuracy"}
      assert 0.0 <= b[who]["test_accuracy"] <= 1.0 and b[who]["test_loss"] > 0
    assert b["dist_raw_vs_average"] > 0 and b["dist_sidetrip_vs_average"] > 0
  assert r["parent_curves"]["eval/loss"]["step"] == [40]
  assert r["parent_averaging"] == "none" and "eval_avg/loss" not in r["parent_curves"]
  assert len(summary["test_loss_sidetrip"]) == 2


def test_fig14_refuses_an_unknown_schedule_and_plans_the_ema_replay(tmp_path):
  config = cli.load_config(os.path.join(ROOT, "configs", "mnist1d.py") + ":runlocal", TINY)
  bad = cli.apply_overrides(config, {"optimizer.schedule": "linear"})
  with pytest.raises(
    ValueError, match=r"optimizer.schedule must be one of \['constant', 'cosine'\]"
  ):
    fig14_cosine.run(bad, fig14_cosine.experiment_defaults(), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "parent"))
  # EMA: the whole-trajectory average starts 5/δ steps before S + k (clipped at 0).
  exp = fig14_cosine.experiment_defaults()
  exp.method, exp.ema_window, exp.branch_fractions = "ema", 10, (0.5,)
  cfg = cli.apply_overrides(config, {"averaging.decay": 0.25})
  assert fig14_cosine.window_for(cfg, exp) == 10
  assert fig14_cosine.average_start(cfg, exp, 20, 10) == 10  # 20 + 10 - 5/0.25
  assert fig14_cosine.branch_steps(cfg, exp) == [10, 20, 40]
  assert fig14_cosine.output_name(cfg, exp) == "fig14_constant_ema"
  with pytest.raises(ValueError, match="exp.ema_history = 20 reaches back to step -5"):
    fig14_cosine.average_start(cfg, exp, 5, 10)
  exp.method = "swa"
  assert fig14_cosine.average_start(cfg, exp, 20, 10) == 20


def test_bad_experiment_fields_are_named(tmp_path):
  config = cli.load_config(CONFIG, TINY)
  exp = fig6_8_distances.experiment_defaults()
  exp.branch_fraction = 1.5
  with pytest.raises(ValueError, match=r"exp.branch_fraction must lie in \(0, 1\), got 1.5"):
    fig6_8_distances.run(config, exp, str(tmp_path))
  exp = fig14_cosine.experiment_defaults()
  exp.branch_fractions = (0.9,)
  with pytest.raises(ValueError, match="S=36: S \\+ window \\(10\\) exceeds total_steps=40"):
    fig14_cosine.run(config, exp, str(tmp_path))
  with pytest.raises(ValueError, match="divisible by n - 1"):
    fig14_cosine.window_average(cli.apply_overrides(config, {"averaging.n": 4}), "multi_point", 10)
  exp = fig7_alignment.experiment_defaults()
  exp.independent_pairs = 0
  with pytest.raises(ValueError, match="exp.independent_pairs must be >= 1"):
    fig7_alignment.run(config, exp, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "parent"))


def test_grid_and_saturation_summary():
  assert evaluation.trajectory_grid(1000, 4) == [0, 1, 10, 100, 250, 500, 750, 1000]
  assert evaluation.trajectory_grid(10, 2, log_points=False) == [0, 5, 10]
  assert evaluation.eval_points(1000) == [1, 10, 100, 1000]
  assert evaluation.eval_points(30) == [1, 10, 30]
  s = fig6_8_distances.saturation_summary([0, 1, 2, 3, 4], [10.0, 6.0, 4.0, 3.5, 3.0])
  # Drop 7; the last quarter (t >= 3) goes 3.5 -> 3.0: 0.5/7 of it.
  assert s["total_drop"] == 7.0 and s["end"] == 3.0 and s["min"] == 3.0
  assert s["drop_in_last_quarter_fraction"] == pytest.approx(0.5 / 7)
  assert s["fraction_of_decreasing_steps"] == 1.0


def test_fig14_window_average_comes_from_the_config():
  config = cli.load_config(CONFIG, TINY)
  # The window fixes two-point's gap and multi-point's; the rest is the config's, from step S.
  swa = fig14_cosine.window_average(config, "swa", 10)
  assert swa == averaging.average("swa", every=config.averaging.every)
  assert fig14_cosine.window_average(config, "two_point", 10) == averaging.average(
    "two_point", gap=10
  )
  cfg = cli.apply_overrides(config, {"averaging.n": 3, "averaging.start_step": 7})
  assert fig14_cosine.window_average(cfg, "multi_point", 10).values == {
    "n": 3,
    "gap": 5,
    "start_step": 0,
  }
  ema = fig14_cosine.window_average(cfg, "ema", 10)
  assert ema.values["decay"] == cfg.averaging.decay and ema.values["start_step"] == 0
  with pytest.raises(ValueError, match="exp.method must be one of"):
    fig14_cosine.window_average(config, "polyak", 10)
