"""trajax.posthoc: averages rebuilt from checkpoints, against runs that averaged in training.

Two tiny mnist1d runs (12 steps, a checkpoint at every step): one with EMA
(δ = 0.2 from step 2), one with SWA from step 4. Their in-training averages
are the reference for the exact case; the least-squares case is checked for
optimality against random feasible combinations, and its params against a
NumPy sum of the restored snapshots.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from tests.sidetrip_cases import REPO, snapshot, tiny_config
from trajax import averaging, loop, posthoc, runs, schedules


def _run(tmp_path_factory, name, **avg):
  config = tiny_config(
    total_steps=12,
    checkpoint_every_steps=1,
    eval_every_steps=12,
    log_every_steps=6,
    **{f"averaging.{k}": v for k, v in avg.items()},
  )
  workdir = tmp_path_factory.mktemp(name) / "run"
  loop.train_and_evaluate(config, str(workdir))
  return types.SimpleNamespace(config=config, workdir=str(workdir), run=runs.open_run(str(workdir)))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  return _run(tmp_path_factory, "ema", method="ema", decay=0.2, start_step=2)


@pytest.fixture(scope="module")
def swa_run(tmp_path_factory):
  return _run(tmp_path_factory, "swa", method="swa", start_step=4)


def in_training(run, step):
  state = run.state_at(step)
  return averaging.averaged_params(state.opt_state, state.params)


def max_diff(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_exact_ema_and_swa_equal_the_in_training_average(ema_run, swa_run):
  before = snapshot(ema_run.workdir), snapshot(swa_run.workdir)
  assert ema_run.run.steps == list(range(1, 13))
  for r, method, params in (
    (ema_run, "ema", {"decay": 0.2, "start_step": 2}),
    (swa_run, "swa", {"start_step": 4}),
  ):
    tgt = posthoc.target(method, end=12, **params)
    plan = posthoc.plan(r.run, tgt, sources=("params",), exact=True)
    assert plan.exact and plan.residual < 1e-12
    assert {s for s, _ in plan.coefficients} == set(range(2 if method == "ema" else 5, 13))
    avg = posthoc.combine(r.run, [plan])[0]
    ref = in_training(r.run, 12)
    assert max_diff(avg.params, ref) < 1e-6
    # ... and not trivially: the average is far from the last params.
    assert max_diff(avg.params, r.run.state_at(12).params) > 1e-3
    for leaf, ref_leaf in zip(jax.tree.leaves(avg.params), jax.tree.leaves(ref), strict=True):
      assert leaf.dtype == ref_leaf.dtype
  assert (snapshot(ema_run.workdir), snapshot(swa_run.workdir)) == before


def test_run_average_column_reproduces_its_own_average_from_sparse_steps(ema_run):
  tgt = posthoc.target("ema", end=12, decay=0.2, start_step=2)
  plan = posthoc.plan(ema_run.run, tgt, steps=[4, 8, 12])
  assert plan.exact
  assert plan.coefficients[(12, "average")] == pytest.approx(1.0, abs=1e-9)
  avg = posthoc.combine(ema_run.run, [plan])[0]
  assert max_diff(avg.params, in_training(ema_run.run, 12)) < 1e-6
  # Without the average column the same steps cannot be exact, and strict mode says which are missing.
  with pytest.raises(posthoc.MissingSnapshotsError, match=r"needs steps \[2, 3, 5, 6, 7, 9"):
    posthoc.plan(ema_run.run, tgt, steps=[4, 8, 12], sources=("params",), exact=True)


def test_least_squares_is_optimal_and_combines_the_snapshots(ema_run):
  tgt = posthoc.target("ema", end=12, decay=0.05, start_step=2)
  steps = [3, 6, 9, 12]
  plan = posthoc.plan(ema_run.run, tgt, steps=steps)
  assert not plan.exact and plan.residual > 1e-3
  x = np.array(list(plan.coefficients.values()))
  assert x.sum() == pytest.approx(1.0, abs=1e-9)
  columns, B = posthoc.basis(ema_run.run, 12, steps=steps)
  full = np.array([plan.coefficients.get(col, 0.0) for col in columns])

  def objective(x):  # ‖W(Bx − c)‖², W the tail sums Σ_{i>j}, written out directly
    r = B @ x - tgt[1]
    return sum(float(np.sum(r[j + 1 :])) ** 2 for j in range(r.size - 1))

  best = objective(full)
  assert plan.schedule_residual == pytest.approx(
    np.sqrt(best) / np.linalg.norm(schedules.weights_from_kernel(tgt[1])), rel=1e-9
  )
  rng = np.random.default_rng(0)
  for _ in range(200):
    d = rng.normal(size=full.size) * 0.05
    d -= d.mean()  # keep Σ x = 1
    assert objective(full + d) >= best - 1e-12
  avg = posthoc.combine(ema_run.run, [plan])[0]
  ref = None
  for (t, src), coef in plan.coefficients.items():
    snap = ema_run.run.state_at(t).params if src == "params" else in_training(ema_run.run, t)
    term = jax.tree.map(lambda a, c=coef: c * np.asarray(a, np.float64), snap)
    ref = term if ref is None else jax.tree.map(np.add, ref, term)
  assert max_diff(avg.params, ref) < 1e-6


def test_user_kernel_and_one_pass_for_many_plans(ema_run):
  run = ema_run.run
  k = posthoc.user_kernel({4: 1.0, 12: 3.0})
  plans = [
    posthoc.plan(run, k, exact=True),
    posthoc.plan(run, posthoc.target("two_point", end=12, gap=4, start_step=4), exact=True),
  ]
  a, b = posthoc.combine(run, plans)
  p4, p8, p12 = (run.state_at(s).params for s in (4, 8, 12))
  ref_a = jax.tree.map(
    lambda x, y: 0.25 * np.asarray(x, np.float64) + 0.75 * np.asarray(y), p4, p12
  )
  ref_b = jax.tree.map(lambda x, y: 0.5 * np.asarray(x, np.float64) + 0.5 * np.asarray(y), p8, p12)
  assert max_diff(a.params, ref_a) < 1e-6 and max_diff(b.params, ref_b) < 1e-6
  # Exact from the params alone: the run's averages are not mixed in.
  assert all(src == "params" for _, src in plans[0].coefficients)
  one = posthoc.posthoc_average(run, kernel={4: 1.0, 12: 3.0})
  assert max_diff(one.params, a.params) == 0.0


@pytest.mark.parametrize(
  "method,params",
  [
    ("ema", {"decay": 0.01, "start_step": 37}),
    ("ema", {"decay": 0.1, "every": 3, "debias": True, "start_step": 11}),
    ("swa", {"start_step": 50}),
    ("two_point", {"gap": 30, "start_step": 40}),
    ("multi_point", {"n": 3, "gap": 20, "start_step": 7}),
  ],
)
def test_target_is_the_derived_kernel(method, params):
  # target() shifts start_step out to use the closed forms; the derivation runs the averager.
  _, c = posthoc.target(method, end=200, **params)
  np.testing.assert_allclose(c, averaging.kernel(method, window=200, **params), atol=1e-14)


def test_sparse_snapshots_weigh_the_kernel_where_its_mass_lies(ema_run):
  """A fast EMA rebuilt from θ_4, θ_8, θ_12 leans on θ_12; a slow one spreads out."""
  fast = posthoc.plan(
    ema_run.run, posthoc.target("ema", end=12, decay=0.9), steps=[4, 8, 12], sources=("params",)
  )
  assert fast.coefficients[(12, "params")] > 0.9
  slow = posthoc.plan(
    ema_run.run, posthoc.target("swa", end=12), steps=[4, 8, 12], sources=("params",)
  )
  x = [slow.coefficients.get((t, "params"), 0.0) for t in (4, 8, 12)]
  assert (
    all(v > 0.15 for v in x) and slow.schedule_residual < 0.25 and fast.schedule_residual < 0.05
  )


def test_equivalent_schedule_is_the_schedules_one():
  _, c = posthoc.target("ema", end=30, decay=0.2, start_step=10)
  start, window, sched = posthoc.equivalent_schedule(c, 0.05)
  assert (start, window) == (10, 20)
  ref = schedules.equivalent_schedule("ema", 0.05, start=10, window=20, decay=0.2)
  j = np.arange(25)
  np.testing.assert_allclose(np.asarray(sched(j)), np.asarray(ref(j)), rtol=1e-6, atol=1e-9)
  _, c = posthoc.user_kernel({10: 1.0, 20: 1.0})
  start, window, sched = posthoc.equivalent_schedule(c, lambda t: 0.1 + 0 * t)
  assert (start, window) == (10, 10)
  np.testing.assert_allclose(np.asarray(sched(np.arange(11))), [0.05] * 10 + [0.0], rtol=1e-6)


def test_clear_errors(ema_run):
  run = ema_run.run
  with pytest.raises(ValueError, match="total weight is -1"):
    posthoc.user_kernel({3: 1.0, 4: -2.0})
  with pytest.raises(posthoc.MissingSnapshotsError, match=r"steps \[13, 40\] are not committed"):
    posthoc.plan(run, posthoc.user_kernel({4: 1.0}, end=12), steps=[4, 13, 40])
  with pytest.raises(posthoc.MissingSnapshotsError, match="ends at step 20, after the run's last"):
    posthoc.plan(run, posthoc.target("swa", end=20))
  with pytest.raises(ValueError, match="kernel step must be an integer >= 0, got -3"):
    posthoc.user_kernel({-3: 1.0})
  with pytest.raises(ValueError, match="sources: 'grads'"):
    posthoc.plan(run, posthoc.user_kernel({4: 1.0}), sources=("grads",))
  with pytest.raises(ValueError, match="exactly one of method="):
    posthoc.posthoc_average(run)


def test_no_tensorflow_at_import():
  code = "import sys, trajax.posthoc; print('tensorflow' in sys.modules)"
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "False"


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  cmd = [sys.executable, "-m", "trajax.posthoc", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)


def test_command_line_writes_evaluates_and_sweeps(ema_run, tmp_path):
  import json

  import orbax.checkpoint as ocp

  before = snapshot(ema_run.workdir)
  out = tmp_path / "one"
  r = _cli(f"--workdir={ema_run.workdir}", "--decay=0.2", "--start_step=2", f"--out={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  report = json.loads((out / "posthoc.json").read_text())
  (row,) = report["averages"]
  assert row["exact"] and 0 <= row["accuracy"] <= 1 and row["equivalent_schedule"]["start"] == 2
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(str(out / "averaged"))
  assert max_diff(restored["params"], in_training(ema_run.run, 12)) < 1e-6
  sweep = tmp_path / "sweep"
  r = _cli(
    f"--workdir={ema_run.workdir}",
    "--sweep",
    "--decays=0.1,0.2",
    "--start_step=2",
    f"--out={sweep}",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  report = json.loads((sweep / "sweep.json").read_text())
  assert [a["value"] for a in report["averages"]] == [0.1, 0.2]
  # The post-hoc δ = 0.2 is the in-training average: same test metrics.
  assert report["averages"][1]["loss"] == pytest.approx(report["in_training"]["loss"], abs=1e-5)
  assert (sweep / "sweep.png").stat().st_size > 1000
  # Any kernel is an average: ¼ θ_11 + ¾ θ_12, spelt as the side-trip spells it.
  out = tmp_path / "kernel"
  r = _cli(f"--workdir={ema_run.workdir}", "--average=kernel(0.25, 0.75)", f"--out={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  (row,) = json.loads((out / "posthoc.json").read_text())["averages"]
  assert row["exact"] and row["coefficients"] == {
    "11:params": pytest.approx(0.25, abs=1e-9),
    "12:params": pytest.approx(0.75, abs=1e-9),
  }
  assert row["sidetrip"]["exact"] and (row["sidetrip"]["start"], row["sidetrip"]["window"]) == (
    11,
    1,
  )
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(str(out / "averaged"))
  p11, p12 = (ema_run.run.state_at(s).params for s in (11, 12))
  ref = jax.tree.map(lambda a, b: 0.25 * np.asarray(a, np.float64) + 0.75 * np.asarray(b), p11, p12)
  assert max_diff(restored["params"], ref) < 1e-6
  r = _cli(f"--workdir={ema_run.workdir}", "--method=ema", f"--out={tmp_path / 'x'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
    "error: --method=ema needs decay: --param=decay=V (or --sweep)"
  )
  r = _cli(f"--workdir={ema_run.workdir}", "--decay=0.1", f"--out={ema_run.workdir}/avg")
  assert r.returncode == 1 and "lies inside the run directory" in r.stderr.splitlines()[-1]
  assert snapshot(ema_run.workdir) == before


# --------------------------------------------------------------------------- profiles

PROFILES = (
  {"method": "ema", "decay": 0.3, "start_step": 2},
  {"method": "power_ema", "gamma": 3.0},
)


@pytest.fixture(scope="module")
def profile_run(tmp_path_factory):
  """EMA δ = 0.2 in training, plus two profiles: EMA δ = 0.3 from step 2 and a power EMA."""
  return _run(tmp_path_factory, "profiles", method="ema", decay=0.2, profiles=PROFILES)


def _numpy_average(run, kernel):
  """Σ_t c_t θ_t over the committed steps (c must vanish elsewhere), in float64."""
  assert all(t in run.steps for t in np.flatnonzero(kernel))
  acc = None
  for t in np.flatnonzero(kernel):
    term = jax.tree.map(
      lambda a, c=kernel[t]: c * np.asarray(a, np.float64), run.state_at(t).params
    )
    acc = term if acc is None else jax.tree.map(np.add, acc, term)
  return acc


def test_profiles_are_the_averages_their_kernels_say(profile_run):
  """Each in-training profile equals Σ c_t θ_t with its registry kernel, the power EMA's the
  closed form c_i = (i^{γ+1} − (i−1)^{γ+1})/k^{γ+1} (NumPy, from the params at every step)."""
  run = profile_run.run
  state = run.state_at(12)
  ema, power = averaging.profile_averages(state.opt_state, state.params)
  _, c_ema = posthoc.target("ema", end=12, decay=0.3, start_step=2)
  assert max_diff(ema, _numpy_average(run, c_ema)) < 2e-6
  i = np.arange(1, 13, dtype=np.float64)
  c_power = np.r_[0.0, (i**4 - (i - 1) ** 4) / 12**4]
  assert max_diff(power, _numpy_average(run, c_power)) < 2e-6
  assert max_diff(power, state.params) > 1e-3  # and not trivially
  # The run's own average is still the EMA δ = 0.2 (the profiles sit beside it).
  assert max_diff(in_training(run, 12), ema) > 1e-4


def test_ema_of_a_profiles_decay_is_exact_from_sparse_steps(profile_run, ema_run):
  run = profile_run.run
  before = snapshot(profile_run.workdir)
  tgt = posthoc.target("ema", end=12, decay=0.3, start_step=2)
  plan = posthoc.plan(run, tgt, steps=[4, 8, 12], exact=True)
  assert plan.exact and plan.coefficients == {(12, "profiles[0]"): pytest.approx(1.0, abs=1e-9)}
  avg = posthoc.combine(run, [plan])[0]
  # float32 round-off of the in-training EMA, and of the NumPy sum over every step.
  assert max_diff(avg.params, _numpy_average(run, tgt[1])) < 2e-6
  state = run.state_at(12)
  assert max_diff(avg.params, averaging.profile_averages(state.opt_state, state.params)[0]) == 0
  # The same three steps without the profile: only least squares.
  no_profile = posthoc.plan(run, tgt, steps=[4, 8, 12], sources=("params", "average"))
  assert not no_profile.exact and no_profile.residual > 1e-3
  with pytest.raises(posthoc.MissingSnapshotsError, match=r"or a profile .*averaging.profiles"):
    posthoc.plan(run, tgt, steps=[4, 8, 12], sources=("params", "average"), exact=True)
  # A power EMA at a saved step: exact from its profile, also at an earlier step (its kernel
  # at 8 is its own, by the registry).
  for end in (8, 12):
    steps = [t for t in (4, 8, 12) if t <= end]
    p = posthoc.plan(run, posthoc.target("power_ema", end=end, gamma=3.0), steps=steps)
    assert p.exact and p.coefficients == {(end, "profiles[1]"): pytest.approx(1.0, abs=1e-9)}
  # A decay between the two EMAs' is closer with the profiles than without.
  between = posthoc.target("ema", end=12, decay=0.25, start_step=2)
  with_p = posthoc.plan(run, between, steps=[4, 8, 12])
  without = posthoc.plan(run, between, steps=[4, 8, 12], sources=("params",))
  assert with_p.schedule_residual < 0.5 * without.schedule_residual
  # Sources that the run did not save: named.
  with pytest.raises(posthoc.MissingSnapshotsError, match=r"'profiles\[2\]' needs averaging"):
    posthoc.plan(run, tgt, sources=("profiles[2]",))
  with pytest.raises(posthoc.MissingSnapshotsError, match=r"kept 0 profile\(s\)"):
    posthoc.plan(ema_run.run, tgt, sources=("profiles",))
  with pytest.raises(ValueError, match=r"sources: 'profiles\[x\]' is not one of"):
    posthoc.plan(run, tgt, sources=("profiles[x]",))
  assert snapshot(profile_run.workdir) == before


def test_bad_profiles_config_is_refused_before_anything_is_written(tmp_path):
  from trajax import config_validation

  config = tiny_config(
    **{"averaging.profiles": ({"method": "power_ema", "gamma": 0.0}, {"method": "ema"})}
  )
  workdir = tmp_path / "run"
  with pytest.raises(config_validation.ConfigError) as e:
    loop.train_and_evaluate(config, str(workdir))
  text = str(e.value)
  assert "averaging.profiles[0].gamma = 0.0: must be a float > 0" in text
  assert "averaging.profiles[1].decay = None: averaging method 'ema' needs it" in text
  assert not workdir.exists()


def test_profiles_resume_bit_exact(tmp_path):
  from tests.checkpoint_checks import assert_identical
  from tests.small_training import FakeDataset, small_config

  overrides = {
    "total_steps": 30,
    "checkpoint_every_steps": 10,
    "averaging.method": "ema",
    "averaging.decay": 0.05,
    "averaging.profiles": PROFILES + ({"method": "multi_point", "n": 3, "gap": 4},),
    "checkpoint.max_to_keep": None,
  }
  ref = loop.train_and_evaluate(
    small_config(**overrides), str(tmp_path / "ref"), dataset=FakeDataset()
  )
  workdir = str(tmp_path / "run")
  first = loop.train_and_evaluate(
    small_config(**{**overrides, "total_steps": 10}), workdir, dataset=FakeDataset()
  )
  assert first.step == 10
  second = loop.train_and_evaluate(small_config(**overrides), workdir, dataset=FakeDataset())
  assert second.step == 30 and second.origin == "own:10"
  got, want = jax.device_get(second.state), jax.device_get(ref.state)
  assert_identical(got, want)  # the profiles are in the optimizer state
  profiles = averaging.profile_averages(got.opt_state, got.params)
  assert len(profiles) == 3
  assert_identical(profiles, averaging.profile_averages(want.opt_state, want.params))
  # ... restored from the checkpoint through abstract_state, as a read-only run sees it.
  state = runs.open_run(workdir, dataset=FakeDataset()).state_at(20)
  assert len(averaging.profile_averages(state.opt_state, state.params)) == 3


def test_state_layout_unchanged_without_profiles():
  """averaging.profiles = () (the default) keeps the optimizer, hence the checkpoint, layout
  of a run written before profiles existed: SGD wrapped in the run's averager, nothing else."""
  import optax
  from flax import serialization

  from trajax import config as config_lib
  from trajax import state as state_lib

  config = tiny_config(**{"averaging.method": "ema"})
  assert tuple(config.averaging.profiles) == ()
  params = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}
  lr = state_lib.make_schedule(config.optimizer, config.total_steps)
  assert not config.optimizer.weight_decay and not config.optimizer.nesterov
  old = averaging.wrap(
    optax.sgd(lr, momentum=config.optimizer.momentum),
    averaging.make_averager("ema", decay=config.averaging.decay),
  )
  new = state_lib.make_optimizer(config)
  shape = lambda s: jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), s)
  assert serialization.to_state_dict(shape(new.init(params))) == serialization.to_state_dict(
    shape(old.init(params))
  )
  with config.unlocked():
    config.averaging.profiles = PROFILES
  grown = serialization.to_state_dict(state_lib.make_optimizer(config).init(params))
  assert set(grown["inner_state"]) == {"inner_state", "profiles"}
  # A config stored before the field existed reads back with no profiles.
  stored = config_lib.flatten(tiny_config())
  stored = {k: v for k, v in stored.items() if k not in ("averaging.profiles", "averaging.gamma")}
  nested: dict = {}
  for k, v in stored.items():
    *path, last = k.split(".")
    node = nested
    for p in path:
      node = node.setdefault(p, {})
    node[last] = v
  assert tuple(config_lib.from_dict(nested).averaging.profiles) == ()


