"""trajax.posthoc: averages rebuilt from checkpoints, against runs that averaged in training.

Two tiny mnist1d runs (12 steps, a checkpoint at every step): one with EMA
(δ = 0.2 from step 2), one with SWA from step 4. Their in-training averages
are the reference for the exact case; the least-squares case is checked for
optimality against random feasible combinations, and its params against a
NumPy sum of the restored snapshots.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from tests.test_sidetrip import REPO, snapshot, tiny_config
from trajax import averaging, posthoc, runs, schedules, train


def _run(tmp_path_factory, name, **avg):
  config = tiny_config(
    total_steps=12,
    checkpoint_every_steps=1,
    eval_every_steps=12,
    log_every_steps=6,
    **{f"averaging.{k}": v for k, v in avg.items()},
  )
  workdir = tmp_path_factory.mktemp(name) / "run"
  train.train_and_evaluate(config, str(workdir))
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
  r = _cli(f"--workdir={ema_run.workdir}", "--method=ema", f"--out={tmp_path / 'x'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
    "error: --method=ema needs --decay (or --sweep)"
  )
  r = _cli(f"--workdir={ema_run.workdir}", "--decay=0.1", f"--out={ema_run.workdir}/avg")
  assert r.returncode == 1 and "lies inside the run's directory" in r.stderr.splitlines()[-1]
  assert snapshot(ema_run.workdir) == before
