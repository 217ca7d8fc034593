"""The optax face of trajax.averaging, against optax's own contract.

The checks of ``optax/contrib/_common_test.py`` (jit and extra args without
recompiling, inject_hyperparams equivalence, dtypes, MultiSteps, state
shape/dtype stability under ``lax.cond``, ``tree.map_params``), replicated
for every registered method (their helpers are private to that test module):
the cases come from ``trajax.averaging.METHODS`` (``tests/averaging_cases.py``),
so a newly registered method is under the contract without touching this
file. Then the average itself wherever the wrapper sits: a transform after it
in a chain, ``multi_transform`` partitions, several wrappers in one state —
each against the NumPy reference (``tests/averaging_reference.py``) on the
params really applied.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import averaging_cases
from tests.averaging_reference import reference_average
from trajax import averaging

CASES = averaging_cases.cases()


def make(case, inner):
  method, p = case
  return averaging_cases.factory(method)(inner, **p)


@pytest.fixture(params=sorted(CASES))
def case(request):
  """``(method, params)`` of one registered method (tests/averaging_cases.py)."""
  return CASES[request.param]


def parabola(dtype):
  target = jnp.array([1.0, -1.0, 1.0], dtype)
  return jnp.array([-1.0, 10.0, 1.0], dtype), lambda p: jnp.sum((p - target) ** 2)


# ---------------------------------------------------------------------------
# optax's contract.


def test_extra_args_and_no_recompilation(case):
  opt = make(case, optax.sgd(0.1))
  params, objective = parabola(jnp.float32)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = opt.update(grads, state, params, unexpected_extra_arg=1, value=value)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1


def test_inject_hyperparams_equivalence(case):
  method, hparams = case
  inner = optax.sgd(0.1, momentum=0.9)
  factory = averaging_cases.factory(method)
  direct = factory(inner, **hparams)
  injected = optax.inject_hyperparams(factory, static_args=averaging_cases.static_args(method))(
    inner, **hparams
  )
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
  s1, s2 = jax.jit(direct.init)(params), jax.jit(injected.init)(params)
  for _ in range(4):  # past start_step, so the hyperparameters matter
    u1, s1 = jax.jit(direct.update)(grads, s1, params)
    u2, s2 = jax.jit(injected.update)(grads, s2, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
    params = optax.apply_updates(params, u1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s2.inner_state, s1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_updates_keep_the_params_dtype_and_multisteps_accumulates(case, dtype):
  opt = make(case, optax.sgd(0.1))
  params = jnp.array([1.0, 2.0], dtype)
  grads = jax.grad(lambda x: jnp.sum(x**2))(params)
  updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
  assert updates.dtype == params.dtype
  ms = optax.MultiSteps(opt, every_k_schedule=4)
  updates, _ = jax.jit(ms.update)(grads, jax.jit(ms.init)(params), params)
  np.testing.assert_array_equal(updates, jnp.zeros_like(grads))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_state_shape_and_dtype_stable_under_cond(case, dtype):
  with jax.enable_x64(dtype == "float64"):
    opt = make(case, optax.sgd(0.1))
    params, objective = parabola(jnp.dtype(dtype))

    @jax.jit
    def step(params, state):
      grads = jax.grad(objective)(params)
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
        cond, lambda: opt.update(grads, state, params), lambda: (params, state)
      )
      return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(2):
      params, new_state = step(params, state)
      assert params.dtype == jnp.dtype(dtype)
      state = jax.lax.cond(True, lambda: state, lambda: new_state)  # noqa: B023
    mapped = optax.tree.map_params(opt, lambda v: v, state)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)


def test_optimization_converges(case):
  opt = make(case, optax.sgd(0.1))
  params, objective = parabola(jnp.float32)

  def body(carry, _):
    p, s = carry
    u, s = opt.update(jax.grad(objective)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (params, state), _ = jax.lax.scan(body, (params, opt.init(params)), length=300)
  np.testing.assert_allclose(params, [1.0, -1.0, 1.0], atol=1e-4)
  assert np.all(np.isfinite(averaging.averaged_params(state, params)))


def test_named_wrappers_are_the_generic_wrapper(case):
  """``averaging.ema(inner, ...)`` and friends: the record's averager in :func:`wrap`, bit for bit."""
  method, p = case
  named = getattr(averaging, method, None)
  if named is None:  # a method registered without a named wrapper: nothing to compare
    return
  params = jnp.linspace(-1.0, 1.0, 5)
  a = run(named(optax.sgd(0.1, momentum=0.9), **p), params, 7)
  b = run(make(case, optax.sgd(0.1, momentum=0.9)), params, 7)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_newly_registered_method_is_under_the_contract():
  """A toy method with a parameter no other method has: cases() builds it from its
  record, and the contract checks above pass on it (it is gone again afterwards)."""
  rate = averaging.Param("rate", "float", "a float in (0, 1)", lambda v: 0 < v < 1)

  def toy(rate, start_step=0, accumulator_dtype=jnp.float32):
    return averaging.ema_averager(rate, start_step=start_step, accumulator_dtype=accumulator_dtype)

  start, dtype = averaging.get_method("ema").param("start_step"), averaging.ACCUMULATOR_DTYPE
  averaging.register(averaging.Method("toy_rate", (rate, start, dtype), toy))
  try:
    toys = averaging_cases.cases(["toy_rate"])
    assert set(toys) == {"toy_rate", "toy_rate-start_step"}
    assert 0 < toys["toy_rate"][1]["rate"] < 1
    for case in toys.values():
      test_extra_args_and_no_recompilation(case)
      test_inject_hyperparams_equivalence(case)
      test_updates_keep_the_params_dtype_and_multisteps_accumulates(case, "float32")
      test_state_shape_and_dtype_stable_under_cond(case, "float32")
      test_optimization_converges(case)
      test_average_exact_with_a_transform_after_the_wrapper(case, lambda: optax.scale(0.5))
      test_tree_get_finds_one_state_and_no_stale_average(case)
      # Its pure averager is the reference here: check that against the EMA definition.
      thetas = np.random.default_rng(3).normal(size=(6, 2))
      np.testing.assert_allclose(
        averaging_cases.expected_averages("toy_rate", thetas, case[1]),
        reference_average(
          "ema", thetas, decay=case[1]["rate"], start_step=case[1].get("start_step", 0)
        ),
        rtol=1e-5,
        atol=1e-6,  # the averager runs in float32
      )
  finally:
    del averaging.METHODS["toy_rate"]


