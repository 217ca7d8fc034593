"""trajax.sidetrip: bit-exact reproduction, equivalence with averaging, read-only parent, resume.

One tiny mnist1d parent (40 steps, checkpoints every 10) serves most tests; a
parent whose loss is exactly linear in θ checks the equivalent schedule
against the averaging kernel computed in NumPy from the parent's checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

from tests.sidetrip_cases import (
  REPO,
  TINY,
  LinearData,
  LinearLoss,
  assert_identical,
  crash_after,
  edit_metadata,
  snapshot,
  tiny_config,
  train_parent,
)
from tests.small_training import CACHE_DIR
from trajax import checkpoint as ckpt_lib
from trajax import config_validation, loop, schedules, sidetrip, train
from trajax.metrics import read_jsonl


def tree_dist(a, b):
  return math.sqrt(
    sum(
      float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
  )


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """A 40-step mnist1d run with two-point averaging (sidetrip_cases.train_parent)."""
  return train_parent(tmp_path_factory)


@pytest.fixture(scope="module")
def replay(parent, tmp_path_factory):
  """Kind 'schedule' with the parent's own schedule, from step 20 to 40."""
  workdir = tmp_path_factory.mktemp("replay") / "trip"
  config = sidetrip.with_sidetrip(parent.config, kind="schedule")
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, str(workdir))
  return types.SimpleNamespace(result=result, workdir=str(workdir), config=config)


# --------------------------------------------------------------------------- reproduction


def test_unchanged_config_reproduces_parent_bit_for_bit(parent, replay):
  assert replay.result.step == 40 and replay.result.resumed_from == "parent:20"
  want, _ = ckpt_lib.restore_readonly(parent.workdir, step=40)
  got, _ = ckpt_lib.restore_readonly(replay.workdir, step=40)
  assert_identical(got, want)  # params, batch_stats, opt state (momentum, averages), rng, ...
  assert_identical(serialization.to_state_dict(jax.device_get(replay.result.state)), want)
  # Same metrics format, same numbers where both logged the same window.
  ours = {
    r["step"]: r
    for r in read_jsonl(os.path.join(replay.workdir, "metrics.jsonl"))
    if "train/loss" in r
  }
  theirs = {
    r["step"]: r
    for r in read_jsonl(os.path.join(parent.workdir, "metrics.jsonl"))
    if "train/loss" in r
  }
  assert sorted(ours) == [30, 40]
  for s in (30, 40):
    assert ours[s]["train/loss"] == theirs[s]["train/loss"]
    assert ours[s]["sidetrip/step"] == s - 20
  final = [
    r
    for r in read_jsonl(os.path.join(replay.workdir, "metrics.jsonl"))
    if r["step"] == 40 and "eval/loss" in r
  ]
  parent_eval = [
    r
    for r in read_jsonl(os.path.join(parent.workdir, "metrics.jsonl"))
    if r["step"] == 40 and "eval/loss" in r
  ]
  assert final[0]["eval/loss"] == pytest.approx(parent_eval[0]["eval/loss"], rel=1e-6)


def test_parent_directory_is_untouched(parent, replay):
  assert snapshot(parent.workdir) == parent.snapshot


def test_lineage_is_recorded_in_every_checkpoint(parent, replay):
  ckpt_dir = os.path.join(replay.workdir, "checkpoints")
  # eval points j = 1, 10 and the end, plus every checkpoint_every_steps
  assert ckpt_lib.committed_steps(ckpt_dir) == [21, 30, 40]
  parent_meta = ckpt_lib.read_metadata(os.path.join(parent.workdir, "checkpoints"), 20)
  for s in (21, 40):
    meta = ckpt_lib.read_metadata(ckpt_dir, s)
    lin = meta["lineage"]
    assert lin["parent"] == os.path.realpath(os.path.join(parent.workdir, "checkpoints"))
    assert lin["parent_step"] == 20 and lin["kind"] == "schedule"
    assert lin["version"] == sidetrip.LINEAGE_VERSION and lin["count_at_branch"] == 20
    assert lin["parent_identity"] == sidetrip.trajectory_hash(parent_meta["config"])
    assert meta["lr_hyper"] == {"start": 20, "scale": 1.0, "horizon": 20.0}
    assert lin["parent_config"] == parent_meta["config"]
    assert lin["parent_config_hash"] == parent_meta["config_hash"]
    assert lin["params"]["schedule"] == "config" and lin["params"]["steps"] == 20
    assert meta["sidetrip_step"] == s - 20
    assert meta["config"]["sidetrip"]["kind"] == "schedule"


