"""Fixed-batch side-trips and loss along their linear interpolation (paper Fig. 3).

Section 3, "multi-step side-trip": from two points of the main trajectory,
theta_t and theta_{t+Delta} (75K and 85K in the paper), run k steps of plain
gradient descent on one fixed training batch b,

    a_0 = theta_t,        a_{i+1} = a_i - lr grad L_b(a_i),
    c_0 = theta_{t+D},    c_{i+1} = c_i - lr grad L_b(c_i),

and at every i evaluate the loss on the segment between corresponding points,

    l_i(alpha) = L((1 - alpha) a_i + alpha c_i),   alpha in [0, 1] (or beyond),

on the fixed batch and on a held-out batch. No bump in l_i (a barrier
max_alpha l_i(alpha) - [(1 - alpha) l_i(0) + alpha l_i(1)] near zero) means the
two side-trips descend into the same basin of the fixed batch (Frankle et al.
2019 style linear connectivity).

``gd_trajectory`` is a ``lax.scan``; the interpolation grid is one ``vmap``
over alpha; the i axis is a ``lax.map`` so only one pair of points is
interpolated at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trajax.probes import distances

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]

__all__ = [
  "InterpolationResult",
  "fixed_batch_gd",
  "gd_trajectory",
  "interpolate",
  "interpolation_losses",
  "sidetrip_interpolation",
  "run_sidetrip_interpolation",
]


class InterpolationResult(NamedTuple):
  """Fig. 3 measurements for k side-trip steps and A interpolation weights.

  Attributes:
    alphas: [A] interpolation weights (0 -> first side-trip, 1 -> second).
    train_loss: [k+1, A] fixed-batch loss on the segment after i steps.
    heldout_loss: [k+1, A] held-out loss on the same segments ([k+1, 0] if no
      held-out batch was given).
    train_barrier: [k+1] max_alpha of the fixed-batch loss minus the straight
      line between its values at alpha = 0 and alpha = 1.
    heldout_barrier: [k+1] the same for the held-out batch (nan if absent).
    distance: [k+1] ||a_i - c_i||_2 between the corresponding points.
  """

  alphas: jax.Array
  train_loss: jax.Array
  heldout_loss: jax.Array
  train_barrier: jax.Array
  heldout_barrier: jax.Array
  distance: jax.Array


def _check_alphas(alphas) -> None:
  shape = jnp.shape(alphas)
  if len(shape) != 1 or shape[0] < 1:
    raise ValueError(
      f"alphas must be a non-empty 1-D array of interpolation weights; got shape {shape}."
    )


def _check_num_steps(num_steps) -> None:
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
    raise ValueError(f"num_steps must be a non-negative int; got {num_steps!r}.")


def fixed_batch_gd(learning_rate) -> optax.GradientTransformation:
  """Plain gradient descent θ ← θ − η ∇L_b(θ): the paper's fixed-batch side-trip (Sec. 3).

  No momentum, no averaging and no weight decay: the side-trip descends the
  fixed batch's own loss L_b, the quantity Fig. 3 plots. The one definition
  behind :func:`gd_trajectory` and the engine's ``sidetrip.kind='fixed_batch'``
  (re-exported as ``trajax.state.fixed_batch_gd``).

  Args:
    learning_rate: η, a float or an optax schedule of the update count.
  """
  return optax.sgd(learning_rate)


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps"))
def gd_trajectory(
  loss_fn: LossFn, params: PyTree, batch: PyTree, learning_rate, num_steps: int
) -> PyTree:
  """k steps of full-batch gradient descent on one fixed batch (Fig. 3 side-trip).

  theta_{i+1} = theta_i - lr * grad L_b(theta_i), i = 0..k-1: the update of
  :func:`fixed_batch_gd`, the same rule the engine's
  ``sidetrip.kind='fixed_batch'`` runs (no momentum, no weight decay: the
  side-trip descends the fixed batch's own loss).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; static.
    params: starting point theta_0.
    batch: the fixed batch b.
    learning_rate: scalar step size (may be traced).
    num_steps: k, static.

  Returns:
    The trajectory theta_0..theta_k, leaves stacked on a leading axis of k+1.
  """
  _check_num_steps(num_steps)
  grad_fn = jax.grad(loss_fn)
  tx = fixed_batch_gd(learning_rate)

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = tx.update(grad_fn(p, batch), opt_state, p)
    nxt = optax.apply_updates(p, updates)
    return (nxt, opt_state), nxt

  _, path = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
  return jax.tree.map(lambda x0, xs: jnp.concatenate([x0[None], xs], 0), params, path)


def interpolate(params_a: PyTree, params_b: PyTree, alpha) -> PyTree:
  """(1 - alpha) a + alpha b, leaf by leaf, in each leaf's dtype.

  Example:

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> mid = probes.interpolate({"w": jnp.zeros(2)}, {"w": jnp.array([2.0, 4.0])}, 0.25)
    >>> print(mid["w"])
    [0.5 1. ]
  """
  return jax.tree.map(lambda a, b: a + jnp.asarray(alpha, a.dtype) * (b - a), params_a, params_b)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def interpolation_losses(
  loss_fn: LossFn, params_a: PyTree, params_b: PyTree, batch: PyTree, alphas: jax.Array
) -> jax.Array:
  """l(alpha) = L_b((1 - alpha) a + alpha b) for every alpha, shape [A] (one vmap)."""
  _check_alphas(alphas)
  distances.check_same_structure(params_a, params_b, "params_a", "params_b")
  return jax.vmap(lambda al: loss_fn(interpolate(params_a, params_b, al), batch))(
    jnp.asarray(alphas)
  )


def _barrier(alphas, losses):
  # Height above the chord through the endpoints alpha=0 and alpha=1, measured
  # from the straight line l(0) + alpha (l(1) - l(0)); the endpoints are taken
  # as the grid values nearest to 0 and 1.
  i0 = jnp.argmin(jnp.abs(alphas))
  i1 = jnp.argmin(jnp.abs(alphas - 1.0))
  chord = losses[..., i0, None] + alphas * (losses[..., i1, None] - losses[..., i0, None])
  return jnp.max(losses - chord, axis=-1)


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps"))
def sidetrip_interpolation(
  loss_fn: LossFn,
  params_a: PyTree,
  params_b: PyTree,
  batch: PyTree,
  learning_rate,
  num_steps: int,
  alphas: jax.Array,
  heldout_batch: PyTree | None = None,
) -> InterpolationResult:
  """Fixed-batch side-trips from two points and the loss between them (Fig. 3).

  Runs :func:`gd_trajectory` for ``num_steps`` on ``batch`` from both points
  and, for every i = 0..k, evaluates the fixed-batch (and held-out) loss on
  (1 - alpha) a_i + alpha c_i for each alpha.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; static.
    params_a, params_b: the two trajectory points (e.g. theta_75K, theta_85K).
    batch: the fixed training batch driving both side-trips.
    learning_rate: gradient-descent step size of the side-trips.
    num_steps: k, static.
    alphas: [A] interpolation weights; include 0 and 1 for the barrier.
    heldout_batch: optional single held-out batch.

  Returns:
    :class:`InterpolationResult`.
  """
  _check_alphas(alphas)
  distances.check_same_structure(params_a, params_b, "params_a", "params_b")
  alphas = jnp.asarray(alphas)
  path_a = gd_trajectory(loss_fn, params_a, batch, learning_rate, num_steps)
  path_b = gd_trajectory(loss_fn, params_b, batch, learning_rate, num_steps)

  def at_step(pair):
    a, c = pair
    tr = interpolation_losses(loss_fn, a, c, batch, alphas)
    if heldout_batch is None:
      ho = jnp.zeros((0,), tr.dtype)
    else:
      ho = interpolation_losses(loss_fn, a, c, heldout_batch, alphas)
    return tr, ho, distances.l2_distance(a, c)

  train, held, dist = jax.lax.map(at_step, (path_a, path_b))
  held_barrier = (
    jnp.full((num_steps + 1,), jnp.nan, train.dtype)
    if heldout_batch is None
    else _barrier(alphas, held)
  )
  return InterpolationResult(alphas, train, held, _barrier(alphas, train), held_barrier, dist)


def run_sidetrip_interpolation(
  loss_fn: LossFn,
  params_a: PyTree,
  params_b: PyTree,
  batch: PyTree,
  learning_rate,
  num_steps: int,
  alphas=None,
  heldout_batch=None,
) -> dict:
  """Runs :func:`sidetrip_interpolation` and returns a JSON-ready dict.

  ``alphas`` defaults to 21 points on [0, 1].
  """
  if alphas is None:
    alphas = jnp.linspace(0.0, 1.0, 21)
  res = sidetrip_interpolation(
    loss_fn, params_a, params_b, batch, learning_rate, num_steps, jnp.asarray(alphas), heldout_batch
  )
  res = jax.device_get(res)
  out = {k: np.asarray(v).tolist() for k, v in res._asdict().items()}
  out["learning_rate"] = float(learning_rate)
  out["num_steps"] = int(num_steps)
  return out
