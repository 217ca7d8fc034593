"""trajax.schedules: the equivalent schedule lands exactly where the averaging
wrapper is, for linear losses, plain SGD and momentum; the converse; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.linear_sidetrips import D, averager_at, run_linear, side_trip_gap, side_trip_state
from trajax import averaging, schedules

CASES = [
  ("swa", dict(), 9),
  ("two_point", dict(gap=8), 8),
  ("multi_point", dict(n=4, gap=3), 9),
  ("ema", dict(decay=0.15), 12),
]
# Every parameter the averagers take, and windows other than the default.
MORE_CASES = [
  ("ema", dict(decay=0.1, every=3, debias=True), 6),
  ("ema", dict(decay=0.2, every=2), 9),
  ("ema", dict(decay=0.15, debias=True), 7),
  ("swa", dict(every=3), 10),
  ("two_point", dict(gap=4), 7),  # held after the second point
  ("multi_point", dict(n=3, gap=2), 9),  # the oldest snapshots have left
  ("none", dict(), 5),
]


@pytest.mark.parametrize("method,params,window", CASES + MORE_CASES)
@pytest.mark.parametrize("momentum", [None, 0.9, "nesterov"])
def test_side_trip_lands_on_the_average(method, params, window, momentum):
  """Exact for linear losses (float32 rounding only), with a non-constant base
  schedule and a start past 0 so the index convention is pinned down."""
  base = optax.cosine_decay_schedule(0.3, decay_steps=40, alpha=0.2)
  err, scale = side_trip_gap(method, params, base=base, momentum=momentum, start=7, window=window)
  assert scale > 0.1  # the side-trip really moved
  assert err <= 2e-6 * max(1.0, scale), (err, scale)


def test_configured_every_and_debias_give_their_own_weights():
  """EMA δ = 0.1, every = 3, debias = True over 6 steps: θ_{s+3} enters with
  weight 1 (debiased first point), θ_{s+6} with 0.1/0.19 = 0.526; the
  weights are 1 until step 3 and 0.526 after, not the plain EMA's."""
  w = np.asarray(
    schedules.step_weights("ema", np.arange(8), window=6, decay=0.1, every=3, debias=True)
  )
  late = 0.1 / (1 - 0.9**2)
  np.testing.assert_allclose(w, [1, 1, 1, late, late, late, 0, 0], rtol=1e-6)
  plain = np.asarray(schedules.step_weights("ema", np.arange(6), window=6, decay=0.1))
  np.testing.assert_allclose(plain, 1 - 0.9 ** (6 - np.arange(6)), rtol=1e-6)
  sched = schedules.equivalent_schedule(
    "ema", 0.2, start=40, window=6, decay=0.1, every=3, debias=True
  )
  np.testing.assert_allclose(np.asarray(sched(jnp.arange(6))), 0.2 * w[:6], rtol=1e-6)


def test_start_step_inside_the_window_and_before_it():
  """An averager that starts 3 steps after the branch point is reached exactly;
  one that started before it weighs θ the side-trip cannot reach: refused."""
  start, window, late = 7, 9, 3
  key_g, key_p = jax.random.split(jax.random.key(3))
  grads = jax.random.normal(key_g, (start + window, D))
  theta0 = jax.random.normal(key_p, (D,))
  main = averaging.swa(optax.sgd(0.1, momentum=0.9), start_step=start + late)
  theta_s, state_s = run_linear(main, theta0, main.init(theta0), grads[:start])
  theta_end, state_end = run_linear(main, theta_s, state_s, grads[start:])
  target = averaging.averaged_params(state_end, theta_end)
  sched = schedules.equivalent_schedule(
    "swa", 0.1, start=start, window=window, start_step=start + late
  )
  side = optax.sgd(sched, momentum=0.9)
  landed, _ = run_linear(
    side, theta_s, side_trip_state(side, theta_s, state_s.inner_state), grads[start:]
  )
  assert float(jnp.max(jnp.abs(landed - target))) <= 2e-6
  np.testing.assert_allclose(
    np.asarray(schedules.step_weights("swa", np.arange(window), window=window, start_step=late)),
    [1, 1, 1] + [(window - j) / (window - late) for j in range(late, window)],
    rtol=1e-6,
  )
  with pytest.raises(ValueError, match="start_step=5 < start=7"):
    schedules.equivalent_schedule("swa", 0.1, start=7, window=4, start_step=5)