# --------------------------------------------------------------------------- resume


def test_resume_continues_from_own_checkpoint(parent, tmp_path):
  config = sidetrip.with_sidetrip(parent.config, kind="schedule")
  workdir = str(tmp_path / "trip")
  crash_after(config, parent.workdir, 20, workdir, at=34)
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints"))[-1] == 30
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, workdir)
  assert result.resumed_from == "own:30"
  assert sorted(result.evals) == [20]  # j = 1 and 10 were evaluated before the crash
  want, _ = ckpt_lib.restore_readonly(parent.workdir, step=40)
  assert_identical(serialization.to_state_dict(jax.device_get(result.state)), want)
  steps = [
    r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r
  ]
  assert steps == [30, 40]  # the crashed run's lines after 30 were dropped, none twice

  # A changed side-trip must not resume from these checkpoints.
  changed = sidetrip.with_sidetrip(parent.config, kind="schedule", lr_factor=0.5)
  with pytest.raises(config_validation.ConfigError, match="sidetrip.lr_factor"):
    sidetrip.run_sidetrip(changed, parent.workdir, 20, workdir)
  with pytest.raises(train.ResumeError, match="not of"):
    sidetrip.run_sidetrip(config, parent.workdir, 10, workdir)


def test_side_trip_written_before_the_change_resumes(parent, tmp_path):
  """Checkpoints of the old side-trip engine (no lr_hyper, lineage v1) restore and finish exactly."""
  config = sidetrip.with_sidetrip(parent.config, kind="schedule")
  workdir = str(tmp_path / "trip")
  crash_after(config, parent.workdir, 20, workdir, at=34)

  def as_old(meta):
    del meta["lr_hyper"]
    for key in ("version", "parent_identity"):
      del meta["lineage"][key]
    meta["lineage"]["parent"] = os.path.join(parent.workdir, "checkpoints")  # not resolved

  for step in ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")):
    edit_metadata(workdir, step, as_old)
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, workdir)
  assert result.resumed_from == "own:30"
  want, _ = ckpt_lib.restore_readonly(parent.workdir, step=40)
  assert_identical(serialization.to_state_dict(jax.device_get(result.state)), want)


def test_side_trip_resumes_under_the_other_spelling_of_its_average(parent, tmp_path):
  """A side-trip stored with sidetrip.{method, gap} resumes bit-exactly under sidetrip.average."""
  old = sidetrip.with_sidetrip(parent.config, kind="equivalent", method="two_point", gap=16)
  workdir = str(tmp_path / "trip")
  crash_after(old, parent.workdir, 20, workdir, at=34)

  def as_today(meta):  # today's writer stored no sidetrip.average
    del meta["config"]["sidetrip"]["average"]

  for step in ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")):
    edit_metadata(workdir, step, as_today)
  new = sidetrip.with_sidetrip(parent.config, kind="equivalent", average="two_point(gap=16)")
  other = sidetrip.with_sidetrip(parent.config, kind="equivalent", average="two_point(gap=8)")
  with pytest.raises(config_validation.ConfigError, match="sidetrip.average"):
    sidetrip.run_sidetrip(other, parent.workdir, 20, workdir)  # another average is a change
  result = sidetrip.run_sidetrip(new, parent.workdir, 20, workdir)
  assert result.resumed_from == "own:30" and result.step == 36
  whole = sidetrip.run_sidetrip(old, parent.workdir, 20, str(tmp_path / "whole"))
  assert_identical(
    serialization.to_state_dict(jax.device_get(result.state)),
    serialization.to_state_dict(jax.device_get(whole.state)),
  )


