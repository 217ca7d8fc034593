"""L2 distances between parameter pytrees and along trajectories (paper Fig. 6, 8).

The paper measures the geometry of a trajectory with plain Euclidean distances
in weight space, treating a pytree of parameters as one flat vector::

    ||a - b||_2 = sqrt( sum_leaves sum_i (a_i - b_i)^2 ).

* Fig. 6: ||avg_2(theta^lambda_t, theta^lambda_{t+gap}) - theta^{lambda/2}_t||,
  the two-point average of the run with learning rate lambda against the
  side-trip with lambda/2, set against the distance between two runs that
  differ only in batch order (theta'_t, theta''_t).
* Fig. 8: ||theta_t - theta'_T||, the distance from the points of one trajectory
  to the final point of an independently trained one; it decreases and
  saturates (Section 5, "basins of attraction").

A *sequence* of parameters is a pytree whose leaves carry an extra leading axis
of length T (what ``jax.lax.scan`` or ``jnp.stack`` over checkpoints gives).
All reductions accumulate in float32 at least, so bfloat16 leaves do not lose
the sum of many small squares.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = [
  "tree_dot",
  "tree_sq_norm",
  "tree_norm",
  "l2_distance",
  "relative_distance",
  "distance_sequence",
  "pairwise_distance_sequence",
  "sequence_length",
  "check_same_structure",
]


def check_same_structure(a: PyTree, b: PyTree, name_a: str, name_b: str) -> None:
  """Raises ValueError naming ``name_a`` and ``name_b`` unless the pytrees match leaf by leaf."""
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  if sa != sb:
    raise ValueError(
      f"{name_a} and {name_b} must have the same pytree structure; got {sa} and {sb}."
    )
  for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False)):
    if jnp.shape(x) != jnp.shape(y):
      raise ValueError(
        f"{name_a} and {name_b} leaf {i} shapes differ: {jnp.shape(x)} vs "
        f"{jnp.shape(y)}; the pytrees must match leaf by leaf."
      )


def _acc_dtype(x):
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def tree_dot(a: PyTree, b: PyTree) -> jax.Array:
  """Inner product <a, b> = sum over all leaves and entries of a_i * b_i."""
  check_same_structure(a, b, "a", "b")
  parts = [
    jnp.vdot(x.astype(_acc_dtype(x)), y.astype(_acc_dtype(y))).real
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False)
  ]
  return sum(parts, jnp.zeros((), jnp.float32))


def tree_sq_norm(a: PyTree) -> jax.Array:
  """Squared Euclidean norm ||a||^2 of a pytree seen as one flat vector."""
  parts = [jnp.sum(jnp.square(x.astype(_acc_dtype(x)))) for x in jax.tree.leaves(a)]
  return sum(parts, jnp.zeros((), jnp.float32))


def tree_norm(a: PyTree) -> jax.Array:
  """Euclidean norm ||a||_2 of a pytree seen as one flat vector."""
  return jnp.sqrt(tree_sq_norm(a))


@jax.jit
def l2_distance(a: PyTree, b: PyTree) -> jax.Array:
  """||a - b||_2 between two parameter pytrees of identical structure (Fig. 6, 8).

  Example:

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> a = {"w": jnp.array([3.0]), "b": jnp.array([4.0])}
    >>> print(probes.l2_distance(a, {"w": jnp.zeros(1), "b": jnp.zeros(1)}))
    5.0
  """
  check_same_structure(a, b, "a", "b")
  return tree_norm(jax.tree.map(jnp.subtract, a, b))


@jax.jit
def relative_distance(a: PyTree, b: PyTree) -> jax.Array:
  """||a - b|| / ||b||: distance in units of the reference point's norm.

  Section 5 compares distances "in relative terms"; dividing by the norm of the
  reference makes runs of different width comparable. Returns +inf when b = 0
  and a != 0, and nan when both are zero.
  """
  return l2_distance(a, b) / tree_norm(b)


def sequence_length(seq: PyTree, name: str = "seq") -> int:
  """Length T of the leading axis shared by every leaf of a stacked sequence."""
  leaves = jax.tree.leaves(seq)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; expected a stacked pytree.")
  lengths = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if None in lengths or len(lengths) != 1:
    raise ValueError(
      f"{name} must be a pytree whose leaves all share a leading axis of "
      f"length T (a stacked sequence); got leading sizes {sorted(map(str, lengths))}."
    )
  return lengths.pop()


@jax.jit
def distance_sequence(seq: PyTree, target: PyTree) -> jax.Array:
  """d_t = ||seq_t - target||_2 for each t, shape [T] (Fig. 8).

  Args:
    seq: stacked parameters, every leaf of shape ``[T, *leaf_shape]``.
    target: one parameter pytree with the un-stacked structure, e.g. the final
      point of an independently trained run.
  """
  sequence_length(seq, "seq")
  first = jax.tree.map(lambda x: x[0], seq)
  check_same_structure(first, target, "seq[0]", "target")
  return jax.vmap(l2_distance, in_axes=(0, None))(seq, target)


@jax.jit
def pairwise_distance_sequence(seq_a: PyTree, seq_b: PyTree) -> jax.Array:
  """d_t = ||a_t - b_t||_2 for two aligned sequences, shape [T] (Fig. 6).

  E.g. ``seq_a`` the two-point averages of the lambda run and ``seq_b`` the
  lambda/2 side-trip at the same steps, or two runs on different batch orders.
  """
  ta = sequence_length(seq_a, "seq_a")
  tb = sequence_length(seq_b, "seq_b")
  if ta != tb:
    raise ValueError(f"seq_a and seq_b must have the same length; got {ta} and {tb}.")
  check_same_structure(seq_a, seq_b, "seq_a", "seq_b")
  return jax.vmap(l2_distance)(seq_a, seq_b)
