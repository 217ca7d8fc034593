"""trajax.theory against independent references.

* expected_loss against a float64 NumPy computation written from the
  definitions in θ-space (trajectory as a linear map of θ_0 and the noise,
  averages as explicit weight matrices), with full A and non-commuting C;
* every stationary closed form against exact long-run expected_loss (float32
  precision) and against Monte Carlo with simulate (3 % relative error, with
  the sample size chosen for a standard error of at most 1 %, checked);
* structural properties of simulate (seeds, learning-rate batch, record_every).
"""

import jax
import numpy as np
import pytest

from trajax import theory

# ---------------------------------------------------------------------------
# Float64 reference from the definitions.


def _average_matrix(
  method, t_max, *, start_step=0, every=1, decay=None, n=2, gap=None, debias=False
):
  """W with a_t = Σ_u W[t, u] θ_u, t, u = 0 … t_max, by the averaging definitions."""
  s = start_step
  w = np.zeros((t_max + 1, t_max + 1))
  for t in range(t_max + 1):
    if method == "none" or (method in ("ema", "swa") and t <= s) or t < s:
      w[t, t] = 1.0
      continue
    if method in ("ema", "swa"):
      pts = [u for u in range(s + 1, t + 1) if (u - s) % every == 0]
      if not pts:
        w[t, s] = 1.0
      elif method == "swa":
        w[t, pts] = 1.0 / len(pts)
      else:
        q = len(pts)
        wts = decay * (1 - decay) ** (q - 1 - np.arange(q))
        if debias:
          w[t, pts] = wts / (1 - (1 - decay) ** q)
        else:
          w[t, s] = (1 - decay) ** q
          w[t, pts] += wts
    else:  # multi_point, two_point
      snaps = [u for u in range(s, t + 1) if (u - s) % gap == 0][-n:]
      w[t, snaps] = 1.0 / len(snaps)
  return w


def _reference_loss(a, c, theta0, lrs, method, **params):
  """E[½ âᵀAâ] for t = 0 … T in float64, θ_{t+1} = θ_t − λ_t Aθ_t + λ_t Q ξ_t."""
  d, t_max = a.shape[0], len(lrs)
  q = np.linalg.cholesky(c)
  # θ_t = Φ_t θ_0 + Σ_τ H[t, τ] ξ_τ.
  phi = np.zeros((t_max + 1, d, d))
  h = np.zeros((t_max + 1, t_max, d, d))
  phi[0] = np.eye(d)
  for t in range(t_max):
    g = np.eye(d) - lrs[t] * a
    phi[t + 1] = g @ phi[t]
    h[t + 1] = np.einsum("ij,tjk->tik", g, h[t])
    h[t + 1, t] = lrs[t] * q
  w = _average_matrix(method, t_max, **params)
  mean = np.einsum("tu,uij,j->ti", w, phi, theta0)
  hav = np.einsum("tu,usij->tsij", w, h)
  avg = 0.5 * np.einsum("ti,ij,tj->t", mean, a, mean)
  avg += 0.5 * np.einsum("tsij,ik,tskj->t", hav, a, hav)
  return avg


RNG = np.random.default_rng(0)
_B = RNG.normal(size=(3, 3))
A_FULL = _B @ _B.T / 3 + 0.3 * np.eye(3)
_E = RNG.normal(size=(3, 3))
C_FULL = _E @ _E.T / 3 + 0.2 * np.eye(3)  # does not commute with A_FULL
THETA0 = np.array([1.5, -1.0, 0.5])
T_REF = 40