# ---------------------------------------------------------------------------
# The average, wherever the wrapper sits.


def run(opt, params, steps, *, extra=None, read=True):
  """Updates from fixed pseudo-random gradients; the real θ_t and the
  averages read with averaged_params(state, θ_t) at every t."""
  rng = np.random.default_rng(0)
  state = opt.init(params)
  update = jax.jit(opt.update)
  read = averaging.averaged_params if read else lambda state, params: None
  thetas, avgs = [params], [read(state, params)]
  for t in range(steps):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    kwargs = {} if extra is None else extra(t)
    updates, state = update(grads, state, params, **kwargs)
    params = optax.apply_updates(params, updates)
    thetas.append(params)
    avgs.append(read(state, params))
  return thetas, avgs, state


def test_issue_example_swa_then_scale():
  opt = optax.chain(averaging.swa(optax.sgd(1.0)), optax.scale(0.5))
  params = jnp.zeros(2)
  state = opt.init(params)
  for _ in range(3):
    updates, state = opt.update(-jnp.ones(2), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, 1.5)
  np.testing.assert_allclose(averaging.averaged_params(state, params), 1.0)  # (0.5+1+1.5)/3


@pytest.mark.parametrize(
  "after",
  [
    pytest.param(lambda: optax.scale(0.5), id="scale"),
    pytest.param(lambda: optax.add_decayed_weights(0.3), id="decayed_weights"),
    pytest.param(
      lambda: optax.contrib.reduce_on_plateau(factor=0.5, patience=1, cooldown=0),
      id="reduce_on_plateau",
    ),
  ],
)
def test_average_exact_with_a_transform_after_the_wrapper(case, after):
  method, p = case
  opt = optax.chain(make(case, optax.sgd(0.1, momentum=0.9)), after())
  params = jnp.asarray(np.random.default_rng(1).normal(size=(4,)), jnp.float32)
  # A loss that never improves: reduce_on_plateau halves the scale on the way.
  thetas, avgs, _ = run(opt, params, 12, extra=lambda t: {"value": jnp.float32(1.0)})
  want = averaging_cases.expected_averages(method, np.stack(thetas), p)
  np.testing.assert_allclose(np.stack(avgs), want, rtol=2e-5, atol=2e-6)