@pytest.mark.slow  # end to end: CLI passes, side-trips and evaluations in subprocesses
def test_command_line_prints_the_equivalent_side_trip_and_it_runs(profile_run, tmp_path):
  """posthoc.json holds the exact side-trip command; its section (data beside the output) is
  the post-hoc kernel, and run as printed the side-trip lands on a checkpoint k steps on."""
  import json
  import shlex

  before = snapshot(profile_run.workdir)
  out = tmp_path / "one"
  r = _cli(f"--workdir={profile_run.workdir}", "--average=ema(decay=0.3, start_step=4)",
           f"--out={out}")  # fmt: skip
  assert r.returncode == 0, r.stderr[-2000:]
  (row,) = json.loads((out / "posthoc.json").read_text())["averages"]
  trip = row["sidetrip"]
  assert trip["exact"] and trip["note"] is None and (trip["start"], trip["window"]) == (4, 8)
  assert trip["command"] in r.stdout and row["label"] == "ema(decay=0.3, start_step=4)"
  argv = shlex.split(trip["command"])
  assert argv[:3] == ["python", "-m", "trajax.sidetrip"]
  flags = dict(a[2:].split("=", 1) for a in argv[3:])
  assert flags["step"] == "4" and flags["parent"] == profile_run.run.directory
  # The config it names is the run's own, plus the section holding the post-hoc kernel.
  config = _load_run_config(flags["config"])
  assert config.sidetrip.kind == "equivalent"
  tgt = posthoc.target("ema", end=12, decay=0.3, start_step=4)
  np.testing.assert_array_equal(averaging.as_average(config.sidetrip.average).kernel(), tgt[1][4:])
  stored = config.to_dict()
  del stored["sidetrip"]
  assert stored == profile_run.run.config.to_dict()
  from trajax import state as state_lib

  base = state_lib.make_schedule(config.optimizer, config.total_steps)
  w = schedules.weights_from_kernel(tgt[1][4:])
  lr = np.asarray(base(4 + np.arange(8))) * w
  np.testing.assert_allclose(row["equivalent_schedule"]["lr"], lr, rtol=1e-6)
  # Run it, as printed (our interpreter for `python`).
  env = dict(os.environ, PYTHONPATH=REPO)
  done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=600)  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  trip_run = runs.open_run(flags["workdir"])
  assert trip_run.steps[-1] == 12 and trip_run.lineage["parent_step"] == 4
  assert trip_run.lineage["kind"] == "equivalent"
  assert snapshot(profile_run.workdir) == before
  # A kernel from step 0 (not committed): the command is given with a note saying why not exact.
  r = _cli(f"--workdir={profile_run.workdir}", "--sweep", "--grid=0.3", f"--out={tmp_path / 's'}")
  assert r.returncode == 0, r.stderr[-2000:]
  (row,) = json.loads((tmp_path / "s" / "sweep.json").read_text())["averages"]
  assert not row["sidetrip"]["exact"] and "step S = 0 is not a committed" in row["sidetrip"]["note"]
  # Snapshots the run did not save: a one-line error naming them, nothing written.
  bad = tmp_path / "bad"
  r = _cli(
    f"--workdir={profile_run.workdir}", "--decay=0.3", "--sources=profiles[7]", f"--out={bad}"
  )
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
    "error: sources: 'profiles[7]' needs averaging.profiles[7]"
  )
  assert not bad.exists() and snapshot(profile_run.workdir) == before