def test_traced_start_one_compilation_for_every_branch_point():
  """The branch step may be traced: the weights are a static table indexed by j,
  derived (no closed form for every/debias) while the jit traces."""
  base = optax.cosine_decay_schedule(0.3, decay_steps=100)
  traces = []
  params = dict(decay=0.137, every=3, debias=True)  # not derived by any other test

  @jax.jit
  def lr(start, j):
    traces.append(None)
    return schedules.equivalent_schedule("ema", base, start=start, window=6, **params)(j)

  for s in (0, 13, 40):
    got = np.asarray([lr(jnp.int32(s), jnp.int32(j)) for j in range(8)])
    ref = schedules.equivalent_schedule("ema", base, start=s, window=6, **params)
    np.testing.assert_allclose(got, np.asarray(ref(jnp.arange(8))), rtol=1e-6)
  assert len(traces) == 1
  with pytest.raises(TypeError, match="start_step=3 with a traced start"):
    jax.jit(
      lambda s: schedules.equivalent_schedule("swa", 0.1, start=s, window=4, start_step=3)(0)
    )(jnp.int32(1))


def test_side_trip_from_step_zero_with_constant_base():
  err, scale = side_trip_gap(
    "multi_point", dict(n=3, gap=5), base=0.1, momentum=0.9, start=0, window=10
  )
  assert scale > 0.05 and err <= 2e-6
  # decay = 1: the EMA is θ_t itself and the schedule is the base rate.
  err, scale = side_trip_gap("ema", dict(decay=1.0), base=0.1, momentum=None, start=2, window=3)
  assert scale > 0.05 and err <= 2e-6


def test_table1_ema_exponent_as_printed_is_off_by_one():
  """Table 1's EMA weight 1 − (1−δ)^{k−i} with 1-based i misses the average;
  eq. 29's exponent (our w_j = 1 − (1−δ)^{k−j}, 0-based j) hits it."""
  decay, k, start = 0.2, 10, 3
  key_g, key_p = jax.random.split(jax.random.key(1))
  grads = jax.random.normal(key_g, (start + k, D))
  theta0 = jax.random.normal(key_p, (D,))
  main = averaging.ema(optax.sgd(0.1), decay, start_step=start)
  theta_s, state_s = run_linear(main, theta0, main.init(theta0), grads[:start])
  theta_end, state_end = run_linear(main, theta_s, state_s, grads[start:])
  target = averaging.averaged_params(state_end, theta_end)

  def land(weights):
    return theta_s - 0.1 * jnp.asarray(weights, jnp.float32) @ grads[start:]

  i = np.arange(1, k + 1)
  printed = 1 - (1 - decay) ** (k - i)
  ours = schedules.step_weights("ema", np.arange(k), window=k, decay=decay)
  assert float(jnp.max(jnp.abs(land(ours) - target))) < 2e-6
  assert float(jnp.max(jnp.abs(land(printed) - target))) > 1e-2


def test_step_weights_match_the_kernel_of_each_averager():
  """w_j = Σ_{i>j} c_i where c is read off the averager itself, by feeding it
  the one-hot trajectory θ_{s+i} = e_i (the averages are linear in θ)."""
  start = 2
  for method, params, k in CASES + MORE_CASES + [("ema", dict(decay=1.0), 3)]:
    avg = averager_at(method, start, params)
    # θ_0 … θ_{start−1} = 0, then θ_start = e_0, …, θ_{start+k} = e_k.
    thetas = jnp.concatenate([jnp.zeros((start - 1, k + 1)), jnp.eye(k + 1)])
    state, _ = jax.lax.scan(
      lambda st, th, avg=avg: (avg.update(th, st), None), avg.init(jnp.zeros(k + 1)), thetas
    )
    kernel = np.asarray(thetas[-1] if state.average is None else state.average, np.float64)
    want = schedules.weights_from_kernel(kernel)
    got = schedules.step_weights(method, np.arange(k), window=k, **params)
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=method)
    np.testing.assert_allclose(schedules.kernel_from_weights(got), kernel, atol=1e-6)