def test_multi_transform_fills_unaveraged_partitions_and_merges_several():
  params = {"a": jnp.arange(3.0), "b": jnp.ones(2), "c": -jnp.ones(4)}
  labels = {"a": "ema", "b": "swa", "c": "plain"}
  opt = optax.multi_transform(
    {
      "ema": averaging.ema(optax.sgd(0.1), 0.3),
      "swa": averaging.swa(optax.sgd(0.2), start_step=1),
      "plain": optax.sgd(0.3),
    },
    labels,
  )
  thetas, avgs, state = run(opt, params, 7)
  stack = lambda key, trees: np.stack([t[key] for t in trees])
  np.testing.assert_allclose(
    stack("a", avgs), reference_average("ema", stack("a", thetas), decay=0.3), rtol=1e-5
  )
  np.testing.assert_allclose(
    stack("b", avgs), reference_average("swa", stack("b", thetas), start_step=1), rtol=1e-5
  )
  np.testing.assert_array_equal(stack("c", avgs), stack("c", thetas))
  assert [where for where, _ in averaging.find_states(state)] == [
    ".inner_states['ema'].inner_state",
    ".inner_states['swa'].inner_state",
  ]
  with pytest.raises(ValueError, match="2 averaging wrappers"):
    averaging.averaged_params(state)


def test_nested_wrappers_are_reachable_one_by_one():
  opt = averaging.ema(averaging.swa(optax.sgd(0.1), start_step=2), 0.25)
  params = jnp.linspace(-1.0, 1.0, 5)
  thetas, _, state = run(opt, params, 8, read=False)
  with pytest.raises(ValueError, match="both average the same params"):
    averaging.averaged_params(state, thetas[-1])
  assert [where for where, _ in averaging.find_states(state)] == ["", ".inner_state"]
  got_ema = averaging.averaged_params(state, thetas[-1], where="")
  got_swa = averaging.averaged_params(state, thetas[-1], where=".inner_state")
  with pytest.raises(ValueError, match=r"where='\.x': no averaging wrapper there"):
    averaging.averaged_params(state, thetas[-1], where=".x")
  stacked = np.stack(thetas)
  np.testing.assert_allclose(got_ema, reference_average("ema", stacked, decay=0.25)[-1], rtol=1e-5)
  np.testing.assert_allclose(
    got_swa, reference_average("swa", stacked, start_step=2)[-1], rtol=1e-5
  )


def test_without_params_only_where_exact():
  params = jnp.ones(3)
  opt = averaging.multi_point(optax.sgd(0.1), n=2, gap=3)
  state = opt.init(params)
  np.testing.assert_array_equal(averaging.averaged_params(state), params)  # a_0 = θ_0
  thetas, _, state = run(opt, params, 4)  # t = 4: held since the snapshot at 3
  np.testing.assert_allclose(averaging.averaged_params(state), (thetas[0] + thetas[3]) / 2)
  _, _, state = run(averaging.ema(optax.sgd(0.1), 0.1), params, 2)
  with pytest.raises(ValueError, match="carry weight 0.1 .* pass params"):
    averaging.averaged_params(state)
  with pytest.raises(ValueError, match="under jit"):
    jax.jit(averaging.averaged_params)(state)


def test_tree_get_finds_one_state_and_no_stale_average(case):
  method, p = case
  opt = optax.inject_hyperparams(
    averaging_cases.factory(method), static_args=averaging_cases.static_args(method)
  )(optax.sgd(0.1), **p)
  thetas, avgs, state = run(opt, jnp.ones(3), 5)
  assert optax.tree_utils.tree_get_all_with_path(state, "average") == []
  weights = np.asarray(optax.tree_utils.tree_get(state, "weights"))  # unique, or it raises
  theta = np.asarray(thetas[-1])
  # What a plain-checkpoint reader does (the formulas of trajax.averaging.wrappers).
  points = averaging.make_averager(method, **p).points
  if points is not None:  # a ring of snapshots (two_point, multi_point)
    ring = np.asarray(optax.tree_utils.tree_get(state, "snapshots"))
    assert ring.shape == (points.n, 3)
    got = weights[0] * theta + weights[1:] @ ring
  else:
    prev = np.asarray(optax.tree_utils.tree_get(state, "previous"))
    assert weights[1] == 1.0  # the lerp form
    got = prev + weights[0] * (theta - prev)
  np.testing.assert_allclose(got, avgs[-1], rtol=1e-6)


