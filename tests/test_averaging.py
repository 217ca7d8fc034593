"""Contract suite for trajax.averaging: every wrapper against a NumPy reference
(tests/averaging_reference.py) and, for every registered method, inside the
optax compositions users build (optax's own contract: test_averaging_optax)."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import averaging_cases
from tests.averaging_reference import reference_average
from trajax import averaging

CASES = [
  ("ema", dict(decay=0.3)),
  ("ema", dict(decay=0.3, start_step=3)),
  ("ema", dict(decay=0.2, start_step=2, every=3)),
  ("ema", dict(decay=0.1, debias=True)),
  ("ema", dict(decay=0.25, debias=True, start_step=4, every=2)),
  ("ema", dict(decay=1.0, start_step=1)),
  ("swa", dict()),
  ("swa", dict(start_step=5)),
  ("swa", dict(start_step=2, every=3)),
  ("two_point", dict(gap=4)),
  ("two_point", dict(gap=1, start_step=3)),
  ("multi_point", dict(n=3, gap=2)),
  ("multi_point", dict(n=4, gap=3, start_step=5)),
  ("multi_point", dict(n=1, gap=2, start_step=1)),
  ("power_ema", dict(gamma=6.94)),
  ("power_ema", dict(gamma=0.5, start_step=3, every=2)),
]
CASE_IDS = [f"{m}-{'-'.join(f'{k}{v}' for k, v in p.items())}" for m, p in CASES]


def make(method, inner, p):
  return getattr(averaging, method)(inner, **p)


def ref_params(method, p):
  return {k: v for k, v in p.items()}


def random_updates(steps, shape, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(steps, *shape)).astype(np.float32)


def run(opt, params, updates, *, jit=True):
  """Feeds the prescribed updates through sgd(1) (so updates = -grads)."""
  state = opt.init(params)
  step = lambda g, s, p: opt.update(g, s, p)
  if jit:
    step = jax.jit(step)
  thetas, avgs = [params], [averaging.averaged_params(state, params)]
  for u in updates:
    grads = jax.tree.map(lambda x: -x, u)
    upd, state = step(grads, state, params)
    params = optax.apply_updates(params, upd)
    thetas.append(params)
    avgs.append(averaging.averaged_params(state, params))
  return thetas, avgs, state


@pytest.mark.parametrize("method,p", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(method, p):
  steps = 15
  params = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)), jnp.float32)
  updates = [jnp.asarray(u) for u in random_updates(steps, (3, 2))]
  thetas, avgs, _ = run(make(method, optax.sgd(1.0), p), params, updates)
  expected = reference_average(method, np.stack(thetas), **ref_params(method, p))
  np.testing.assert_allclose(np.stack(avgs), expected, rtol=2e-5, atol=2e-6)


def test_boundary_steps_exact():
  """At t = s + gap the two-point average is (θ_s + θ_t)/2; ema follows to t = s."""
  params = jnp.zeros(4)
  updates = [jnp.full(4, float(i + 1)) for i in range(6)]
  thetas, avgs, _ = run(averaging.two_point(optax.sgd(1.0), gap=2, start_step=2), params, updates)
  np.testing.assert_array_equal(avgs[1], thetas[1])  # t < s follows
  np.testing.assert_array_equal(avgs[2], thetas[2])  # t = s: one snapshot
  np.testing.assert_array_equal(avgs[3], thetas[2])  # held between snapshots
  np.testing.assert_allclose(avgs[4], (thetas[2] + thetas[4]) / 2)
  np.testing.assert_allclose(avgs[6], (thetas[4] + thetas[6]) / 2)
  _, avgs, _ = run(averaging.ema(optax.sgd(1.0), 0.5, start_step=3), params, updates)
  for t in range(4):
    np.testing.assert_array_equal(avgs[t], thetas[t])
  np.testing.assert_allclose(avgs[4], 0.5 * thetas[3] + 0.5 * thetas[4])


# ---------------------------------------------------------------------------
# The contract suite: every transform in every composition.

# Every registered method, each optional parameter moved off its default in
# a case of its own (tests/averaging_cases.py): a new method joins the suite.
TRANSFORMS = {
  name: functools.partial(averaging_cases.factory(method), **p)
  for name, (method, p) in averaging_cases.cases().items()
}


def tree_params():
  rng = np.random.default_rng(0)
  return {
    "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
    "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
  }


def tree_grads(t):
  rng = np.random.default_rng(100 + t)
  return {
    "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
    "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
  }


def train(opt, steps=8, *, jit=True, params=None, grads_fn=tree_grads):
  params = tree_params() if params is None else params
  state = opt.init(params)
  update = jax.jit(opt.update) if jit else opt.update
  for t in range(steps):
    upd, state = update(grads_fn(t), state, params)
    params = optax.apply_updates(params, upd)
  return params, state


def assert_trees_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


def inner():
  return optax.sgd(0.1, momentum=0.9)


@pytest.fixture(params=sorted(TRANSFORMS))
def transform(request):
  return TRANSFORMS[request.param]


def test_jit_matches_no_jit(transform):
  p1, s1 = train(transform(inner()), jit=True)
  p2, s2 = train(transform(inner()), jit=False)
  assert_trees_close(p1, p2, rtol=1e-5, atol=1e-6)
  assert_trees_close(
    averaging.averaged_params(s1, p1), averaging.averaged_params(s2, p2), rtol=1e-5, atol=1e-6
  )


def test_runs_inner_unchanged(transform):
  p_wrapped, _ = train(transform(inner()))
  p_plain, _ = train(inner())
  assert_trees_close(p_wrapped, p_plain, rtol=0, atol=0)


def test_inside_chain_and_around_chain(transform):
  ref_p, ref_s = train(transform(optax.chain(optax.clip_by_global_norm(1.0), inner())))
  p, s = train(optax.chain(optax.clip_by_global_norm(1.0), transform(inner())))
  assert_trees_close(p, ref_p, rtol=1e-6, atol=1e-7)
  assert_trees_close(
    averaging.averaged_params(s, p), averaging.averaged_params(ref_s, ref_p), rtol=1e-6, atol=1e-7
  )


def test_inject_hyperparams_equivalence():
  direct = averaging.ema(inner(), 0.2, start_step=2, every=2)
  injected = optax.inject_hyperparams(averaging.ema)(inner(), decay=0.2, start_step=2, every=2)
  p1, s1 = train(direct)
  p2, s2 = train(injected)
  assert_trees_close(
    averaging.averaged_params(s1, p1), averaging.averaged_params(s2, p2), rtol=1e-6
  )
  assert "decay" in s2.hyperparams
  # Changing the injected decay mid-run takes effect under jit.
  params = tree_params()
  state = injected.init(params)
  state.hyperparams["decay"] = jnp.asarray(1.0)
  upd, state = jax.jit(injected.update)(tree_grads(0), state, params)
  new = optax.apply_updates(params, upd)
  # decay = 1 and t=1 <= start_step: average equals the new params either way;
  # step again past start_step with decay 1: average = θ_t.
  for t in range(1, 4):
    upd, state = jax.jit(injected.update)(tree_grads(t), state, new)
    new = optax.apply_updates(new, upd)
  assert_trees_close(averaging.averaged_params(state, new)["bias"], new["bias"], rtol=1e-6)


def test_multisteps_one_point_per_real_update(transform):
  k = 3
  ms = optax.MultiSteps(transform(inner()), every_k_schedule=k)
  # Micro-batches whose mean is the real step's gradient.
  micro = lambda t: jax.tree.map(lambda g: g, tree_grads(t // k))
  p_ms, s_ms = train(ms.gradient_transformation(), steps=6 * k, grads_fn=micro)
  p_ref, s_ref = train(transform(inner()), steps=6)
  assert_trees_close(p_ms, p_ref, rtol=1e-5, atol=1e-6)
  assert_trees_close(
    averaging.averaged_params(s_ms, p_ms),
    averaging.averaged_params(s_ref, p_ref),
    rtol=1e-5,
    atol=1e-6,
  )


def test_apply_if_finite_skips_average(transform):
  bad_step = 4

  def grads(t):
    g = tree_grads(t if t < bad_step else t - 1)
    if t == bad_step:
      g = jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, g)
    return g

  p, s = train(optax.apply_if_finite(transform(inner()), 3), steps=9, grads_fn=grads)
  p_ref, s_ref = train(transform(inner()), steps=8)
  assert int(s.total_notfinite) == 1
  assert_trees_close(p, p_ref, rtol=1e-6, atol=1e-7)
  assert_trees_close(
    averaging.averaged_params(s, p), averaging.averaged_params(s_ref, p_ref), rtol=1e-6, atol=1e-7
  )


def test_bf16_params_keep_f32_accumulator():
  """Increments of δ·(θ − a) far below bf16 resolution must not be lost."""
  decay = 1e-3
  params = {"w": jnp.ones((16,), jnp.bfloat16)}
  opt = averaging.ema(optax.sgd(1.0), decay)
  state = opt.init(params)
  delta = jnp.full((16,), 2**-4, jnp.bfloat16)  # θ_t = 1 + t/16, exactly representable
  thetas = [params["w"]]
  for _ in range(40):
    upd, state = opt.update({"w": -delta}, state, params)
    params = optax.apply_updates(params, upd)
    thetas.append(params["w"])
  avg = averaging.averaged_params(state, params)["w"]
  assert avg.dtype == jnp.float32
  assert params["w"].dtype == jnp.bfloat16
  expected = reference_average(
    "ema", np.stack([np.asarray(t, np.float64) for t in thetas]), decay=decay
  )
  np.testing.assert_allclose(np.asarray(avg), expected[-1], rtol=1e-6)
  # A bf16 accumulator would round every increment (≤ 0.0025) away near 1.0.
  bf16 = averaging.ema(optax.sgd(1.0), decay, accumulator_dtype=jnp.bfloat16)
  s16 = bf16.init({"w": jnp.ones((16,), jnp.bfloat16)})
  p16 = {"w": jnp.ones((16,), jnp.bfloat16)}
  for _ in range(40):
    upd, s16 = bf16.update({"w": -delta}, s16, p16)
    p16 = optax.apply_updates(p16, upd)
  assert abs(float(averaging.averaged_params(s16, p16)["w"][0]) - expected[-1][0]) > 10 * abs(
    float(avg[0]) - expected[-1][0]
  )


def test_non_float_leaves_untouched(transform):
  """Integer leaves (counters in a params tree) follow θ_t; floats are averaged."""
  params = dict(tree_params(), step_count=jnp.array(7, jnp.int32))
  grads = lambda t: dict(tree_grads(t), step_count=jnp.array(-1, jnp.int32))
  # optax.identity passes integer updates through, so the counter really moves.
  params, state = train(transform(optax.identity()), params=params, grads_fn=grads)
  avg = averaging.averaged_params(state, params)
  assert avg["step_count"].dtype == jnp.int32
  assert int(avg["step_count"]) == int(params["step_count"]) == 7 - 8
  assert avg["bias"].dtype == jnp.float32
  assert not np.allclose(avg["bias"], params["bias"])


def test_abstract_init_and_stable_structure(transform):
  opt = transform(inner())
  params = tree_params()
  abstract = jax.eval_shape(opt.init, params)
  state = opt.init(params)
  as_struct = lambda t: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), t)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  assert as_struct(abstract) == as_struct(state)
  _, later = train(opt, steps=5)
  assert jax.tree.structure(later) == jax.tree.structure(state)
  assert as_struct(later) == as_struct(state)
  count = later.count
  assert count.dtype == jnp.int32 and int(count) == 5


def test_lax_scan_carries_state(transform):
  """A stable state structure lets the whole loop run in one lax.scan."""
  opt = transform(inner())
  params = tree_params()
  grads = [tree_grads(t) for t in range(6)]
  stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)

  def body(carry, g):
    p, s = carry
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (p, s), _ = jax.lax.scan(body, (params, opt.init(params)), stacked)
  p_ref, s_ref = train(opt, steps=6)
  assert_trees_close(
    averaging.averaged_params(s, p), averaging.averaged_params(s_ref, p_ref), rtol=1e-6, atol=1e-7
  )


def test_init_copies_and_donation_is_safe(transform):
  opt = transform(inner())
  params = tree_params()
  state = opt.init(params)
  avg = averaging.averaged_params(state)  # exact at init: a_0 = θ_0
  assert avg["bias"].unsafe_buffer_pointer() != params["bias"].unsafe_buffer_pointer()
  expected_bias = np.asarray(params["bias"]).copy()

  @jax.jit
  def consume(p):
    return jax.tree.map(lambda x: x * 2, p)

  consume_donating = jax.jit(consume, donate_argnums=0)
  consume_donating(params)
  np.testing.assert_array_equal(np.asarray(avg["bias"]), expected_bias)


def test_averager_on_any_pytree():
  """The same arithmetic on a tree that never passes through the optimizer."""
  ema = averaging.ema_averager(0.5)
  stats = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
  st = ema.init(stats)
  seq = [stats]
  for _ in range(4):
    stats = {"mean": stats["mean"] + 1.0, "var": stats["var"] * 2.0}
    st = jax.jit(ema.update)(stats, st)
    seq.append(stats)
  for key in stats:
    ref = reference_average("ema", np.stack([s[key] for s in seq]), decay=0.5)
    np.testing.assert_allclose(st.average[key], ref[-1], rtol=1e-6)
  assert averaging.make_averager("swa").init(stats).average["var"].shape == (3,)


def test_none_method_keeps_no_copy():
  opt = averaging.wrap(inner(), averaging.make_averager("none"))
  params, state = train(opt)
  assert averaging.averaged_params(state, params) is params
  with pytest.raises(ValueError, match="pass params"):
    averaging.averaged_params(state)


def test_memory_footprint():
  params = {"w": jnp.zeros((10, 10))}

  def copies(opt):  # full-size copies of the params the wrapper keeps beside the inner state
    state = opt.init(params)
    own = (state.previous, state.snapshots)
    return sum(x.size for x in jax.tree.leaves(own)) / 100

  assert copies(averaging.ema(optax.sgd(1.0), 0.1)) == 1
  assert copies(averaging.swa(optax.sgd(1.0))) == 1
  assert copies(averaging.multi_point(optax.sgd(1.0), n=4, gap=2)) == 4  # a ring of 4 snapshots
  assert copies(averaging.wrap(optax.sgd(1.0), averaging.make_averager("none"))) == 0


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: averaging.ema(inner(), 0.0), "decay must be a float in \\(0, 1\\], got 0.0"),
    (lambda: averaging.ema(inner(), 1.5), "decay must be"),
    (
      lambda: averaging.ema(inner(), 0.1, start_step=-1),
      "start_step must be an integer >= 0, got -1",
    ),
    (lambda: averaging.swa(inner(), every=0), "every must be an integer >= 1, got 0"),
    (lambda: averaging.swa(inner(), every=1.5), "every must be an integer"),
    (lambda: averaging.two_point(inner(), gap=0), "gap must be an integer >= 1, got 0"),
    (lambda: averaging.multi_point(inner(), n=0, gap=2), "n must be an integer >= 1, got 0"),
    (
      lambda: averaging.ema(inner(), 0.1, accumulator_dtype=jnp.int32),
      "accumulator_dtype must be a floating dtype",
    ),
    (lambda: averaging.make_averager("polyak"), "averaging method must be one of"),
    (lambda: averaging.make_averager("ema", gap=3), "averaging method 'ema'"),
    (
      lambda: averaging.averaged_params(optax.sgd(0.1).init({"w": jnp.zeros(2)})),
      "no trajax averaging state",
    ),
  ],
)
def test_bad_arguments_name_themselves(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


def test_update_without_params_is_an_error():
  opt = averaging.ema(inner(), 0.1)
  state = opt.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="need params"):
    opt.update({"w": jnp.ones(2)}, state)


def test_core_import_does_not_pull_tensorflow():
  code = "import sys, trajax.averaging, trajax.schedules, trajax.theory; print('tensorflow' in sys.modules, 'clu' in sys.modules, 'ml_collections' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False False False"


SHARDING_SCRIPT = textwrap.dedent(
  """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from trajax import averaging
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    specs = {"kernel": P("data", "model"), "bias": P("model"), "scale": P()}
    shard = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    params = {"kernel": jnp.ones((8, 6)), "bias": jnp.ones((6,)), "scale": jnp.ones(())}
    params = jax.device_put(params, shard)
    for name, opt in [("ema", averaging.ema(optax.sgd(0.1, momentum=0.9), 0.1)),
                      ("swa", averaging.swa(optax.sgd(0.1))),
                      ("multi_point", averaging.multi_point(optax.sgd(0.1), n=3, gap=2))]:
        fresh = jax.tree.map(jnp.copy, params)  # donated below
        state = jax.jit(opt.init)(fresh)
        def step(p, s):
            g = jax.tree.map(lambda x: x * 0.5, p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s
        p, s = jax.jit(step, donate_argnums=(0, 1))(fresh, state)
        p, s = jax.jit(step, donate_argnums=(0, 1))(p, s)
        trees = [averaging.averaged_params(s, p)] + ([s.previous] if s.previous else [])
        for tree in trees:
            for k in specs:
                got = tree[k].sharding
                assert got.is_equivalent_to(shard[k], tree[k].ndim), (name, k, got, shard[k])
        for k in specs:  # the ring: each slot sharded like the params
            if s.snapshots:
                got, want = s.snapshots[k].sharding, NamedSharding(mesh, P(None, *specs[k]))
                assert got.is_equivalent_to(want, s.snapshots[k].ndim), (name, k, got, want)
        print(name, "ok", len(jax.devices()))
    """
)


def test_state_sharded_like_params_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True, env=env
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["ema", "ok", "8", "swa", "ok", "8", "multi_point", "ok", "8"]


# ---------------------------------------------------------------------------
# Float32 over 10^5 steps (issue 23): the lerp form keeps the weights summing to one.

LONG = 100_000
DIM = 16


def _long_reference(method, thetas, **p):
  """a_T of every method (start_step 0, every 1) in float64, from its kernel's closed form."""
  th = np.asarray(thetas, np.float64)
  k = len(th) - 1
  if method == "ema":
    d = p["decay"]
    w = d * (1 - d) ** np.arange(k - 1, -1, -1, dtype=np.float64)  # θ_1 … θ_k
    if p.get("debias"):
      return w @ th[1:] / -np.expm1(k * np.log1p(-d))
    return (1 - d) ** k * th[0] + w @ th[1:]
  if method == "swa":
    return th[1:].mean(0)
  if method == "power_ema":
    g, i = p["gamma"] + 1.0, np.arange(1, k + 1, dtype=np.float64)
    return ((i / k) ** g - ((i - 1) / k) ** g) @ th[1:]
  n, gap = p.get("n", 2), p["gap"]
  return th[list(range(k - k % gap, -1, -gap))[:n]].mean(0)


LONG_CASES = [
  ("ema", dict(decay=1e-4)),
  ("ema", dict(decay=1e-4, debias=True)),
  ("swa", dict()),
  ("power_ema", dict(gamma=6.94)),
  ("two_point", dict(gap=1000)),
  ("multi_point", dict(n=5, gap=300)),
]


def _long_thetas():
  base = np.linspace(0.5, 3.0, DIM)
  noisy = base + 0.1 * np.random.default_rng(3).standard_normal((LONG + 1, DIM))
  return np.float32(base), noisy.astype(np.float32)


def _rel(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) / want - 1)))


