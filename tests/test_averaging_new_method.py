"""A method with a new parameter, registered in one place, reaches every surface.

The toy method 'harmonic' (a lerp average whose p-th point enters with
weight p^(−power); power = 1 is SWA) and its new parameter ``power`` are
declared here, in the registry's terms only (a :class:`trajax.averaging.Param`,
an :class:`~trajax.averaging.Averager`, one :func:`~trajax.averaging.register`
call). Without touching anything else they get: a flat config field
``averaging.power``, a value and its spelling, an equivalent side-trip (the
``sidetrip.average`` field and its step-weight table), and optax's contract
(the checks of ``optax/contrib/_common_test.py``). The registration is removed
after each test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trajax import averaging, config, config_validation, sidetrip

POWER = averaging.Param("power", "float", "a float in (0, 1]", lambda v: 0 < v <= 1, example=0.5)


def harmonic_averager(power, *, start_step=0, accumulator_dtype=jnp.float32):
  """a_t = a_{t−1} + p^(−power)·(θ_t − a_{t−1}) at the p-th step past start_step."""
  dtype = jnp.dtype(accumulator_dtype)

  def weight(count):
    p = (count - jnp.asarray(start_step, jnp.int32)).astype(dtype)
    return jnp.where(p <= 0, 1.0, jnp.maximum(p, 1.0) ** -jnp.asarray(power, dtype)).astype(dtype)

  def init(tree):
    average = jax.tree.map(lambda x: jnp.array(x, dtype, copy=True), tree)
    return averaging.AverageState(jnp.zeros([], jnp.int32), average)

  def update(tree, state):
    count = state.count + 1
    w = weight(count)
    average = jax.tree.map(lambda a, x: a + w * (x.astype(dtype) - a), state.average, tree)
    return averaging.AverageState(count, average)

  return averaging.Averager(init, update, weight=weight)


@pytest.fixture
def harmonic():
  method = averaging.register(
    averaging.Method(
      "harmonic",
      (POWER, averaging.START_STEP, averaging.ACCUMULATOR_DTYPE),
      harmonic_averager,
      sweep=averaging.Sweep("power", "float", (0.25, 1.0, 3)),
    )
  )
  yield method.name
  del averaging.METHODS[method.name]


def reference_kernel(power, window, start_step=0):
  """c_0 … c_window of the harmonic average, by the recursion on one-hot θ (NumPy, float64)."""
  c = np.zeros(window + 1)
  c[0] = 1.0
  for t in range(1, window + 1):
    p = t - start_step
    w = 1.0 if p <= 0 else p**-power
    c *= 1 - w
    c[t] += w
  return c


def test_config_field_generated_and_old_configs_still_load(harmonic):
  c = config.base_config()
  assert c.averaging.power == 0.5 and isinstance(c.averaging.power, float)
  c.averaging.method = harmonic
  c.averaging.power = 0.75
  assert averaging.method_params(harmonic, c.averaging) == {"power": 0.75, "start_step": 0}
  config_validation.validate(c)  # a config using the new method is valid
  # Refused with the record's words; a stored config without the field loads.
  c.averaging.power = 2.0
  errors = averaging.validate_params(harmonic, c.averaging.to_dict())
  assert errors == ["averaging.power = 2.0: must be a float in (0, 1]"]
  stored = config.base_config().to_dict()
  del stored["averaging"]["power"]
  assert config.from_dict(stored).averaging.power == 0.5
  with pytest.raises(TypeError):
    c.averaging.power = "big"  # typed like the parameter


def test_value_and_side_trip(harmonic):
  k, power = 6, 0.7
  a = averaging.average(harmonic, power=power)
  assert averaging.as_average(str(a)) == a
  np.testing.assert_allclose(a.kernel(k), reference_kernel(power, k), atol=1e-12)
  base = config.base_config()
  base.averaging.method = harmonic
  base.averaging.power = 0.4
  base.averaging.start_step = 3  # the parent's; a side-trip's average starts at S
  for fields, want_power in (
    (dict(average=f"harmonic(power={power})"), power),
    (dict(average=a), power),
    ({}, 0.4),  # the parent's average
  ):
    trip = sidetrip.with_sidetrip(base, kind="equivalent", window=k, **fields)
    spec = sidetrip.resolve(trip, 10)
    assert spec.method == harmonic and spec.params["power"] == want_power and spec.steps == k
    rate = sidetrip.SidetripRate.of(spec)
    want_w = np.cumsum(reference_kernel(want_power, k)[::-1])[::-1][1:]
    np.testing.assert_allclose(rate.weights, want_w, atol=1e-12)
    hyper = {"start": jnp.int32(10), "scale": jnp.float32(0.5), "horizon": jnp.float32(k)}
    got = np.asarray(jax.vmap(rate(lambda t: jnp.float32(0.1), hyper))(jnp.arange(8, 20)))
    want = 0.05 * np.r_[np.zeros(2), want_w, np.zeros(4)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
  # every parameter of the value is honoured, start_step too (relative to S).
  late = sidetrip.resolve(
    sidetrip.with_sidetrip(
      base, kind="equivalent", window=k, average="harmonic(power=1, start_step=2)"
    ),
    10,
  )
  np.testing.assert_allclose(
    sidetrip.SidetripRate.of(late).weights,
    np.cumsum(reference_kernel(1.0, k, 2)[::-1])[::-1][1:],
    atol=1e-12,
  )
  bad = sidetrip.with_sidetrip(base, kind="equivalent", window=k, average="harmonic(power=3)")
  with pytest.raises(
    config_validation.ConfigError, match=r"sidetrip.average = 'harmonic\(power=3\)'"
  ):
    sidetrip.resolve(bad, 10)


# ---------------------------------------------------------------------------
# optax's contract, for the wrapper built from the record.


def factory(inner, power, start_step=0):
  # Named keywords: optax.inject_hyperparams reads the factory's signature.
  return averaging.wrap(
    inner, averaging.make_averager("harmonic", power=power, start_step=start_step)
  )


def parabola():
  target = jnp.array([1.0, -1.0, 1.0])
  return jnp.array([-1.0, 10.0, 1.0]), lambda p: jnp.sum((p - target) ** 2)


def test_optax_contract(harmonic):
  params, objective = parabola()
  hparams = {"power": 0.6, "start_step": 1}
  # jit with extra args, one trace.
  opt, traces = factory(optax.sgd(0.1), **hparams), []

  @jax.jit
  def step(params, state):
    traces.append(None)
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = opt.update(grads, state, params, unexpected_extra_arg=1, value=value)
    return optax.apply_updates(params, updates), state

  state, p = opt.init(params), params
  thetas = [np.asarray(p, np.float64)]
  for _ in range(5):
    p, state = step(p, state)
    thetas.append(np.asarray(p, np.float64))
  assert len(traces) == 1
  # The average is the record's kernel applied to the params really applied.
  want = reference_kernel(0.6, 5, 1) @ np.stack(thetas)
  np.testing.assert_allclose(averaging.averaged_params(state, p), want, rtol=1e-5, atol=1e-6)
  # inject_hyperparams gives the same updates and average.
  inner = optax.sgd(0.1, momentum=0.9)
  direct, injected = factory(inner, **hparams), optax.inject_hyperparams(factory)(inner, **hparams)
  sd, si, pd, pi = direct.init(params), injected.init(params), params, params
  for _ in range(4):
    gd, gi = jax.grad(objective)(pd), jax.grad(objective)(pi)
    ud, sd = direct.update(gd, sd, pd)
    ui, si = injected.update(gi, si, pi)
    pd, pi = optax.apply_updates(pd, ud), optax.apply_updates(pi, ui)
  np.testing.assert_allclose(pd, pi, rtol=1e-6)
  np.testing.assert_allclose(
    averaging.averaged_params(sd, pd), averaging.averaged_params(si.inner_state, pi), rtol=1e-6
  )
  # State shape and dtype stable under lax.cond; MultiSteps accumulates.
  opt = factory(optax.sgd(0.1), **hparams)
  state = opt.init(params)
  grads = jax.grad(objective)(params)
  after = jax.lax.cond(True, lambda s: opt.update(grads, s, params)[1], lambda s: s, state)
  assert jax.tree.structure(after) == jax.tree.structure(state)
  assert [x.dtype for x in jax.tree.leaves(after)] == [x.dtype for x in jax.tree.leaves(state)]
  multi = optax.MultiSteps(opt, every_k_schedule=2)
  ms = multi.init(params)
  updates, ms = multi.update(grads, ms, params)
  assert updates.dtype == params.dtype and int(ms.mini_step) == 1