@pytest.mark.parametrize("method", ["two_point", "multi_point", "ema", "swa"])
def test_float64_accumulator_keeps_float64_params(method):
  """Points 1e-9 apart: a float32 accumulator rounds them together."""
  kwargs = {
    "two_point": dict(gap=2),
    "multi_point": dict(n=3, gap=1),
    "ema": dict(decay=0.5),
    "swa": dict(),
  }[method]
  with jax.enable_x64(True):
    params = jnp.full((2,), 1.0, jnp.float64)
    step = jnp.full((2,), -1e-9, jnp.float64)  # sgd(1): θ_t = 1 + t·1e-9

    def final(accumulator_dtype):
      opt = getattr(averaging, method)(
        optax.sgd(1.0), accumulator_dtype=accumulator_dtype, **kwargs
      )
      p, state = params, opt.init(params)
      thetas = [p]
      for _ in range(4):
        u, state = opt.update(step, state, p)
        p = optax.apply_updates(p, u)
        thetas.append(p)
      return np.asarray(averaging.averaged_params(state, p)), np.stack(thetas)

    got64, thetas = final(jnp.float64)
    got32, _ = final(jnp.float32)
  want = reference_average(method, np.asarray(thetas), **kwargs)[-1]
  assert got64.dtype == np.float64 and got32.dtype == np.float32
  np.testing.assert_allclose(got64 - 1, want - 1, rtol=1e-6)
  assert np.max(np.abs((got32.astype(np.float64) - 1) - (want - 1))) > 1e-9


def test_state_from_a_complete_average_continues_exactly(case):
  """Old checkpoints held the complete a_t: from_eager_state continues them."""
  method, p = case
  opt = make(case, optax.sgd(0.1))
  thetas, avgs, state = run(opt, jnp.linspace(0.0, 1.0, 4), 5)
  averager = averaging.make_averager(method, **p)
  full = averager.init(thetas[0])
  for theta in thetas[1:]:
    full = averager.update(theta, full)
  legacy = averaging.from_eager_state(state.inner_state, tuple(full))
  np.testing.assert_allclose(averaging.averaged_params(legacy), avgs[-1], rtol=1e-6)
  grads = jnp.full(4, 0.3)
  for s in (state, legacy):
    _, s = opt.update(grads, s, thetas[-1])
    np.testing.assert_allclose(
      averaging.averaged_params(s, thetas[-1] - 0.03),
      averaging_cases.expected_averages(method, np.stack(thetas + [thetas[-1] - 0.03]), p)[-1],
      rtol=1e-5,
    )


# ---------------------------------------------------------------------------
# Profiles (averaging.with_profiles): the same contract, several averages in one state.

PROFILES = ({"method": "power_ema", "gamma": 3.0}, {"method": "ema", "decay": 0.3, "every": 2})


def test_profiles_follow_optax_contract_and_stay_exact_after_a_transform():
  inner = lambda: optax.sgd(0.1, momentum=0.9)  # noqa: E731
  profiled = averaging.with_profiles(inner(), averaging.make_profiles(PROFILES))
  assert averaging.with_profiles(optax.sgd(0.1), ()).init(jnp.ones(2)) == optax.sgd(0.1).init(
    jnp.ones(2)
  )  # no profiles: the inner optimizer itself, the same state layout
  opt = optax.chain(profiled, optax.scale(0.5))
  params = jnp.asarray(np.random.default_rng(2).normal(size=(4,)), jnp.float32)
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(None)
    # Under lax.cond: the state's structure, shapes and dtypes do not change.
    updates, state = jax.lax.cond(
      jnp.sum(grads) > -1e9, lambda: opt.update(grads, state, params), lambda: (grads, state)
    )
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(0)
  state = opt.init(params)
  thetas, profiles = [params], [averaging.profile_averages(state, params)]
  for _ in range(9):
    params, state = step(params, state, jnp.asarray(rng.normal(size=4), jnp.float32))
    thetas.append(params)
    profiles.append(averaging.profile_averages(state, params))
  assert len(traces) == 1
  mapped = optax.tree.map_params(opt, lambda v: v, state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  for i, entry in enumerate(PROFILES):
    p = {k: v for k, v in entry.items() if k != "method"}
    want = reference_average(entry["method"], np.stack(thetas), **p)
    np.testing.assert_allclose(np.stack([a[i] for a in profiles]), want, rtol=2e-5, atol=2e-6)
  # MultiSteps: no update until the k-th, and the profiles see only real updates.
  ms = optax.MultiSteps(profiled, every_k_schedule=3)
  ms_state, update = ms.init(params), jax.jit(ms.update)
  for k in range(1, 4):
    updates, ms_state = update(jnp.ones(4), ms_state, params)
    counts = [int(p.count) for p in averaging.find_profiles(ms_state).profiles]
    assert counts == [k // 3] * 2, (k, counts)
    assert np.any(updates != 0) == (k == 3)
  with pytest.raises(ValueError, match="profiles need params"):
    profiled.update(jnp.ones(4), profiled.init(params))