@pytest.mark.parametrize(
  "method,params",
  [
    ("none", {}),
    ("ema", dict(decay=0.2, start_step=5)),
    ("ema", dict(decay=0.3, start_step=2, every=3, debias=True)),
    ("swa", dict(start_step=4, every=2)),
    ("multi_point", dict(n=3, gap=5, start_step=3)),
    ("multi_point", dict(n=4, gap=2)),  # the ring wraps around several times
    ("multi_point", dict(n=16, gap=1, start_step=4)),
    ("multi_point", dict(n=1, gap=3)),
    ("two_point", dict(gap=7, start_step=1)),
  ],
)
def test_expected_loss_matches_float64_definitions(method, params):
  lr = lambda t: 0.3 - 0.005 * t  # a decaying schedule, λκ up to ~1
  lrs = np.asarray(lr(np.arange(T_REF)), np.float64)
  want = _reference_loss(A_FULL, C_FULL, THETA0, lrs, method, **params)
  got = theory.expected_loss(
    A_FULL, lr=lr, num_steps=T_REF, theta0=THETA0, noise_cov=C_FULL, method=method, **params
  )
  np.testing.assert_allclose(np.asarray(got.loss), want, rtol=2e-5)
  want_iterate = _reference_loss(A_FULL, C_FULL, THETA0, lrs, "none")
  np.testing.assert_allclose(np.asarray(got.iterate_loss), want_iterate, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(got.loss_by_dof).sum(-1), want, rtol=2e-5)


def test_simulate_matches_expected_loss_curve():
  """Monte Carlo of the whole EMA curve, full A and non-commuting C, two rates.

  Stationary level: the mean over the last 1200 steps of each seed. The
  slowest averaged mode decorrelates in ~70 steps, so a seed gives ~15
  independent draws of a χ²-like loss (relative SD ~0.8): ~0.2 relative SE
  per seed, and 1200 seeds bring it to ~0.6 % (asserted < 1 % from the data,
  so 3 % is a >= 3σ band). Early points are dominated by the deterministic
  decay of θ_0 and are within 3 % individually.
  """
  lrs = np.array([0.05, 0.2])
  kw = dict(
    lr=lrs,
    num_steps=3000,
    theta0=THETA0 * 4,
    noise_cov=C_FULL,
    method="ema",
    decay=0.05,
    record_every=10,
  )
  sim = theory.simulate(jax.random.key(1), A_FULL, num_seeds=1200, **kw)
  ex = theory.expected_loss(A_FULL, **kw)
  loss = np.asarray(sim.loss)  # (L, S, R)
  exact = np.asarray(ex.loss)  # (L, R)
  tail = loss[:, :, -120:].mean(-1)
  mc, se = tail.mean(1), tail.std(1) / np.sqrt(tail.shape[1])
  want = exact[:, -120:].mean(-1)
  assert np.all(se / want < 0.01), se / want
  np.testing.assert_allclose(mc, want, rtol=0.03)
  for r in (1, 3, 6):
    np.testing.assert_allclose(loss[:, :, r].mean(1), exact[:, r], rtol=0.03)
  np.testing.assert_allclose(
    np.asarray(sim.iterate_loss)[:, :, -120:].mean((1, 2)),
    np.asarray(ex.iterate_loss)[:, -120:].mean(-1),
    rtol=0.03,
  )


# ---------------------------------------------------------------------------
# Stationary closed forms.

KAPPAS = np.array([0.5, 2.0])
LR = 0.1
REPLICAS = 800  # independent copies of each κ (a diagonal A)

STATIONARY = [
  # (stationary_variance method/params, the averager simulate runs)
  ("sgd", {}, "none", {}),
  ("ema", dict(decay=0.05), "ema", dict(decay=0.05)),
  ("swa", dict(window=30), "multi_point", dict(n=30, gap=1)),
  ("two_point", dict(gap=7), "two_point", dict(gap=7)),
  ("multi_point", dict(n=4, gap=5), "multi_point", dict(n=4, gap=5)),
]