@pytest.fixture(scope="module")
def long_run():
  """Every method's wrapper, one with_profiles holding all of them, and the pure averagers,
  each over 10^5 steps of {'const': a constant, 'noisy': θ_t} in one fori_loop."""
  base, noisy = _long_thetas()
  th = jnp.asarray(noisy)
  params = lambda t: {"const": jnp.asarray(base), "noisy": th[t]}
  zeros = jax.tree.map(jnp.zeros_like, params(0))
  sgd = optax.sgd(0.0)
  opts = [getattr(averaging, m)(sgd, **p) for m, p in LONG_CASES]
  profiles = averaging.with_profiles(sgd, [averaging.make_averager(m, **p) for m, p in LONG_CASES])

  @jax.jit
  def run():
    def body(t, states):
      wrapped, prof, pure = states
      wrapped = [o.update(zeros, s, params(t - 1))[1] for o, s in zip(opts, wrapped, strict=True)]
      prof = profiles.update(zeros, prof, params(t - 1))[1]
      pure = [
        averaging.make_averager(m, **p).update(params(t), s)
        for (m, p), s in zip(LONG_CASES, pure, strict=True)
      ]
      return wrapped, prof, pure

    init = (
      [o.init(params(0)) for o in opts],
      profiles.init(params(0)),
      [averaging.make_averager(m, **p).init(params(0)) for m, p in LONG_CASES],
    )
    wrapped, prof, pure = jax.lax.fori_loop(1, LONG + 1, body, init)
    last = params(LONG)
    return (
      [averaging.averaged_params(s, last) for s in wrapped],
      averaging.profile_averages(prof, last),
      [s.average for s in pure],
    )

  return run(), base, noisy


@pytest.mark.parametrize("face", ["wrapper", "profile", "pure"])
def test_float32_averages_stay_exact_over_long_runs(long_run, face):
  """A constant stays that constant to 1e-6 and a noisy sequence is within 2e-5 of the float64
  definition after 10^5 steps, for every method (the old (1 − w)·a + w·θ: 1.6e-4 to 9e-3)."""
  (wrapped, prof, pure), base, noisy = long_run
  got = {"wrapper": wrapped, "profile": prof, "pure": pure}[face]
  for (method, p), avg in zip(LONG_CASES, got, strict=True):
    assert _rel(avg["const"], base.astype(np.float64)) <= 1e-6, (method, p)
    want = _long_reference(method, noisy, **p)
    assert _rel(avg["noisy"], want) <= 2e-5, (method, p, _rel(avg["noisy"], want))