def test_schedule_values_and_landing():
  sched = schedules.equivalent_schedule("multi_point", 0.3, start=5, window=6, n=3, gap=3)
  np.testing.assert_allclose(
    np.asarray(sched(jnp.arange(-1, 8))),
    0.3 * np.array([0, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 0, 0]),
    rtol=1e-6,
  )
  base = lambda t: 0.01 * t
  sched = schedules.equivalent_schedule("swa", base, start=10, window=4)
  np.testing.assert_allclose(
    np.asarray(sched(jnp.arange(4))), [0.1, 0.11 * 0.75, 0.12 * 0.5, 0.13 * 0.25], rtol=1e-6
  )
  # jit-able with a traced step.
  assert float(jax.jit(sched)(jnp.int32(1))) == pytest.approx(0.11 * 0.75, rel=1e-6)


@pytest.mark.parametrize("method,params,window", CASES[:4])
def test_matching_averaging_inverts_equivalent_schedule(method, params, window):
  base = optax.cosine_decay_schedule(0.5, 100)
  sched = schedules.equivalent_schedule(method, base, start=20, window=window, **params)
  got = schedules.matching_averaging(sched, base, start=20, window=window)
  assert got.method == method and got.window == window
  assert got.params.keys() == params.keys()
  for name, value in params.items():
    assert got.params[name] == pytest.approx(value, rel=1e-4)


def test_matching_averaging_linear_decay_and_staircase():
  k = 50
  lin = optax.linear_schedule(0.2, 0.0, transition_steps=k)
  assert schedules.matching_averaging(lin, 0.2, start=100, window=k) == (
    schedules.Averaging("swa", {}, k)
  )
  stair = optax.piecewise_constant_schedule(
    0.2 * 3 / 4, {10: 2 / 3, 20: 1 / 2}
  )  # 3/4, 2/4, 1/4 of 0.2, ten steps each
  got = schedules.matching_averaging(stair, 0.2, start=0, window=30)
  assert got == schedules.Averaging("multi_point", {"n": 4, "gap": 10}, 30)
  assert schedules.matching_averaging(0.05, 0.1, start=0, window=7).method == "two_point"


def test_matching_averaging_rejects_what_no_method_matches():
  with pytest.raises(ValueError, match="rise"):
    schedules.matching_averaging(lambda j: 0.01 * (j + 1), 0.1, start=0, window=5)
  with pytest.raises(ValueError, match="kernel"):  # an average, not a trajax method
    schedules.matching_averaging(lambda j: jnp.where(j < 3, 0.09, 0.02), 0.1, start=0, window=6)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(method="sma", window=3), "method must be one of"),
    (dict(method="ema", window=3), "needs decay"),
    (dict(method="ema", window=3, decay=1.5), "decay must be a float in"),
    (dict(method="ema", decay=0.5), "window: averaging method 'ema' has no default window"),
    (dict(method="ema", window=3, decay=0.5, every=0), "every must be an integer >= 1, got 0"),
    (dict(method="ema", window=3, decay=0.5, debias=1), "debias must be True or False"),
    (dict(method="swa", window=3, decay=0.1), "decay=0.1 is not one of its parameters"),
    (dict(method="swa", window=0), "window must be an integer >= 1"),
    (dict(method="multi_point", window=3, n=0, gap=3), "n must be an integer >= 1"),
    (dict(method="swa", window=3, start=-1), "start must be an integer >= 0"),
    (dict(method="swa", window=3, start=4, start_step=2), "start_step=2 < start=4"),
  ],
)
def test_bad_arguments_are_named(kwargs, match):
  kwargs = dict(kwargs)
  method = kwargs.pop("method")
  start = kwargs.pop("start", 0)
  with pytest.raises((ValueError, TypeError), match=match):
    schedules.equivalent_schedule(method, 0.1, start=start, **kwargs)