@pytest.mark.slow  # end to end: CLI passes, side-trips and evaluations in subprocesses
def test_compare_sidetrip_runs_the_exact_side_trip_beside_the_average(profile_run, tmp_path):
  import json

  before = snapshot(profile_run.workdir)
  out = tmp_path / "cmp"
  args = ("--decay=0.3", "--start_step=4", f"--out={out}", "--compare_sidetrip")
  r = _cli(f"--workdir={profile_run.workdir}", *args)
  assert r.returncode == 0, r.stderr[-2000:]
  (row,) = json.loads((out / "posthoc.json").read_text())["averages"]
  res = row["sidetrip"]["result"]
  assert res["step"] == 12 and 0 <= res["accuracy"] <= 1 and np.isfinite(res["loss"])
  assert f"side-trip at step 12: test loss {res['loss']:.4f}" in r.stdout
  # It is the printed command's run: that workdir now ends at 12, branched at 4.
  trip_run = runs.open_run(row["sidetrip"]["workdir"])
  assert trip_run.steps[-1] == 12 and trip_run.lineage["parent_step"] == 4
  # Evaluated as the average is: recomputing its BatchNorm statistics by the run's policy.
  ev = posthoc.Evaluator(profile_run.run)
  final = trip_run.state_at(12)
  want = ev(*ev.variables(final.params, final.batch_stats))
  assert res["loss"] == pytest.approx(want["loss"], abs=1e-6)
  # A command that is not exact (S = 0 is not saved) is not run, and says why.
  r = _cli(f"--workdir={profile_run.workdir}", "--decay=0.3", f"--out={out}0", "--compare_sidetrip")
  assert r.returncode == 0, r.stderr[-2000:]
  (row,) = json.loads((tmp_path / "cmp0" / "posthoc.json").read_text())["averages"]
  assert "not a committed checkpoint" in row["sidetrip"]["result"]["skipped"]
  assert snapshot(profile_run.workdir) == before


