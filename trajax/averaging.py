"""Parameter averaging as optax wrappers: EMA, SWA, two-point and multi-point.

Let θ_0 be the params given to ``init`` and θ_t the params after the t-th
update, ``θ_t = optax.apply_updates(θ_{t-1}, updates_t)``. With s = start_step,
the average a_t after the t-th update is

* t ≤ s: ``a_t = θ_t`` (the average follows the params until averaging starts);
* EMA (paper eq. 25): ``a_t = (1 − δ)·a_{t−1} + δ·θ_t`` with ``a_s = θ_s``;
  with ``debias=True`` the accumulator starts from zero at s and is divided by
  ``1 − (1 − δ)^p`` after p points, so θ_s itself is not part of the average;
* SWA (Izmailov et al. 2018; paper eqs. 22-24): the mean of θ_{s+1}, …, θ_t;
* ``every=c`` (EMA, SWA): θ_t enters only when (t − s) is a multiple of c,
  and the average is held in between (SWA's cycle length);
* multi-point (paper A.4), n points ``gap`` apart: a snapshot of θ_t is taken
  whenever t ≥ s and (t − s) is a multiple of ``gap``; the average is the mean
  of the n most recent snapshots (of all of them while fewer than n exist), so
  at t = s + (n − 1)·gap it is the mean of θ_s, θ_{s+gap}, …, θ_t. Between
  snapshot steps the average is held at its value from the latest snapshot
  step. Two-point (paper Sec. 4, A.3) is n = 2: (θ_s + θ_{s+gap})/2.

Every method is one update ``a ← (1 − w_t)·a + w_t·θ_t`` with a step weight
w_t (1 while following, 0 between points, δ for EMA, 1/p for SWA,
δ / (1 − (1 − δ)^p) for debiased EMA) except multi-point, which keeps its
window explicitly. The lerp form is exact at w = 0 and w = 1, so a held
average and a following average are bit-exact copies.

The arithmetic lives in :class:`Averager` (pure ``init``/``update`` on any
pytree, e.g. Flax ``batch_stats``); :func:`wrap` turns an averager and any
optax optimizer into an optax optimizer whose state carries the average::

    opt = trajax.averaging.ema(optax.sgd(0.1, momentum=0.9), decay=1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    eval_params = trajax.averaging.averaged_params(state)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
# A dtype instance, not the jnp.float32 scalar type: optax.inject_hyperparams
# treats callables (and jnp.float32 is one) as schedules.
_FLOAT32 = jnp.dtype(jnp.float32)

__all__ = [
  "METHODS",
  "AverageState",
  "Averager",
  "AveragingState",
  "averaged_params",
  "ema",
  "ema_averager",
  "make_averager",
  "multi_point",
  "multi_point_averager",
  "swa",
  "swa_averager",
  "two_point",
  "two_point_averager",
  "wrap",
]

METHODS = ("none", "ema", "swa", "two_point", "multi_point")


class AverageState(NamedTuple):
  """State of an :class:`Averager`.

  Attributes:
    count: int32 scalar, t: the number of trees seen by ``update`` since init.
    average: the current average a_t (float leaves in the accumulator dtype;
      non-float leaves are the latest tree's leaves, untouched).
    snapshots: multi-point only: the n − 1 most recent snapshots before the
      newest, newest first (a tuple of trees); ``()`` for the other methods.
  """

  count: jax.Array
  average: PyTree
  snapshots: tuple = ()


class Averager(NamedTuple):
  """Pure averaging arithmetic over a sequence of pytrees θ_0, θ_1, ….

  ``init(θ_0) -> AverageState``; ``update(θ_t, state) -> AverageState`` after
  the t-th step. ``state.average`` is a_t.
  """

  init: Callable[[PyTree], AverageState]
  update: Callable[[PyTree, AverageState], AverageState]


class AveragingState(NamedTuple):
  """State of an averaging optax wrapper: the inner state and the average."""

  inner_state: optax.OptState
  average: AverageState


# ----------------------------------------------------------------------------
# Argument checks: concrete values are checked at construction; traced values
# (optax.inject_hyperparams under jit) cannot be, and are used as they are.


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check(name: str, value, ok: Callable[[Any], bool], allowed: str, *, integer: bool):
  if not _is_concrete(value):
    return
  arr = np.asarray(value)
  if arr.shape != ():
    raise ValueError(f"{name} must be a scalar ({allowed}), got {value!r}")
  if integer and not (isinstance(value, numbers.Integral) or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(f"{name} must be an integer ({allowed}), got {value!r}")
  if not ok(arr.item()):
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_start_step(start_step):
  _check("start_step", start_step, lambda v: v >= 0, "an integer >= 0", integer=True)


def _check_every(every):
  _check("every", every, lambda v: v >= 1, "an integer >= 1", integer=True)


def _check_decay(decay):
  _check("decay", decay, lambda v: 0.0 < v <= 1.0, "a float in (0, 1]", integer=False)


def _check_dtype(accumulator_dtype):
  if not jnp.issubdtype(jnp.dtype(accumulator_dtype), jnp.floating):
    raise TypeError(f"accumulator_dtype must be a floating dtype, got {accumulator_dtype!r}")


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _copy_as(tree: PyTree, dtype) -> PyTree:
  """Copies float leaves into ``dtype`` and non-float leaves as they are.

  Always a copy, never an alias, so donating the params stays safe.
  """

  def leaf(x):
    return jnp.array(x, dtype=dtype if _is_float(x) else None, copy=True)

  return jax.tree.map(leaf, tree)


def _lerp(average: PyTree, tree: PyTree, w: jax.Array) -> PyTree:
  """(1 − w)·a + w·θ for float leaves; non-float leaves follow θ."""

  def leaf(a, x):
    if not _is_float(a):
      return jnp.asarray(x, dtype=a.dtype)
    w_ = w.astype(a.dtype)
    return (1 - w_) * a + w_ * x.astype(a.dtype)

  return jax.tree.map(leaf, average, tree)


def _steps_since_start(count, start_step):
  """k = t − s as int32 (negative or zero while following)."""
  return count - jnp.asarray(start_step, jnp.int32)


def _lerp_averager(weight_fn, *, start_step, every, accumulator_dtype) -> Averager:
  """An averager of the form a ← (1 − w)·a + w·θ with w = weight_fn(points)."""

  def init(tree):
    return AverageState(count=jnp.zeros([], jnp.int32), average=_copy_as(tree, accumulator_dtype))

  def update(tree, state):
    count = state.count + 1
    k = _steps_since_start(count, start_step)
    every_ = jnp.asarray(every, jnp.int32)
    is_point = (k > 0) & (k % every_ == 0)
    points = jnp.maximum(k // every_, 1)
    w = jnp.where(k <= 0, 1.0, jnp.where(is_point, weight_fn(points), 0.0))
    return AverageState(count, _lerp(state.average, tree, w.astype(jnp.float32)))

  return Averager(init, update)


def ema_averager(
  decay, *, start_step=0, every=1, debias=False, accumulator_dtype=_FLOAT32
) -> Averager:
  """EMA a_t = (1 − δ)·a_{t−1} + δ·θ_t past ``start_step`` (paper eq. 25).

  The paper writes the kernel as δ Σ_t θ_t (1 − δ)^{t2−t}; its decay time is
  1/δ steps (e.g. δ = 1/450 for Fig. 9). With ``debias=True`` the p-th point
  has weight δ / (1 − (1 − δ)^p), which is the recursion satisfied by
  optax-style debiasing (zero-initialised accumulator divided by
  1 − (1 − δ)^p).
  """
  _check_decay(decay)
  _check_start_step(start_step)
  _check_every(every)
  _check_dtype(accumulator_dtype)
  if _is_concrete(debias) and np.asarray(debias).dtype != np.bool_:
    raise TypeError(f"debias must be a bool, got {debias!r}")

  def weight(points):
    d = jnp.asarray(decay, jnp.float32)
    # jnp.where, not `if`: inject_hyperparams may pass debias as an array.
    return jnp.where(debias, d / (1 - (1 - d) ** points.astype(jnp.float32)), d)

  return _lerp_averager(
    weight, start_step=start_step, every=every, accumulator_dtype=accumulator_dtype
  )


def swa_averager(*, start_step=0, every=1, accumulator_dtype=_FLOAT32) -> Averager:
  """SWA: the running mean of θ_{s+c}, θ_{s+2c}, …, θ_t (paper eq. 22).

  Equals ``torch.optim.swa_utils.AveragedModel`` updated after every c-th
  step past s: the p-th point has weight 1/p.
  """
  _check_start_step(start_step)
  _check_every(every)
  _check_dtype(accumulator_dtype)
  return _lerp_averager(
    lambda points: 1.0 / points.astype(jnp.float32),
    start_step=start_step,
    every=every,
    accumulator_dtype=accumulator_dtype,
  )


def _static_n(n) -> int:
  try:
    n_ = int(n)
  except jax.errors.ConcretizationTypeError:
    raise TypeError(
      "n sets the number of stored snapshots and must be a concrete int; with "
      "optax.inject_hyperparams pass static_args=('n',)"
    ) from None
  if n_ != n or n_ < 1:
    raise ValueError(f"n must be an integer >= 1, got {n!r}")
  return n_


def multi_point_averager(*, n, gap, start_step=0) -> Averager:
  """Mean of the n most recent snapshots taken every ``gap`` steps (paper A.4).

  Snapshots are θ_t for t ≥ s with (t − s) % gap == 0 (θ_s included). At a
  snapshot step with p snapshots so far the average is the mean of the
  min(p, n) newest ones; between snapshot steps it is held. Memory: n − 1
  snapshot trees plus the average (float32 for float leaves).
  """
  n = _static_n(n)
  _check("gap", gap, lambda v: v >= 1, "an integer >= 1", integer=True)
  _check_start_step(start_step)

  def init(tree):
    average = _copy_as(tree, jnp.float32)
    # Snapshot slots start as copies of θ_0 (so they carry its sharding); they
    # get zero weight until filled.
    snapshots = tuple(_copy_as(tree, jnp.float32) for _ in range(n - 1))
    return AverageState(jnp.zeros([], jnp.int32), average, snapshots)

  def update(tree, state):
    count = state.count + 1
    k = _steps_since_start(count, start_step)
    gap_ = jnp.asarray(gap, jnp.int32)
    is_snapshot = (k >= 0) & (k % gap_ == 0)
    held = state.snapshots
    # Number of snapshots stored before this one (all are ≤ n − 1 = len(held)).
    stored = jnp.clip(k // gap_, 0, len(held))
    inv_m = 1.0 / (stored + 1).astype(jnp.float32)

    def take_snapshot(_):
      def mean(x, *olds):
        if not _is_float(x):
          return jnp.asarray(x)
        acc = x.astype(jnp.float32)
        for i, old in enumerate(olds):
          acc = acc + jnp.where(i < stored, old, 0.0)
        return acc * inv_m

      average = jax.tree.map(mean, tree, *held)
      new_held = ((_copy_as(tree, jnp.float32),) + held[:-1]) if held else ()
      return average, new_held

    def follow(_):
      return _copy_as(tree, jnp.float32), held

    def hold(_):
      average = jax.tree.map(
        lambda a, x: a if _is_float(a) else jnp.asarray(x), state.average, tree
      )
      return average, held

    branch = jnp.where(k < 0, 0, jnp.where(is_snapshot, 1, 2))
    average, new_held = jax.lax.switch(branch, (follow, take_snapshot, hold), None)
    return AverageState(count, average, new_held)

  return Averager(init, update)


def two_point_averager(*, gap, start_step=0) -> Averager:
  """(θ_s + θ_{s+gap})/2 at t = s + gap, then (θ_{t−gap} + θ_t)/2 each gap."""
  return multi_point_averager(n=2, gap=gap, start_step=start_step)


def _identity_averager() -> Averager:
  """'none': the average is the params themselves (no extra memory)."""

  def init(tree):
    return AverageState(jnp.zeros([], jnp.int32), None)

  def update(tree, state):
    return AverageState(state.count + 1, None)

  return Averager(init, update)


def make_averager(method: str, **params) -> Averager:
  """The averager for ``method`` in :data:`METHODS` with its parameters."""
  factories = {
    "none": _identity_averager,
    "ema": ema_averager,
    "swa": swa_averager,
    "two_point": two_point_averager,
    "multi_point": multi_point_averager,
  }
  if method not in factories:
    raise ValueError(f"averaging method must be one of {METHODS}, got {method!r}")
  try:
    return factories[method](**params)
  except TypeError as e:
    if "unexpected keyword" in str(e) or "missing" in str(e):
      raise TypeError(f"averaging method {method!r}: {e}") from None
    raise


# ----------------------------------------------------------------------------
# optax wrappers


def wrap(inner: optax.GradientTransformation, averager: Averager):
  """Runs ``inner`` unchanged and keeps ``averager``'s average of the params.

  The wrapper needs ``params`` in ``update`` (it computes θ_t itself with
  ``optax.apply_updates``). Nested in ``optax.MultiSteps`` it sees one
  update per real step; inside ``optax.apply_if_finite`` a skipped step
  leaves the average where it was.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return AveragingState(inner.init(params), averager.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("trajax.averaging wrappers need params: call update(updates, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    new_params = optax.apply_updates(params, updates)
    return updates, AveragingState(inner_state, averager.update(new_params, state.average))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema(inner, decay, *, start_step=0, every=1, debias=False, accumulator_dtype=_FLOAT32):
  """``inner`` plus an EMA of its params (see :func:`ema_averager`)."""
  return wrap(
    inner,
    ema_averager(
      decay,
      start_step=start_step,
      every=every,
      debias=debias,
      accumulator_dtype=accumulator_dtype,
    ),
  )


def swa(inner, *, start_step=0, every=1, accumulator_dtype=_FLOAT32):
  """``inner`` plus SWA of its params (see :func:`swa_averager`)."""
  return wrap(
    inner,
    swa_averager(start_step=start_step, every=every, accumulator_dtype=accumulator_dtype),
  )


def two_point(inner, *, gap, start_step=0):
  """``inner`` plus the two-point average ``gap`` steps apart (paper Sec. 4)."""
  return wrap(inner, two_point_averager(gap=gap, start_step=start_step))


def multi_point(inner, *, n, gap, start_step=0):
  """``inner`` plus the n-point average, points ``gap`` apart (paper A.4)."""
  return wrap(inner, multi_point_averager(n=n, gap=gap, start_step=start_step))


def _find_states(tree) -> list[AveragingState]:
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, AveragingState))
  return [x for x in leaves if isinstance(x, AveragingState)]


def averaged_params(opt_state, params: PyTree | None = None) -> PyTree:
  """The averaged params held in ``opt_state``, wherever the wrapper is nested.

  Float leaves come in the accumulator dtype (float32 by default). For the
  'none' method (``make_averager('none')``) pass ``params``: they are returned.
  """
  states = _find_states(opt_state)
  if not states:
    raise ValueError(
      "no trajax averaging state in opt_state: wrap the optimizer with "
      "trajax.averaging.ema/swa/two_point/multi_point"
    )
  if len(states) > 1:
    raise ValueError(
      f"opt_state holds {len(states)} trajax averaging states; nest one wrapper only"
    )
  average = states[0].average.average
  if average is None:
    if params is None:
      raise ValueError("the 'none' averaging method keeps no copy: pass params=")
    return params
  return average