@pytest.mark.parametrize("method,params,sim_method,sim_params", STATIONARY)
def test_stationary_variance_closed_forms(method, params, sim_method, sim_params):
  """Closed form vs exact long-run expected_loss (float32 precision) and vs
  Monte Carlo (3 %).

  Monte Carlo: 800 independent modes per κ (diagonal A), one seed, time
  average over 2400 steps after a 600-step burn-in (relaxation times 1/(λκ) =
  5 and 20 steps, plus <= 20 for the average). Each mode's time average is
  one independent estimate; their spread gives the standard error, which is
  asserted below 1 % so that 3 % is a >= 3σ test.
  """
  hess = np.repeat(KAPPAS, REPLICAS)
  f = theory.stationary_variance(LR, KAPPAS, method, **params)
  ex = theory.expected_loss(KAPPAS, lr=LR, num_steps=1500, method=sim_method, **sim_params)
  exact_var = 2 * np.asarray(ex.loss_by_dof)[-1] / KAPPAS
  np.testing.assert_allclose(exact_var, f, rtol=2e-4)

  burn, steps = 600, 3000
  sim = theory.simulate(
    jax.random.key(2), hess, lr=LR, num_steps=steps, method=sim_method, **sim_params
  )
  per_mode = np.asarray(sim.loss_by_dof)[burn + 1 :]  # (R, d): ½κ â², one seed
  est = (2 * per_mode / hess).mean(0).reshape(len(KAPPAS), REPLICAS)
  mc, se = est.mean(1), est.std(1) / np.sqrt(REPLICAS)
  assert np.all(se / f < 0.01), se / f
  np.testing.assert_allclose(mc, f, rtol=0.03)


def test_kernel_direct_sum_matches_closed_forms():
  lr = np.array([0.01, 0.1, 0.5])[:, None]
  kappa = np.array([0.05, 1.0, 3.0])
  cases = [
    ("ema", dict(decay=0.03)),
    ("swa", dict(window=25)),
    ("two_point", dict(gap=9)),
    ("multi_point", dict(n=5, gap=4)),
    ("sgd", {}),
  ]
  for method, params in cases:
    mu = theory.averaging_kernel(method, **params)
    np.testing.assert_allclose(
      theory.stationary_variance(lr, kappa, "kernel", kernel=mu),
      theory.stationary_variance(lr, kappa, method, **params),
      rtol=1e-9,
      err_msg=method,
    )
  # eq. 20 literally.
  gamma = 1 - lr * kappa
  np.testing.assert_allclose(
    theory.stationary_variance(lr, kappa, "two_point", gap=9),
    lr / (2 * kappa - lr * kappa**2) * (1 + gamma**9) / 2,
    rtol=1e-12,
  )


def test_multi_point_closed_form_is_stable_near_gamma_one():
  """G1 − G2/n cancels as Γ^Δ → 1; the series branch keeps float64 accuracy."""
  kappa = np.array([1e-9, 1e-7, 1e-5, 1e-3])
  for n in (2, 50, 1000):
    mu = theory.averaging_kernel("swa", window=n)
    direct = theory.stationary_variance(0.1, kappa, "kernel", kernel=mu)
    closed = theory.stationary_variance(0.1, kappa, "swa", window=n)
    np.testing.assert_allclose(closed, direct, rtol=1e-8)


def test_effective_lr():
  lr, kappa = 0.05, np.array([0.01, 0.3, 1.0, 5.0])
  for method, params in [
    ("two_point", dict(gap=20)),
    ("ema", dict(decay=0.01)),
    ("multi_point", dict(n=3, gap=50)),
  ]:
    lam = theory.effective_lr(lr, kappa, method, **params)
    # Exact: plain SGD at λ̂ has the averaged variance.
    np.testing.assert_allclose(
      theory.stationary_variance(lam, kappa),
      theory.stationary_variance(lr, kappa, method, **params),
      rtol=1e-10,
    )
    assert np.all(lam < lr)
    # The paper's form agrees to first order in λκ.
    approx = theory.effective_lr(lr, kappa, method, exact=False, **params)
    assert np.all(np.abs(approx / lam - 1) <= lr * kappa)
  # eq. 20 literally, and its limits: λ for Δ ≪ 1/(λκ), λ/2 for Δ ≫ 1/(λκ).
  gap = np.array([1, 10, 100, 100000])
  eq20 = theory.effective_lr(lr, 1.0, "two_point", exact=False, gap=gap[0])
  assert eq20 == pytest.approx(lr * (1 + (1 - lr)) / 2)
  far = theory.effective_lr(lr, 1.0, "two_point", exact=False, gap=int(gap[-1]))
  assert far == pytest.approx(lr / 2)
  n_far = theory.effective_lr(lr, 1.0, "multi_point", exact=False, n=4, gap=100000)
  assert n_far == pytest.approx(lr / 4)