@pytest.mark.slow  # end to end: CLI passes, side-trips and evaluations in subprocesses
def test_sweep_covers_power_ema_and_gaps(profile_run, tmp_path):
  import json

  before = snapshot(profile_run.workdir)
  out = tmp_path / "pow"
  r = _cli(
    f"--workdir={profile_run.workdir}", "--method=power_ema", "--sweep", "--gammas=3,8",
    f"--out={out}",
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-2000:]
  rows = json.loads((out / "sweep.json").read_text())["averages"]
  assert [a["value"] for a in rows] == [3.0, 8.0]
  # γ = 3 is the run's own power-EMA profile at the last step: exact from it.
  assert rows[0]["exact"] and rows[0]["coefficients"] == {"12:profiles[1]": pytest.approx(1.0)}
  # γ = 8 is another kernel: rebuilt from other snapshots, evaluated on its own.
  assert rows[1]["coefficients"] != rows[0]["coefficients"] and rows[1]["loss"] != rows[0]["loss"]
  assert (out / "sweep.png").stat().st_size > 1000
  r = _cli(f"--workdir={profile_run.workdir}", "--method=two_point", "--sweep", f"--out={out}2")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
    "error: --sweep with --method=two_point needs --grid=V1,V2,... (gap values; its record's "
    "sweep has no default grid)"
  )
  assert not (tmp_path / "pow2").exists() and snapshot(profile_run.workdir) == before


