"""trajax.train: schedules, the pure step against NumPy, non-finite handling, BN recompute, a run.

The small runs (``FakeDataset``, ``small_config``) come from the helper module
``tests/small_training.py``.
"""

from __future__ import annotations

import json
import math
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.small_training import FakeDataset, small_config
from trajax import averaging, loop, train
from trajax import checkpoint as ckpt_lib


class Linear(nn.Module):
  """Softmax regression: the gradient has a closed form for the NumPy reference."""

  k: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.k)(x.reshape(x.shape[0], -1))


class DenseBN(nn.Module):
  """Dense(4) -> BatchNorm -> Dense: BN statistics of known features."""

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(4, name="first")(x.reshape(x.shape[0], -1))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.8, name="bn")(h)
    return nn.Dense(3)(nn.relu(h))


def one_device_mesh():
  return jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
  "schedule,warmup,expect",
  [
    ("constant", 0, lambda t: 0.1),
    ("cosine", 0, lambda t: 0.05 * (1 + math.cos(math.pi * t / 100))),
    ("linear", 0, lambda t: 0.1 * (1 - t / 100)),
    ("step", 0, lambda t: 0.1 * 0.5 ** ((t >= 30) + (t >= 60))),
    (
      "cosine",
      20,
      lambda t: 0.1 * t / 20 if t < 20 else 0.05 * (1 + math.cos(math.pi * (t - 20) / 80)),
    ),
  ],
)
def test_schedule_matches_closed_form(schedule, warmup, expect):
  c = small_config(
    **{
      "total_steps": 100,
      "optimizer.lr": 0.1,
      "optimizer.schedule": schedule,
      "optimizer.warmup_steps": warmup,
      "optimizer.step_boundaries": (30, 60),
      "optimizer.step_factor": 0.5,
    }
  )
  sched = train.make_schedule(c.optimizer, c.total_steps)
  for t in (0, 1, 19, 20, 29, 30, 59, 60, 61, 99):
    np.testing.assert_allclose(float(sched(t)), expect(t), rtol=1e-5, atol=1e-7, err_msg=str(t))


# --------------------------------------------------------------------------- the pure step


def _numpy_reference(x_steps, y_steps, w, b, *, lr, mu, wd, decay):
  """SGD + heavy-ball momentum + L2 on the kernel + EMA of (w, b), in float64."""
  mw, mb = np.zeros_like(w), np.zeros_like(b)
  aw, ab = w.copy(), b.copy()
  for x, y in zip(x_steps, y_steps, strict=True):
    x = x.reshape(x.shape[0], -1)
    z = x @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    d = p - np.eye(w.shape[1])[y]
    gw = x.T @ d / x.shape[0] + wd * w
    gb = d.mean(0)
    mw, mb = mu * mw + gw, mu * mb + gb
    w, b = w - lr * mw, b - lr * mb
    aw, ab = (1 - decay) * aw + decay * w, (1 - decay) * ab + decay * b
  return w, b, aw, ab


