"""Gradient noise scale and the optimal step (McCandlish et al. 2018; companion notes).

The companion notes ("Optimal learning rate and saturation of gradient
estimates") take the second-order expansion of the loss along the true
gradient G with Hessian H,

    L(theta - eps G) ~ L(theta) - eps |G|^2 + eps^2 G^T H G / 2,

whose minimiser and best improvement are

    eps_max = |G|^2 / (G^T H G),       Delta L_max = |G|^4 / (2 G^T H G).

With a batch of size B the gradient is noisy, G_B = G + xi, Cov[xi] = Sigma/B,
where Sigma is the per-example gradient covariance, and the best expected step
becomes eps_opt(B) = eps_max / (1 + B_noise / B). The simple noise scale

    B_simple = tr(Sigma) / |G|^2

stands in for B_noise (equal when H is a multiple of the identity).

Estimating B_simple (McCandlish et al., App. A.1): for batches drawn i.i.d.,
E|G_B|^2 = |G|^2 + tr(Sigma)/B. With mean squared norms at two batch sizes
B_small < B_big,

    |G|^2_hat    = (B_big E|G_big|^2 - B_small E|G_small|^2) / (B_big - B_small),
    tr(Sigma)_hat = (E|G_small|^2 - E|G_big|^2) / (1/B_small - 1/B_big),

both unbiased; B_simple_hat = tr(Sigma)_hat / |G|^2_hat is their ratio (a
ratio of unbiased estimates, so only consistent: average many batches before
dividing, as the paper recommends).

The loss must be the *mean* over the batch's examples (so that G_B is an
average of per-example gradients) and must not add terms that do not scale
that way (e.g. weight decay: put it outside ``loss_fn`` for this probe).

Hessian-vector products are forward-over-reverse, H v = d/dr grad L(theta + r v)
at r = 0, via ``jax.jvp`` of ``jax.grad``: about the cost of two gradients,
no Hessian is formed.

The paper's single-step probe (``trajax.probes.step_size``, Fig. 2) measures
the best step on a grid; on a quadratic loss its argmin is exactly eps_max of
the same batch, which the tests check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from trajax.probes import distances

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]

__all__ = [
  "NoiseScale",
  "EpsilonMax",
  "hvp",
  "batch_grad_sq_norms",
  "noise_scale_from_sq_norms",
  "estimate_noise_scale",
  "epsilon_max",
  "optimal_step_size",
]


class NoiseScale(NamedTuple):
  """Two-batch-size estimate of the simple noise scale (McCandlish et al. App. A.1).

  Attributes:
    grad_sq_norm: |G|^2_hat, unbiased estimate of the squared true gradient norm.
    trace_cov: tr(Sigma)_hat, unbiased estimate of the per-example gradient
      covariance trace.
    b_simple: tr(Sigma)_hat / |G|^2_hat.
  """

  grad_sq_norm: jax.Array
  trace_cov: jax.Array
  b_simple: jax.Array


class EpsilonMax(NamedTuple):
  """Second-order optimal step along the gradient of one (large) batch.

  Attributes:
    eps_max: |G|^2 / G^T H G, +inf when G^T H G <= 0 (no minimum along -G).
    grad_sq_norm: |G|^2.
    curvature: G^T H G.
    delta_loss_max: |G|^4 / (2 G^T H G), the predicted best one-step drop
      (+inf when the curvature is not positive).
  """

  eps_max: jax.Array
  grad_sq_norm: jax.Array
  curvature: jax.Array
  delta_loss_max: jax.Array


def hvp(loss_fn: LossFn, params: PyTree, batch: PyTree, vector: PyTree) -> PyTree:
  """Hessian-vector product H_b(theta) v by forward-over-reverse differentiation."""
  distances.check_same_structure(params, vector, "params", "vector")
  return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (vector,))[1]


def _batch_size(stacked: PyTree, name: str) -> tuple[int, int]:
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; expected batches stacked as [M, B, ...].")
  shapes = {tuple(jnp.shape(x)[:2]) for x in leaves}
  if len(shapes) != 1 or len(next(iter(shapes))) != 2:
    raise ValueError(
      f"{name} must be M batches of B examples, every leaf shaped [M, B, ...]; "
      f"got leading shapes {sorted(shapes)}."
    )
  m, b = shapes.pop()
  return m, b


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def batch_grad_sq_norms(loss_fn: LossFn, params: PyTree, batches: PyTree) -> jax.Array:
  """|grad L_{b_i}(theta)|^2 for M batches stacked on a leading axis, shape [M]."""
  distances.sequence_length(batches, "batches")
  grad_fn = jax.grad(loss_fn)
  return jax.lax.map(lambda b: distances.tree_sq_norm(grad_fn(params, b)), batches)


def noise_scale_from_sq_norms(sq_norms_small, b_small: int, sq_norms_big, b_big: int) -> NoiseScale:
  """Unbiased two-batch-size estimator of |G|^2 and tr(Sigma) (McCandlish App. A.1).

  Args:
    sq_norms_small: squared gradient norms of batches of size ``b_small``
      (any shape; their mean estimates E|G_small|^2).
    b_small: the small batch size.
    sq_norms_big: squared gradient norms of batches of size ``b_big``.
    b_big: the big batch size, > ``b_small``.

  Returns:
    :class:`NoiseScale`.
  """
  for name, v in (("b_small", b_small), ("b_big", b_big)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be a positive int batch size; got {v!r}.")
  if b_big <= b_small:
    raise ValueError(
      f"b_big must be larger than b_small for the two-batch-size estimator; "
      f"got b_small={b_small}, b_big={b_big}."
    )
  for name, v in (("sq_norms_small", sq_norms_small), ("sq_norms_big", sq_norms_big)):
    if jnp.size(v) == 0:
      raise ValueError(f"{name} must hold at least one squared norm; got an empty array.")
  s = jnp.mean(jnp.asarray(sq_norms_small, jnp.float32))
  g = jnp.mean(jnp.asarray(sq_norms_big, jnp.float32))
  g_sq = (b_big * g - b_small * s) / (b_big - b_small)
  tr = (s - g) / (1.0 / b_small - 1.0 / b_big)
  return NoiseScale(g_sq, tr, tr / g_sq)


def estimate_noise_scale(
  loss_fn: LossFn, params: PyTree, small_batches: PyTree, big_batches: PyTree
) -> NoiseScale:
  """B_simple at theta from stacked small and big batches (McCandlish App. A.1).

  Args:
    loss_fn: mean-reduced ``loss_fn(params, batch) -> scalar``.
    params: the point theta.
    small_batches: M_s batches of B_small examples, leaves [M_s, B_small, ...].
    big_batches: M_b batches of B_big examples, leaves [M_b, B_big, ...].
      Batch sizes are read from axis 1; batches should be i.i.d. draws.

  Returns:
    :class:`NoiseScale`.
  """
  _, bs = _batch_size(small_batches, "small_batches")
  _, bb = _batch_size(big_batches, "big_batches")
  return noise_scale_from_sq_norms(
    batch_grad_sq_norms(loss_fn, params, small_batches),
    bs,
    batch_grad_sq_norms(loss_fn, params, big_batches),
    bb,
  )


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def epsilon_max(loss_fn: LossFn, params: PyTree, batch: PyTree) -> EpsilonMax:
  """eps_max = |G|^2 / (G^T H G) with G, H of ``batch`` (notes; McCandlish et al. Sec. 2).

  Pass a large batch to approximate the true gradient and Hessian; pass the
  probe's training batch to predict the argmin of the Fig. 2 training curve.

  Example:

    On L = ½ Σ_i κ_i θ_i² at θ = 1, G = κ and eps_max = Σ κ_i² / Σ κ_i³:

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> loss_fn = lambda params, kappa: 0.5 * jnp.sum(kappa * params["w"] ** 2)
    >>> kappa = jnp.array([4.0, 2.0, 1.0])
    >>> eps = probes.epsilon_max(loss_fn, {"w": jnp.ones(3)}, kappa)
    >>> print(round(float(eps.eps_max), 4), round(21 / 73, 4))
    0.2877 0.2877
  """
  g = jax.grad(loss_fn)(params, batch)
  g_sq = distances.tree_sq_norm(g)
  curv = distances.tree_dot(g, hvp(loss_fn, params, batch, g))
  pos = curv > 0
  safe = jnp.where(pos, curv, 1.0)
  return EpsilonMax(
    jnp.where(pos, g_sq / safe, jnp.inf), g_sq, curv, jnp.where(pos, g_sq**2 / (2 * safe), jnp.inf)
  )


def optimal_step_size(eps_max, b_noise, batch_size) -> jax.Array:
  """eps_opt(B) = eps_max / (1 + B_noise / B) (notes; McCandlish et al. Sec. 2)."""
  return jnp.asarray(eps_max) / (1.0 + jnp.asarray(b_noise) / jnp.asarray(batch_size))
