"""Tests for trajax.probes against closed forms, NumPy loops and Monte Carlo."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trajax import probes

# ---------------------------------------------------------------------------
# Linear regression: L(w, b) = mean_i (a_i . (w, b) - y_i)^2 / 2 with a_i = (x_i, 1).
# Everything below is quadratic in the parameters, so gradients, Hessians and
# one-step losses have closed forms computed here in float64 NumPy.

D = 5


def lsq_loss(params, batch):
  pred = batch["x"] @ params["w"] + params["b"]
  return 0.5 * jnp.mean((pred - batch["y"]) ** 2)


def make_batch(rng, n, noise=0.5):
  x = rng.normal(size=(n, D)).astype(np.float32)
  w_true = np.linspace(-1.0, 1.0, D)
  y = (x @ w_true + 0.3 + noise * rng.normal(size=n)).astype(np.float32)
  return {"x": x, "y": y}


def make_params(rng):
  return {"w": rng.normal(size=D).astype(np.float32), "b": np.float32(rng.normal())}


def stack(batches):
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def flat(p):
  return np.concatenate(
    [np.ravel(np.asarray(p["w"], np.float64)), np.ravel(np.asarray(p["b"], np.float64))]
  )


def unflat(v):
  return {"w": v[:D], "b": v[D]}


def design(batch):
  x = np.asarray(batch["x"], np.float64)
  return np.concatenate([x, np.ones((x.shape[0], 1))], 1)


def np_loss(v, batch):
  r = design(batch) @ v - np.asarray(batch["y"], np.float64)
  return 0.5 * np.mean(r**2)


def np_grad(v, batch):
  a = design(batch)
  return a.T @ (a @ v - np.asarray(batch["y"], np.float64)) / a.shape[0]


def np_hessian(batch):
  a = design(batch)
  return a.T @ a / a.shape[0]


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  return {
    "params": make_params(rng),
    "batch": make_batch(rng, 32),
    "heldout": stack([make_batch(rng, 32) for _ in range(4)]),
    "rng": rng,
  }


# ---------------------------------------------------------------- step_size


def test_single_step_curve_matches_closed_form_parabola(problem):
  p, b, h = problem["params"], problem["batch"], problem["heldout"]
  etas = np.linspace(0.0, 1.5, 31).astype(np.float32)
  curve = probes.single_step_losses(lsq_loss, p, b, etas, h)

  v, g = flat(p), np_grad(flat(p), b)
  hess = np_hessian(b)
  # l_b(eta) = L0 - eta |g|^2 + eta^2 g^T H g / 2 exactly for a quadratic.
  expected = np_loss(v, b) - etas * (g @ g) + 0.5 * etas**2 * (g @ hess @ g)
  np.testing.assert_allclose(curve.train_loss, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(curve.train_loss0, np_loss(v, b), rtol=1e-5)
  np.testing.assert_allclose(curve.grad_sq_norm, g @ g, rtol=1e-5)

  heldout = [jax.tree.map(lambda x, i=i: x[i], h) for i in range(4)]
  exp_h = np.array([[np_loss(v - e * g, hb) for e in etas] for hb in heldout])
  assert curve.heldout_loss.shape == (4, 31)
  np.testing.assert_allclose(curve.heldout_loss, exp_h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(curve.heldout_loss0, [np_loss(v, hb) for hb in heldout], rtol=1e-5)

  stats = probes.heldout_stats(curve)
  np.testing.assert_allclose(stats.mean, exp_h.mean(0), rtol=1e-4)
  np.testing.assert_allclose(stats.std, exp_h.std(0), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(stats.min, exp_h.min(0), rtol=1e-4)
  np.testing.assert_allclose(stats.max, exp_h.max(0), rtol=1e-4)


def test_chunked_grid_equals_single_vmap(problem):
  p, b, h = problem["params"], problem["batch"], problem["heldout"]
  etas = np.linspace(-0.2, 1.0, 13).astype(np.float32)
  full = probes.single_step_losses(lsq_loss, p, b, etas, h)
  chunked = probes.single_step_losses(lsq_loss, p, b, etas, h, chunk_size=5)
  np.testing.assert_allclose(chunked.train_loss, full.train_loss, rtol=1e-6)
  np.testing.assert_allclose(chunked.heldout_loss, full.heldout_loss, rtol=1e-6)
  # 13 step sizes in chunks of 5 leave a remainder; also without held-out data.
  alone = probes.single_step_losses(lsq_loss, p, b, etas, chunk_size=5)
  np.testing.assert_allclose(alone.train_loss, full.train_loss, rtol=1e-6)
  assert alone.heldout_loss.shape == (0, 13) and alone.heldout_loss0.shape == (0,)


def test_quadratic_fit_recovers_exact_coefficients_and_argmin_is_eps_max(problem):
  p, b = problem["params"], problem["batch"]
  g, hess = np_grad(flat(p), b), np_hessian(b)
  eps_max = (g @ g) / (g @ hess @ g)
  etas = np.linspace(0.0, 2.0 * eps_max, 401).astype(np.float32)
  rep = probes.run_step_size_probe(lsq_loss, p, b, etas, degree=2, with_eps_max=True)
  np.testing.assert_allclose(
    rep.train.fit.coeffs, [0.5 * g @ hess @ g, -(g @ g), np_loss(flat(p), b)], rtol=2e-3, atol=1e-4
  )
  assert rep.train.fit.rmse < 1e-4
  # grid spacing is eps_max / 200, so the argmin is within one spacing.
  assert abs(rep.train.best_step_size - eps_max) <= eps_max / 200 + 1e-7
  np.testing.assert_allclose(rep.train.largest_drop, 0.5 * (g @ g) ** 2 / (g @ hess @ g), rtol=1e-3)
  em = probes.epsilon_max(lsq_loss, p, b)
  np.testing.assert_allclose(em.eps_max, eps_max, rtol=1e-4)
  assert abs(rep.train.best_step_size - em.eps_max) <= eps_max / 200 + 1e-7
  np.testing.assert_allclose(rep.eps_max.eps_max, em.eps_max, rtol=1e-6)
  assert rep.heldout is None and rep.heldout_mean is None


def test_fit_polynomial_matches_numpy_polyfit_at_small_step_sizes():
  rng = np.random.default_rng(1)
  etas = np.linspace(0.0, 2e-3, 25)
  coeffs = np.array([3e8, -4e5, 120.0, -2.0, 1.5])
  y = np.polyval(coeffs, etas) + 1e-3 * rng.normal(size=etas.size)
  fit = probes.fit_polynomial(etas.astype(np.float32), y.astype(np.float32), 4)
  ref = np.polyfit(etas, y, 4)
  np.testing.assert_allclose(
    np.polyval(np.asarray(fit.coeffs, np.float64), etas), np.polyval(ref, etas), atol=2e-4
  )
  resid = np.polyval(ref, etas) - y
  np.testing.assert_allclose(fit.rmse, np.sqrt(np.mean(resid**2)), rtol=0.05)
  np.testing.assert_allclose(fit.max_abs_error, np.abs(resid).max(), rtol=0.05)


def test_step_size_report_summary_and_json(problem):
  p, b, h = problem["params"], problem["batch"], problem["heldout"]
  etas = np.linspace(0.0, 1.0, 11).astype(np.float32)
  rep = probes.run_step_size_probe(lsq_loss, p, b, etas, h, degree=3)
  mean_h = rep.curve.heldout_loss.mean(0)
  i = int(np.argmin(mean_h))
  np.testing.assert_allclose(rep.heldout_mean.best_step_size, etas[i])
  np.testing.assert_allclose(
    rep.heldout_mean.largest_drop, rep.curve.heldout_loss0.mean() - mean_h[i], rtol=1e-5
  )
  np.testing.assert_allclose(
    rep.train.largest_drop, rep.curve.train_loss0 - rep.curve.train_loss.min(), rtol=1e-5
  )
  d = json.loads(json.dumps(probes.report_to_dict(rep)))
  assert len(d["heldout"]["std"]) == 11
  assert len(d["train"]["fit"]["coeffs"]) == 4
  assert d["eps_max"] is None

  sweep = probes.sweep_step_size_probe(
    lsq_loss, {"B=32": (p, b), "B=8": (p, jax.tree.map(lambda x: x[:8], b))}, etas, h
  )
  assert list(sweep) == ["B=32", "B=8"]
  assert sweep["B=8"].curve.train_loss.shape == (11,)
  assert not np.allclose(sweep["B=8"].curve.train_loss, sweep["B=32"].curve.train_loss)


def test_step_size_bad_inputs_raise(problem):
  p, b = problem["params"], problem["batch"]
  with pytest.raises(ValueError, match="step_sizes"):
    probes.single_step_losses(lsq_loss, p, b, np.zeros((2, 3), np.float32))
  with pytest.raises(ValueError, match="chunk_size"):
    probes.single_step_losses(lsq_loss, p, b, np.zeros(3, np.float32), chunk_size=0)
  with pytest.raises(ValueError, match="degree"):
    probes.fit_polynomial(np.zeros(3, np.float32), np.zeros(3, np.float32), 3)
  with pytest.raises(ValueError, match="heldout_batches"):
    probes.single_step_losses(
      lsq_loss, p, b, np.zeros(3, np.float32), {"x": np.zeros((2, 4, D)), "y": np.zeros((3, 4))}
    )
  with pytest.raises(ValueError, match="points"):
    probes.sweep_step_size_probe(lsq_loss, {}, np.zeros(3, np.float32))


class TinyConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_flax_model_probe_matches_python_loop():
  model = TinyConvNet()
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 8, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, size=(3, 8))
  # Shapes from eval_shape, values from NumPy: skips compiling Flax's
  # initialisers, which dominates this test's time on a loaded 2-core box.
  shapes = jax.eval_shape(model.init, jax.random.key(0), x[0])["params"]
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["x"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

  batch = {"x": x[0], "y": y[0]}
  heldout = {"x": x[1:], "y": y[1:]}
  etas = np.array([0.0, 0.1, 0.5, 1.0, 3.0], np.float32)
  curve = probes.single_step_losses(loss_fn, params, batch, etas, heldout)
  # Reference: one plain (un-vmapped) jitted forward per step size and batch.
  ref_loss = jax.jit(loss_fn)
  g = jax.jit(jax.grad(loss_fn))(params, batch)
  for k, eta in enumerate(etas):
    stepped = jax.tree.map(lambda a, b, eta=eta: a - eta * b, params, g)
    np.testing.assert_allclose(curve.train_loss[k], ref_loss(stepped, batch), rtol=1e-5)
    for n in range(2):
      hb = {"x": x[1 + n], "y": y[1 + n]}
      np.testing.assert_allclose(curve.heldout_loss[n, k], ref_loss(stepped, hb), rtol=1e-5)
  np.testing.assert_allclose(curve.train_loss[0], curve.train_loss0, rtol=1e-6)
  # A small step along the batch's own gradient must decrease its loss.
  assert curve.train_loss[1] < curve.train_loss0


# ------------------------------------------------------------ interpolation


def np_gd(v, batch, lr, k):
  path = [v]
  for _ in range(k):
    v = v - lr * np_grad(v, batch)
    path.append(v)
  return np.array(path)


def test_gd_trajectory_matches_numpy_loop(problem):
  p, b = problem["params"], problem["batch"]
  path = probes.gd_trajectory(lsq_loss, p, b, 0.3, 6)
  ref = np_gd(flat(p), b, 0.3, 6)
  assert path["w"].shape == (7, D)
  np.testing.assert_allclose(
    np.concatenate([path["w"], path["b"][:, None]], 1), ref, rtol=1e-4, atol=1e-5
  )


def test_sidetrip_interpolation_matches_numpy_loop(problem):
  rng = np.random.default_rng(3)
  pa, pb = make_params(rng), make_params(rng)
  b, h = problem["batch"], jax.tree.map(lambda x: x[0], problem["heldout"])
  alphas = np.linspace(-0.25, 1.25, 7).astype(np.float32)
  res = probes.sidetrip_interpolation(lsq_loss, pa, pb, b, 0.2, 4, alphas, h)
  path_a, path_b = np_gd(flat(pa), b, 0.2, 4), np_gd(flat(pb), b, 0.2, 4)
  exp_tr = np.array(
    [
      [np_loss((1 - al) * u + al * w, b) for al in alphas]
      for u, w in zip(path_a, path_b, strict=False)
    ]
  )
  exp_h = np.array(
    [
      [np_loss((1 - al) * u + al * w, h) for al in alphas]
      for u, w in zip(path_a, path_b, strict=False)
    ]
  )
  np.testing.assert_allclose(res.train_loss, exp_tr, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.heldout_loss, exp_h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.distance, np.linalg.norm(path_a - path_b, axis=1), rtol=1e-4)
  # Barrier: height above the chord through alpha = 0 (index 1) and 1 (index 5).
  chord = exp_tr[:, [1]] + alphas * (exp_tr[:, [5]] - exp_tr[:, [1]])
  np.testing.assert_allclose(res.train_barrier, (exp_tr - chord).max(1), rtol=1e-3, atol=1e-5)
  # The fixed-batch loss is convex in alpha, so it never rises above the chord
  # inside [0, 1]; the barrier is attained outside it (alpha = -0.25 or 1.25).
  inner = (exp_tr - chord)[:, 1:6]
  assert np.all(inner <= 1e-6)
  # Gradient descent on the fixed batch lowers its loss at both endpoints.
  assert res.train_loss[-1, 1] < res.train_loss[0, 1]
  assert res.train_loss[-1, 5] < res.train_loss[0, 5]

  out = probes.run_sidetrip_interpolation(lsq_loss, pa, pb, b, 0.2, 4)
  assert len(out["alphas"]) == 21 and np.all(np.isnan(out["heldout_barrier"]))
  json.dumps(out)


def test_interpolation_bad_inputs_raise(problem):
  p, b = problem["params"], problem["batch"]
  with pytest.raises(ValueError, match="num_steps"):
    probes.gd_trajectory(lsq_loss, p, b, 0.1, -1)
  with pytest.raises(ValueError, match="alphas"):
    probes.interpolation_losses(lsq_loss, p, p, b, np.zeros((), np.float32))
  with pytest.raises(ValueError, match="params_a and params_b"):
    probes.interpolation_losses(lsq_loss, p, {"w": p["w"]}, b, np.zeros(2, np.float32))


# ---------------------------------------------------------------- alignment


def np_cos(u, v):
  return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))


def test_gradient_alignment_matches_numpy(problem):
  rng = np.random.default_rng(4)
  p0, b = problem["params"], problem["batch"]
  seq = stack([make_params(rng) for _ in range(5)])
  al = probes.gradient_alignment(lsq_loss, p0, seq, b)
  g0 = np_grad(flat(p0), b)
  gs = [np_grad(flat(jax.tree.map(lambda x, i=i: x[i], seq)), b) for i in range(5)]
  np.testing.assert_allclose(al.cosine, [np_cos(g, g0) for g in gs], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    al.norm_ratio, [np.linalg.norm(g) / np.linalg.norm(g0) for g in gs], rtol=1e-4
  )
  np.testing.assert_allclose(al.grad_norm, [np.linalg.norm(g) for g in gs], rtol=1e-4)

  seq2 = stack([make_params(rng) for _ in range(5)])
  par = probes.parallel_gradient_cosine(lsq_loss, seq, seq2, b)
  gs2 = [np_grad(flat(jax.tree.map(lambda x, i=i: x[i], seq2)), b) for i in range(5)]
  np.testing.assert_allclose(
    par, [np_cos(u, v) for u, v in zip(gs, gs2, strict=False)], rtol=1e-4, atol=1e-5
  )


def test_independent_batch_cosine_matches_numpy(problem):
  rng = np.random.default_rng(5)
  p = problem["params"]
  ba = [make_batch(rng, 16) for _ in range(3)]
  bb = [make_batch(rng, 16) for _ in range(3)]
  cos = probes.independent_batch_cosine(lsq_loss, p, stack(ba), stack(bb))
  v = flat(p)
  np.testing.assert_allclose(
    cos,
    [np_cos(np_grad(v, x), np_grad(v, y)) for x, y in zip(ba, bb, strict=False)],
    rtol=1e-4,
    atol=1e-5,
  )
  with pytest.raises(ValueError, match="same number of batches"):
    probes.independent_batch_cosine(lsq_loss, p, stack(ba), stack(bb[:2]))


def test_cosine_and_norm_ratio_identities():
  a = {"u": jnp.array([1.0, 2.0]), "v": jnp.array([[3.0]])}
  b = jax.tree.map(lambda x: -2.5 * x, a)
  np.testing.assert_allclose(probes.cosine_similarity(a, b), -1.0, rtol=1e-6)
  np.testing.assert_allclose(probes.norm_ratio(b, a), 2.5, rtol=1e-6)


# ---------------------------------------------------------------- distances


def test_distances_match_numpy():
  rng = np.random.default_rng(6)
  a = {"k": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
  b = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), a)
  fa = np.concatenate([a["b"], a["k"].ravel()]).astype(np.float64)
  fb = np.concatenate([b["b"], b["k"].ravel()]).astype(np.float64)
  np.testing.assert_allclose(probes.l2_distance(a, b), np.linalg.norm(fa - fb), rtol=1e-5)
  np.testing.assert_allclose(
    probes.relative_distance(a, b), np.linalg.norm(fa - fb) / np.linalg.norm(fb), rtol=1e-5
  )
  np.testing.assert_allclose(probes.tree_dot(a, b), fa @ fb, rtol=1e-5)

  seq = stack([jax.tree.map(lambda x, s=s: x * s, a) for s in (0.0, 0.5, 1.0, 2.0)])
  np.testing.assert_allclose(
    probes.distance_sequence(seq, b),
    [np.linalg.norm(s * fa - fb) for s in (0.0, 0.5, 1.0, 2.0)],
    rtol=1e-5,
  )
  seq_b = stack([b] * 4)
  np.testing.assert_allclose(
    probes.pairwise_distance_sequence(seq, seq_b), probes.distance_sequence(seq, b), rtol=1e-6
  )


def test_distance_accumulates_bfloat16_in_float32():
  # 2**16 differences of 2**-8 each: sum of squares is 1 (exact in float32);
  # the per-leaf bfloat16 values are exact, only the accumulation could lose it.
  a = {"w": jnp.zeros((1 << 16,), jnp.bfloat16)}
  b = {"w": jnp.full((1 << 16,), 2.0**-8, jnp.bfloat16)}
  d = probes.l2_distance(a, b)
  assert d.dtype == jnp.float32
  np.testing.assert_allclose(d, 1.0, rtol=1e-6)


def test_distance_bad_inputs_raise():
  a = {"w": jnp.zeros(3)}
  with pytest.raises(ValueError, match="same pytree structure"):
    probes.l2_distance(a, {"v": jnp.zeros(3)})
  with pytest.raises(ValueError, match="shapes differ"):
    probes.l2_distance(a, {"w": jnp.zeros(4)})
  with pytest.raises(ValueError, match="same length"):
    probes.pairwise_distance_sequence({"w": jnp.zeros((2, 3))}, {"w": jnp.zeros((3, 3))})
  with pytest.raises(ValueError, match="leading axis"):
    probes.distance_sequence(
      {"w": jnp.zeros((2, 3)), "b": jnp.zeros((4,))}, {"w": jnp.zeros(3), "b": jnp.zeros(())}
    )


# -------------------------------------------------------------- noise scale


def test_noise_scale_estimator_is_exact_on_expected_norms():
  g_sq, tr = 2.0, 30.0
  s = g_sq + tr / 4
  g = g_sq + tr / 64
  ns = probes.noise_scale_from_sq_norms(np.array([s, s]), 4, np.array([g]), 64)
  np.testing.assert_allclose(
    [ns.grad_sq_norm, ns.trace_cov, ns.b_simple], [g_sq, tr, tr / g_sq], rtol=1e-5
  )
  with pytest.raises(ValueError, match="b_big must be larger"):
    probes.noise_scale_from_sq_norms(np.ones(2), 8, np.ones(2), 8)
  with pytest.raises(ValueError, match="b_small must be a positive int"):
    probes.noise_scale_from_sq_norms(np.ones(2), 0, np.ones(2), 8)
  with pytest.raises(ValueError, match="sq_norms_big"):
    probes.noise_scale_from_sq_norms(np.ones(2), 2, np.ones(0), 8)


def test_noise_scale_on_linear_regression_vs_per_example_covariance():
  rng = np.random.default_rng(7)
  pool = make_batch(rng, 512, noise=1.0)
  params = {"w": np.zeros(D, np.float32), "b": np.float32(0.0)}
  a = design(pool)
  # Per-example gradients g_i = a_i (a_i . theta - y_i); G their mean, Sigma
  # their population covariance over the pool, so i.i.d. draws with
  # replacement give E|G_B|^2 = |G|^2 + tr(Sigma)/B exactly.
  per_ex = a * (a @ flat(params) - np.asarray(pool["y"], np.float64))[:, None]
  g_true = per_ex.mean(0)
  tr_true = np.trace(np.cov(per_ex.T, bias=True))
  b_true = tr_true / (g_true @ g_true)

  bs, bb, ms, mb = 4, 64, 3000, 1500
  idx_s = rng.integers(0, 512, size=(ms, bs))
  idx_b = rng.integers(0, 512, size=(mb, bb))
  small = jax.tree.map(lambda x: x[idx_s], pool)
  big = jax.tree.map(lambda x: x[idx_b], pool)
  ns = probes.estimate_noise_scale(lsq_loss, params, small, big)

  # Same estimator from NumPy per-batch gradients: checks the JAX pipeline.
  sq_s = np.array([np.sum(per_ex[i].mean(0) ** 2) for i in idx_s])
  sq_b = np.array([np.sum(per_ex[i].mean(0) ** 2) for i in idx_b])
  np.testing.assert_allclose(probes.batch_grad_sq_norms(lsq_loss, params, small), sq_s, rtol=1e-4)
  g_hat = (bb * sq_b.mean() - bs * sq_s.mean()) / (bb - bs)
  tr_hat = (sq_s.mean() - sq_b.mean()) / (1 / bs - 1 / bb)
  np.testing.assert_allclose(
    [ns.grad_sq_norm, ns.trace_cov, ns.b_simple], [g_hat, tr_hat, tr_hat / g_hat], rtol=1e-3
  )
  # And against the truth. Relative standard deviations of the estimates at
  # these sample sizes, from 100 NumPy repetitions: |G|^2_hat 1.4%,
  # tr(Sigma)_hat 3.1%, B_simple_hat 3.9%; the tolerances are about 4 sigma.
  np.testing.assert_allclose(ns.grad_sq_norm, g_true @ g_true, rtol=0.06)
  np.testing.assert_allclose(ns.trace_cov, tr_true, rtol=0.13)
  np.testing.assert_allclose(ns.b_simple, b_true, rtol=0.16)

  with pytest.raises(ValueError, match="small_batches"):
    probes.estimate_noise_scale(lsq_loss, params, {"x": np.zeros((3,)), "y": np.zeros((3,))}, big)


def test_hvp_and_eps_max_closed_form(problem):
  p, b = problem["params"], problem["batch"]
  hess = np_hessian(b)
  v = {"w": np.arange(D, dtype=np.float32), "b": np.float32(-1.0)}
  np.testing.assert_allclose(
    flat(probes.hvp(lsq_loss, p, b, v)), hess @ flat(v), rtol=1e-4, atol=1e-5
  )
  g = np_grad(flat(p), b)
  em = probes.epsilon_max(lsq_loss, p, b)
  np.testing.assert_allclose(em.grad_sq_norm, g @ g, rtol=1e-5)
  np.testing.assert_allclose(em.curvature, g @ hess @ g, rtol=1e-4)
  np.testing.assert_allclose(em.eps_max, (g @ g) / (g @ hess @ g), rtol=1e-4)
  np.testing.assert_allclose(em.delta_loss_max, (g @ g) ** 2 / (2 * g @ hess @ g), rtol=1e-4)
  # Along -G the loss at eps_max is L0 - Delta L_max exactly for a quadratic.
  np.testing.assert_allclose(
    np_loss(flat(p) - float(em.eps_max) * g, b),
    np_loss(flat(p), b) - float(em.delta_loss_max),
    rtol=1e-4,
  )


def test_eps_max_is_infinite_without_positive_curvature():
  concave = lambda p, batch: -jnp.sum((p["w"] - batch) ** 2)
  em = probes.epsilon_max(concave, {"w": jnp.ones(3)}, jnp.zeros(3))
  assert em.curvature < 0 and np.isinf(em.eps_max) and np.isinf(em.delta_loss_max)


def test_optimal_step_size_formula():
  np.testing.assert_allclose(probes.optimal_step_size(0.8, 100.0, 100), 0.4)
  np.testing.assert_allclose(probes.optimal_step_size(0.8, 0.0, 7), 0.8)