def test_shell_radius_lemma1_monte_carlo_and_sqrt_lr():
  """A = I, C = I, d = 300: ‖θ‖² = 2·loss. One simulate call over three rates
  (the L axis); time average over 3000 steps after 3000 steps of burn-in
  (e^{-2λt} <= e^{-30}); each step's ‖θ‖² is a sum over 300 modes, so its
  relative SD is √(2/300) ≈ 8 %, and 3000 steps at correlation time
  1/(2λ) <= 100 steps give >= 30 independent draws: SE <= 1.5 % on ‖θ‖²,
  0.75 % on the radius."""
  lrs = np.array([0.005, 0.02, 0.08])
  d = 300
  sim = theory.simulate(
    jax.random.key(3),
    np.ones(d),
    lr=lrs,
    num_steps=6000,
    record_every=10,
    dof_groups=np.zeros(d, int),
  )
  norm_sq = 2 * np.asarray(sim.loss)[:, 0, 301:]  # (L, R)
  radius = np.sqrt(norm_sq.mean(-1))
  want = theory.shell_radius(lrs, np.ones(d))
  np.testing.assert_allclose(radius, want, rtol=0.03)
  np.testing.assert_allclose(want, np.sqrt(d * lrs / (2 - lrs)), rtol=1e-12)
  # Eq. 13 to leading order, and the √λ law: log-log slope 1/2.
  lead = theory.shell_radius(lrs, np.ones(d), leading_order=True)
  np.testing.assert_allclose(lead, np.sqrt(d) * np.sqrt(lrs / 2), rtol=1e-12)
  slope = np.polyfit(np.log(lrs), np.log(radius), 1)[0]
  assert slope == pytest.approx(0.5, abs=0.03)
  # A thin shell: ‖θ‖ fluctuates by ~1/√(2d) of its radius.
  assert np.all(np.sqrt(norm_sq).std(-1) / radius < 3 / np.sqrt(2 * d))


# ---------------------------------------------------------------------------
# Structure.


def test_simulate_structure():
  hess = np.array([1.0, 0.2, 0.05])
  kw = dict(num_steps=60, theta0=2.0, method="ema", decay=0.1)
  both = theory.simulate(jax.random.key(4), hess, lr=np.array([0.1, 0.3]), num_seeds=3, **kw)
  one = theory.simulate(jax.random.key(4), hess, lr=0.3, num_seeds=1, **kw)
  # Common random numbers across rates; seed paths independent of num_seeds.
  np.testing.assert_allclose(np.asarray(both.loss)[1, :1], np.asarray(one.loss), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(both.average)[1, 0], np.asarray(one.average)[0], rtol=1e-6)
  assert both.loss.shape == (2, 3, 61) and both.loss_by_dof.shape == (2, 61, 3)
  assert one.loss.shape == (1, 61) and one.params.shape == (1, 3)
  sub = theory.simulate(jax.random.key(4), hess, lr=0.3, num_seeds=1, record_every=20, **kw)
  np.testing.assert_allclose(np.asarray(sub.loss), np.asarray(one.loss)[:, ::20], rtol=1e-6)
  np.testing.assert_array_equal(sub.steps, [0, 20, 40, 60])


def test_noise_free_simulation_is_exact():
  """Without noise, simulate and expected_loss both give ½κ(γ^t θ_0)² per mode."""
  hess, lr = np.array([1.0, 0.1]), 0.2
  kw = dict(lr=lr, num_steps=30, theta0=np.array([1.0, 3.0]), noise_cov=0.0)
  want = 0.5 * hess * ((1 - lr * hess)[None] ** np.arange(31)[:, None] * kw["theta0"]) ** 2
  sim = theory.simulate(jax.random.key(5), hess, **kw)
  ex = theory.expected_loss(hess, **kw)
  np.testing.assert_allclose(np.asarray(sim.iterate_loss_by_dof), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ex.loss_by_dof), want, rtol=1e-5)