def test_old_fixed_batch_side_trip_with_weight_decay_is_refused(parent, tmp_path):
  """Old fixed-batch GD included weight decay: such a workdir is refused, saying why."""
  config = sidetrip.with_sidetrip(
    tiny_config(**{"optimizer.weight_decay": 1e-3}),
    kind="fixed_batch",
    steps=12,
    eval_at=(),
  )
  workdir = str(tmp_path / "trip")
  crash_after(config, parent.workdir, 10, workdir, at=22)
  edit_metadata(workdir, 20, lambda meta: meta["lineage"].pop("version"))
  with pytest.raises(train.ResumeError, match="included weight decay"):
    sidetrip.run_sidetrip(config, parent.workdir, 10, workdir)


def test_open_run_and_stepper_replay_the_parent_bit_for_bit(parent, replay):
  from trajax import runs

  run = runs.open_run(parent.workdir)
  assert run.steps == [10, 20, 30, 40] and run.lineage == {}
  assert config_validation.diff(run.config, parent.config) == []
  want, _ = ckpt_lib.restore_readonly(parent.workdir, step=40)
  assert_identical(serialization.to_state_dict(jax.device_get(run.state_at(40))), want)
  stepper = runs.Stepper.at(run, 20)
  stepper.advance_to(40)
  assert stepper.step == 40
  assert_identical(serialization.to_state_dict(jax.device_get(stepper.state)), want)
  # Half the rate: a different trajectory from the same start.
  half = runs.Stepper.at(run, 20, lr_factor=0.5)
  half.advance_to(21)
  one = runs.Stepper.at(run, 20)
  one.advance_to(21)
  step_full = tree_dist(one.params, run.state_at(20).params)
  assert tree_dist(half.params, run.state_at(20).params) == pytest.approx(0.5 * step_full, rel=1e-3)
  # A side-trip's workdir opens the same way, with its lineage.
  trip = runs.open_run(replay.workdir)
  assert trip.lineage["parent_step"] == 20 and "sidetrip" not in trip.config
  with pytest.raises(FileNotFoundError, match="not a committed checkpoint"):
    run.state_at(15)


# --------------------------------------------------------------------------- errors


def test_clear_errors(parent, tmp_path):
  config = sidetrip.with_sidetrip(parent.config, kind="schedule")
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sidetrip.run_sidetrip(config, missing, 10, str(tmp_path / "a"))
  with pytest.raises(FileNotFoundError, match=r"committed steps: \[10, 20, 30, 40\]"):
    sidetrip.run_sidetrip(config, parent.workdir, 15, str(tmp_path / "a"))
  bad = sidetrip.with_sidetrip(parent.config, kind="sideways", lr_factor=-1.0)
  with pytest.raises(config_validation.ConfigError) as e:
    sidetrip.run_sidetrip(bad, parent.workdir, 10, str(tmp_path / "a"))
  assert "sidetrip.kind = 'sideways'" in str(e.value)
  assert "sidetrip.lr_factor = -1.0" in str(e.value)
  fb = sidetrip.with_sidetrip(parent.config, kind="fixed_batch")
  with pytest.raises(config_validation.ConfigError, match="sidetrip.steps"):
    sidetrip.run_sidetrip(fb, parent.workdir, 10, str(tmp_path / "a"))
  ema = sidetrip.with_sidetrip(parent.config, kind="equivalent", method="ema", decay=0.1)
  with pytest.raises(config_validation.ConfigError, match="sidetrip.window"):
    sidetrip.run_sidetrip(ema, parent.workdir, 10, str(tmp_path / "a"))
  # sidetrip.gamma sets the power EMA's exponent; a bad one is named as the side-trip's field.
  power = sidetrip.with_sidetrip(
    parent.config, kind="equivalent", method="power_ema", window=6, gamma=2.0
  )
  assert sidetrip.resolve(power, 10).params["gamma"] == 2.0
  flat = sidetrip.with_sidetrip(parent.config, kind="equivalent", method="power_ema", window=6)
  assert sidetrip.resolve(flat, 10).params["gamma"] == parent.config.averaging.gamma
  bad_gamma = sidetrip.with_sidetrip(
    parent.config, kind="equivalent", method="power_ema", window=6, gamma=-1.0
  )
  with pytest.raises(config_validation.ConfigError, match=r"sidetrip.gamma = -1.0"):
    sidetrip.run_sidetrip(bad_gamma, parent.workdir, 10, str(tmp_path / "a"))
  # A window the averager's parameters cannot fill is named, with the method.
  short = sidetrip.with_sidetrip(parent.config, kind="equivalent", method="two_point", window=0)
  with pytest.raises(config_validation.ConfigError, match="sidetrip.window = 0"):
    sidetrip.run_sidetrip(short, parent.workdir, 10, str(tmp_path / "a"))
  wider = sidetrip.with_sidetrip(tiny_config(**{"model.width": 16}), kind="schedule")
  with pytest.raises(
    config_validation.ConfigError, match="model.width = 16: must equal the parent"
  ):
    sidetrip.run_sidetrip(wider, parent.workdir, 10, str(tmp_path / "a"))
  faster = sidetrip.with_sidetrip(tiny_config(**{"optimizer.lr": 0.1}), kind="equivalent")
  with pytest.raises(config_validation.ConfigError, match="optimizer.lr"):
    sidetrip.run_sidetrip(faster, parent.workdir, 10, str(tmp_path / "a"))
  main_run = str(tmp_path / "main_run")  # a main run's workdir is not a side-trip's
  shutil.copytree(parent.workdir, main_run)
  with pytest.raises(train.ResumeError, match="not a side-trip"):
    sidetrip.run_sidetrip(config, parent.workdir, 10, main_run)
  with pytest.raises(train.ResumeError, match="inside the parent"):
    sidetrip.run_sidetrip(config, parent.workdir, 10, os.path.join(parent.workdir, "trip"))
  with pytest.raises(ValueError, match="sidetrip.kindd"):
    sidetrip.with_sidetrip(parent.config, kindd="schedule")
  assert not os.path.exists(tmp_path / "a")
  assert snapshot(parent.workdir) == parent.snapshot