def test_train_step_matches_numpy_sgd_momentum_ema():
  c = small_config(
    **{
      "optimizer.lr": 0.3,
      "optimizer.momentum": 0.9,
      "optimizer.weight_decay": 0.01,
      "averaging.method": "ema",
      "averaging.decay": 0.25,
    }
  )
  model, mesh = Linear(), one_device_mesh()
  state, shardings = train.create_train_state(c, model, (5,), mesh)
  p0 = jax.device_get(state.params)
  w0, b0 = np.float64(p0["Dense_0"]["kernel"]), np.float64(p0["Dense_0"]["bias"])
  step = train.make_train_step(c, model, mesh, shardings)
  r = np.random.default_rng(1)
  xs = [r.normal(size=(8, 5)).astype(np.float32) for _ in range(3)]
  ys = [r.integers(0, 3, 8).astype(np.int32) for _ in range(3)]
  for x, y in zip(xs, ys, strict=True):
    state, metrics = step(state, {"image": jnp.asarray(x), "label": jnp.asarray(y)})
  w, b, aw, ab = _numpy_reference(xs, ys, w0, b0, lr=0.3, mu=0.9, wd=0.01, decay=0.25)
  got = jax.device_get(state.params)["Dense_0"]
  np.testing.assert_allclose(got["kernel"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["bias"], b, rtol=1e-5, atol=1e-6)
  avg = jax.device_get(averaging.averaged_params(state.opt_state, state.params))["Dense_0"]
  np.testing.assert_allclose(avg["kernel"], aw, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(avg["bias"], ab, rtol=1e-5, atol=1e-6)
  assert int(state.step) == 3
  assert float(metrics["ok"]) == 1.0 and float(metrics["lr"]) == pytest.approx(0.3)


def _nan_batch(x, y):
  x = x.copy()
  x[0, 0] = np.nan
  return {"image": jnp.asarray(x), "label": jnp.asarray(y)}


def test_nonfinite_step_freezes_state_and_names_the_step():
  c = small_config(**{"averaging.method": "ema", "averaging.decay": 0.5})
  model, mesh = Linear(), one_device_mesh()
  state, shardings = train.create_train_state(c, model, (5,), mesh)
  step = train.make_train_step(c, model, mesh, shardings)
  r = np.random.default_rng(0)
  x, y = r.normal(size=(8, 5)).astype(np.float32), r.integers(0, 3, 8).astype(np.int32)
  good = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  state, _ = step(state, good)
  before = jax.device_get(state)
  state, metrics = step(state, _nan_batch(x, y))
  after = jax.device_get(state)
  # The bad step changed nothing but the health record.
  for a, b in zip(jax.tree.leaves(before[:-1]), jax.tree.leaves(after[:-1]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(after.health.bad_step) == 1
  assert int(after.health.bad_what) & 1 and int(after.health.bad_what) & 2
  assert float(metrics["ok"]) == 0.0
  # Frozen: a later good step is a no-op too.
  state, _ = step(state, good)
  np.testing.assert_array_equal(
    jax.device_get(state.params)["Dense_0"]["kernel"], before.params["Dense_0"]["kernel"]
  )
  err = train.health_error(jax.device_get(state.health), "/ckpt/1")
  assert "loss" in str(err) and "gradient" in str(err) and "step 1" in str(err)
  assert "/ckpt/1" in str(err)


def test_skip_nonfinite_keeps_averages_and_caps_consecutive_skips():
  c = small_config(
    **{
      "averaging.method": "ema",
      "averaging.decay": 0.5,
      "nonfinite.skip": True,
      "nonfinite.max_consecutive_skips": 2,
    }
  )
  model, mesh = Linear(), one_device_mesh()
  state, shardings = train.create_train_state(c, model, (5,), mesh)
  step = train.make_train_step(c, model, mesh, shardings)
  r = np.random.default_rng(0)
  x, y = r.normal(size=(8, 5)).astype(np.float32), r.integers(0, 3, 8).astype(np.int32)
  good = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  state, _ = step(state, good)
  before = jax.device_get(state)
  state, _ = step(state, _nan_batch(x, y))
  after = jax.device_get(state)
  assert int(after.step) == 2  # the batch was consumed
  assert int(after.health.total_skips) == 1 and int(after.health.bad_step) == -1
  for a, b in zip(
    jax.tree.leaves((before.params, before.opt_state)),
    jax.tree.leaves((after.params, after.opt_state)),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)  # params, momentum and the EMA did not move
  state, _ = step(state, good)  # a good step resets the run of skips
  assert int(state.health.consecutive_skips) == 0
  for _ in range(3):
    state, _ = step(state, _nan_batch(x, y))
  assert int(state.health.bad_step) == 5  # the third consecutive skip exceeds the cap of 2
  assert int(state.health.total_skips) == 3


# --------------------------------------------------------------------------- BN recompute


def test_recompute_batch_stats_is_cumulative_mean_of_batch_moments():
  model, mesh = DenseBN(), one_device_mesh()
  r = np.random.default_rng(3)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)), train=False)
  batches = [
    {
      "image": (r.normal(size=(16, 6)) * (i + 1) + i).astype(np.float32),
      "label": np.zeros(16, np.int32),
    }
    for i in range(3)
  ]
  ev = train.Evaluator(model, mesh)
  stats = ev.recompute_batch_stats(variables["params"], variables["batch_stats"], batches)
  k = np.float64(variables["params"]["first"]["kernel"])
  b = np.float64(variables["params"]["first"]["bias"])
  hs = [np.float64(bt["image"]) @ k + b for bt in batches]
  np.testing.assert_allclose(
    stats["bn"]["mean"], np.mean([h.mean(0) for h in hs], 0), rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    stats["bn"]["var"], np.mean([h.var(0) for h in hs], 0), rtol=1e-4, atol=1e-5
  )


def test_evaluation_variables_is_the_config_batch_norm_policy():
  model, mesh = DenseBN(), one_device_mesh()
  r = np.random.default_rng(4)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)), train=False)
  batches = [
    {"image": (r.normal(size=(8, 6)) + i).astype(np.float32), "label": np.zeros(8, np.int32)}
    for i in range(4)
  ]
  dataset = types.SimpleNamespace(fixed_train_batch=lambda i: batches[i])
  ev = train.Evaluator(model, mesh)
  params, given = variables["params"], jax.tree.map(lambda x: x + 7.0, variables["batch_stats"])

  def config(policy):
    avg = types.SimpleNamespace(batch_norm=policy, bn_recompute_batches=3)
    return types.SimpleNamespace(averaging=avg)

  p, stats = train.evaluation_variables(
    params, given, config=config("recompute"), evaluator=ev, dataset=dataset
  )
  assert p is params
  expect = ev.recompute_batch_stats(params, given, batches[:3])  # the first 3 fixed batches only
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(expect), strict=True):
    np.testing.assert_array_equal(a, b)
  _, stats = train.evaluation_variables(
    params, given, config=config("average"), evaluator=ev, dataset=dataset
  )
  assert stats is given
  # The policy argument overrides the config's.
  _, stats = train.evaluation_variables(
    params, given, config=config("average"), evaluator=ev, dataset=dataset, policy="recompute"
  )
  np.testing.assert_array_equal(stats["bn"]["mean"], expect["bn"]["mean"])
  with pytest.raises(ValueError, match="'swa'.*recompute"):
    train.evaluation_variables(params, given, config=config("swa"), evaluator=ev, dataset=dataset)


