"""Single-step loss against step size (paper Section 3, Fig. 2, 12, 13).

From a point theta of the main trajectory take the gradient of one training
batch b, g = grad L_b(theta), and look at the loss after one plain
gradient-descent step of size eta,

    l_b(eta)  = L_b(theta - eta g)        on the batch that gave the direction,
    l_h(eta)  = L_h(theta - eta g)        on held-out batches h = 1..N,

over a grid eta_1..eta_K. The paper's findings (Fig. 2): l_b is smooth, well fit
by a low-degree polynomial, and drops far below the loss of a fully trained
model in one step, while l_h improves only for small eta. Fig. 12 repeats this
at several trajectory positions and batch sizes; Fig. 13 plots the largest
one-step drop

    Delta_b = l_b(0) - min_k l_b(eta_k),    Delta_h likewise for mean_h l_h,

on a log scale. For a quadratic loss l_b is exactly the parabola
l_b(0) - eta |g|^2 + eta^2 g^T H_b g / 2, whose minimiser is the
McCandlish et al. step eps_max (see ``trajax.probes.noise_scale``).

Cost: one ``value_and_grad`` for g, then the K (and N*K) forward passes are a
single ``jax.vmap`` over eta (``chunk_size`` trades memory for a sequential
``lax.map`` over chunks of the grid). ``bench/bench_probes.py`` measures it
against K separate forward passes plus one backward pass.

``loss_fn(params, batch) -> scalar`` is any loss (close over ``model.apply``,
batch statistics, RNGs); it is a static argument of the jitted probe, so pass
the same function object to reuse the compiled probe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trajax.probes import distances, noise_scale

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]

__all__ = [
  "StepSizeCurve",
  "HeldoutStats",
  "PolynomialFit",
  "OneStepSummary",
  "StepSizeReport",
  "single_step_losses",
  "heldout_stats",
  "fit_polynomial",
  "summarize_curve",
  "run_step_size_probe",
  "sweep_step_size_probe",
  "report_to_dict",
]


class StepSizeCurve(NamedTuple):
  """Raw output of :func:`single_step_losses` (K step sizes, N held-out batches).

  Attributes:
    step_sizes: [K] the grid eta_k.
    train_loss0: [] L_b(theta), the training-batch loss before the step.
    train_loss: [K] L_b(theta - eta_k g).
    heldout_loss0: [N] L_h(theta) for each held-out batch.
    heldout_loss: [N, K] L_h(theta - eta_k g).
    grad_sq_norm: [] |g|^2; -|g|^2 is the slope of l_b at eta = 0.
  """

  step_sizes: jax.Array
  train_loss0: jax.Array
  train_loss: jax.Array
  heldout_loss0: jax.Array
  heldout_loss: jax.Array
  grad_sq_norm: jax.Array


class HeldoutStats(NamedTuple):
  """Per-eta statistics over the N held-out batches, each [K] (Fig. 2 shading)."""

  mean: jax.Array
  std: jax.Array
  min: jax.Array
  max: jax.Array


class PolynomialFit(NamedTuple):
  """Least-squares polynomial l(eta) ~ sum_j coeffs[j] eta^(d-j) (np.polyval order).

  Attributes:
    coeffs: [d+1] highest power first.
    rmse: root mean squared residual over the grid.
    max_abs_error: largest absolute residual over the grid.
  """

  coeffs: jax.Array
  rmse: jax.Array
  max_abs_error: jax.Array


class OneStepSummary(NamedTuple):
  """What Fig. 13 plots for one curve.

  Attributes:
    loss0: loss before the step.
    best_loss: min_k l(eta_k).
    best_step_size: argmin_k eta_k (the probe's empirical optimal step).
    largest_drop: loss0 - best_loss (negative if every step on the grid hurts).
    fit: low-degree polynomial fit of l over the grid.
  """

  loss0: jax.Array
  best_loss: jax.Array
  best_step_size: jax.Array
  largest_drop: jax.Array
  fit: PolynomialFit


class StepSizeReport(NamedTuple):
  """Everything :func:`run_step_size_probe` measures, as host NumPy values.

  ``eps_max`` is the second-order prediction |g|^2 / g^T H_b g for the same
  batch (``trajax.probes.noise_scale.epsilon_max``), to set against
  ``train.best_step_size``; None when not requested.
  """

  curve: StepSizeCurve
  heldout: HeldoutStats | None
  train: OneStepSummary
  heldout_mean: OneStepSummary | None
  eps_max: noise_scale.EpsilonMax | None = None


def _check_step_sizes(step_sizes) -> None:
  shape = jnp.shape(step_sizes)
  if len(shape) != 1 or shape[0] < 1:
    raise ValueError(
      f"step_sizes must be a non-empty 1-D array of step sizes eta; got shape {shape}."
    )


def _check_chunk_size(chunk_size) -> None:
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(
      f"chunk_size must be None (one vmap over the whole grid) or a positive "
      f"int; got {chunk_size!r}."
    )


def _num_batches(stacked: PyTree) -> int:
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError(
      "heldout_batches has no array leaves; expected batches "
      "stacked along a leading axis of length N."
    )
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
      f"heldout_batches must be stacked batches whose leaves share a leading "
      f"axis of length N; got leading sizes {sorted(map(str, sizes))}."
    )
  return sizes.pop()


def _map(fn, xs, chunk_size):
  # One vmap over the grid unless the caller bounds memory with chunk_size;
  # lax.map with batch_size vmaps within each chunk and loops over chunks.
  if chunk_size is None:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def single_step_losses(
  loss_fn: LossFn,
  params: PyTree,
  batch: PyTree,
  step_sizes: jax.Array,
  heldout_batches: PyTree | None = None,
  *,
  chunk_size: int | None = None,
) -> StepSizeCurve:
  """Loss after one gradient step of each size in ``step_sizes`` (Fig. 2, 12).

  With g = grad_theta L_b(theta), returns l_b(eta_k) = L_b(theta - eta_k g) and
  l_h(eta_k) = L_h(theta - eta_k g) for every held-out batch h.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; static (hashed by identity).
    params: parameter pytree theta.
    batch: the training batch b that gives the direction g.
    step_sizes: [K] grid of eta (may include 0 and negative values).
    heldout_batches: optional pytree of N batches stacked on a leading axis.
    chunk_size: None for one vmap over the K step sizes; an int to evaluate the
      grid in sequential chunks of that many step sizes, each chunk one vmap
      (``lax.map(..., batch_size=chunk_size)``). Chunking bounds memory (a vmap
      over eta holds K perturbed copies of the parameters) and, on CPU, is
      faster for conv nets: vmapping a convolution over its kernel becomes a
      grouped convolution, which XLA:CPU runs slower than K plain ones (see
      ``bench/bench_probes.py``; chunk_size=1 is a compiled loop).

  Returns:
    A :class:`StepSizeCurve`; held-out fields have N = 0 rows when
    ``heldout_batches`` is None.
  """
  _check_step_sizes(step_sizes)
  _check_chunk_size(chunk_size)
  loss0, grads = jax.value_and_grad(loss_fn)(params, batch)
  g_sq = distances.tree_sq_norm(grads)

  if heldout_batches is not None:
    _num_batches(heldout_batches)  # validates the stacking
    heldout_on = jax.vmap(loss_fn, in_axes=(None, 0))

  def losses_at(eta):
    stepped = jax.tree.map(lambda p, g: p - eta.astype(p.dtype) * g, params, grads)
    if heldout_batches is None:
      return loss_fn(stepped, batch)
    return loss_fn(stepped, batch), heldout_on(stepped, heldout_batches)

  etas = jnp.asarray(step_sizes)
  if heldout_batches is None:
    # Zero-size outputs are built here rather than mapped: lax.map's chunking
    # cannot reshape a [K, 0] result.
    train_k = _map(losses_at, etas, chunk_size)
    heldout_kn = jnp.zeros((etas.shape[0], 0), jnp.result_type(train_k))
    heldout0 = jnp.zeros((0,), jnp.result_type(loss0))
  else:
    train_k, heldout_kn = _map(losses_at, etas, chunk_size)
    heldout0 = heldout_on(params, heldout_batches)
  return StepSizeCurve(
    step_sizes=etas,
    train_loss0=loss0,
    train_loss=train_k,
    heldout_loss0=heldout0,
    heldout_loss=heldout_kn.T,
    grad_sq_norm=g_sq,
  )


@jax.jit
def heldout_stats(curve: StepSizeCurve) -> HeldoutStats:
  """Mean, population std, min and max over held-out batches for each eta (Fig. 2)."""
  h = curve.heldout_loss
  return HeldoutStats(jnp.mean(h, 0), jnp.std(h, 0), jnp.min(h, 0), jnp.max(h, 0))


@functools.partial(jax.jit, static_argnames=("degree",))
def fit_polynomial(step_sizes: jax.Array, losses: jax.Array, degree: int = 4) -> PolynomialFit:
  """Least-squares fit of a degree-d polynomial to l(eta) over the grid (Fig. 2).

  Solves min_c sum_k (sum_j c_j eta_k^j - l_k)^2. Step sizes are rescaled to
  x = eta / max|eta| before building the Vandermonde matrix (its columns would
  otherwise span many orders of magnitude for eta ~ 1e-3) and the coefficients
  are mapped back exactly, c_j(eta) = c_j(x) / s^j.

  Args:
    step_sizes: [K] grid.
    losses: [K] loss values on the grid.
    degree: polynomial degree d, 0 <= d < K.

  Returns:
    :class:`PolynomialFit` with coefficients highest power first.

  Example:

    >>> import jax.numpy as jnp
    >>> from trajax import probes
    >>> eta = jnp.array([0.0, 0.1, 0.2, 0.3])
    >>> fit = probes.fit_polynomial(eta, 2 * eta**2 - 2 * eta + 1, degree=2)
    >>> print(jnp.round(fit.coeffs, 3))
    [ 2. -2.  1.]
  """
  _check_step_sizes(step_sizes)
  k = jnp.shape(step_sizes)[0]
  if not isinstance(degree, int) or degree < 0 or degree >= k:
    raise ValueError(
      f"degree must be an int with 0 <= degree < len(step_sizes) = {k}; got {degree!r}."
    )
  if jnp.shape(losses) != (k,):
    raise ValueError(f"losses must have shape ({k},) to match step_sizes; got {jnp.shape(losses)}.")
  eta = jnp.asarray(step_sizes, jnp.promote_types(jnp.result_type(step_sizes), jnp.float32))
  y = jnp.asarray(losses, eta.dtype)
  scale = jnp.max(jnp.abs(eta))
  scale = jnp.where(scale > 0, scale, 1.0)
  vander = jnp.vander(eta / scale, degree + 1)  # highest power first
  coeffs_x, *_ = jnp.linalg.lstsq(vander, y)
  powers = jnp.arange(degree, -1, -1)
  coeffs = coeffs_x / scale**powers
  resid = vander @ coeffs_x - y
  return PolynomialFit(coeffs, jnp.sqrt(jnp.mean(resid**2)), jnp.max(jnp.abs(resid)))


@functools.partial(jax.jit, static_argnames=("degree",))
def summarize_curve(
  step_sizes: jax.Array, losses: jax.Array, loss0: jax.Array, degree: int = 4
) -> OneStepSummary:
  """Largest one-step drop, its step size and a polynomial fit (Fig. 13).

  largest_drop = loss0 - min_k l(eta_k), best_step_size = argmin_k eta_k (the
  first on ties).
  """
  i = jnp.argmin(losses)
  best = losses[i]
  return OneStepSummary(
    loss0=loss0,
    best_loss=best,
    best_step_size=jnp.asarray(step_sizes)[i],
    largest_drop=loss0 - best,
    fit=fit_polynomial(step_sizes, losses, degree),
  )


def _to_host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def run_step_size_probe(
  loss_fn: LossFn,
  params: PyTree,
  batch: PyTree,
  step_sizes,
  heldout_batches: PyTree | None = None,
  *,
  degree: int = 4,
  chunk_size: int | None = None,
  with_eps_max: bool = False,
) -> StepSizeReport:
  """Runs the single-step probe and summarises it (Fig. 2 curves, Fig. 13 drops).

  Returns a :class:`StepSizeReport` of NumPy values: the raw curve, held-out
  mean/std/min/max per eta, and for the training batch and for the held-out
  mean curve the largest drop, its step size and a degree-``degree`` fit.
  With ``with_eps_max`` it also computes eps_max of the training batch (one
  Hessian-vector product), the step the quadratic model predicts to be best.
  """
  step_sizes = jnp.asarray(step_sizes)
  curve = single_step_losses(
    loss_fn, params, batch, step_sizes, heldout_batches, chunk_size=chunk_size
  )
  train = summarize_curve(step_sizes, curve.train_loss, curve.train_loss0, degree)
  if heldout_batches is None:
    stats = held = None
  else:
    stats = heldout_stats(curve)
    held = summarize_curve(step_sizes, stats.mean, jnp.mean(curve.heldout_loss0), degree)
  eps = noise_scale.epsilon_max(loss_fn, params, batch) if with_eps_max else None
  return StepSizeReport(*_to_host((curve, stats, train, held, eps)))


def sweep_step_size_probe(
  loss_fn: LossFn,
  points: Mapping[str, tuple[PyTree, PyTree]],
  step_sizes,
  heldout_batches: PyTree | None = None,
  *,
  degree: int = 4,
  chunk_size: int | None = None,
  with_eps_max: bool = False,
) -> dict[str, StepSizeReport]:
  """The probe at several trajectory points and/or batch sizes (Fig. 12, 13).

  Args:
    points: label -> (params, training batch), e.g. ``{"step=5000,B=512": ...}``.
      Batches of different sizes compile once per shape.
    step_sizes, heldout_batches, degree, chunk_size, with_eps_max: as in
      :func:`run_step_size_probe`; the same held-out batches serve every point.

  Returns:
    label -> :class:`StepSizeReport`, in the order of ``points``.
  """
  if not points:
    raise ValueError("points must name at least one (params, batch) pair; got an empty mapping.")
  return {
    label: run_step_size_probe(
      loss_fn,
      p,
      b,
      step_sizes,
      heldout_batches,
      degree=degree,
      chunk_size=chunk_size,
      with_eps_max=with_eps_max,
    )
    for label, (p, b) in points.items()
  }


def report_to_dict(report: StepSizeReport) -> dict:
  """JSON-ready dict (floats and lists) of a :class:`StepSizeReport`."""

  def conv(x):
    if isinstance(x, tuple) and hasattr(x, "_fields"):
      return {k: conv(v) for k, v in x._asdict().items()}
    if x is None:
      return None
    return np.asarray(x).tolist()

  return conv(report)