SHARDED = textwrap.dedent(r"""
    import json, os, sys
    sys.path[:0] = [os.path.join(REPO, "tests"), REPO]
    import jax, numpy as np
    from jax.sharding import Mesh
    from tests.small_training import FakeDataset, small_config
    from trajax import averaging, models, train

    profiles = ({"method": "power_ema", "gamma": 6.94}, {"method": "ema", "decay": 0.3})
    out, got = {"devices": jax.device_count()}, {}
    for name, devs, shard in (("one", jax.devices()[:1], False), ("four", jax.devices(), True)):
        cfg = small_config(**{"averaging.method": "ema", "averaging.decay": 0.1,
                              "averaging.profiles": profiles, "mesh.shard_params": shard})
        model = models.create_model(cfg.model, num_classes=10)
        mesh = Mesh(np.asarray(devs), ("data",))
        state, shardings = train.create_train_state(cfg, model, (40, 1), mesh)
        step = train.make_train_step(cfg, model, mesh, shardings)
        data = FakeDataset(batch_size=32)
        for i in range(6):
            batch = {k: jax.device_put(v, train.batch_sharding(mesh)) for k, v in data.batch(i).items()}
            state, _ = step(state, batch)
        profs = averaging.find_profiles(state.opt_state).profiles
        if name == "four":
            specs = lambda t: [x.sharding.spec for x in jax.tree.leaves(t)]
            out["same_specs"] = all(specs(p.previous) == specs(state.params) for p in profs)
            out["sharded"] = sum(
                x.addressable_shards[0].data.size < x.size
                for p in profs for x in jax.tree.leaves(p.previous))
        got[name] = jax.device_get(averaging.profile_averages(state.opt_state, state.params))
    out["max_diff"] = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(jax.tree.leaves(got["one"]), jax.tree.leaves(got["four"])))
    print(json.dumps(out))
""")


def test_profiles_are_sharded_like_the_params():
  """4 simulated devices with mesh.shard_params: each profile leaf has its param's sharding,
  and the profiles equal the one-device run's to float32 round-off."""
  import json

  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
  )
  code = f"REPO = {REPO!r}\n" + SHARDED
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4 and out["same_specs"] and out["sharded"] >= 2
  assert out["max_diff"] < 1e-5


def _load_run_config(path: str):
  """``get_config`` of OUT/run_config.py, with its ``:NAME`` argument if ``path`` has one."""
  import importlib.util

  file, _, arg = path.partition(":")
  spec_ = importlib.util.spec_from_file_location("run_config", file)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize(
  "kind", ["ema_from_4", "swa_from_4", "power_ema_every_2", "user_kernel", "from_step_0"]
)
def test_side_trip_written_by_posthoc_runs_the_posthoc_kernel_exactly(profile_run, tmp_path, kind):
  """The side-trip's average is the kernel posthoc built, c_S … c_E, bit for bit: through the
  section file, the fixed run_config.py that reads it, and the side-trip's own resolve and
  learning-rate rule, for any method and parameters (every included) or user weights: no
  parameter names cross over. S is the latest committed step at or before the support."""
  import json
  import shlex

  from trajax import state as state_lib
  from trajax.posthoc import outputs
  from trajax.sidetrip import spec as sidetrip_spec

  run = profile_run.run
  tgt = {
    "ema_from_4": lambda: posthoc.target("ema", end=12, decay=0.3, start_step=4),
    "swa_from_4": lambda: posthoc.target("swa", end=12, start_step=4),
    "power_ema_every_2": lambda: posthoc.target(
      "power_ema", end=12, gamma=2.0, start_step=4, every=2
    ),
    "user_kernel": lambda: posthoc.user_kernel({4: 1.0, 9: 2.0, 12: 1.0}),
    "from_step_0": lambda: posthoc.target("ema", end=12, decay=0.3),
  }[kind]()
  plan = posthoc.plan(run, tgt)
  config_file = outputs.write_run_config(run, str(tmp_path))
  trip = posthoc.sidetrip_command(
    run, plan, out=str(tmp_path), name="trip.json", config_file=config_file, workdir="W"
  )
  c = plan.kernel
  first = int(np.flatnonzero(c)[0])
  start = trip["start"]
  if kind == "from_step_0":
    # No committed step at or before step 0: the command is given, with the reason.
    assert start == 0 and not trip["exact"] and "step S = 0 is not a committed" in trip["note"]
  else:
    assert trip["exact"] and trip["note"] is None
    assert start == max(s for s in run.steps if s <= first) and start in run.steps
  assert trip["window"] == c.size - 1 - start
  # The section is data; the command names it through the fixed config file.
  fields = json.loads((tmp_path / "trip.json").read_text())
  assert fields == trip["fields"] and fields["kind"] == "equivalent"
  argv = shlex.split(trip["command"])
  assert f"--config={config_file}:trip.json" in argv and f"--step={start}" in argv
  assert not any(a.startswith("--config.") for a in argv)
  config = _load_run_config(config_file + ":trip.json")
  assert config.sidetrip.average == fields["average"]
  # The side-trip's average is the posthoc kernel, exactly (the spelling is repr's).
  value = averaging.as_average(config.sidetrip.average)
  assert isinstance(value, averaging.Kernel)
  np.testing.assert_array_equal(value.kernel(), c[start:])
  # ... and its own resolve and learning-rate rule run that kernel's equivalent schedule.
  spec = sidetrip_spec.resolve(config, start)
  base = state_lib.make_schedule(config.optimizer, config.total_steps)
  rule = sidetrip_spec.SidetripRate.of(spec)
  rate = sidetrip_spec.make_lr_schedule(spec, base, rule.hyper(spec, base, start))
  j = np.arange(trip["window"] + 2)
  w = np.cumsum(c[::-1])[::-1][start + 1 :]  # Σ_{i>j} c_{S+i}, written out
  want = np.r_[w, 0.0, 0.0][: j.size] * np.asarray(base(start + j))
  np.testing.assert_allclose(np.asarray(rate(start + j)), want, rtol=1e-6, atol=1e-12)
  s2, k2, sched = posthoc.equivalent_schedule(plan, base, start=start)
  assert (s2, k2) == (start, trip["window"])
  np.testing.assert_allclose(np.asarray(sched(j)), want, rtol=1e-6, atol=1e-12)
  with pytest.raises(ValueError, match="start = 6: the kernel has weight on step 5 before it"):
    posthoc.equivalent_schedule(posthoc.target("swa", end=12, start_step=4)[1], 0.05, start=6)