# --------------------------------------------------------------------------- schedules


def test_lr_schedules_match_closed_forms():
  base = optax.cosine_decay_schedule(0.1, 100)
  t = np.arange(30, 60)
  s, k = 30, 20
  hyper = lambda scale: {
    "start": jnp.int32(s),
    "scale": jnp.float32(scale),
    "horizon": jnp.float32(k),
  }
  spec = lambda **kw: sidetrip.SidetripSpec(
    **{
      "kind": "schedule",
      "steps": k,
      "method": None,
      "window": None,
      "params": {},
      "lr_factor": 1.0,
      "schedule": "config",
      "fixed_batch_index": None,
      "fixed_batch_size": None,
      "eval_at": (k,),
      "eval_average": False,
      **kw,
    }
  )
  eta = np.array([0.05 * (1 + math.cos(math.pi * x / 100)) for x in t])
  eta_s = 0.05 * (1 + math.cos(math.pi * s / 100))
  j = np.clip(t - s, 0, k)
  cases = {
    "config": (spec(), 0.5, 0.5 * eta),
    "constant": (spec(schedule="constant"), 0.5 * eta_s, np.full(t.shape, 0.5 * eta_s)),
    "linear": (spec(schedule="linear"), eta_s, eta_s * (1 - j / k)),
    "cosine": (spec(schedule="cosine"), eta_s, eta_s * 0.5 * (1 + np.cos(np.pi * j / k))),
    "fixed": (spec(kind="fixed_batch", schedule=None), 0.3, np.full(t.shape, 0.3)),
  }
  for name, (sp, scale, want) in cases.items():
    got = np.asarray(jax.jit(jax.vmap(sidetrip.make_lr_schedule(sp, base, hyper(scale))))(t))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9, err_msg=name)
  for method, params in (
    ("swa", {}),
    ("ema", {"decay": 0.1}),
    ("two_point", {"gap": k}),
    ("multi_point", {"n": 3, "gap": 10}),
  ):
    sp = spec(kind="equivalent", schedule=None, method=method, window=k, params=params)
    got = np.asarray(jax.jit(jax.vmap(sidetrip.make_lr_schedule(sp, base, hyper(0.5))))(t))
    ref = schedules.equivalent_schedule(method, base, start=s, window=k, **params)
    want = 0.5 * np.asarray(ref(jnp.asarray(t - s)))
    np.testing.assert_allclose(got, want, rtol=2e-6, err_msg=method)
    assert got[-1] == 0.0 and got[0] > 0  # landed after k steps


# --------------------------------------------------------------------------- equivalence


