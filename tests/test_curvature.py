"""Curvature probes (trajax.probes.curvature) against dense Hessians and closed forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from trajax import probes
from trajax.probes import curvature

# ---------------------------------------------------------------------------
# problems with known Hessians


def _split(flat):
  """A 20-vector as a two-leaf pytree, so the probes see a real pytree."""
  return {"a": flat[:12].reshape(4, 3), "b": flat[12:]}


def _quadratic(eigenvalues, seed=0):
  """0.5 (x - c)^T A x with A = Q diag(eigenvalues) Q^T; batch = c (a shift)."""
  lam = np.asarray(eigenvalues, np.float64)
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(lam.size, lam.size)))
  a = (q * lam) @ q.T
  a_j = jnp.asarray(a, jnp.float32)

  def loss_fn(params, batch):
    x = ravel_pytree(params)[0] - batch
    return 0.5 * x @ (a_j @ x)

  return loss_fn, a, q


def _mlp_problem():
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = jnp.tanh(nn.Dense(8)(x))
      return nn.Dense(3)(x)

  model = MLP()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=32))
  params = model.init(jax.random.key(1), x)["params"]

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["x"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

  return loss_fn, params, {"x": x, "y": y}


def _conv_problem():
  class TinyConv(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = jnp.tanh(nn.Conv(3, (3,))(x))
      x = x.reshape(x.shape[0], -1)
      return nn.Dense(2)(x)

  model = TinyConv()
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(16, 6, 2)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, size=16))
  params = model.init(jax.random.key(2), x)["params"]

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["x"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

  return loss_fn, params, {"x": x, "y": y}


def _dense_hessian(loss_fn, params, batch) -> np.ndarray:
  """The independent reference: jax.hessian of the flattened loss, in float64 numpy."""
  flat, unravel = ravel_pytree(params)
  h = jax.hessian(lambda v: loss_fn(unravel(v), batch))(flat)
  h = np.asarray(h, np.float64)
  return 0.5 * (h + h.T)


@pytest.fixture(scope="module", params=["mlp", "conv"])
def network(request):
  loss_fn, params, batch = _mlp_problem() if request.param == "mlp" else _conv_problem()
  return loss_fn, params, batch, _dense_hessian(loss_fn, params, batch)


# ---------------------------------------------------------------------------
# hvp


def test_hvp_matches_dense_hessian(network):
  loss_fn, params, batch, h = network
  flat, unravel = ravel_pytree(params)
  v = np.random.default_rng(3).normal(size=flat.shape)
  got = ravel_pytree(probes.hvp(loss_fn, params, batch, unravel(jnp.asarray(v, flat.dtype))))[0]
  np.testing.assert_allclose(np.asarray(got), h @ v, rtol=1e-4, atol=1e-5)


def test_hvp_is_the_one_exported():
  assert curvature.hvp is probes.hvp


# ---------------------------------------------------------------------------
# Lanczos top-k


def test_top_k_quadratic_known_spectrum():
  lam = np.concatenate([[10.0, 7.5, 5.0, 3.0, 2.0], np.linspace(1.0, 0.05, 15)])
  loss_fn, _, q = _quadratic(lam)
  params = _split(jnp.zeros(20))
  batch = jnp.asarray(np.random.default_rng(4).normal(size=20), jnp.float32)
  res = probes.hessian_top_eigs(loss_fn, params, batch, 5, num_iters=20)
  np.testing.assert_allclose(np.asarray(res.eigenvalues), lam[:5], rtol=1e-5)
  assert res.num_hvps == 20
  vecs = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors))
  assert vecs.shape == (5, 20)
  # Unit Ritz vectors aligned (up to sign) with the true eigenvectors.
  np.testing.assert_allclose(np.abs(np.sum(vecs * q[:, :5].T, axis=1)), 1.0, atol=1e-4)
  assert np.all(np.asarray(res.residuals) < 1e-4)


def test_top_k_quadratic_repeated_eigenvalues_and_negatives():
  # Three distinct eigenvalues: the Krylov space is invariant after 3 steps, so
  # the recursion must restart (beta = 0) to reach the multiplicities.
  lam = np.array([4.0] * 3 + [1.0] * 9 + [-2.0] * 8)
  loss_fn, _, _ = _quadratic(lam, seed=5)
  params = _split(jnp.zeros(20))
  res = probes.hessian_top_eigs(loss_fn, params, jnp.zeros(20), 5, num_iters=20)
  np.testing.assert_allclose(np.asarray(res.eigenvalues), [4, 4, 4, 1, 1], rtol=1e-5)
  full = probes.hessian_top_eigs(loss_fn, params, jnp.zeros(20), 20, num_iters=20)
  np.testing.assert_allclose(np.asarray(full.eigenvalues), lam, rtol=1e-5, atol=1e-5)


def test_top_k_matches_dense_eigh(network):
  loss_fn, params, batch, h = network
  n = h.shape[0]
  ref = np.sort(np.linalg.eigh(h)[0])[::-1]
  res = probes.hessian_top_eigs(loss_fn, params, batch, 5, num_iters=n)
  np.testing.assert_allclose(np.asarray(res.eigenvalues), ref[:5], rtol=1e-3, atol=1e-5)
  # Ritz pairs are eigenpairs of the dense H: |H u - theta u| small.
  vecs = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors), np.float64)
  resid = np.linalg.norm(vecs @ h - np.asarray(res.eigenvalues)[:, None] * vecs, axis=1)
  assert np.all(resid < 1e-3 * abs(ref[0]) + 1e-5)


def test_partial_lanczos_residual_bounds(network):
  # With m < n the top Ritz value has converged and every Ritz value lies
  # within its residual bound of some true eigenvalue.
  loss_fn, params, batch, h = network
  ref = np.linalg.eigh(h)[0]
  m = min(40, h.shape[0] - 1)
  res = probes.hessian_top_eigs(loss_fn, params, batch, 3, num_iters=m, key=jax.random.key(7))
  theta, r = np.asarray(res.eigenvalues, np.float64), np.asarray(res.residuals, np.float64)
  dist = np.min(np.abs(theta[:, None] - ref[None, :]), axis=1)
  assert np.all(dist <= r + 1e-4 * abs(ref).max())
  np.testing.assert_allclose(theta[0], ref.max(), rtol=1e-3)


def test_lanczos_basis_orthonormal_and_tridiagonal(network):
  loss_fn, params, batch, h = network
  m = 25
  res = probes.lanczos(loss_fn, params, batch, jax.random.key(3), m)
  qm = np.asarray(res.basis, np.float64)
  np.testing.assert_allclose(qm @ qm.T, np.eye(m), atol=1e-4)
  t = qm @ h @ qm.T
  expect = (
    np.diag(np.asarray(res.alphas))
    + np.diag(np.asarray(res.betas[:-1]), 1)
    + np.diag(np.asarray(res.betas[:-1]), -1)
  )
  np.testing.assert_allclose(t, expect, atol=1e-4 * abs(np.linalg.eigh(h)[0]).max() + 1e-5)


def test_top_k_deterministic_and_jittable():
  loss_fn, params, batch = _mlp_problem()
  a = probes.hessian_top_eigs(loss_fn, params, batch, 2, key=jax.random.key(11))
  b = probes.hessian_top_eigs(loss_fn, params, batch, 2, key=jax.random.key(11))
  np.testing.assert_array_equal(np.asarray(a.eigenvalues), np.asarray(b.eigenvalues))

  @jax.jit
  def top(p):
    return probes.hessian_top_eigs(loss_fn, p, batch, 2, key=jax.random.key(11)).eigenvalues

  np.testing.assert_allclose(np.asarray(top(params)), np.asarray(a.eigenvalues), rtol=1e-5)


# ---------------------------------------------------------------------------
# Hutchinson


def _rademacher_variance(h: np.ndarray) -> float:
  """Var[z^T H z] for Rademacher z: 2 sum_{i != j} H_ij^2."""
  return float(2.0 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)))


def test_hutchinson_exact_for_diagonal_hessian():
  lam = np.linspace(-1.0, 3.0, 20)
  a_j = jnp.asarray(lam, jnp.float32)

  def loss_fn(params, batch):
    x = ravel_pytree(params)[0]
    return 0.5 * jnp.sum(a_j * x * x)

  res = probes.hutchinson_trace(loss_fn, _split(jnp.ones(20)), None, 8)
  np.testing.assert_allclose(float(res.trace), lam.sum(), rtol=1e-5, atol=1e-5)
  assert float(res.stderr) < 1e-5


def test_hutchinson_within_3se_of_dense_trace(network):
  loss_fn, params, batch, h = network
  res = probes.hutchinson_trace(loss_fn, params, batch, 200, key=jax.random.key(5))
  assert res.samples.shape == (200,)
  assert abs(float(res.trace) - np.trace(h)) < 3 * float(res.stderr)
  # The standard error is the closed-form one, up to sampling noise.
  se_closed = np.sqrt(_rademacher_variance(h) / 200)
  assert 0.7 * se_closed < float(res.stderr) < 1.3 * se_closed


def test_hutchinson_standard_error_over_repeats():
  # A dense quadratic: tr A and Var[z^T A z] are known exactly. Over R
  # independent repeats of N probes, (i) the mean of the squared standard
  # errors times N matches 2 sum_{i != j} A_ij^2 (the sample variance is
  # unbiased), (ii) the spread of the R estimates matches sqrt(V / N), and
  # (iii) about 99.7 % of repeats fall within 3 SE of the trace.
  lam = np.linspace(-2.0, 5.0, 20)
  loss_fn, a, _ = _quadratic(lam, seed=9)
  params = _split(jnp.zeros(20))
  v_closed = _rademacher_variance(a)
  n_probes, repeats = 20, 300
  est = [
    probes.hutchinson_trace(loss_fn, params, jnp.zeros(20), n_probes, key=jax.random.key(100 + r))
    for r in range(repeats)
  ]
  traces = np.array([float(e.trace) for e in est])
  ses = np.array([float(e.stderr) for e in est])
  np.testing.assert_allclose(np.mean(ses**2) * n_probes, v_closed, rtol=0.1)
  np.testing.assert_allclose(np.std(traces, ddof=1), np.sqrt(v_closed / n_probes), rtol=0.1)
  np.testing.assert_allclose(np.mean(traces), lam.sum(), atol=3 * np.sqrt(v_closed / n_probes))
  covered = np.mean(np.abs(traces - lam.sum()) < 3 * ses)
  assert covered > 0.95


# ---------------------------------------------------------------------------
# bad input


def test_bad_input_errors_name_the_argument():
  loss_fn, params, batch = _mlp_problem()
  n = curvature.num_params(params)
  with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= n.*k=0"):
    probes.hessian_top_eigs(loss_fn, params, batch, 0)
  with pytest.raises(ValueError, match=rf"k must satisfy.*n = {n}.*k={n + 1}"):
    probes.hessian_top_eigs(loss_fn, params, batch, n + 1)
  with pytest.raises(ValueError, match=r"num_iters must satisfy.*num_iters=3"):
    probes.hessian_top_eigs(loss_fn, params, batch, 5, num_iters=3)
  with pytest.raises(ValueError, match=rf"num_iters must satisfy.*num_iters={n + 1}"):
    probes.hessian_top_eigs(loss_fn, params, batch, 5, num_iters=n + 1)
  with pytest.raises(ValueError, match=r"num_iters must satisfy 1 <= num_iters.*num_iters=0"):
    probes.lanczos(loss_fn, params, batch, jax.random.key(0), 0)
  with pytest.raises(ValueError, match=r"num_probes must be >= 2.*got 1"):
    probes.hutchinson_trace(loss_fn, params, batch, 1)
  with pytest.raises(TypeError, match=r"k must be an integer, got 2.5"):
    probes.hessian_top_eigs(loss_fn, params, batch, 2.5)
  with pytest.raises(TypeError, match=r"num_probes must be an integer"):
    probes.hutchinson_trace(loss_fn, params, batch, "10")
  with pytest.raises(ValueError, match=r"params has no array leaves"):
    probes.hutchinson_trace(loss_fn, {}, batch, 10)


# ---------------------------------------------------------------------------
# experiment plumbing


@pytest.mark.slow  # end to end: the whole curvature stage
def test_curvature_experiment_runs_and_is_consistent(tmp_path):
  import json

  from experiments import claims, cli, evaluation, parents
  from experiments import curvature as exp_mod
  from trajax import runs

  config = cli.load_config(
    "configs/mnist1d.py:runlocal",
    {"total_steps": 100, "averaging.gap": 50, "checkpoint_every_steps": 50},
  )
  exp = exp_mod.experiment_defaults()
  exp.k, exp.lanczos_iters, exp.probes, exp.batches = 2, 6, 3, 2
  # One seed keeps the test fast; the verdict over seeds is claims.judge's (tested there).
  exp.seeds = (3,)
  exp.shell, exp.shell_steps, exp.shell_points, exp.shell_k = True, 8, 4, 2
  exp.shell_factors = (1.0, 0.5, 0.25)
  exp.drag_steps = 3
  assert exp_mod.branch_steps(config, exp) == [50, 100]
  out = exp_mod.run_seeds(config, exp, str(tmp_path))
  assert out["seeds"] == [3]
  rec = json.loads((tmp_path / "curvature_claims.json").read_text())["claims"]
  assert [r["id"] for r in rec] == list(exp_mod.CLAIMS)
  for r in rec:
    assert [row["seed"] for row in r["per_seed"]] == [3]
    assert r["verdict"] == claims.verdict([row["holds"] for row in r["per_seed"]])
    assert r["per_seed"][0]["holds"] == exp_mod.CLAIMS[r["id"]].test(r["per_seed"][0]["measured"])
  res = json.loads((tmp_path / "seed_3" / "curvature.json").read_text())
  assert res["seed"] == 3
  assert res["steps"] == [50, 100] and res["branch_step"] == 50 and res["window"] == 50
  assert set(res["points"]) == {
    "raw_50",
    "raw_100",
    *(f"{m}_{kind}" for m in ("two_point", "swa", "ema") for kind in ("average", "sidetrip")),
  }
  # The replay from step 50 is the parent's own trajectory, bit for bit.
  assert res["replay_vs_parent_l2"] == 0.0
  for t in res["trajectory"]:
    lam = np.asarray(t["eigenvalues"])
    assert lam.shape == (2, 2) and np.all(lam[:, 0] >= lam[:, 1])
    np.testing.assert_allclose(t["gd_edge"], 2.0 / t["lambda_max"])
    np.testing.assert_allclose(t["momentum_edge"], 2.0 * 1.9 / t["lambda_max"])
    assert t["lr"] == pytest.approx(0.05) and t["eff_lr"] == pytest.approx(0.5)
    assert len(t["eps_max"]) == 2 and all(e > 0 for e in t["eps_max"])
  # The final raw point measured twice (trajectory and endpoint) on the same
  # batches T, T+1 with the same key gives the same numbers.
  assert res["points"]["raw_100"]["eigenvalues"] == res["trajectory"][-1]["eigenvalues"]
  assert res["summary"]["lambda_max_final"] == res["trajectory"][-1]["lambda_max"]
  # The two-point average from the replayed averager is the midpoint of the checkpoints.
  parent = runs.open_run(res["parent"])
  a, b = parent.state_at(50), parent.state_at(100)
  loss_fn = evaluation.make_loss_fn(parent.model, None, train=True)
  d = parent.dataset
  exp1 = exp_mod.experiment_defaults()
  exp1.k, exp1.lanczos_iters, exp1.probes, exp1.batches = 2, 6, 3, 2
  again = exp_mod.measure(
    loss_fn,
    evaluation.midpoint(a.params, b.params),
    b.batch_stats,
    [evaluation.train_batch(d, 100 + i) for i in range(2)],
    exp1,
    jax.random.key(0),
  )
  np.testing.assert_allclose(again["trace"], res["points"]["two_point_average"]["trace"], rtol=1e-4)
  # The equivalent side-trips ran with the Table 1 schedules, 50 steps from step 50.
  for m in ("two_point", "swa", "ema"):
    assert parents.committed_steps(res["sidetrip_dirs"][m])[-1] == 100
  assert (tmp_path / "seed_3" / "curvature.png").exists()
  sh = res["shell"]
  assert sh["branch_step"] == 50 and sh["steps"] == 8
  assert [t["factor"] for t in sh["trips"]] == [1.0, 0.5, 0.25]
  for t in sh["trips"]:
    assert t["times"] == [4, 5, 7, 8]
    d, f, sl = (
      np.asarray(t[k]) for k in ("pair_distance", "pair_distance_fast", "pair_distance_slow")
    )
    assert np.all(d > 0) and np.all(f <= d + 1e-9)
    np.testing.assert_allclose(f**2 + sl**2, d**2, rtol=1e-9)
    # The fast share of a distance to the centre is at most the whole distance.
    assert np.all(np.asarray(t["centre_distance_fast"]) <= np.asarray(t["centre_distance"]) + 1e-9)
    assert t["stationary"] == t["stationarity"]["stationary"]
    dd = t["drift_drag"]
    assert dd["steps"] == 3 and dd["mean_abs_drag"] >= abs(dd["mean_drag"])
    # |Delta|^2 = drag^2 + drift^2 step by step, so the means obey the triangle bounds.
    assert dd["mean_update_norm"] <= dd["mean_abs_drag"] + dd["mean_drift"] + 1e-12
    assert dd["mean_update_norm"] >= max(dd["mean_abs_drag"], dd["mean_drift"]) - 1e-12
    mp = t["midpoint"]
    np.testing.assert_allclose(mp["gap"], np.mean(mp["gap_per_batch"]))
    np.testing.assert_allclose(mp["gap"], mp["pair_mean_loss"] - mp["midpoint_loss"], atol=1e-6)
  fit = exp_mod.fit_exponent(sh["factors"], [np.mean(t["pair_distance"]) for t in sh["trips"]])
  assert fit == sh["fit"]["total"]
  m = exp_mod.measured(res)
  np.testing.assert_allclose(
    m["curv.contracting"]["max_eff_lr_times_lambda_max"],
    max(0.5 * t["lambda_max"] for t in res["trajectory"]),
  )
  ins = m["curv.average_inside_shell"]
  assert [r["factor"] for r in ins["factors"]] == [1.0, 0.5, 0.25]
  assert ins["all_stationary"] == all(t["stationary"] for t in sh["trips"])
  with pytest.raises(ValueError, match=r"exp.probes must be >= 2, got 1"):
    exp.probes = 1
    exp_mod.run(config, exp, str(tmp_path))
  exp.probes = 3
  with pytest.raises(ValueError, match=r"exp.averages must be distinct methods.*'multi'"):
    exp.averages = ("swa", "multi")
    exp_mod.run(config, exp, str(tmp_path))
  exp.averages = ("swa",)
  with pytest.raises(
    ValueError, match=r"exp.window .* must lie in \[1, total_steps=100\), got 100"
  ):
    exp.window = 100
    exp_mod.branch_steps(config, exp)


def test_curvature_claim_quotes_are_verbatim(source_text):
  from experiments import claims
  from experiments import curvature as exp_mod

  paper = source_text("paper")
  notes = source_text("notes")
  c = exp_mod.CLAIMS
  assert claims.quote_in_paper(c["curv.contracting"].quote, paper)
  assert claims.quote_in_paper(c["curv.sqrt_lambda_shell"].quote, paper)
  assert claims.quote_in_paper(c["curv.drift_drag"].quote, paper)
  assert claims.quote_in_paper(c["curv.average_inside_shell"].quote, paper)
  for cid in ("curv.average_flatter", "curv.swa_flatter"):
    assert c[cid].source == "notes"
    assert claims.quote_in_paper(c[cid].quote, notes)
    assert not claims.quote_in_paper(c[cid].quote, paper)
  for cid, claim in c.items():
    if claim.source == "paper":
      assert claims.quote_in_paper(claim.quote, paper), cid


def _fake_result(lams, traces, ses, lr=0.05, beta=0.9):
  traj = [
    {"step": 1000 * (i + 1), "lr": lr, "lambda_max": lam, "trace": [1.0, 1.0]}
    for i, lam in enumerate(lams)
  ]
  names = ["raw_5000", "raw_6000", "two_point_average"]
  points = {
    n: {"lambda_max": lam, "trace_mean": t, "trace_mean_stderr": se, "kind": n.split("_")[0]}
    for n, lam, t, se in zip(names, lams[-3:], traces, ses, strict=True)
  }
  points["two_point_average"]["kind"] = "average"
  return {"momentum": beta, "trajectory": traj, "points": points}


def test_curvature_claim_criteria_pass_and_fail():
  from experiments import claims
  from experiments import curvature as exp_mod

  c = exp_mod.CLAIMS
  # eta_eff = 0.5: lambda_max 1.9 -> 0.95 < 1 holds; 2.1 -> 1.05 fails.
  good = exp_mod.measured(_fake_result([1.9, 1.8, 1.7, 1.5], [30.0, 31.0, 25.0], [1.0] * 3))
  bad = exp_mod.measured(_fake_result([2.1, 1.8, 1.7, 1.5], [30.0, 31.0, 28.0], [1.0] * 3))
  assert c["curv.contracting"].test(good["curv.contracting"])
  assert not c["curv.contracting"].test(bad["curv.contracting"])
  np.testing.assert_allclose(bad["curv.contracting"]["max_eff_lr_times_lambda_max"], 1.05)
  # Average trace 25 vs endpoints 30, 31 with SE 1: margin 5/sqrt(2) = 3.5 SE holds;
  # 28 vs 30: margin 1.4 SE fails (as does a larger lambda_max at the average).
  assert c["curv.average_flatter"].test(good["curv.average_flatter"])
  np.testing.assert_allclose(good["curv.average_flatter"]["trace_margin_in_se"], 5 / np.sqrt(2))
  assert not c["curv.average_flatter"].test(bad["curv.average_flatter"])
  sharper = exp_mod.measured(_fake_result([1.0, 1.6, 1.5, 1.7], [30.0, 31.0, 25.0], [1.0] * 3))
  assert not c["curv.average_flatter"].test(sharper["curv.average_flatter"])
  rec = claims.judge(
    c["curv.contracting"], [(0, good["curv.contracting"]), (1, bad["curv.contracting"])]
  )
  assert rec["verdict"] == "mixed" and rec["effect"]["n"] == 2


def test_fit_exponent_recovers_power_law_and_its_error():
  from experiments import curvature as exp_mod

  f = np.array([1.0, 0.5, 0.25, 0.125])
  exact = exp_mod.fit_exponent(f, 3.0 * f**0.5)
  assert exact["exponent"] == pytest.approx(0.5, abs=1e-12) and exact["stderr"] < 1e-10
  # Independent reference: numpy.polyfit's slope and covariance.
  y = 2.0 * f**0.8 * np.exp(np.array([0.05, -0.03, 0.02, -0.04]))
  got = exp_mod.fit_exponent(f, y)
  coef, cov = np.polyfit(np.log(f), np.log(y), 1, cov="unscaled")
  resid = np.log(y) - np.polyval(coef, np.log(f))
  se = np.sqrt(cov[0, 0] * (resid @ resid) / (f.size - 2))
  assert got["exponent"] == pytest.approx(coef[0]) and got["stderr"] == pytest.approx(se)
  with pytest.raises(ValueError, match=r"needs >= 3 learning rates, got 2"):
    exp_mod.fit_exponent([1.0, 0.5], [1.0, 0.7])
  shell = exp_mod.CLAIMS["curv.sqrt_lambda_shell"].test
  st = {"all_stationary_fast": True}
  assert shell({"exponent_fast": 0.6} | st) and not shell({"exponent_fast": 1.0} | st)
  dd = exp_mod.CLAIMS["curv.drift_drag"].test
  st = {"all_stationary": True}
  assert dd({"exponent_drag": 0.45, "exponent_drift": 1.1} | st)
  assert not dd({"exponent_drag": 1.5, "exponent_drift": 1.0} | st)
  assert not dd({"exponent_drag": 0.5, "exponent_drift": 0.5} | st)


# ---------------------------------------------------------------------------
# Fig. 4b: the midpoint's drop against the quadratic model


def test_midpoint_gap_exact_on_a_quadratic():
  # L(x) = 0.5 (x - c)^T A (x - c): (L(a) + L(c'))/2 - L(m) = (1/8) d^T A d exactly,
  # whatever the points; reference in float64 numpy.
  lam = np.concatenate([[6.0, 3.0], np.linspace(1.0, 0.1, 18)])
  loss_fn, a_mat, _ = _quadratic(lam, seed=3)
  rng = np.random.default_rng(4)
  pa, pc = rng.normal(size=20), rng.normal(size=20)
  shift = rng.normal(size=20)
  g = curvature.midpoint_gap(
    loss_fn, _split(jnp.asarray(pa)), _split(jnp.asarray(pc)), jnp.asarray(shift, jnp.float32)
  )

  def ref(x):
    x = x - shift
    return 0.5 * x @ a_mat @ x

  d = pa - pc
  np.testing.assert_allclose(float(g.loss_a), ref(pa), rtol=1e-5)
  np.testing.assert_allclose(g.gap, 0.5 * (ref(pa) + ref(pc)) - ref(0.5 * (pa + pc)), rtol=1e-4)
  np.testing.assert_allclose(float(g.quadratic), d @ a_mat @ d / 8, rtol=1e-5)
  np.testing.assert_allclose(g.gap / float(g.quadratic), 1.0, rtol=1e-4)


def test_midpoint_gap_quadratic_term_matches_dense_hessian(network):
  loss_fn, params, batch, h = network
  flat, unravel = ravel_pytree(params)
  d = 0.05 * np.random.default_rng(8).normal(size=flat.shape)
  a = unravel(flat + jnp.asarray(d / 2, flat.dtype))
  c = unravel(flat - jnp.asarray(d / 2, flat.dtype))
  g = curvature.midpoint_gap(loss_fn, a, c, batch)
  # The midpoint is params; the dense Hessian there is the independent reference.
  np.testing.assert_allclose(float(g.quadratic), d @ h @ d / 8, rtol=1e-3)
  with pytest.raises(ValueError, match=r"a and c must be pytrees of the same structure"):
    curvature.midpoint_gap(loss_fn, a, {"x": flat}, batch)


def _quartic_and_mismatched_rows():
  """Two counterexamples measured with the probe itself (not hand-written numbers)."""

  def quartic(params, batch):
    x = ravel_pytree(params)[0]
    return jnp.sum(x**4) + 0.0 * jnp.sum(batch)

  d = jnp.asarray(np.random.default_rng(5).normal(size=20), jnp.float32)
  # Midpoint at the origin: the Hessian there vanishes, the drop does not.
  q = curvature.midpoint_gap(quartic, _split(d / 2), _split(-d / 2), jnp.zeros(1))
  assert q.gap > 0 and abs(float(q.quadratic)) < 1e-6
  loss1, _, _ = _quadratic(np.linspace(4.0, 2.0, 20), seed=1)
  loss2, _, _ = _quadratic(np.linspace(0.4, 0.1, 20), seed=2)
  a, c = _split(d), _split(-d)
  right = curvature.midpoint_gap(loss1, a, c, jnp.zeros(20))
  other = curvature.midpoint_gap(loss2, a, c, jnp.zeros(20))
  rows = {
    "quartic": {"factor": 1.0, "gap": q.gap, "quadratic": float(q.quadratic), "ratio": None},
    # The drop of batch 1 against the quadratic model of batch 2's Hessian.
    "mismatched": {
      "factor": 1.0,
      "gap": right.gap,
      "quadratic": float(other.quadratic),
      "ratio": right.gap / float(other.quadratic),
    },
    "matched": {
      "factor": 1.0,
      "gap": right.gap,
      "quadratic": float(right.quadratic),
      "ratio": right.gap / float(right.quadratic),
    },
  }
  return rows


def test_average_inside_shell_criterion_and_counterexamples():
  from experiments import claims
  from experiments import curvature as exp_mod

  test = exp_mod.CLAIMS["curv.average_inside_shell"].test
  rows = _quartic_and_mismatched_rows()

  def m(*rs, stationary=True):
    return {"factors": list(rs), "all_stationary": stationary}

  assert test(m(rows["matched"], rows["matched"]))
  assert not test(m(rows["matched"], rows["quartic"]))
  assert rows["mismatched"]["ratio"] > 2
  assert not test(m(rows["matched"], rows["mismatched"]))
  # Non-stationary trips never pass, nor does a midpoint above the pair (gap <= 0).
  assert not test(m(rows["matched"], stationary=False))
  assert not test(m({"factor": 0.5, "gap": -0.01, "quadratic": -0.01, "ratio": 1.0}))
  # The band is the fixed 50 %: 1.45 holds, 1.55 fails, 0.55 holds, 0.45 fails.
  for ratio, ok in ((1.45, True), (1.55, False), (0.55, True), (0.45, False)):
    r = {"factor": 1.0, "gap": ratio * 0.01, "quadratic": 0.01, "ratio": ratio}
    assert test(m(r)) is ok
  assert exp_mod.QUADRATIC_MATCH == claims.MATCH_TOLERANCE
  assert not test(m())


def test_stationarity_detects_growth_not_noise():
  from experiments import curvature as exp_mod

  rng = np.random.default_rng(0)
  t = np.linspace(500, 1000, 20)
  flat = 2.0 + 0.05 * rng.normal(size=t.size)
  assert exp_mod.stationarity(flat)["stationary"]
  # A random walk's distance, ~ sqrt(t): the later half is ~18 % above the earlier.
  walk = np.sqrt(t) * (1 + 0.002 * rng.normal(size=t.size))
  st = exp_mod.stationarity(walk)
  assert not st["stationary"] and 0.12 < st["relative_change"] < 0.25
  # Noisy but flat (a 5-dimensional norm): within 3 SE, stationary.
  noisy = np.linalg.norm(rng.normal(size=(20, 5)), axis=1)
  assert exp_mod.stationarity(noisy)["stationary"]
  with pytest.raises(ValueError, match=r"needs >= 2 samples, got 1"):
    exp_mod.stationarity([1.0])


def test_shell_claims_fail_on_non_stationary_trips():
  from experiments import curvature as exp_mod

  shell = exp_mod.CLAIMS["curv.sqrt_lambda_shell"].test
  assert shell({"exponent_fast": 0.5, "all_stationary_fast": True})
  assert not shell({"exponent_fast": 0.5, "all_stationary_fast": False})
  assert not shell({"exponent_fast": 0.9, "all_stationary_fast": True})
  dd = exp_mod.CLAIMS["curv.drift_drag"].test
  ok = {"exponent_drag": 0.5, "exponent_drift": 1.0, "all_stationary": True}
  assert dd(ok) and not dd(ok | {"all_stationary": False})
  assert exp_mod.criteria.not_stationary_note([1.0, 0.5], [True, False], "x") == (
    "not quasi-stationary (x) at f = 0.5"
  )


def test_swa_flatter_reads_the_swa_point():
  from experiments import curvature as exp_mod

  res = _fake_result([1.9, 1.8, 1.7, 1.5], [30.0, 31.0, 28.0], [1.0] * 3)
  res["points"]["swa_average"] = {
    "lambda_max": 1.4,
    "trace_mean": 24.0,
    "trace_mean_stderr": 1.0,
    "kind": "average",
  }
  res["points"]["swa_sidetrip"] = {
    "lambda_max": 1.75,
    "trace_mean": 32.0,
    "trace_mean_stderr": 1.0,
    "kind": "sidetrip",
  }
  m = exp_mod.measured(res)
  c = exp_mod.CLAIMS
  # The side-trip is not an endpoint: the endpoints are the two raw points only.
  assert m["curv.swa_flatter"]["lambda_max_endpoints"] == [1.8, 1.7]
  assert m["curv.swa_flatter"]["lambda_max_sidetrip"] == 1.75
  assert c["curv.swa_flatter"].test(m["curv.swa_flatter"])
  assert not c["curv.average_flatter"].test(m["curv.average_flatter"])
  res["points"]["swa_average"]["trace_mean"] = 29.0
  assert not c["curv.swa_flatter"].test(exp_mod.measured(res)["curv.swa_flatter"])