# --------------------------------------------------------------------------- issues 20, 24: CLI


def _cli_in(cwd, *args):
  """The CLI in ``cwd``; JAX_PLATFORMS=cpu keeps accelerator probing off stderr."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "trajax.posthoc", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=600)


def _one_line_error(r, *, says: str):
  lines = r.stderr.strip().splitlines()
  assert r.returncode != 0 and len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith("error: ") and says in lines[0], lines[0]
  assert "Traceback" not in r.stderr


def _tree(path) -> dict:
  """{relative path: (bytes, mtime_ns)} of every file under ``path``."""
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, path)] = (fh.read(), os.stat(p).st_mtime_ns)
  return out


@pytest.mark.parametrize(
  "args, says",
  [
    (("--decay=nan",), "--decay = nan: decay must be a float in (0, 1]"),
    (("--decay=2",), "--decay = 2.0: decay must be a float in (0, 1]"),
    (("--decay=abc",), "--decay"),
    (("--method=power_ema", "--gamma=-1"), "--gamma = -1.0: gamma must be a float > 0"),
    (("--sweep", "--decays=1e-3,abc"), "--decays: 'abc' is not a number"),
    (("--sweep", "--decays=1e-3,inf"), "--decays = inf: decay must be a float in (0, 1]"),
    (("--decay=0.1", "--threshold=nan"), "--threshold = nan: must be a finite kernel residual"),
    (("--method=bogus", "--decay=0.1"), "--method = 'bogus'"),
    (("--method=swa", "--window=0"), "--window = 0: must be an integer >= 1"),
    (("--average=ema(decay=2)",), "--average = 'ema(decay=2)': average 'ema(decay=2)': decay"),
    (("--average=bogus",), "--average = 'bogus'"),
    (("--param=decay",), "--param = 'decay': must be NAME=VALUE"),
    (("--param=decay=x",), "--param=decay: 'x' is not a number"),
    (("--decay=0.1", "--grid=0.1"), "--grid needs --sweep"),
    (("--average=swa", "--method=swa"), "give --average, or --method with --param, not both"),
    (("--decay=0.1", "--param=decay=0.2"), "--decay and --param=decay both set decay"),
    (("--decay=0.1", "--out=a:b"), "--out = 'a:b' holds ':'"),
  ],
)
def test_cli_errors_are_one_line_before_anything_is_written(ema_run, tmp_path, args, says):
  out = tmp_path / "out"
  r = _cli_in(tmp_path, f"--workdir={ema_run.workdir}", f"--out={out}", *args)
  _one_line_error(r, says=says)
  assert not out.exists()


def test_cli_never_writes_where_it_was_not_asked(ema_run, profile_run, tmp_path):
  before = snapshot(ema_run.workdir), snapshot(profile_run.workdir)
  args = (f"--workdir={ema_run.workdir}", "--decay=0.2", "--start_step=2")
  # --out reaching the run (or its checkpoints) through a symlink; --workdir given through one.
  (tmp_path / "link").symlink_to(ema_run.workdir)
  (tmp_path / "ckpts").symlink_to(os.path.join(ema_run.workdir, "checkpoints"))
  for out in (tmp_path / "link" / "avg", tmp_path / "ckpts"):
    _one_line_error(_cli_in(tmp_path, *args, f"--out={out}"), says="through a symlink")
  r = _cli_in(tmp_path, f"--workdir={tmp_path / 'link'}", "--decay=0.2", f"--out={tmp_path / 'o'}")
  _one_line_error(r, says="--workdir")
  assert not (tmp_path / "o").exists()
  # Another run's workdir, or a directory inside it.
  for out in (profile_run.workdir, os.path.join(profile_run.workdir, "sub")):
    _one_line_error(_cli_in(tmp_path, *args, f"--out={out}"), says="lies inside the run directory")
  # An existing directory with the user's files is not overwritten.
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "run_config.py").write_text("# mine\n")
  _one_line_error(_cli_in(tmp_path, *args, f"--out={mine}"), says="already holds 1 entries")
  assert [p.name for p in mine.iterdir()] == ["run_config.py"]
  assert (mine / "run_config.py").read_text() == "# mine\n"
  # The same --out twice: the second is refused before the pass, nothing rewritten.
  out = tmp_path / "twice"
  r = _cli_in(tmp_path, *args, f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  first = _tree(out)
  assert {"posthoc.json", "run_config.py", "run_config.json"} <= set(first)
  r = _cli_in(tmp_path, *args, f"--out={out}")
  _one_line_error(r, says="already holds")
  assert _tree(out) == first
  assert (snapshot(ema_run.workdir), snapshot(profile_run.workdir)) == before


HOSTILE = 'a"""+str(__import__("os").system("touch PWNED"))+"""b'


def test_a_hostile_run_name_is_data_not_code(tmp_path):
  """The run's directory name reaches no generated code: run_config.py is fixed text, the
  config is JSON beside it, and the printed side-trip command runs with the name quoted."""
  import importlib.util
  import json
  import shlex

  from trajax.posthoc.outputs import RUN_CONFIG_PY

  config = tiny_config(total_steps=6, checkpoint_every_steps=1, eval_every_steps=6,
                       log_every_steps=6, **{"averaging.method": "ema", "averaging.decay": 0.3})  # fmt: skip
  workdir = tmp_path / HOSTILE
  loop.train_and_evaluate(config, str(workdir))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  out = tmp_path / "out"
  r = _cli_in(cwd, f"--workdir={workdir}", "--decay=0.3", "--start_step=2", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (out / "run_config.py").read_text() == RUN_CONFIG_PY and HOSTILE not in RUN_CONFIG_PY
  stored = json.loads((out / "run_config.json").read_text())
  spec = importlib.util.spec_from_file_location("run_config", out / "run_config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config().to_dict() == runs.open_run(str(workdir)).config.to_dict()
  assert stored["averaging"]["decay"] == 0.3
  (row,) = json.loads((out / "posthoc.json").read_text())["averages"]
  trip = row["sidetrip"]
  assert trip["exact"] and f"side-trip (exact): {trip['command']}" in r.stdout
  argv = shlex.split(trip["command"])
  assert f"--parent={workdir}/checkpoints" in argv
  done = subprocess.run(
    [sys.executable, *argv[1:]], capture_output=True, text=True, cwd=str(cwd), timeout=600,
    env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert runs.open_run(trip["workdir"]).steps[-1] == 6
  assert not any(p.name == "PWNED" for p in tmp_path.rglob("*")) and not os.path.exists(
    os.path.join(REPO, "PWNED")
  )


def test_sweep_grid_from_the_run_and_approximate_averages_flagged(profile_run, tmp_path):
  """Without a grid the sweep takes the values the run rebuilds within the threshold; a grid
  beyond it is evaluated and flagged approximate in the JSON, the table and the plot, with
  one line saying what to save next time. One table line per average, sorted, best marked."""
  import json

  before = snapshot(profile_run.workdir)
  out = tmp_path / "chosen"
  r = _cli_in(tmp_path, f"--workdir={profile_run.workdir}", "--method=power_ema", "--sweep",
              f"--out={out}")  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads((out / "sweep.json").read_text())
  rows = report["averages"]
  assert report["grid"] == "chosen from the run" and report["threshold"] == 0.05
  values = [a["value"] for a in rows]
  assert values == sorted(values) and len(values) >= 3
  assert all(a["residual"] <= 0.05 and not a["approximate"] for a in rows)
  # The candidates left out are those beyond the threshold (each planned on its own).
  for g in averaging.get_method("power_ema").sweep.grid:
    res = posthoc.plan(profile_run.run, posthoc.target("power_ema", end=12, gamma=g)).residual
    assert (g in values) == (res <= 0.05), (g, res)
  lines = r.stdout.strip().splitlines()
  # header, one line per average, in training, the side-trip, what was written
  assert len(lines) == len(rows) + 4, r.stdout
  assert sum("<- best" in line for line in lines) == 1 and "approximate" not in r.stdout
  assert r.stderr.count("\n") <= 2 and "orbax" not in r.stderr.lower(), r.stderr
  # A grid beyond what the params alone rebuild: δ = 0.01 needs θ_0 (weight 0.99^12).
  out = tmp_path / "beyond"
  r = _cli_in(tmp_path, f"--workdir={profile_run.workdir}", "--sweep", "--decays=0.9,0.01",
              "--sources=params", f"--out={out}")  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads((out / "sweep.json").read_text())
  rows = report["averages"]
  assert report["grid"] == "given" and [a["value"] for a in rows] == [0.01, 0.9]
  assert rows[0]["approximate"] and rows[0]["residual"] > 1.0 and not rows[1]["approximate"]
  assert report["approximate"] == [rows[0]["label"]]
  assert "'method': 'ema', 'decay': 0.01" in report["save_next_time"]
  assert report["plot_legend"][:2] == [
    "post-hoc (kernel residual ≤ 0.05)",
    "approximate (kernel residual > 0.05)",
  ]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == len(rows) + 5, r.stdout  # ... and the one approximate line
  (approx,) = [line for line in lines if line.startswith("approximate:")]
  assert "1 of 2" in approx and "to make them exact next time" in approx
  (best,) = [line for line in lines if "<- best" in line]
  assert best.startswith(rows[1]["label"]) and "approx." in lines[1] and "approx." not in best
  assert snapshot(profile_run.workdir) == before


def _readme_commands() -> tuple[str, list[str]]:
  """The README's main-run command and its post-hoc commands, as written."""
  import re

  text = open(os.path.join(REPO, "README.md")).read()
  section = text.split("## Averages chosen after training", 1)[1].split("\n## ", 1)[0]
  (main,) = set(re.findall(r"python -m trajax\.main [^`\n]*", section))
  block = section.split("```bash", 1)[1].split("```", 1)[0]
  commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
  assert all(c.startswith("python -m trajax.posthoc ") for c in commands) and len(commands) == 4
  return main.strip(), commands


