"""Gradient alignment along side-trips (paper Section 5, Lemma 2, Fig. 7).

Lemma 2 (equivalence of averaging and learning-rate schedules) assumes that
the gradient of a fixed batch b barely changes along the trajectory. Fig. 7
checks it: with g_b(theta) = grad L_b(theta) and theta_0 the branch point,

    cos_t   = <g_b(theta_t), g_b(theta_0)> / (|g_b(theta_t)| |g_b(theta_0)|),
    ratio_t = |g_b(theta_t)| / |g_b(theta_0)|,

along side-trips with a constant and a linearly decaying schedule (blue
curves; the paper sees cos > 0.5 and |ratio - 1| < 5% over 1000 steps), the
cosine between the fixed-batch gradients at parallel points theta_t, theta'_t
of the two side-trips (green curve), and, for reference, the cosine between
gradients of two independent batches b_t, b'_t at the same point (orange
curve; nearly 0, i.e. orthogonal in high dimension).

Sequences of parameters are pytrees stacked on a leading axis of length T; the
gradients along a sequence are computed one point at a time (``lax.map``) so
memory stays at one gradient beyond the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from trajax.probes import distances

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]

__all__ = [
  "Alignment",
  "cosine_similarity",
  "norm_ratio",
  "gradient_alignment",
  "parallel_gradient_cosine",
  "independent_batch_cosine",
]


class Alignment(NamedTuple):
  """Fig. 7 left and middle panels, each [T].

  Attributes:
    cosine: cos of the angle between g_b(theta_t) and the reference gradient.
    norm_ratio: |g_b(theta_t)| / |reference gradient|.
    grad_norm: |g_b(theta_t)|.
  """

  cosine: jax.Array
  norm_ratio: jax.Array
  grad_norm: jax.Array


def cosine_similarity(a: PyTree, b: PyTree) -> jax.Array:
  """<a, b> / (|a| |b|) for pytrees seen as flat vectors; nan if either is 0.

  Example:

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> a, b = {"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([4.0, 3.0])}
    >>> print(round(float(probes.cosine_similarity(a, b)), 4))  # 24 / 25
    0.96
  """
  return distances.tree_dot(a, b) / (distances.tree_norm(a) * distances.tree_norm(b))


def norm_ratio(a: PyTree, b: PyTree) -> jax.Array:
  """|a| / |b| for pytrees seen as flat vectors."""
  return distances.tree_norm(a) / distances.tree_norm(b)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def gradient_alignment(
  loss_fn: LossFn, ref_params: PyTree, params_seq: PyTree, batch: PyTree
) -> Alignment:
  """Cosine and norm ratio of g_b(theta_t) against g_b(theta_0) (Fig. 7, blue).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; static.
    ref_params: the branch point theta_0.
    params_seq: theta_1..theta_T stacked on a leading axis (e.g. checkpoints of
      a side-trip with a constant or linearly decaying schedule).
    batch: the fixed batch b at which all gradients are taken.

  Returns:
    :class:`Alignment` with [T] arrays.
  """
  distances.sequence_length(params_seq, "params_seq")
  distances.check_same_structure(
    jax.tree.map(lambda x: x[0], params_seq), ref_params, "params_seq[0]", "ref_params"
  )
  grad_fn = jax.grad(loss_fn)
  g0 = grad_fn(ref_params, batch)
  n0 = distances.tree_norm(g0)

  def at(p):
    g = grad_fn(p, batch)
    n = distances.tree_norm(g)
    return distances.tree_dot(g, g0) / (n * n0), n / n0, n

  return Alignment(*jax.lax.map(at, params_seq))


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def parallel_gradient_cosine(
  loss_fn: LossFn, params_seq_a: PyTree, params_seq_b: PyTree, batch: PyTree
) -> jax.Array:
  """cos(g_b(theta_t), g_b(theta'_t)) at parallel points of two runs, [T] (Fig. 7, green)."""
  ta = distances.sequence_length(params_seq_a, "params_seq_a")
  tb = distances.sequence_length(params_seq_b, "params_seq_b")
  if ta != tb:
    raise ValueError(f"params_seq_a and params_seq_b must have the same length; got {ta} and {tb}.")
  distances.check_same_structure(params_seq_a, params_seq_b, "params_seq_a", "params_seq_b")
  grad_fn = jax.grad(loss_fn)
  return jax.lax.map(
    lambda pq: cosine_similarity(grad_fn(pq[0], batch), grad_fn(pq[1], batch)),
    (params_seq_a, params_seq_b),
  )


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def independent_batch_cosine(
  loss_fn: LossFn, params: PyTree, batches_a: PyTree, batches_b: PyTree
) -> jax.Array:
  """cos(g_{b_i}(theta), g_{b'_i}(theta)) for pairs of independent batches (Fig. 7, orange).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; static.
    params: the point theta at which both gradients are taken.
    batches_a, batches_b: M batches each, stacked on a leading axis; pair i is
      (batches_a[i], batches_b[i]).

  Returns:
    [M] cosines. For a sequence of points, vmap or loop this over params.
  """
  ma = distances.sequence_length(batches_a, "batches_a")
  mb = distances.sequence_length(batches_b, "batches_b")
  if ma != mb:
    raise ValueError(
      f"batches_a and batches_b must hold the same number of batches; got {ma} and {mb}."
    )
  grad_fn = jax.grad(loss_fn)
  return jax.lax.map(
    lambda ab: cosine_similarity(grad_fn(params, ab[0]), grad_fn(params, ab[1])),
    (batches_a, batches_b),
  )
