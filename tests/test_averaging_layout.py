"""Checkpoints of the averaging layout before issue 23 restore and continue (issue 23, item 2).

``tests/fixtures/averaging_layout_2026_12`` was written by the code of that
day (``tests/fixtures/make_averaging_layout_fixture.py``): each wrapper's
average without its newest point (``partial + w·θ_t``), multi-point snapshots
a shift register. Restored by today's code into today's layout (the lerp form
and the ring buffer, converted by :mod:`trajax.checkpoint_layout`), every
average reads back what the old code read, and continues the average's
definition (the float64 NumPy reference of ``test_averaging``) as if the run
had never stopped.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.averaging_reference import reference_average
from trajax import averaging, checkpoint_layout
from trajax import checkpoint as ckpt_lib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fixtures"))
import make_averaging_layout_fixture as fx  # noqa: E402

FIXTURE = os.path.join(HERE, "fixtures", fx.NAME)
T, MORE = fx.STEPS, 9

# The definitions of the fixture's averages (method, parameters), written out again.
SPECS = {
  "ema": ("ema", dict(decay=0.1, start_step=2)),
  "ema_debias": ("ema", dict(decay=0.2, debias=True, every=2)),
  "swa": ("swa", dict(start_step=3)),
  "power_ema": ("power_ema", dict(gamma=3.0)),
  "two_point": ("two_point", dict(gap=4)),
  "multi_at_snapshot": ("multi_point", dict(n=4, gap=2, start_step=1)),
  "multi_between": ("multi_point", dict(n=3, gap=3)),
  "multi_following": ("multi_point", dict(n=2, gap=2, start_step=20)),
  "engine": ("ema", dict(decay=0.05)),
}
PROFILES = [
  ("power_ema", dict(gamma=5.0)),
  ("multi_point", dict(n=3, gap=2)),
  ("ema", dict(decay=0.3)),
]


def thetas(steps):
  return [jax.tree.map(jnp.asarray, fx.trajectory(t)) for t in range(steps + 1)]


def reference(method, params, theta_list):
  """a_t (t = len − 1) of every leaf, float64, from the definitions."""
  return {
    k: reference_average(method, np.stack([np.asarray(th[k]) for th in theta_list]), **params)[-1]
    for k in theta_list[0]
  }


@pytest.fixture(scope="module")
def restored():
  theta0 = jax.tree.map(jnp.asarray, fx.trajectory(0))
  opts = fx.wrappers()
  target = {
    "params": theta0,
    "opt_state": {name: opt.init(theta0) for name, opt in opts.items()},
    "bn_average": fx.bn_averager().init(theta0),
  }
  state, meta = ckpt_lib.restore_readonly(FIXTURE, step=T, target=target)
  return opts, state, meta


def test_the_fixture_is_of_the_old_layout():
  item = os.path.join(FIXTURE, str(T), "state")
  stored = checkpoint_layout.stored_in_old_layout(item)
  assert stored is not None
  assert set(stored["opt_state"]["ema"]) == {
    "inner_state", "count", "partial", "partial_snapshots", "newest_weight"
  }  # fmt: skip


def test_old_layout_reads_back_what_the_old_code_read(restored):
  opts, state, meta = restored
  assert meta["fixture"] == fx.NAME
  expected = np.load(os.path.join(FIXTURE, "expected.npz"))
  params = state["params"]
  for name in opts:
    s = state["opt_state"][name]
    assert isinstance(s, averaging.AveragingState)
    got = averaging.averaged_params(s, params)
    for k in params:
      np.testing.assert_allclose(np.asarray(got[k]), expected[f"{name}/{k}"], rtol=2e-7)
  profiles = averaging.profile_averages(state["opt_state"]["engine"], params)
  assert len(profiles) == len(PROFILES)
  for i, prof in enumerate(profiles):
    for k in params:
      np.testing.assert_allclose(np.asarray(prof[k]), expected[f"engine/profile{i}/{k}"], rtol=2e-7)
  # The pure averager's state (bn_average) kept its layout: restored as stored.
  for k in params:
    np.testing.assert_array_equal(
      np.asarray(state["bn_average"].average[k]), expected[f"bn_average/{k}"]
    )


def test_old_layout_continues_the_definition(restored):
  """T more updates by today's code from the converted state: at every step the
  average is the definition's over θ_0 … θ_t (float64 NumPy), across the
  multi-point ring's wrap-around and the old shift register's snapshots."""
  opts, state, _ = restored
  theta = thetas(T + MORE)
  zeros = jax.tree.map(jnp.zeros_like, theta[0])
  states = dict(state["opt_state"])
  bn = state["bn_average"]
  for t in range(T, T + MORE + 1):
    for name, (method, params) in SPECS.items():
      got = averaging.averaged_params(states[name], theta[t])
      want = reference(method, params, theta[: t + 1])
      for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, err_msg=f"{name} {t}")
    np.testing.assert_array_equal(
      np.asarray(averaging.averaged_params(states["none"], theta[t])["w"]), theta[t]["w"]
    )
    for (method, params), prof in zip(
      PROFILES, averaging.profile_averages(states["engine"], theta[t]), strict=True
    ):
      want = reference(method, params, theta[: t + 1])
      for k in want:
        np.testing.assert_allclose(np.asarray(prof[k]), want[k], rtol=1e-5, err_msg=f"{method} {t}")
    want = reference("multi_point", dict(n=3, gap=2), theta[: t + 1])
    for k in want:
      np.testing.assert_allclose(np.asarray(bn.average[k]), want[k], rtol=1e-5)
    if t < T + MORE:
      states = {n: opts[n].update(zeros, s, theta[t])[1] for n, s in states.items()}
      bn = fx.bn_averager().update(theta[t + 1], bn)
