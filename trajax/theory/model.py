"""The quadratic model of SGD (paper eq. 14): curvature, noise, decoupled modes.

Shared by the Monte Carlo (:mod:`trajax.theory.monte_carlo`), the exact
moments (:mod:`trajax.theory.moments`) and the stationary closed forms
(:mod:`trajax.theory.stationary`); see :mod:`trajax.theory` for the model.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LearningRate = float | np.ndarray | jax.Array | Callable[[jax.Array], jax.Array]


class Modes(NamedTuple):
  """The decoupled degrees of freedom: v = basisᵀθ, v_{t+1} = (1 − λκ)v + λ√c ξ.

  Attributes:
    kappa: (d,) curvatures κ_i (eigenvalues of A; A itself when diagonal).
    noise_var: (d,) c_i = (VᵀCV)_ii, the noise variance of each mode.
    basis: (d, d) orthonormal eigenvectors V as columns, or None when A is
      given as a diagonal (the modes are the coordinates).
  """

  kappa: np.ndarray
  noise_var: np.ndarray
  basis: np.ndarray | None


def check_hessian(hessian) -> np.ndarray:
  """A = ⟨A_xᵀA_x⟩ as float64: its (d,) eigenvalues, or the symmetric (d, d) matrix."""
  a = np.asarray(hessian, np.float64)
  if a.ndim == 0:
    a = a.reshape(1)
  if a.ndim == 2:
    if a.shape[0] != a.shape[1]:
      raise ValueError(f"hessian must be (d,) or square (d, d), got shape {a.shape}")
    if not np.allclose(a, a.T, rtol=1e-6, atol=1e-12 * max(1.0, np.abs(a).max())):
      raise ValueError("hessian must be symmetric (A = ⟨A_xᵀA_x⟩ is)")
  elif a.ndim != 1:
    raise ValueError(f"hessian must be (d,) or square (d, d), got shape {a.shape}")
  return a


def _noise_cov(noise_cov, d: int) -> np.ndarray:
  """C as a (d,) diagonal or a (d, d) matrix (None: identity)."""
  if noise_cov is None:
    return np.ones(d)
  c = np.asarray(noise_cov, np.float64)
  if c.ndim == 0:
    c = np.full(d, float(c))
  if c.shape not in ((d,), (d, d)):
    raise ValueError(f"noise_cov must be a scalar, (d,) or (d, d) with d={d}, got shape {c.shape}")
  if c.ndim == 1 and np.any(c < 0):
    raise ValueError(f"noise_cov must be non-negative, got min {c.min()}")
  if c.ndim == 2:
    if not np.allclose(c, c.T, atol=1e-12 * max(1.0, np.abs(c).max())):
      raise ValueError("noise_cov must be symmetric")
    if np.linalg.eigvalsh(c).min() < -1e-10 * max(1.0, np.abs(c).max()):
      raise ValueError("noise_cov must be positive semi-definite")
  return c


def check_batch_size(batch_size) -> float:
  """B > 0 (finite): the examples per step whose gradients a batch averages."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, (numbers.Real, np.number)):
    raise ValueError(f"batch_size must be a number > 0, got {batch_size!r}")
  if not (np.isfinite(batch_size) and batch_size > 0):
    raise ValueError(f"batch_size must be a finite number > 0, got {batch_size!r}")
  return float(batch_size)


def batch_noise_cov(noise_cov, batch_size, d: int) -> np.ndarray:
  """C_B = C / B: the noise covariance of a batch of B examples (C: one example's).

  The batch gradient is the mean of B independent per-example gradients, so
  its covariance is the per-example one divided by B (the term b_t of eq. 14).
  """
  return _noise_cov(noise_cov, d) / check_batch_size(batch_size)


def modes(hessian, noise_cov=None) -> Modes:
  """Eigen-decomposition of the model into decoupled modes (module docstring).

  Args:
    hessian: A, a (d,) diagonal or a symmetric (d, d) matrix.
    noise_cov: C, None (identity), a scalar, a (d,) diagonal or (d, d).
  """
  a = check_hessian(hessian)
  d = a.shape[0]
  c = _noise_cov(noise_cov, d)
  if a.ndim == 1:
    return Modes(a, c if c.ndim == 1 else np.diagonal(c).copy(), None)
  kappa, v = np.linalg.eigh(a)
  cm = np.diag(c) if c.ndim == 1 else c
  return Modes(kappa, np.einsum("ik,ij,jk->k", v, cm, v), v)