# --------------------------------------------------------------------------- the driver


def test_train_and_evaluate_writes_metrics_checkpoints_and_learns(tmp_path):
  c = small_config(**{"averaging.method": "two_point", "averaging.gap": 10})
  workdir = tmp_path / "run"
  result = loop.train_and_evaluate(c, str(workdir), dataset=FakeDataset())
  assert result.step == 40 and not result.preempted
  assert set(result.eval) == {"raw", "avg"}
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert [r["step"] for r in records if "train/loss" in r] == [10, 20, 30, 40]
  assert losses[-1] < losses[0]
  assert any("eval_avg/loss" in r for r in records)
  assert ckpt_lib.committed_steps(str(workdir / "checkpoints")) == [20, 30, 40]  # max_to_keep 3
  meta = ckpt_lib.read_metadata(str(workdir / "checkpoints"), 40)
  assert meta["data_position"] == 40 and meta["config"]["total_steps"] == 40
  assert meta["versions"]["jax"] == jax.__version__
  assert os.path.isdir(workdir) and any(n.startswith("events.out") for n in os.listdir(workdir))


def test_nonfinite_run_stops_with_error_and_commits_nothing_bad(tmp_path):
  c = small_config()
  workdir = tmp_path / "nan"
  with pytest.raises(train.NonFiniteError) as e:
    loop.train_and_evaluate(c, str(workdir), dataset=FakeDataset(nan_steps={25}))
  msg = str(e.value)
  assert "loss" in msg and "step 25" in msg
  assert os.path.join(str(workdir), "checkpoints", "20") in msg
  steps = ckpt_lib.committed_steps(str(workdir / "checkpoints"))
  assert steps == [10, 20]
  for s in steps:
    tree, _ = ckpt_lib.restore_readonly(str(workdir), step=s)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def _run_records(workdir):
  timing = ("steps_per_sec", "uptime", "train/input_wait_fraction")
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [{k: v for k, v in r.items() if k not in timing} for r in records]