@pytest.mark.slow
def test_readme_post_hoc_commands_on_the_default_run(tmp_path):
  """The README's default run (configs/mnist1d.py, 6 000 steps) and its post-hoc commands,
  as written (only workdirs/ moved under tmp): the EMA δ = 0.001 and the default sweep within
  the residual threshold, a grid beyond it flagged approximate, the console's line counts."""
  import json
  import shlex

  main, commands = _readme_commands()
  root = tmp_path / "workdirs"
  root.mkdir()
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

  def run(command):
    argv = shlex.split(command.replace("workdirs/", f"{root}/"))
    assert argv[0] == "python"
    r = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=1800)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r

  run(main)
  assert runs.open_run(str(root / "mnist1d")).steps == list(range(500, 6001, 500))
  outs = {}
  for command in commands:
    r = run(command)
    out = root / shlex.split(command)[-1].split("workdirs/", 1)[1]
    name = "sweep.json" if "--sweep" in command else "posthoc.json"
    report = json.loads((out / name).read_text())
    rows = report["averages"]
    for a in rows:
      assert a["approximate"] == (a["residual"] > 0.05)
    extra = (1 if report.get("in_training") else 0) + (1 if report["approximate"] else 0)
    assert len(r.stdout.strip().splitlines()) == 1 + len(rows) + extra + 2, r.stdout
    assert "INFO" not in r.stderr and "orbax" not in r.stderr.lower()
    outs[out.name] = rows
  (ema,) = outs["ema001"]
  assert ema["label"] == "ema(decay=0.001)" and ema["residual"] <= 0.05
  sweep = outs["ema_sweep"]
  assert len(sweep) >= 5 and all(a["residual"] <= 0.05 for a in sweep)
  assert min(a["value"] for a in sweep) <= 1e-3 <= max(a["value"] for a in sweep)
  pow_ = {a["value"]: a for a in outs["pow"]}
  assert not pow_[7.0]["approximate"] and not pow_[17.0]["approximate"]
  assert pow_[40.0]["approximate"]


