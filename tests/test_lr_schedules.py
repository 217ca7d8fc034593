"""A schedule is a value: one registry, used by the main run, side-trips and the config check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trajax import config as config_lib
from trajax import lr_schedules, sidetrip, state


def optimizer(**fields):
  opt = config_lib.base_config().optimizer
  opt.lr, opt.step_boundaries, opt.step_factor = 0.1, (30, 60), 0.5
  for k, v in fields.items():
    opt[k] = v
  return opt


def reference_main_run(opt, total):
  """The main run's η_t as optax composes it (the if-chain the registry replaced)."""
  lr, warmup = float(opt.lr), int(opt.warmup_steps)
  rest = max(total - warmup, 1)
  main = {
    "constant": lambda: optax.constant_schedule(lr),
    "cosine": lambda: optax.cosine_decay_schedule(lr, rest),
    "linear": lambda: optax.linear_schedule(lr, 0.0, rest),
    "step": lambda: optax.piecewise_constant_schedule(
      lr, {b - warmup: 0.5 for b in (30, 60) if b - warmup > 0}
    ),
  }[opt.schedule]()
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "step"])
@pytest.mark.parametrize("warmup", [0, 5, 40])
def test_main_run_schedule_is_the_registrys_and_bit_exact(name, warmup):
  opt = optimizer(schedule=name, warmup_steps=warmup)
  t = jnp.arange(0, 130, dtype=jnp.int32)
  got = jax.jit(jax.vmap(state.make_schedule(opt, 100)))(t)
  want = jax.jit(jax.vmap(reference_main_run(opt, 100)))(t)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  eager = [float(state.make_schedule(opt, 100)(int(i))) for i in (0, 7, 44, 99)]
  assert eager == [float(reference_main_run(opt, 100)(int(i))) for i in (0, 7, 44, 99)]


def test_registry_names_are_what_the_config_check_and_side_trips_read():
  assert config_lib.SCHEDULES is lr_schedules.SCHEDULES
  assert set(lr_schedules.SCHEDULES) >= {"constant", "cosine", "linear", "step"}
  assert sidetrip.SCHEDULES == ("config", "constant", "cosine", "linear")
  for spec in lr_schedules.SCHEDULES.values():
    for f in spec.fields:  # every builder field is an optimizer field
      assert f in config_lib.base_config().optimizer, (spec.name, f)
  with pytest.raises(ValueError, match=r"optimizer.schedule must be one of .*got 'exp'"):
    lr_schedules.get("exp")
  problems = config_lib.check_optimizer(optimizer(schedule="step", step_boundaries=(60, 30)))
  assert [str(p) for p in problems] == [
    "optimizer.step_boundaries = (60, 30): must be strictly increasing"
  ]


def halving(lr, horizon, *, start=0):
  """A toy schedule: η_0 / 2 after half the horizon."""
  return optax.piecewise_constant_schedule(lr, {max(horizon // 2, 1): 0.5})


@pytest.fixture
def toy_schedule():
  lr_schedules.register(lr_schedules.LrSchedule("halving", halving, horizon=True))
  yield "halving"
  del lr_schedules.SCHEDULES["halving"]


def test_a_registered_schedule_reaches_the_config_main_run_and_side_trips(toy_schedule):
  opt = optimizer(schedule=toy_schedule)
  assert config_lib.check_optimizer(opt, total_steps=100) == []
  eta = state.make_schedule(opt, 100)
  assert float(eta(49)) == pytest.approx(0.1) and float(eta(50)) == pytest.approx(0.05)
  assert toy_schedule in sidetrip.spec.schedule_names()
  rate = sidetrip.SidetripRate("schedule", toy_schedule)
  hyper = {"start": jnp.int32(10), "scale": jnp.float32(0.2), "horizon": jnp.float32(4)}
  got = np.asarray(jax.vmap(rate(None, hyper))(jnp.arange(10, 16)))
  # Read at the progress j/k on a unit horizon: the halving lands at j/k >= 1.
  np.testing.assert_allclose(got, [0.2, 0.2, 0.2, 0.2, 0.1, 0.1], rtol=1e-7)


def old_side_trip_rate(name, start, scale, horizon):
  """The side-trip formulas before the registry (kept here as the bit-exact reference)."""

  def rate(t):
    if name == "constant":
      return jnp.broadcast_to(scale, jnp.shape(t)).astype(jnp.float32)
    frac = jnp.clip((jnp.asarray(t) - start).astype(jnp.float32) / horizon, 0.0, 1.0)
    if name == "linear":
      return scale * (1.0 - frac)
    return scale * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

  return rate


@pytest.mark.parametrize("name", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("k", [3, 20, 997])
def test_side_trip_schedules_are_the_registrys_bit_for_bit(name, k):
  s, scale = 100, 0.1 * 0.73
  hyper = {"start": jnp.int32(s), "scale": jnp.float32(scale), "horizon": jnp.float32(k)}
  t = jnp.arange(s, s + k + 4, dtype=jnp.int32)
  rate = sidetrip.SidetripRate("schedule", name)

  @jax.jit
  def both(t, hyper):
    new = jax.vmap(rate(None, hyper))(t)
    old = jax.vmap(old_side_trip_rate(name, hyper["start"], hyper["scale"], hyper["horizon"]))(t)
    return new, old

  new, old = both(t, hyper)
  np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
  # ... and both are the closed form (float64 reference).
  j = np.clip(np.arange(k + 4), 0, k) / k
  want = {
    "constant": np.full(j.shape, scale),
    "linear": scale * (1 - j),
    "cosine": scale * 0.5 * (1 + np.cos(math.pi * j)),
  }[name]
  np.testing.assert_allclose(np.asarray(new), want, rtol=3e-6, atol=3e-7 * scale)  # float32
  assert np.all(np.asarray(new) >= 0)