def test_whiten_and_modes():
  omega, q = theory.whiten(A_FULL, C_FULL)
  np.testing.assert_allclose(q @ q.T, C_FULL, atol=1e-12)
  np.testing.assert_allclose(
    np.sort(np.linalg.eigvals(omega).real), np.linalg.eigvalsh(A_FULL), rtol=1e-10
  )
  # eq. 15 in u maps onto eq. 14 in θ = Qu, path by path (b = −Qξ).
  xi = RNG.normal(size=(20, 3))
  theta, u = THETA0.copy(), np.linalg.solve(q, THETA0)
  for x in xi:
    theta = theta - 0.1 * (A_FULL @ theta) + 0.1 * q @ x
    u = u - 0.1 * omega @ u + 0.1 * x
  np.testing.assert_allclose(q @ u, theta, rtol=1e-10)
  m = theory.modes(A_FULL, C_FULL)
  np.testing.assert_allclose(m.basis @ np.diag(m.kappa) @ m.basis.T, A_FULL, atol=1e-12)
  np.testing.assert_allclose(m.noise_var, np.diag(m.basis.T @ C_FULL @ m.basis), rtol=1e-12)


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: theory.stationary_variance(1.5, 2.0), "lr \\* kappa must be < 2"),
    (lambda: theory.stationary_variance(0.1, 0.0), "kappa must be > 0"),
    (lambda: theory.stationary_variance(0.1, 1.0, "sma"), "method must be one of"),
    (lambda: theory.stationary_variance(0.1, 1.0, "ema"), "needs decay"),
    (lambda: theory.stationary_variance(0.1, 1.0, "ema", decay=2.0), "decay must be a float"),
    (lambda: theory.stationary_variance(0.1, 1.0, "swa", gap=3), "gap=3 is not one of its"),
    (lambda: theory.stationary_variance(0.1, 1.0, "swa"), "'swa' needs window"),
    (lambda: theory.stationary_variance(0.1, 1.0, "multi_point", gap=3), "needs n"),
    (
      lambda: theory.simulate(jax.random.key(0), [1.0], lr=0.1, num_steps=10, record_every=3),
      "record_every=3 must divide",
    ),
    (lambda: theory.expected_loss(np.ones((2, 3)), lr=0.1, num_steps=5), "square"),
    (
      lambda: theory.expected_loss([1.0, 2.0], lr=0.1, num_steps=5, noise_cov=np.ones(3)),
      "noise_cov must be",
    ),
    (lambda: theory.expected_loss([1.0], lr=0.1, num_steps=5, method="ema"), "decay"),
    (lambda: theory.expected_loss([1.0, 2.0], lr=0.1, num_steps=5, dof_groups=[0]), "dof_groups"),
  ],
)
def test_bad_arguments_are_named(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


# --------------------------------------------------------------------------- batch size


def test_batch_size_scales_the_noise_exactly():
  """C/B: expected_loss at batch B is the unit-batch one with noise_cov/B, and so is simulate."""
  kw = dict(lr=0.3, num_steps=200, theta0=THETA0, record_every=10)
  a = theory.expected_loss(A_FULL, noise_cov=C_FULL, batch_size=8, **kw)
  b = theory.expected_loss(A_FULL, noise_cov=C_FULL / 8, **kw)
  np.testing.assert_allclose(np.asarray(a.loss), np.asarray(b.loss), rtol=1e-6)
  s1 = theory.simulate(jax.random.key(0), A_FULL, noise_cov=C_FULL, batch_size=8, **kw)
  s2 = theory.simulate(jax.random.key(0), A_FULL, noise_cov=C_FULL / 8, **kw)
  np.testing.assert_allclose(np.asarray(s1.loss), np.asarray(s2.loss), rtol=1e-5)
  np.testing.assert_allclose(
    theory.stationary_variance(0.3, 0.7, "ema", decay=0.1, batch_size=4),
    theory.stationary_variance(0.3, 0.7, "ema", decay=0.1) / 4,
    rtol=1e-12,
  )
  for bad in (0, -2, float("nan"), True):
    with pytest.raises(ValueError, match="batch_size must be"):
      theory.expected_loss(A_FULL, lr=0.1, num_steps=10, batch_size=bad)


def test_batch_vs_lr_closed_forms_against_exact_moments():
  """F_L, F_S and their ratio (2 − λκ/k)/(2 − λκ) against long-run expected_loss."""
  kappas, lr, k, b = np.array([0.02, 0.5]), 0.8, 4, 2
  cmp = theory.batch_vs_lr(lr, kappas, k, batch_size=b)
  large = theory.expected_loss(kappas, lr=lr, num_steps=3000, batch_size=k * b)
  small = theory.expected_loss(kappas, lr=lr / k, num_steps=12000, batch_size=b)
  f_large = 2 * np.asarray(large.loss_by_dof)[-1] / kappas
  f_small = 2 * np.asarray(small.loss_by_dof)[-1] / kappas
  np.testing.assert_allclose(f_large, cmp.variance_large, rtol=1e-4)
  np.testing.assert_allclose(f_small, cmp.variance_small, rtol=1e-4)
  x = lr * kappas
  np.testing.assert_allclose(cmp.variance_ratio, (2 - x / k) / (2 - x), rtol=1e-12)
  # Stationary level: agree to O(λκ) on the slow mode, differ by 19 % on the stiff one.
  assert abs(cmp.variance_ratio[0] - 1) < 0.01 and cmp.variance_ratio[1] > 1.18
  # Speed: per step the large batch is ~k times faster along the slow mode; per example equal.
  assert cmp.rate_per_step_large[0] / cmp.rate_per_step_small[0] == pytest.approx(k, rel=0.01)
  assert cmp.rate_per_example_large[0] / cmp.rate_per_example_small[0] == pytest.approx(1, abs=0.01)
  with pytest.raises(ValueError, match="k must be >= 1"):
    theory.batch_vs_lr(lr, kappas, 0.5)


def test_batch_vs_lr_against_monte_carlo():
  """Per step vs per example on the slow mode, and the stationary levels, by simulation."""
  kappas, lr, k, b, seeds = np.array([0.02, 0.5]), 0.8, 4, 2, 4000
  cmp = theory.batch_vs_lr(lr, kappas, k, batch_size=b)
  v0 = np.array([5.0, 0.0])
  # Transient: 100 large-batch steps and 400 small-batch steps see the same 800 examples.
  kw = dict(theta0=v0, num_seeds=seeds, record_every=100)
  large = theory.simulate(jax.random.key(1), kappas, lr=lr, num_steps=100, batch_size=k * b, **kw)
  small = theory.simulate(jax.random.key(2), kappas, lr=lr / k, num_steps=400, batch_size=b, **kw)
  for sim, steps, per_step_example, rates in (
    (large, 100, k * b, (cmp.rate_per_step_large, cmp.rate_per_example_large)),
    (small, 400, b, (cmp.rate_per_step_small, cmp.rate_per_example_small)),
  ):
    theta = np.asarray(sim.params)[:, 0]
    se = theta.std() / np.sqrt(seeds)
    assert abs(theta.mean() - v0[0] * np.exp(-rates[0][0] * steps)) < 4 * se
    assert abs(theta.mean() - v0[0] * np.exp(-rates[1][0] * steps * per_step_example)) < 4 * se
  # Per example the two means agree (to O(λκ)); per step (after 100 steps each) they do not.
  mean_large = np.asarray(large.params)[:, 0].mean()
  mean_small_100 = v0[0] * np.exp(-cmp.rate_per_step_small[0] * 100)
  assert abs(mean_large - np.asarray(small.params)[:, 0].mean()) < 0.05
  assert mean_small_100 - mean_large > 2.0
  # Stationary variances from a long zero start.
  kw = dict(num_seeds=seeds, record_every=500)
  large = theory.simulate(jax.random.key(3), kappas, lr=lr, num_steps=2000, batch_size=k * b, **kw)
  small = theory.simulate(jax.random.key(4), kappas, lr=lr / k, num_steps=8000, batch_size=b, **kw)
  var_large = np.asarray(large.params).var(0)
  var_small = np.asarray(small.params).var(0)
  np.testing.assert_allclose(var_large, cmp.variance_large, rtol=0.1)
  np.testing.assert_allclose(var_small, cmp.variance_small, rtol=0.1)
  assert 1.05 < var_large[1] / var_small[1] < 1.35  # the stiff mode sits higher at batch kB