def whiten(hessian, noise_cov) -> tuple[np.ndarray, np.ndarray]:
  """Appendix A.1: Q with QQᵀ = C (Cholesky) and Ω = Q⁻¹AQ.

  With θ = Qu and b = −Qξ, eq. 14 becomes eq. 15, u_{t+1} = (I − λΩ)u_t + λξ_t
  with white ξ. Ω has A's eigenvalues but is not symmetric unless A and C
  commute (module docstring). C must be positive definite.

  Returns:
    (omega, q), both (d, d) float64.
  """
  a = check_hessian(hessian)
  a = np.diag(a) if a.ndim == 1 else a
  c = _noise_cov(noise_cov, a.shape[0])
  c = np.diag(c) if c.ndim == 1 else c
  try:
    q = np.linalg.cholesky(c)
  except np.linalg.LinAlgError:
    raise ValueError("whiten needs a positive definite noise_cov") from None
  return np.linalg.solve(q, a @ q), q


def lr_table(lr: LearningRate, num_steps: int) -> tuple[jax.Array, bool]:
  """λ_t for t = 0 … T−1 as (T, L) float32, and whether lr had an L axis."""
  if callable(lr):
    table = jnp.asarray(lr(jnp.arange(num_steps)), jnp.float32)
    if table.ndim == 1 and table.shape[0] == num_steps:
      return table[:, None], False
    if table.ndim == 2 and table.shape[0] == num_steps:
      return table, True
    raise ValueError(
      f"lr schedule must return shape (num_steps,) or (num_steps, L) on "
      f"arange(num_steps), got {table.shape}"
    )
  arr = np.asarray(lr, np.float32)
  if arr.ndim > 1:
    raise ValueError(f"lr must be a scalar, a (L,) array or a schedule, got shape {arr.shape}")
  vector = arr.ndim == 1
  return jnp.broadcast_to(jnp.asarray(arr.reshape(-1)), (num_steps, arr.size)), vector


def check_steps(num_steps, record_every):
  """Both integers >= 1, and ``record_every`` divides ``num_steps``."""
  for name, value in (("num_steps", num_steps), ("record_every", record_every)):
    if (
      isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 1
    ):
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  if num_steps % record_every:
    raise ValueError(f"record_every={record_every} must divide num_steps={num_steps}")


def group_matrix(dof_groups, d: int) -> np.ndarray | None:
  """(d, G) 0/1 matrix: which group each degree of freedom adds to (None: G = d,
  one group per degree of freedom, no matmul needed)."""
  if dof_groups is None:
    return None
  g = np.asarray(dof_groups)
  if g.shape != (d,) or not np.issubdtype(g.dtype, np.integer) or (g.size and g.min() < 0):
    raise ValueError(
      f"dof_groups must be a (d,) array of group ids >= 0 with d={d}, got {dof_groups!r}"
    )
  return np.eye(int(g.max()) + 1, dtype=np.float32)[g]


def sum_to_groups(per_mode, to_groups, grouped):
  """(L, U) per distinct mode -> (L, G) per group: a gather when every degree
  of freedom is its own group; for a few groups a fused multiply-and-sum,
  which inside a loop is cheaper on CPU than a small matmul."""
  if not grouped:
    return per_mode[:, to_groups]
  if to_groups.shape[1] <= 8:
    return (per_mode[:, :, None] * to_groups).sum(1)
  return per_mode @ to_groups


# 'none', EMA and SWA update as a ← (1 − w_t)·a + w_t·θ_t (trajax.averaging's


def cached_build(builder, method, method_params, *static):
  """builder(method, params_items, *static), cached when the parameters hash, so
  repeated calls with the same structure reuse one compiled function."""
  items = tuple(sorted(method_params.items()))
  try:
    return _BUILD_CACHE(builder, method, items, *static)
  except TypeError:  # unhashable parameter values (e.g. arrays): build afresh
    return builder(method, items, *static)


@functools.lru_cache(maxsize=64)
def _BUILD_CACHE(builder, method, items, *static):
  return builder(method, items, *static)