def test_save_next_time_names_the_profiles_or_the_pair(profile_run):
  one = posthoc.save_next_time(profile_run.run, [("ema", {"decay": 0.01})])
  assert "{'method': 'ema', 'decay': 0.01}" in one and "max_to_keep=None" in one
  # The run's own profiles stay in the suggested tuple, first.
  assert one.index("'decay': 0.3") < one.index("'decay': 0.01")
  grid = posthoc.save_next_time(profile_run.run, [("ema", {"decay": d}) for d in (1, 2, 3, 4)])
  assert "'gamma': 16.97}, {'method': 'power_ema', 'gamma': 6.94}" in grid
  swa = posthoc.save_next_time(profile_run.run, [("swa", {"start_step": 4})])
  assert swa.startswith("to make them exact next time, keep every step")


# --------------------------------------------------------------------------- issue 19: generated CLI

# A method the posthoc CLI never knew, with a parameter no method had: an EMA spelt by its time
# constant τ (δ = 1/τ). Registered in the test process and in the CLI's subprocess alike.
TOY = textwrap.dedent(r"""
    import numpy as np
    from trajax import averaging

    def register_toy():
      tau = averaging.Param("tau", "float", "a float >= 1", lambda v: v >= 1)

      def toy(tau, *, start_step=0, accumulator_dtype=np.float32):
        return averaging.ema_averager(
          1.0 / tau, start_step=start_step, accumulator_dtype=accumulator_dtype
        )

      return averaging.register(averaging.Method(
        "toy_tau", (tau, averaging.START_STEP, averaging.ACCUMULATOR_DTYPE), toy,
        sweep=averaging.Sweep("tau", "float", (2.5, 10.0, 3)),
      ))
""")


@pytest.fixture
def toy_method():
  scope: dict = {}
  exec(TOY, scope)  # our own source above, shared with the CLI's subprocess
  yield scope["register_toy"]()
  averaging.METHODS.pop("toy_tau")


def _flags(*argv):
  from absl import flags

  from trajax.posthoc import cli

  fv = flags.FlagValues()
  cli.define_flags(fv)
  fv(["posthoc", "--workdir=w", "--out=o", *argv])
  return fv


def test_flags_and_sweep_are_generated_for_a_method_registered_later(toy_method):
  from trajax.posthoc import cli

  # The old spellings come from the registry: the toy's τ gets --tau and --taus like decay.
  fv = _flags()
  assert {"tau", "taus", "decay", "decays", "gamma", "gap", "start_step"} <= set(fv)
  assert cli.deprecated_flags()["taus"] == ("grid", "tau")
  req = cli.request(_flags("--method=toy_tau", "--param=tau=4", "--param=start_step=2"))
  assert (req.method, req.params, req.sweep, req.notes) == (
    "toy_tau",
    {"tau": 4.0, "start_step": 2},
    None,
    (),
  )
  assert cli.request(_flags("--average=toy_tau(tau=4, start_step=2)")).params == req.params
  old = cli.request(_flags("--method=toy_tau", "--tau=4", "--start_step=2"))
  assert old.params == req.params and set(old.notes) == {
    "note: --tau is deprecated: use --param=tau=4",
    "note: --start_step is deprecated: use --param=start_step=2",
  }
  # The sweep: the record's parameter and default grid, or --grid (or the old --taus).
  sweep = cli.request(_flags("--method=toy_tau", "--sweep"))
  assert sweep.sweep == "tau" and sweep.grid is None and cli.default_grid(sweep) == [2.5, 5.0, 10.0]
  assert cli.request(_flags("--method=toy_tau", "--sweep", "--grid=3,6")).grid == [3.0, 6.0]
  assert cli.request(_flags("--method=toy_tau", "--sweep", "--taus=3")).grid == [3.0]
  assert cli.target_params(sweep, 12, 5.0) == {"tau": 5.0}
  # Its values are checked by its record, one line naming the flag.
  for argv, says in (
    (("--method=toy_tau", "--param=tau=0.5"), "--param=tau = 0.5: tau must be a float >= 1"),
    (("--method=toy_tau", "--decay=0.1"), "--decay = 0.1: --method=toy_tau takes no decay"),
    (("--method=toy_tau", "--sweep", "--grid=3,x"), "--grid: 'x' is not a number"),
    (("--average=toy_tau(tau=0)",), "--average = 'toy_tau(tau=0)'"),
  ):
    with pytest.raises(ValueError, match=re.escape(says)):
      cli.request(_flags(*argv))
  with pytest.raises(
    ValueError, match=re.escape("--method=toy_tau needs tau: --param=tau=V (or --sweep)")
  ):
    cli.target_params(cli.request(_flags("--method=toy_tau")), 12)


def test_a_method_registered_later_reaches_the_command_line(ema_run, tmp_path):
  """The toy method, registered before the CLI is imported: swept over its record's default
  grid; τ = 5 is the run's own EMA (δ = 0.2 from step 2), so it has the in-training metrics."""
  import json

  before = snapshot(ema_run.workdir)
  out = tmp_path / "toy"
  code = (
    f"REPO = {REPO!r}\nimport sys\nsys.path.insert(0, REPO)\n" + TOY + "register_toy()\n"
    "from trajax.posthoc import __main__ as cli_main\n"
    f"sys.argv = ['posthoc', '--workdir={ema_run.workdir}', '--out={out}', "
    "'--method=toy_tau', '--sweep', '--param=start_step=2']\n"
    "cli_main.run_main()\n"
  )
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                     cwd=str(tmp_path), timeout=600)  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads((out / "sweep.json").read_text())
  rows = report["averages"]
  assert report["sweep"] == "tau" and report["grid"] == "chosen from the run"
  assert [a["value"] for a in rows] == [2.5, 5.0, 10.0]
  assert [a["label"] for a in rows][1] == "toy_tau(start_step=2, tau=5.0)"
  assert all(a["exact"] and a["sidetrip"]["exact"] for a in rows)
  assert rows[1]["loss"] == pytest.approx(report["in_training"]["loss"], abs=1e-5)
  assert rows[0]["loss"] != rows[2]["loss"]
  assert snapshot(ema_run.workdir) == before