@pytest.fixture(scope="module")
def linear_parent(tmp_path_factory):
  config = tiny_config(
    **{
      "total_steps": 12,
      "checkpoint_every_steps": 1,
      "log_every_steps": 4,
      "eval_every_steps": 12,
      "batch_size": 16,
      "eval_batch_size": 32,
      "optimizer.lr": 0.1,
      "nonfinite.skip": True,
    }
  )
  workdir = tmp_path_factory.mktemp("linear") / "run"
  loop.train_and_evaluate(config, str(workdir), dataset=LinearData(), model=LinearLoss())
  thetas = [
    np.asarray(ckpt_lib.restore_readonly(str(workdir), step=s)[0]["params"]["w"], np.float64)
    for s in range(1, 13)
  ]
  assert int(ckpt_lib.restore_readonly(str(workdir), step=4)[0]["health"]["total_skips"]) == 1
  return types.SimpleNamespace(config=config, workdir=str(workdir), thetas=thetas)


@pytest.mark.parametrize(
  "method,params", [("two_point", {"gap": 8}), ("swa", {}), ("ema", {"decay": 0.3})]
)
def test_equivalent_schedule_lands_on_the_average_for_a_linear_loss(
  linear_parent, tmp_path, method, params
):
  s, k = 4, 8
  theta = lambda t: linear_parent.thetas[t - 1]
  if method == "two_point":
    want = (theta(s) + theta(s + k)) / 2
  elif method == "swa":
    want = np.mean([theta(s + i) for i in range(1, k + 1)], 0)
  else:
    d = params["decay"]
    want = (1 - d) ** k * theta(s) + sum(
      d * (1 - d) ** (k - i) * theta(s + i) for i in range(1, k + 1)
    )
  base = copy.deepcopy(linear_parent.config)
  base.checkpoint_every_steps = 100  # the side-trip only needs its end point
  config = sidetrip.with_sidetrip(base, kind="equivalent", method=method, window=k, **params)
  result = sidetrip.run_sidetrip(
    config,
    linear_parent.workdir,
    s,
    str(tmp_path / "trip"),
    dataset=LinearData(),
    model=LinearLoss(),
  )
  assert result.step == s + k
  got = np.asarray(result.state.params["w"], np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # ... and not on the raw endpoint: the check has teeth.
  assert np.max(np.abs(theta(s + k) - want)) > 100 * np.max(np.abs(got - want)) + 1e-4


EMA_EVERY_DEBIAS = {
  "averaging.method": "ema",
  "averaging.decay": 0.1,
  "averaging.every": 3,
  "averaging.debias": True,
}


@pytest.fixture(scope="module")
def linear_ema_parent(tmp_path_factory, linear_parent):
  """The linear parent's run with EMA δ = 0.1, every = 3, debias = True (same θ_t: no feedback)."""
  config = copy.deepcopy(linear_parent.config)
  for key, value in EMA_EVERY_DEBIAS.items():
    config.averaging[key.split(".")[1]] = value
  workdir = tmp_path_factory.mktemp("linear_ema") / "run"
  loop.train_and_evaluate(config, str(workdir), dataset=LinearData(), model=LinearLoss())
  return types.SimpleNamespace(config=config, workdir=str(workdir))


def test_equivalent_side_trip_honours_every_and_debias(linear_parent, linear_ema_parent, tmp_path):
  """Issue 10's silent wrong result: EMA δ = 0.1, every = 3, debias over k = 6.

  The debiased accumulator takes θ_{S+3} and θ_{S+6}: a = ((1−δ)·θ_{S+3} + θ_{S+6})/(2 − δ),
  so the rate weights are w = (1, 1, 1, 1/(2−δ), …) = (1 1 1 .526 .526 .526), not plain
  EMA's 1 − (1−δ)^{k−j} = (.469 .41 .344 .271 .19 .1). With a loss linear per batch the
  step θ_{t+1} − θ_t is −η_t times a momentum trace built from the batches alone, so the
  side-trip's step over the parent's step is w_j exactly, and the side-trip lands on the
  average computed here from the parent's θ_t.
  """
  s, k, d = 4, 6, 0.1
  base = copy.deepcopy(linear_ema_parent.config)
  base.checkpoint_every_steps = 100
  config = sidetrip.with_sidetrip(base, kind="equivalent", window=k, eval_at=tuple(range(1, k)))
  trip = str(tmp_path / "trip")
  result = sidetrip.run_sidetrip(
    config, linear_ema_parent.workdir, s, trip, dataset=LinearData(), model=LinearLoss()
  )
  assert result.step == s + k
  parent_w = lambda t: ckpt_lib.restore_readonly(linear_ema_parent.workdir, step=t)[0]["params"][
    "w"
  ]
  thetas = {t: np.asarray(parent_w(t), np.float64) for t in range(s, s + k + 1)}
  np.testing.assert_array_equal(thetas[s + k], linear_parent.thetas[s + k - 1])  # same θ_t
  theta = thetas.__getitem__
  mine = [theta(s)] + [
    np.asarray(ckpt_lib.restore_readonly(trip, step=s + j)[0]["params"]["w"], np.float64)
    for j in range(1, k + 1)
  ]
  ratios = [
    np.median((mine[j + 1] - mine[j]) / (theta(s + j + 1) - theta(s + j))) for j in range(k)
  ]
  want_w = np.array([1, 1, 1, 1 / (2 - d), 1 / (2 - d), 1 / (2 - d)])
  np.testing.assert_allclose(ratios, want_w, rtol=1e-3)
  np.testing.assert_allclose(want_w, [1, 1, 1, 0.526, 0.526, 0.526], atol=1e-3)
  plain = 1 - (1 - d) ** (k - np.arange(k))  # what the trip ran before the fix
  assert np.max(np.abs(np.array(ratios) - plain)) > 0.3
  want = ((1 - d) * theta(s + 3) + theta(s + 6)) / (2 - d)
  got = np.asarray(result.state.params["w"], np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(theta(s + k) - want)) > 100 * np.max(np.abs(got - want)) + 1e-4


def test_equivalent_side_trip_lands_near_the_average_on_a_real_net(parent, tmp_path):
  # Two-point averaging, gap 10, from step 0: the parent's average at 40 is
  # (θ_30 + θ_40)/2, which the equivalent side-trip from 30 (λ/2 for 10 steps)
  # reaches exactly only for a linear loss.
  config = sidetrip.with_sidetrip(parent.config, kind="equivalent", eval_at=(0,))
  result = sidetrip.run_sidetrip(config, parent.workdir, 30, str(tmp_path / "trip"))
  assert result.step == 40 and result.lineage["params"]["window"] == 10
  p40, _ = ckpt_lib.restore_readonly(parent.workdir, step=40)
  c = p40["opt_state"]["weights"]  # the ring's plain reading: c_0·θ_t + Σ_i c_{1+i}·slot_i
  avg = jax.tree.map(
    lambda r, x: c[0] * x + np.tensordot(c[1:], r, axes=1),
    p40["opt_state"]["snapshots"],
    p40["params"],
  )
  p30, _ = ckpt_lib.restore_readonly(parent.workdir, step=30)
  np.testing.assert_allclose(
    jax.tree.leaves(avg)[0],
    (jax.tree.leaves(p30["params"])[0] + jax.tree.leaves(p40["params"])[0]) / 2,
    rtol=1e-6,
  )
  side = jax.device_get(result.state.params)
  assert tree_dist(side, avg) < 0.5 * tree_dist(p40["params"], avg)
  # Loss level: the side-trip's test loss is close to the averaged model's.
  parent_eval = [
    r
    for r in read_jsonl(os.path.join(parent.workdir, "metrics.jsonl"))
    if r["step"] == 40 and "eval_avg/loss" in r
  ][0]
  # Loose (the BN statistics differ too: recomputed for the average, running
  # for the side-trip): within 10 %, and closer to it than the branch point
  # (j = 0) was.
  target = parent_eval["eval_avg/loss"]
  assert result.evals[10]["eval/loss"] == pytest.approx(target, rel=0.1)
  assert abs(result.evals[10]["eval/loss"] - target) < abs(result.evals[0]["eval/loss"] - target)


# --------------------------------------------------------------------------- fixed batch


def test_fixed_batch_side_trip_is_plain_gradient_descent(parent, tmp_path):
  k, factor = 5, 0.5
  config = sidetrip.with_sidetrip(
    parent.config,
    kind="fixed_batch",
    steps=k,
    lr_factor=factor,
    fixed_batch_index=3,
    eval_at=(0, 2),
  )
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, str(tmp_path / "trip"))
  assert result.step == 20 + k and sorted(result.evals) == [0, 2, k]

  # Independent reference: k steps of θ ← θ − η ∇L_B(θ) by hand, BN in train mode.
  from trajax import data, models

  dataset = data.get_dataset(parent.config)
  batch = dataset.fixed_train_batch(3, parent.config.batch_size)
  model = models.create_model(parent.config.model, num_classes=10)
  start, _ = ckpt_lib.restore_readonly(parent.workdir, step=20)
  params, stats = start["params"], start["batch_stats"]
  eta = factor * parent.config.optimizer.lr

  def loss(p, st):
    logits, upd = model.apply(
      {"params": p, "batch_stats": st}, batch["image"], train=True, mutable=["batch_stats"]
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), upd

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  for _ in range(k):
    (_, upd), g = grad(params, stats)
    params = jax.tree.map(lambda p, gi: p - eta * gi, params, g)
    stats = upd["batch_stats"]
  got = jax.device_get(result.state)
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got.batch_stats), jax.tree.leaves(stats), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  fb = [result.evals[j]["sidetrip/fixed_batch_loss"] for j in (0, 2, k)]
  assert fb[2] < fb[1] < fb[0]
  meta = ckpt_lib.read_metadata(str(tmp_path / "trip" / "checkpoints"), 20 + k)
  assert meta["lineage"]["params"]["fixed_batch_index"] == 3
  with pytest.raises(ValueError, match="is a fixed-batch side-trip"):
    sidetrip.run_sidetrip(config, str(tmp_path / "trip"), 20 + k, str(tmp_path / "again"))


