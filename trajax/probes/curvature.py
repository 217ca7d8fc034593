"""Hessian curvature of a mini-batch loss: top-k eigenvalues and the trace.

The paper's picture (Sec. 4, Lemma 1) is a quadratic loss whose curvature sets
the radius of SGD's stationary shell; the companion notes' eps_max =
|G|^2 / (G^T H G) and the edge of stability 2 / lambda_max of full-batch GD
are both read off the Hessian H = d^2 L_b / d theta^2 of ``loss_fn(params,
batch)``. Nothing here forms H: every probe only needs Hessian-vector products

    H v = d/dr grad L_b(theta + r v) |_{r=0}

computed forward-over-reverse (``jax.jvp`` of ``jax.grad``, :func:`hvp`),
about the cost of two gradients. Parameters are pytrees; internally they are
flattened to one vector of dimension n (``jax.flatten_util.ravel_pytree``).

Top-k eigenpairs (Lanczos). From a random unit vector q_1, m steps of

    w = H q_j - beta_{j-1} q_{j-1},  alpha_j = q_j^T w,  w <- w - alpha_j q_j,
    w <- w - Q_j (Q_j^T w)  (twice: full reorthogonalisation),
    beta_j = |w|,  q_{j+1} = w / beta_j

build an orthonormal basis Q_m of the Krylov space K_m(H, q_1) with Q_m^T H Q_m
= T_m tridiagonal (diagonal alpha, off-diagonal beta). The eigenvalues of T_m
(Ritz values) converge to H's extreme eigenvalues first; with T_m = S diag(theta)
S^T the Ritz vectors are Q_m s_i and the residual |H Q_m s_i - theta_i Q_m s_i|
= beta_m |s_{m,i}| bounds the distance from theta_i to the spectrum. Full
reorthogonalisation keeps Q_m orthonormal in floating point (plain Lanczos
loses orthogonality and produces spurious copies of converged eigenvalues).
When beta_j vanishes (K_j is invariant, e.g. a quadratic with fewer than m
distinct eigenvalues) the recursion restarts from a fresh random vector
orthogonal to Q_j and T gets a zero off-diagonal, which keeps the Ritz values
exact. "Top" means the k algebraically largest eigenvalues (PyHessian's
convention for the top eigenvalue of a loss Hessian near a minimum, where the
largest magnitude is positive).

Trace (Hutchinson). For Rademacher probes z (entries +-1 with probability 1/2),
E[z^T H z] = tr H, and

    Var[z^T H z] = 2 sum_{i != j} H_ij^2

(the diagonal contributes nothing because z_i^2 = 1). The estimate is the mean
of N probes, its standard error the sample standard deviation / sqrt(N).

Midpoint gap (:func:`midpoint_gap`). For two points a, c with midpoint
m = (a + c)/2 and d = a - c, Taylor expansion of L about m gives

    (L(a) + L(c))/2 - L(m) = (1/8) d^T H(m) d + (1/384) D^4 L(m)[d, d, d, d] + ...

(the odd orders cancel by symmetry), so for a quadratic loss the two sides are
equal exactly, whatever H(m) is; the ratio of the left side to the right side
measures how far the loss is from its quadratic model at the scale |d|.

Everything is jitted with ``loss_fn`` static (hashed by identity: keep one
function object to reuse the compiled code) and deterministic given ``key``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from trajax.probes import distances
from trajax.probes.noise_scale import hvp

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]

__all__ = [
  "HessianEigs",
  "HutchinsonTrace",
  "LanczosResult",
  "MidpointGap",
  "hessian_top_eigs",
  "hutchinson_trace",
  "hvp",
  "lanczos",
  "midpoint_gap",
  "num_params",
]


class LanczosResult(NamedTuple):
  """m steps of Lanczos on the Hessian of one batch.

  Attributes:
    alphas: [m] diagonal of T_m.
    betas: [m] off-diagonal; betas[j] couples q_{j+1} and q_{j+2} (betas[m-1]
      is the residual norm beta_m used in the Ritz error bounds; a zero marks
      an invariant subspace where the recursion restarted).
    basis: [m, n] orthonormal Lanczos vectors Q_m^T (flattened parameters).
  """

  alphas: jax.Array
  betas: jax.Array
  basis: jax.Array


class HessianEigs(NamedTuple):
  """Top-k Ritz pairs of the batch Hessian, eigenvalues in descending order.

  Attributes:
    eigenvalues: [k] Ritz values theta_1 >= ... >= theta_k.
    eigenvectors: pytree like ``params`` with a leading [k] axis, unit norm.
    residuals: [k] beta_m |s_{m,i}| = |H u_i - theta_i u_i|, an a-posteriori
      error bound on each eigenvalue (|theta_i - lambda| <= residual for some
      eigenvalue lambda of H).
    num_hvps: the Hessian-vector products spent (m).
  """

  eigenvalues: jax.Array
  eigenvectors: PyTree
  residuals: jax.Array
  num_hvps: int


class HutchinsonTrace(NamedTuple):
  """Hutchinson estimate of tr H with Rademacher probes.

  Attributes:
    trace: mean of z_i^T H z_i over the probes.
    stderr: sample standard deviation (ddof=1) / sqrt(num_probes).
    samples: [num_probes] the individual z_i^T H z_i.
  """

  trace: jax.Array
  stderr: jax.Array
  samples: jax.Array


def num_params(params: PyTree) -> int:
  """n, the number of scalar parameters (the Hessian is n x n)."""
  return int(sum(int(jnp.size(x)) for x in jax.tree.leaves(params)))


def _int_arg(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {value!r}")
  return int(value)


def _check_params(params: PyTree) -> int:
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("params has no array leaves; expected a pytree of parameter arrays.")
  for x in leaves:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise TypeError(f"params leaves must be floating point, got dtype {jnp.result_type(x)}")
  return num_params(params)


def _flat_hvp(loss_fn: LossFn, params: PyTree, batch: PyTree):
  flat, unravel = ravel_pytree(params)

  def matvec(v):
    return ravel_pytree(hvp(loss_fn, params, batch, unravel(v.astype(flat.dtype))))[0]

  return flat, unravel, matvec


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iters"))
def _lanczos(loss_fn, params, batch, key, num_iters: int) -> LanczosResult:
  flat, _, matvec = _flat_hvp(loss_fn, params, batch)
  n, m, dtype = flat.shape[0], num_iters, flat.dtype
  eps = jnp.finfo(dtype).eps

  def unit(v):
    return v / jnp.linalg.norm(v)

  def orthogonalise(w, basis):
    # Two passes of classical Gram-Schmidt ("twice is enough", Giraud et al.).
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)

  q0 = unit(jax.random.normal(jax.random.fold_in(key, 0), (n,), dtype))
  basis = jnp.zeros((m, n), dtype).at[0].set(q0)

  def body(j, carry):
    basis, alphas, betas, scale = carry
    q = basis[j]
    w = matvec(q)
    alpha = q @ w
    # Rows > j are still zero, so projecting on the whole basis is exact.
    w = orthogonalise(w, basis)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
    fresh = orthogonalise(jax.random.normal(jax.random.fold_in(key, j + 1), (n,), dtype), basis)
    breakdown = beta <= 100 * eps * jnp.maximum(scale, 1e-30) * jnp.sqrt(n)
    nxt = jnp.where(breakdown, unit(fresh), w / jnp.where(breakdown, 1.0, beta))
    beta = jnp.where(breakdown, 0.0, beta)
    basis = jnp.where(j + 1 < m, basis.at[jnp.minimum(j + 1, m - 1)].set(nxt), basis)
    return basis, alphas.at[j].set(alpha), betas.at[j].set(beta), scale

  init = (basis, jnp.zeros((m,), dtype), jnp.zeros((m,), dtype), jnp.zeros((), dtype))
  basis, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init)
  return LanczosResult(alphas, betas, basis)


def _check_k_iters(k, num_iters, n: int) -> tuple[int, int]:
  k = _int_arg(k, "k")
  if k < 1 or k > n:
    raise ValueError(f"k must satisfy 1 <= k <= n = {n} (the number of parameters), got k={k}")
  if num_iters is None:
    num_iters = min(n, max(2 * k + 20, 30))
  num_iters = _int_arg(num_iters, "num_iters")
  if num_iters < k or num_iters > n:
    raise ValueError(
      f"num_iters must satisfy k = {k} <= num_iters <= n = {n} (the number of "
      f"parameters), got num_iters={num_iters}"
    )
  return k, num_iters


def lanczos(loss_fn: LossFn, params: PyTree, batch: PyTree, key, num_iters: int) -> LanczosResult:
  """``num_iters`` Lanczos steps (full reorthogonalisation) on H = hess L_b(params).

  Costs ``num_iters`` Hessian-vector products; needs 1 <= num_iters <= n.
  """
  n = _check_params(params)
  num_iters = _int_arg(num_iters, "num_iters")
  if num_iters < 1 or num_iters > n:
    raise ValueError(
      f"num_iters must satisfy 1 <= num_iters <= n = {n} (the number of parameters), "
      f"got num_iters={num_iters}"
    )
  return _lanczos(loss_fn, params, batch, key, num_iters)


@functools.partial(jax.jit, static_argnames=("loss_fn", "k", "num_iters"))
def _top_eigs(loss_fn, params, batch, key, k: int, num_iters: int):
  res = _lanczos(loss_fn, params, batch, key, num_iters)
  _, unravel = ravel_pytree(params)
  t = jnp.diag(res.alphas) + jnp.diag(res.betas[:-1], 1) + jnp.diag(res.betas[:-1], -1)
  theta, s = jnp.linalg.eigh(t)
  order = jnp.argsort(-theta)[:k]
  theta, s = theta[order], s[:, order]
  vectors = s.T @ res.basis  # [k, n] Ritz vectors Q_m s_i
  vectors = vectors / jnp.linalg.norm(vectors, axis=1, keepdims=True)
  residuals = jnp.abs(res.betas[-1] * s[-1])
  return theta, jax.vmap(unravel)(vectors), residuals


def hessian_top_eigs(
  loss_fn: LossFn,
  params: PyTree,
  batch: PyTree,
  k: int,
  *,
  key=None,
  num_iters: int | None = None,
) -> HessianEigs:
  """The k largest eigenvalues of H = hess L_b(params) and their eigenvectors (Lanczos).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (static, hashed by identity).
    params: pytree of floating-point arrays (the point theta).
    batch: the batch b defining L_b.
    k: number of eigenpairs, 1 <= k <= n.
    key: PRNG key for the starting vector (default ``jax.random.key(0)``); the
      result is a deterministic function of it.
    num_iters: Lanczos steps m = Hessian-vector products, k <= m <= n; default
      min(n, max(2k + 20, 30)). m = n gives the exact spectrum (up to rounding).

  Returns:
    :class:`HessianEigs`, eigenvalues descending, eigenvectors stacked on a
    leading [k] axis of a pytree like ``params``.

  Example:

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> loss_fn = lambda params, kappa: 0.5 * jnp.sum(kappa * params["w"] ** 2)  # H = diag(κ)
    >>> eigs = probes.hessian_top_eigs(loss_fn, {"w": jnp.ones(3)}, jnp.array([4.0, 2.0, 1.0]), 2)
    >>> print(jnp.round(eigs.eigenvalues, 3))
    [4. 2.]
  """
  n = _check_params(params)
  k, num_iters = _check_k_iters(k, num_iters, n)
  key = jax.random.key(0) if key is None else key
  theta, vectors, residuals = _top_eigs(loss_fn, params, batch, key, k, num_iters)
  return HessianEigs(theta, vectors, residuals, num_iters)


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_probes"))
def _hutchinson(loss_fn, params, batch, key, num_probes: int) -> HutchinsonTrace:
  flat, _, matvec = _flat_hvp(loss_fn, params, batch)
  n = flat.shape[0]

  def one(i):
    z = jax.random.rademacher(jax.random.fold_in(key, i), (n,), flat.dtype)
    return z @ matvec(z)

  samples = jax.lax.map(one, jnp.arange(num_probes))
  mean = jnp.mean(samples)
  stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num_probes)
  return HutchinsonTrace(mean, stderr, samples)


def hutchinson_trace(
  loss_fn: LossFn, params: PyTree, batch: PyTree, num_probes: int, *, key=None
) -> HutchinsonTrace:
  """Hutchinson's estimate of tr H, H = hess L_b(params), with its standard error.

  tr H ~ (1/N) sum_i z_i^T H z_i over N Rademacher probes z_i (one
  Hessian-vector product each); Var[z^T H z] = 2 sum_{i != j} H_ij^2, so the
  estimate is exact for a diagonal H. Needs num_probes >= 2 for the standard
  error (sample standard deviation with ddof=1, over sqrt(N)).
  """
  _check_params(params)
  num_probes = _int_arg(num_probes, "num_probes")
  if num_probes < 2:
    raise ValueError(
      f"num_probes must be >= 2 (the standard error needs two samples), got {num_probes}"
    )
  key = jax.random.key(0) if key is None else key
  return _hutchinson(loss_fn, params, batch, key, num_probes)


class MidpointGap(NamedTuple):
  """The loss at two points and their midpoint, and the quadratic model's prediction.

  Attributes:
    loss_a, loss_c, loss_mid: L_b(a), L_b(c), L_b((a + c)/2).
    gap: (L_b(a) + L_b(c))/2 - L_b((a + c)/2), how far the midpoint's loss
      sits below the mean of the endpoints' (computed in float64 from the
      three losses).
    quadratic: (1/8) d^T H_b((a + c)/2) d with d = a - c (one Hessian-vector
      product), which equals ``gap`` exactly when L_b is quadratic.
  """

  loss_a: jax.Array
  loss_c: jax.Array
  loss_mid: jax.Array
  gap: float
  quadratic: jax.Array


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _midpoint_terms(loss_fn, a, c, batch):
  mid = jax.tree.map(lambda x, y: 0.5 * (x + y), a, c)
  d = jax.tree.map(lambda x, y: x - y, a, c)
  hd = hvp(loss_fn, mid, batch, d)
  quad = 0.125 * distances.tree_dot(d, hd)
  return loss_fn(a, batch), loss_fn(c, batch), loss_fn(mid, batch), quad


def midpoint_gap(loss_fn: LossFn, a: PyTree, c: PyTree, batch: PyTree) -> MidpointGap:
  """(L_b(a) + L_b(c))/2 - L_b(m) beside (1/8) d^T H_b(m) d, m = (a + c)/2, d = a - c.

  The paper's Fig. 4b: a midpoint of two samples on the stationary shell sits
  inside it, at a lower loss; on a quadratic the drop is exactly the second
  term (module docstring), here measured with the Hessian of the same batch's
  loss at the midpoint.

  Example:

    On a quadratic the two agree: ⅛ dᵀHd = ⅛ · 4 · (4 + 2 + 1) = 3.5.

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> loss_fn = lambda params, kappa: 0.5 * jnp.sum(kappa * params["w"] ** 2)
    >>> a, c = {"w": jnp.ones(3)}, {"w": -jnp.ones(3)}
    >>> m = probes.midpoint_gap(loss_fn, a, c, jnp.array([4.0, 2.0, 1.0]))
    >>> print(round(m.gap, 4), round(float(m.quadratic), 4))
    3.5 3.5
  """
  _check_params(a)
  if jax.tree.structure(a) != jax.tree.structure(c):
    raise ValueError(
      f"a and c must be pytrees of the same structure, got {jax.tree.structure(a)} and "
      f"{jax.tree.structure(c)}"
    )
  la, lc, lm, quad = _midpoint_terms(loss_fn, a, c, batch)
  gap = 0.5 * (float(la) + float(lc)) - float(lm)
  return MidpointGap(la, lc, lm, gap, quad)
