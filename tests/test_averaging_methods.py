"""The averaging registry: one definition per method, and what derives from it.

* the derived kernel against the definitions (explicit sums) and every
  registered closed form (step weights, stationary brackets) against the
  derived kernel;
* a toy method registered in one place gets its averager, its config checks,
  its exact equivalent schedule and its stationary theory for free;
* config checks (validate_params, method_params) name the field, the value
  and what is allowed, with one start-step rule for every method.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.linear_sidetrips import side_trip_gap
from trajax import averaging, kernels, schedules, theory

# ---------------------------------------------------------------------------
# The derived kernel.


def test_kernel_matches_the_definitions():
  k = 6
  # EMA from step 0: (1 − δ)^k on θ_0, δ(1 − δ)^{k−i} on θ_i.
  d = 0.3
  want = np.r_[(1 - d) ** k, d * (1 - d) ** (k - np.arange(1, k + 1))]
  np.testing.assert_allclose(averaging.kernel("ema", window=k, decay=d), want, rtol=1e-13)
  # The case: δ = 0.1, every 3, debiased: θ_3 and θ_6 only.
  late = 0.1 / (1 - 0.9**2)
  np.testing.assert_allclose(
    averaging.kernel("ema", window=k, decay=0.1, every=3, debias=True),
    [0, 0, 0, 1 - late, 0, 0, late],
    atol=1e-15,
  )
  # SWA starting at 2: follows to θ_2, then the mean of θ_3 … θ_6.
  np.testing.assert_allclose(
    averaging.kernel("swa", window=k, start_step=2), [0, 0, 0, 0.25, 0.25, 0.25, 0.25]
  )
  # Multi-point n = 3, gap 2 after 6 steps: θ_2, θ_4, θ_6 (θ_0 has left).
  np.testing.assert_allclose(
    averaging.kernel("multi_point", window=k, n=3, gap=2), [0, 0, 1 / 3, 0, 1 / 3, 0, 1 / 3]
  )
  np.testing.assert_array_equal(averaging.kernel("none", window=3), [0, 0, 0, 1])
  assert averaging.kernel("ema", window=k, decay=d).dtype == np.float64


FAST_WEIGHTS = [
  ("ema", dict(decay=0.15), 12),
  ("ema", dict(decay=1e-4), 40),  # small δ: expm1/log1p keeps the digits
  ("ema", dict(decay=1.0), 3),
  ("swa", dict(), 9),
  ("two_point", dict(gap=8), 8),
  ("multi_point", dict(n=4, gap=3), 9),
]


@pytest.mark.parametrize("method,params,window", FAST_WEIGHTS)
def test_closed_form_step_weights_match_the_derived_kernel(method, params, window):
  m = averaging.METHODS[method]
  fast = m.step_weights(window, averaging.check_params(method, params))
  assert fast is not None
  derived = schedules.weights_from_kernel(averaging.kernel(method, window=window, **params))
  np.testing.assert_allclose(fast, derived, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
  "method,params,window",
  [
    ("ema", dict(decay=0.1, every=3), 6),
    ("ema", dict(decay=0.1, debias=True), 6),
    ("swa", dict(every=2), 6),
    ("swa", dict(start_step=2), 6),
    ("two_point", dict(gap=4), 6),
    ("multi_point", dict(n=3, gap=2), 9),
  ],
)
def test_closed_forms_step_aside_where_they_do_not_apply(method, params, window):
  """Outside its case a closed form returns None and the derivation answers."""
  m = averaging.METHODS[method]
  assert m.step_weights(window, averaging.check_params(method, params)) is None
  got = averaging.step_weights_table(method, window=window, **params)
  want = schedules.weights_from_kernel(averaging.kernel(method, window=window, **params))
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
  "method,params,window",
  [
    ("ema", dict(decay=0.03), None),
    ("two_point", dict(gap=9), None),
    ("multi_point", dict(n=5, gap=4), None),
    ("swa", dict(), 25),
  ],
)
def test_closed_form_brackets_match_the_derived_kernel(method, params, window):
  gamma = 1 - np.array([0.001, 0.05, 0.5, 1.5])
  m = averaging.METHODS[method]
  fast = m.bracket(gamma, averaging.check_params(method, params), window)
  assert fast is not None
  mu = theory.averaging_kernel(method, window=window, **params)
  direct = theory.stationary_variance(0.1, (1 - gamma) / 0.1, "kernel", kernel=mu)
  closed = theory.stationary_variance(0.1, (1 - gamma) / 0.1, method, window=window, **params)
  np.testing.assert_allclose(closed, direct, rtol=1e-9)
  np.testing.assert_allclose(kernels.comb_sum(gamma**2, 1), 1.0)  # one point: no averaging


def test_stationary_variance_of_parameters_without_closed_form():
  """every = 3: points 3 steps apart, the EMA kernel on lags 0, 3, 6, …; it is
  derived, and equals the exact long-run moments of the averager itself."""
  kappa, lr = np.array([0.5, 2.0]), 0.1
  f = theory.stationary_variance(lr, kappa, "ema", decay=0.2, every=3)
  ex = theory.expected_loss(kappa, lr=lr, num_steps=1500, method="ema", decay=0.2, every=3)
  np.testing.assert_allclose(2 * np.asarray(ex.loss_by_dof)[-1] / kappa, f, rtol=2e-4)
  mu = theory.averaging_kernel("ema", decay=0.2, every=3)
  np.testing.assert_allclose(mu[[0, 1, 2, 3]], [0.2, 0, 0, 0.16], rtol=1e-12)


# ---------------------------------------------------------------------------
# A new method in one place.


def linear_averager(*, start_step=0, accumulator_dtype=jnp.float32):
  """Toy: the p-th point past start_step gets weight 2/(p + 1), so a_{s+p} is
  Σ_i i·θ_{s+i} / (p(p+1)/2): a linearly weighted average."""
  dtype = jnp.dtype(accumulator_dtype)

  def init(tree):
    return averaging.AverageState(
      jnp.zeros([], jnp.int32), jax.tree.map(lambda x: jnp.array(x, dtype, copy=True), tree)
    )

  def update(tree, state):
    count = state.count + 1
    p = count - start_step
    w = jnp.where(p <= 0, 1.0, 2.0 / (p + 1).astype(dtype)).astype(dtype)
    average = jax.tree.map(lambda a, x: (1 - w) * a + w * x.astype(dtype), state.average, tree)
    return averaging.AverageState(count, average)

  return averaging.Averager(init, update)


@pytest.fixture
def linear_method():
  method = averaging.register(
    averaging.Method("linear", (averaging.START_STEP, averaging.ACCUMULATOR_DTYPE), linear_averager)
  )
  yield method.name
  del averaging.METHODS[method.name]


def test_a_registered_method_gets_its_kernel_schedule_and_theory(linear_method):
  k = 8
  want = np.r_[0.0, 2 * np.arange(1, k + 1) / (k * (k + 1))]
  np.testing.assert_allclose(averaging.kernel(linear_method, window=k), want, rtol=1e-12)
  # The equivalent schedule: lands on the wrapper's average, with momentum.
  base = optax.cosine_decay_schedule(0.3, decay_steps=40, alpha=0.2)
  for momentum in (None, 0.9):
    err, scale = side_trip_gap(linear_method, {}, base=base, momentum=momentum, start=5, window=k)
    assert scale > 0.1 and err <= 2e-6 * max(1.0, scale), (err, scale)
  # The theory: the stationary variance of the average over the last w
  # steps, by its derived kernel, equals the exact moments of an average
  # started w steps before the end of a long run.
  w, lr, kappa = 30, 0.1, np.array([0.5, 2.0])
  f = theory.stationary_variance(lr, kappa, linear_method, window=w)
  mu = want_mu = 2 * np.arange(w, 0, -1) / (w * (w + 1))
  np.testing.assert_allclose(theory.averaging_kernel(linear_method, window=w)[:w], want_mu)
  np.testing.assert_allclose(
    f, theory.stationary_variance(lr, kappa, "kernel", kernel=mu), rtol=1e-12
  )
  ex = theory.expected_loss(kappa, lr=lr, num_steps=1500, method=linear_method, start_step=1500 - w)
  np.testing.assert_allclose(2 * np.asarray(ex.loss_by_dof)[-1] / kappa, f, rtol=2e-4)
  # The value: spelt, read back, its kernel; a method without a default
  # window covers any window it is given (params_for_window leaves it be).
  value = averaging.average(linear_method)
  assert str(value) == "linear(start_step=0)" and averaging.as_average(str(value)) == value
  np.testing.assert_allclose(value.kernel(k), want, rtol=1e-12)
  assert averaging.params_for_window(linear_method, k, {"start_step": 2}) == {"start_step": 2}
  assert averaging.METHODS[linear_method].default_window({"start_step": 2}) is None
  # And the config checks.
  section = {"start_step": 5000, "decay": 0.3, "gap": 4}
  assert averaging.method_params(linear_method, section) == {"start_step": 5000}
  assert averaging.validate_params(linear_method, section, total_steps=1000) == [
    "averaging.start_step = 5000: must be < total_steps=1000"
  ]


# ---------------------------------------------------------------------------
# Config checks.

SECTION = dict(decay=0.01, start_step=0, every=1, gap=10, n=3, debias=False, gamma=6.94)


def test_validate_params_accepts_good_sections_and_checks_other_methods_fields():
  for method in averaging.METHODS:
    assert averaging.validate_params(method, SECTION, total_steps=100) == [], method
  # Another method's field is not required, and any value some method accepts
  # passes (decay = 1.0 is EMA's upper end); a value none accepts is named.
  fine = dict(SECTION, decay=1.0, gap=10**6, batch_norm="average", bn_recompute_batches=4)
  assert averaging.validate_params("swa", fine, total_steps=100) == []
  assert averaging.validate_params("swa", {"start_step": 0}) == []
  odd = dict(SECTION, decay=7.0, gap=-1, n=0, batch_norm="average", bn_recompute_batches=4)
  unused = "(unused by averaging method 'swa', but no method accepts this value)"
  assert averaging.validate_params("swa", odd) == [
    f"averaging.decay = 7.0: must be a float in (0, 1] {unused}",
    f"averaging.gap = -1: must be an integer >= 1 {unused}",
    f"averaging.n = 0: must be an integer >= 1 {unused}",
  ]


def test_validate_params_names_field_value_and_what_is_allowed():
  bad = dict(SECTION, decay=1.5, every=0, debias=1)
  assert averaging.validate_params("ema", bad) == [
    "averaging.decay = 1.5: must be a float in (0, 1]",
    "averaging.every = 0: must be an integer >= 1",
    "averaging.debias = 1: must be True or False",
  ]
  assert averaging.validate_params("multi_point", {"gap": 2.5}, prefix="sidetrip.") == [
    "sidetrip.n = None: averaging method 'multi_point' needs it (an integer >= 1)",
    "sidetrip.gap = 2.5: must be an integer >= 1",
  ]
  (msg,) = averaging.validate_params("polyak", SECTION)
  assert msg.startswith("averaging.method = 'polyak': must be one of [")
  assert all(repr(name) in msg for name in averaging.METHODS)


def test_one_start_step_rule_for_every_method():
  takes_start = [m for m, rec in averaging.METHODS.items() if rec.param("start_step")]
  assert set(takes_start) == {"ema", "swa", "two_point", "multi_point", "power_ema"}
  for method in takes_start:
    late = averaging.validate_params(method, dict(SECTION, start_step=100), total_steps=100)
    assert late == ["averaging.start_step = 100: must be < total_steps=100"], method
    ok = averaging.validate_params(method, dict(SECTION, start_step=99), total_steps=100)
    assert ok == [], method
  assert averaging.validate_params("ema", dict(SECTION, every=101), total_steps=100) == [
    "averaging.every = 101: must be <= total_steps=100"
  ]
  assert averaging.validate_params("two_point", dict(SECTION, gap=101), total_steps=100) == [
    "averaging.gap = 101: must be <= total_steps=100"
  ]


def test_method_params_feed_the_averager_and_the_schedule():
  import ml_collections as mlc

  section = mlc.ConfigDict(dict(SECTION, method="ema", batch_norm="average", decay=0.1))
  p = averaging.method_params("ema", section)
  assert p == dict(decay=0.1, start_step=0, every=1, debias=False)
  assert averaging.method_params("swa", section) == dict(start_step=0, every=1)
  assert averaging.method_params("multi_point", section) == dict(n=3, gap=10, start_step=0)
  assert averaging.method_params("none", section) == {}
  averaging.make_averager("ema", **p)
  sched = schedules.equivalent_schedule("ema", 0.1, start=0, window=5, **p)
  assert float(sched(0)) == pytest.approx(0.1 * (1 - 0.9**5), rel=1e-6)
  with pytest.raises(ValueError, match="must be one of"):
    averaging.method_params("polyak", section)


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: averaging.make_averager("ema", decay=0.1, gap=3), "gap=3 is not one of its"),
    (lambda: averaging.make_averager("multi_point", gap=2), "'multi_point' needs n"),
    (lambda: averaging.make_averager("ema", decay="0.1"), "decay must be a float in"),
    (lambda: averaging.make_averager("two_point", gap=True), "gap must be an integer"),
    (lambda: averaging.kernel("swa", window=0), "window must be an integer >= 1"),
    (lambda: averaging.register("ema"), "needs a trajax.averaging.Method"),
  ],
)
def test_bad_arguments_name_themselves(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


def test_static_parameter_under_inject_hyperparams_is_named():
  opt = optax.inject_hyperparams(averaging.multi_point)(optax.sgd(0.1), n=3, gap=2)
  params = {"w": jnp.zeros(2)}
  state = opt.init(params)
  with pytest.raises(TypeError, match=r"static_args=\('n',\)"):
    jax.jit(opt.update)(params, state, params)


# ---------------------------------------------------------------------------
# The power-function EMA (Karras et al. 2024), registered once.


@pytest.mark.parametrize("gamma", [0.5, 3.0, 16.97])
def test_power_ema_kernel_is_the_closed_form(gamma):
  """β_p = (1 − 1/p)^{γ+1} gives c_i = (i^{γ+1} − (i−1)^{γ+1})/k^{γ+1}: a profile ∝ i^γ."""
  k = 400
  c = averaging.kernel("power_ema", window=k, gamma=gamma)
  i = np.arange(1, k + 1, dtype=np.float64)
  want = np.r_[0.0, (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / k ** (gamma + 1)]
  np.testing.assert_allclose(c, want, rtol=1e-10, atol=1e-300)
  assert c.sum() == pytest.approx(1.0, abs=1e-12)
  # ∝ t^γ: the ratio to (γ+1) i^γ / k^{γ+1} tends to 1 (the mid-point rule's error is O(1/i)).
  ratio = c[1:] / ((gamma + 1) * i**gamma / k ** (gamma + 1))
  assert abs(ratio[-1] - 1) < 3 * (gamma + 1) / k and abs(ratio[k // 2] - 1) < 6 * (gamma + 1) / k
  # every = 2, start_step = 3: the same profile over the points 5, 7, …
  c2 = averaging.kernel("power_ema", window=3 + 2 * 4, gamma=gamma, every=2, start_step=3)
  p = np.arange(1, 5, dtype=np.float64)
  want2 = np.zeros(12)
  want2[[5, 7, 9, 11]] = (p ** (gamma + 1) - (p - 1) ** (gamma + 1)) / 4 ** (gamma + 1)
  np.testing.assert_allclose(c2, want2, rtol=1e-10, atol=1e-15)
  # The registered closed form of the step weights, w_j = 1 − (j/k)^{γ+1}, against the derivation.
  fast = averaging.METHODS["power_ema"].step_weights(k, {"gamma": gamma})
  np.testing.assert_allclose(fast, schedules.weights_from_kernel(c), rtol=1e-10, atol=1e-14)
  assert averaging.METHODS["power_ema"].step_weights(k, {"gamma": gamma, "every": 2}) is None


def test_power_ema_gets_its_schedule_and_theory_from_its_one_definition():
  gamma = 2.0
  k = 12
  # Its equivalent schedule lands on the wrapper's average (linear loss), with momentum.
  base = optax.cosine_decay_schedule(0.3, decay_steps=40, alpha=0.2)
  for momentum in (None, 0.9):
    err, scale = side_trip_gap(
      "power_ema", {"gamma": gamma}, base=base, momentum=momentum, start=5, window=k
    )
    assert scale > 0.1 and err <= 2e-6 * max(1.0, scale), (err, scale)
  sched = schedules.equivalent_schedule("power_ema", 0.1, start=0, window=k, gamma=gamma)
  j = np.arange(k + 2)
  want = 0.1 * np.where(j < k, 1 - (np.minimum(j, k) / k) ** (gamma + 1), 0.0)
  np.testing.assert_allclose(np.asarray(sched(j)), want, rtol=1e-6, atol=1e-9)
  # Its stationary variance: the derived kernel on lags, and the exact moments of an
  # average started w steps before the end of a long run.
  w, lr, kappa = 40, 0.1, np.array([0.5, 2.0])
  f = theory.stationary_variance(lr, kappa, "power_ema", window=w, gamma=gamma)
  mu = theory.averaging_kernel("power_ema", window=w, gamma=gamma)
  i = np.arange(w, 0, -1, dtype=np.float64)  # lag 0 is the newest point i = w
  np.testing.assert_allclose(mu[:w], (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / w ** (gamma + 1))
  np.testing.assert_allclose(
    f, theory.stationary_variance(lr, kappa, "kernel", kernel=mu), rtol=1e-12
  )
  ex = theory.expected_loss(
    kappa, lr=lr, num_steps=1500, method="power_ema", gamma=gamma, start_step=1500 - w
  )
  np.testing.assert_allclose(2 * np.asarray(ex.loss_by_dof)[-1] / kappa, f, rtol=2e-4)
  # A profile ∝ t^γ averages less than SWA over the same window (it leans on late points).
  swa = theory.stationary_variance(lr, kappa, "swa", window=w)
  assert np.all(f > swa)


def test_power_ema_sigma_rel_round_trip():
  # Karras et al.'s σ_rel = 0.05 and 0.10 are γ ≈ 16.97 and 6.94.
  assert averaging.power_ema_gamma(0.05) == pytest.approx(16.97, abs=0.01)
  assert averaging.power_ema_gamma(0.10) == pytest.approx(6.94, abs=0.01)
  for gamma in (0.3, 4.0, 50.0):
    assert averaging.power_ema_gamma(averaging.power_ema_sigma_rel(gamma)) == pytest.approx(gamma)
    # σ_rel is the kernel's standard deviation over its length, in the continuum limit.
    c = averaging.kernel("power_ema", window=4000, gamma=gamma)
    x = np.arange(c.size) / (c.size - 1)
    std = np.sqrt(np.sum(c * x**2) - np.sum(c * x) ** 2)
    assert std == pytest.approx(averaging.power_ema_sigma_rel(gamma), rel=2e-3)
  with pytest.raises(ValueError, match=r"sigma_rel must be in \(0, 0.2887\)"):
    averaging.power_ema_gamma(0.3)


# ---------------------------------------------------------------------------
# Profiles: extra averages in the optimizer state.


def test_validate_profiles_names_entry_field_value_and_what_is_allowed():
  good = ({"method": "power_ema", "gamma": 6.94}, {"method": "ema", "decay": 0.01})
  assert averaging.validate_profiles(good, total_steps=100) == []
  assert averaging.validate_profiles(()) == []
  bad = (
    {"method": "power_ema", "gamma": -1.0},
    {"method": "none"},
    {"method": "ema", "decay": 0.1, "gap": 3},
    {"method": "ema"},
    "ema",
    {"method": "swa", "start_step": 500},
  )
  assert averaging.validate_profiles(bad, total_steps=100) == [
    "averaging.profiles[0].gamma = -1.0: must be a float > 0",
    "averaging.profiles[1].method = 'none': must be one of "
    "['ema', 'swa', 'two_point', 'multi_point', 'power_ema']",
    "averaging.profiles[2].gap = 3: not a parameter of 'ema' "
    "(its parameters: decay, start_step, every, debias, accumulator_dtype)",
    "averaging.profiles[3].decay = None: averaging method 'ema' needs it (a float in (0, 1])",
    "averaging.profiles[4] = 'ema': must be a mapping {'method': one of "
    "['ema', 'swa', 'two_point', 'multi_point', 'power_ema'], ...}",
    "averaging.profiles[5].start_step = 500: must be < total_steps=100",
  ]
  assert averaging.validate_profiles("ema") == [
    "averaging.profiles = 'ema': must be a tuple of {'method': ..., <params>} mappings"
  ]
  with pytest.raises(ValueError, match=r"averaging.profiles\[0\].gamma = -1.0"):
    averaging.make_profiles(bad[:1])


def test_profiles_are_exact_in_any_chain_position_and_invisible_to_the_run_average():
  """with_profiles keeps a_t without θ_t, like wrap: a transform after it changes the update."""
  theta0 = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
  prof = averaging.make_profiles(
    ({"method": "ema", "decay": 0.3}, {"method": "power_ema", "gamma": 2.0})
  )
  opt = averaging.wrap(
    optax.chain(averaging.with_profiles(optax.sgd(0.1, momentum=0.9), prof), optax.scale(0.5)),
    averaging.make_averager("swa"),
  )
  state = opt.init(theta0)
  theta, thetas = theta0, [theta0]
  rng = np.random.default_rng(0)
  for _ in range(7):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), theta)
    u, state = opt.update(g, state, theta)
    theta = optax.apply_updates(theta, u)
    thetas.append(theta)
  ema, power = averaging.profile_averages(state, theta)
  for got, method, params in ((ema, "ema", {"decay": 0.3}), (power, "power_ema", {"gamma": 2.0})):
    c = averaging.kernel(method, window=7, **params)
    want = jax.tree.map(
      lambda *xs, c=c: sum(ci * np.asarray(x) for ci, x in zip(c, xs, strict=True)), *thetas
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The run's own average is untouched by the profiles: SWA of θ_1 … θ_7.
  swa = averaging.averaged_params(state, theta)
  np.testing.assert_allclose(
    swa["w"], np.mean([np.asarray(t["w"]) for t in thetas[1:]], 0), rtol=1e-6
  )
  assert [w for w, _ in averaging.find_states(state)] == [""]
  assert averaging.profile_averages(opt.init(theta0), theta0)[0]["w"].dtype == jnp.float32
  assert averaging.profile_averages(optax.sgd(0.1).init(theta0), theta0) == ()
  # No profiles: the inner transformation itself (its state layout unchanged).
  inner = optax.sgd(0.1, momentum=0.9)
  assert averaging.with_profiles(inner, ()) is inner


def test_a_polynomial_decay_schedule_is_a_power_ema():
  """The converse: w_j = 1 − (j/k)^{γ+1} on the learning rate is the power EMA of γ."""
  k = 50
  for gamma in (1.0, 2.5):
    sched = lambda j, g=gamma: 0.2 * (1 - (jnp.asarray(j) / k) ** (g + 1))
    found = schedules.matching_averaging(sched, 0.2, start=10, window=k)
    assert found.method == "power_ema" and found.window == k
    assert found.params["gamma"] == pytest.approx(gamma, rel=1e-4)
  # γ = 0 (linear decay to zero) stays SWA.
  linear = schedules.matching_averaging(
    lambda j: 0.2 * (1 - jnp.asarray(j) / k), 0.2, start=0, window=k
  )
  assert linear.method == "swa"