def test_fixed_batch_gd_is_the_probe_rule_and_ignores_weight_decay(parent, tmp_path):
  """One fixed-batch GD: the side-trip equals probes.gd_trajectory, weight decay or not.

  BatchNorm in train mode normalises with the batch's own statistics, so the
  parameter path does not depend on the running statistics the side-trip
  updates: the probe's loss function sees the same gradients.
  """
  from trajax import data, models, probes

  k, factor = 4, 2.0
  config = sidetrip.with_sidetrip(
    tiny_config(**{"optimizer.weight_decay": 0.5}),  # large: it would show at once
    kind="fixed_batch",
    steps=k,
    lr_factor=factor,
    fixed_batch_index=1,
    eval_at=(),
  )
  result = sidetrip.run_sidetrip(config, parent.workdir, 10, str(tmp_path / "trip"))
  dataset = data.get_dataset(parent.config)
  batch = dataset.fixed_train_batch(1, parent.config.batch_size)
  model = models.create_model(parent.config.model, num_classes=10)
  start, _ = ckpt_lib.restore_readonly(parent.workdir, step=10)

  def loss_fn(p, b):
    logits, _ = model.apply(
      {"params": p, "batch_stats": start["batch_stats"]},
      b["image"],
      train=True,
      mutable=["batch_stats"],
    )
    return train.cross_entropy(logits, b["label"]).mean()

  eta = factor * parent.config.optimizer.lr
  path = probes.gd_trajectory(loss_fn, start["params"], batch, eta, k)
  want = jax.tree.map(lambda x: x[-1], path)
  got = jax.device_get(result.state.params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # With λ = 0.5 a decayed step would move the kernels by ≈ η·λ·θ: far outside that.
  decayed = jax.tree.map(lambda p, g: p * (1 - eta * 0.5 * (p.ndim > 1)), want, want)
  kernel = lambda t: [x for x in jax.tree.leaves(t) if x.ndim > 1][0]
  assert np.max(np.abs(kernel(decayed) - kernel(want))) > 100 * np.max(
    np.abs(kernel(got) - kernel(want))
  )


# --------------------------------------------------------------------------- compile once


def test_one_compilation_per_kind_across_branch_points(parent, tmp_path):
  results = []
  for s in (10, 30):
    config = sidetrip.with_sidetrip(
      parent.config, kind="schedule", schedule="constant", lr_factor=0.5, steps=3, eval_at=()
    )
    results.append(sidetrip.run_sidetrip(config, parent.workdir, s, str(tmp_path / f"t{s}")))
  assert results[1].timings["compiled"] is False
  for s, r in zip((10, 30), results, strict=True):
    lrs = [
      x["train/lr"]
      for x in read_jsonl(str(tmp_path / f"t{s}" / "metrics.jsonl"))
      if "train/lr" in x
    ]
    assert lrs and all(v == pytest.approx(0.5 * parent.config.optimizer.lr) for v in lrs)
    assert r.step == s + 3


# --------------------------------------------------------------------------- CLI


def cli_fixed_batch(parent, workdir):
  """``(argv, env)``: a 2-step fixed-batch side-trip from step 30, as a user types it."""
  cmd = [
    sys.executable,
    "-m",
    "trajax.sidetrip",
    f"--parent={parent.workdir}",
    "--step=30",
    f"--workdir={workdir}",
    "--config=configs/mnist1d.py:runlocal",
    *[f"--config.{k}={v}" for k, v in TINY.items()],
    "--config.sidetrip.kind=fixed_batch",
    "--config.sidetrip.steps=2",
    "--config.sidetrip.eval_at=()",
  ]
  return cmd, dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE_DIR, PYTHONPATH=REPO)