@pytest.mark.parametrize("dataset_name", ["mnist1d", "digits"])
def test_device_resident_input_changes_no_number_of_a_run(tmp_path, dataset_name):
  # The default path gathers batches from the device-resident pool inside the
  # step; batches=dataset.train_batches forces the host pipeline. Same run,
  # bit for bit: every logged metric and evaluation, the fingerprints, the state.
  from trajax import data as data_lib
  from trajax import loop

  overrides = {"log_batch_fingerprints": True, "dataset.name": dataset_name}
  model = None
  if dataset_name == "digits":  # 8x8 images, pad-crop augmentation, a small 2-D model
    overrides["dataset.augment"] = True
    model = Linear(k=10)
  c = small_config(**overrides)
  c.data_dir = str(tmp_path / "data")
  dataset = data_lib.get_dataset(c)
  kw = dict(dataset=dataset, model=model)
  dev = loop.fit(c, str(tmp_path / "device"), **kw)
  hst = loop.fit(c, str(tmp_path / "host"), batches=dataset.train_batches, **kw)
  assert dev.step == hst.step == 40
  assert _run_records(tmp_path / "device") == _run_records(tmp_path / "host")
  assert [r["step"] for r in _run_records(tmp_path / "device") if "train/loss" in r] == [
    10,
    20,
    30,
    40,
  ]
  fps = [open(tmp_path / d / "batch_fingerprints.jsonl").read() for d in ("device", "host")]
  assert fps[0] == fps[1] and fps[0].count("\n") == 40
  for a, b in zip(jax.tree.leaves(dev.state), jax.tree.leaves(hst.state), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# --------------------------------------------------------------------------- replays (runs.Stepper)


def _replay_parent(tmp_path, dataset, **overrides):
  from trajax import loop, models, runs

  c = small_config(total_steps=20, **overrides)
  model = models.create_model(c.model, num_classes=int(dataset.info.num_classes))
  loop.train_and_evaluate(c, str(tmp_path / "run"), dataset=dataset, model=model)
  return runs, runs.open_run(str(tmp_path / "run"), model=model, dataset=dataset)


def test_stepper_stops_on_a_nonfinite_step_as_fit_does(tmp_path):
  from trajax import loop

  runs, run = _replay_parent(tmp_path, FakeDataset())
  # The replay reads a batch the run never saw go bad: step 13's is NaN.
  run.dataset = FakeDataset(nan_steps={13})
  stepper = runs.Stepper.at(run, 10)
  with pytest.raises(train.NonFiniteError, match=r"non-finite loss.* at step 13") as e:
    stepper.advance_to(20)  # the log point 20 reads the health; before, it froze silently
  assert "step 10 (the replay's start)" in str(e.value)
  assert int(stepper.state.step) == 13  # frozen at the last good state
  # fit on the same data stops with the same message (up to the last good checkpoint).
  with pytest.raises(train.NonFiniteError) as fit_error:
    loop.train_and_evaluate(
      small_config(total_steps=20), str(tmp_path / "bad"), dataset=run.dataset
    )
  assert str(fit_error.value).split("; last good")[0] == str(e.value).split("; last good")[0]
  # With nonfinite.skip the bad step is skipped and the replay goes on.
  (tmp_path / "skip").mkdir()
  runs, run = _replay_parent(tmp_path / "skip", FakeDataset(), **{"nonfinite.skip": True})
  run.dataset = FakeDataset(nan_steps={13})
  stepper = runs.Stepper.at(run, 10)
  stepper.advance_to(20)
  assert int(stepper.state.step) == 20 and int(stepper.state.health.total_skips) == 1


def test_stepper_gathers_from_the_device_pool_and_replays_bit_for_bit(tmp_path):
  from trajax import data as data_lib

  c = small_config(total_steps=20)
  c.data_dir = str(tmp_path / "data")
  runs, run = _replay_parent(tmp_path, data_lib.get_dataset(c), data_dir=c.data_dir)
  stepper = runs.Stepper.at(run, 10)
  assert stepper.pool is not None  # mnist1d is in memory: fit gathers on the device too
  stepper.advance_to(20)
  want, _ = ckpt_lib.restore_readonly(str(tmp_path / "run"), step=20)
  got = jax.device_get(stepper.state)
  assert np.asarray(got.step) == 20
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want["params"]), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # A second replay of the run shares the pool.
  assert runs.Stepper.at(run, 10).pool is stepper.pool