@pytest.mark.slow  # end to end: three CLI side-trips in subprocesses
def test_command_line(parent, tmp_path):
  workdir = tmp_path / "cli"
  cmd, env = cli_fixed_batch(parent, workdir)
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  meta = ckpt_lib.read_metadata(str(workdir / "checkpoints"), 32)
  assert meta["lineage"]["parent_step"] == 30 and meta["lineage"]["kind"] == "fixed_batch"
  records = read_jsonl(str(workdir / "metrics.jsonl"))
  assert records[0]["hparams"]["sidetrip.kind"] == "fixed_batch"
  assert any("sidetrip/fixed_batch_loss" in r for r in records)
  typo = subprocess.run(
    cmd[:-3] + ["--config.sidetrip.kindd=schedule"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert typo.returncode != 0 and "kindd" in typo.stderr
  # Errors are the message alone, as trajax.main's: no traceback.
  for args, says in (
    (["--step=15"], "side-trip error: step 15 is not a committed checkpoint"),
    (["--config.sidetrip.lr_factor=-1.0"], "sidetrip.lr_factor = -1.0: must be"),
    ([f"--parent={tmp_path / 'nope'}"], "side-trip error: parent"),
  ):
    names = {a.split("=")[0] for a in args} | {"--workdir"}
    err = [c for c in cmd if c.split("=")[0] not in names]
    err += [f"--workdir={tmp_path / 'err'}", *args]
    bad = subprocess.run(err, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
  assert not os.path.exists(tmp_path / "err")


def test_command_line_busy_workdir_and_force_takeover(parent, tmp_path):
  """A side-trip workdir locked by a holder that died on another host: refused in one line
  naming it; ``--force_takeover`` (as for ``trajax.main``) overrides it and the trip runs."""
  import json as json_lib

  from trajax import workdir_lock

  workdir = tmp_path / "cli"
  os.makedirs(workdir)
  held = workdir_lock.acquire_local(str(workdir), False)  # the "other host"
  try:
    fake = {"host": "node-that-died", "pid": 4242, "started": "2026-01-01T00:00:00", "argv": "x"}
    os.ftruncate(held._fd, 0)  # noqa: SLF001
    os.pwrite(held._fd, json_lib.dumps(fake).encode(), 0)  # noqa: SLF001
    cmd, env = cli_fixed_batch(parent, workdir)
    run = lambda extra: subprocess.run(
      cmd + extra, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    busy = run([])
    assert busy.returncode == 1, busy.stderr[-3000:]
    assert "node-that-died" in busy.stderr and "--force_takeover" in busy.stderr
    assert "Traceback" not in busy.stderr, busy.stderr[-3000:]
    assert not os.path.exists(workdir / "checkpoints" / "32")
    taken = run(["--force_takeover"])
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert "--force_takeover" in taken.stderr and "node-that-died" in taken.stderr
    assert ckpt_lib.committed_steps(str(workdir / "checkpoints")) == [32]
  finally:
    held.release()
