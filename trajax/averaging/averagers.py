"""The arithmetic of the averaging methods: pure averagers and their parameters.

See :mod:`trajax.averaging` for the definitions of the averages. Each
factory checks its arguments against its parameter spec (the same tuple its
:class:`trajax.averaging.Method` record holds), then closes over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
# A dtype instance, not the jnp.float32 scalar type: optax.inject_hyperparams
# treats callables (and jnp.float32 is one) as schedules.
FLOAT32 = jnp.dtype(jnp.float32)
_REQUIRED = object()


class AverageState(NamedTuple):
  """State of an :class:`Averager`.

  Attributes:
    count: int32 scalar, t: the number of trees seen by ``update`` since init.
    average: the current average a_t (float leaves in the accumulator dtype;
      non-float leaves are the latest tree's leaves, untouched); None for 'none'.
    snapshots: multi-point only: the n − 1 most recent snapshots before the
      newest, newest first (a tuple of trees); ``()`` for the other methods.
  """

  count: jax.Array
  average: PyTree
  snapshots: tuple = ()


class Points(NamedTuple):
  """Multi-point's snapshot schedule, for the optax wrapper's ring buffer.

  Attributes:
    n: the number of points averaged.
    schedule: ``count -> (follow, snap, taken)`` for the state after the
      count-th update: whether the average still follows θ_t (t < s), whether
      θ_t is a snapshot, and how many snapshots steps ≤ t have taken.
  """

  n: int
  schedule: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


class Averager(NamedTuple):
  """Pure averaging arithmetic over a sequence of pytrees θ_0, θ_1, ….

  ``init(θ_0) -> AverageState``; ``update(θ_t, state) -> AverageState`` after
  the t-th step. ``state.average`` is a_t. An averager is linear in θ (every
  float leaf of the new state is a fixed combination of θ_t and the old
  state's float leaves, with scalar weights that depend on the count only):
  the kernel, the equivalent schedule and the theory rely on it.

  Optional structure the optax wrapper uses (``trajax.averaging.wrappers``;
  without it the wrapper keeps the averager's state one step behind):

  * ``weight``: lerp form, ``a_t = a_{t−1} + w_t·(θ_t − a_{t−1})`` with
    ``w_t = weight(t)`` (float32, or float64 with a float64 accumulator);
  * ``points``: multi-point's :class:`Points` schedule.
  """

  init: Callable[[PyTree], AverageState]
  update: Callable[[PyTree, AverageState], AverageState]
  weight: Callable[[jax.Array], jax.Array] | None = None
  points: Points | None = None


# ----------------------------------------------------------------------------
# Parameters: one record per parameter, shared by the methods that take it.


class Param(NamedTuple):
  """One parameter of an averaging method.

  Attributes:
    name: the keyword, as the averager factory, the wrappers, the schedules
      and the ``averaging`` config section spell it.
    kind: 'int', 'float', 'bool' or 'dtype'.
    allowed: what is allowed, in words ("an integer >= 1").
    ok: range check on a concrete value of the right kind (None: any).
    default: the default, or required when absent.
    static: fixes array shapes or dtypes, so it must be concrete even under
      ``optax.inject_hyperparams`` (pass it in ``static_args``).
    steps: a number of steps, so a config refuses it above ``total_steps``.
    example: the value the flat ``averaging`` config section shows for a
      required parameter (its field must have a neutral value); None: the
      field is a typed placeholder (None until set).
  """

  name: str
  kind: str
  allowed: str
  ok: Callable[[Any], bool] | None = None
  default: Any = _REQUIRED
  static: bool = False
  steps: bool = False
  example: Any = None

  @property
  def required(self) -> bool:
    return self.default is _REQUIRED


START_STEP = Param("start_step", "int", "an integer >= 0", lambda v: v >= 0, default=0)
EVERY = Param("every", "int", "an integer >= 1", lambda v: v >= 1, default=1, steps=True)
DECAY = Param("decay", "float", "a float in (0, 1]", lambda v: 0 < v <= 1, example=0.001)
DEBIAS = Param("debias", "bool", "True or False", default=False)
GAP = Param("gap", "int", "an integer >= 1", lambda v: v >= 1, steps=True, example=1000)
N = Param("n", "int", "an integer >= 1", lambda v: v >= 1, static=True, example=2)
# The example: σ_rel ≈ 0.10 (Karras et al. 2024), :func:`power_ema_gamma`.
GAMMA = Param("gamma", "float", "a float > 0", lambda v: v > 0, example=6.94)
ACCUMULATOR_DTYPE = Param(
  "accumulator_dtype", "dtype", "a floating dtype", default=FLOAT32, static=True
)


def is_concrete(x) -> bool:
  """Not a tracer: a value known at trace time."""
  return not isinstance(x, jax.core.Tracer)


def _kind_ok(kind: str, value) -> bool:
  if kind == "dtype":
    try:
      return bool(jnp.issubdtype(jnp.dtype(value), jnp.floating))
    except TypeError:
      return False
  if not is_concrete(value):
    want = {"int": jnp.integer, "float": jnp.floating, "bool": jnp.bool_}[kind]
    ok = jnp.issubdtype(value.dtype, want) or (kind == "float" and value.dtype.kind in "iu")
    return ok and value.shape == ()
  arr = np.asarray(value)
  if arr.shape != () or isinstance(value, str):
    return False
  if kind == "bool":
    return arr.dtype == np.bool_
  if kind == "int":
    return arr.dtype != np.bool_ and np.issubdtype(arr.dtype, np.integer)
  return arr.dtype != np.bool_ and np.issubdtype(arr.dtype, np.number) and math.isfinite(arr)


def param_error(p: Param, value) -> str | None:
  """What is wrong with ``value`` for parameter ``p`` (None: nothing).

  A traced value passes the range check unchecked (it cannot be read), but
  a static parameter must be concrete.
  """
  if p.static and not is_concrete(value):
    return (
      f"sets array shapes or dtypes and must be concrete ({p.allowed}); with "
      f"optax.inject_hyperparams pass static_args=({p.name!r},)"
    )
  if not _kind_ok(p.kind, value):
    return f"must be {p.allowed}"
  if p.ok is not None and is_concrete(value) and not p.ok(np.asarray(value).item()):
    return f"must be {p.allowed}"
  return None


def check_spec(method: str, spec: tuple[Param, ...], params: Mapping[str, Any]) -> dict:
  """``params`` with defaults filled in, checked against the parameter ``spec``
  of ``method``.

  A value of None means "not given" (the default). Raises ValueError or
  TypeError naming the first bad parameter, its value and what is allowed.
  """
  names = [p.name for p in spec]
  for name, value in params.items():
    if name not in names and value is not None:
      raise TypeError(
        f"averaging method {method!r}: {name}={value!r} is not one of its parameters "
        f"({', '.join(names) or 'it takes none'})"
      )
  out = {}
  for p in spec:
    value = params.get(p.name)
    if value is None:
      if p.required:
        raise ValueError(f"averaging method {method!r} needs {p.name} ({p.allowed})")
      out[p.name] = p.default
      continue
    error = param_error(p, value)
    if error is not None:
      bad_kind = not _kind_ok(p.kind, value) or (p.static and not is_concrete(value))
      raise (TypeError if bad_kind else ValueError)(f"{p.name} {error}, got {value!r}")
    out[p.name] = value
  return out


EMA_PARAMS = (DECAY, START_STEP, EVERY, DEBIAS, ACCUMULATOR_DTYPE)
SWA_PARAMS = (START_STEP, EVERY, ACCUMULATOR_DTYPE)
TWO_POINT_PARAMS = (GAP, START_STEP, ACCUMULATOR_DTYPE)
MULTI_POINT_PARAMS = (N, GAP, START_STEP, ACCUMULATOR_DTYPE)
POWER_EMA_PARAMS = (GAMMA, START_STEP, EVERY, ACCUMULATOR_DTYPE)


# ----------------------------------------------------------------------------
# The arithmetic.


def is_float(x) -> bool:
  """A floating-point array or scalar."""
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _weight_dtype(accumulator_dtype):
  """Step weights in float32, or float64 for a float64 accumulator."""
  return jnp.promote_types(jnp.dtype(accumulator_dtype), jnp.float32)


def _copy_as(tree: PyTree, dtype) -> PyTree:
  """Copies float leaves into ``dtype`` and non-float leaves as they are.

  Always a copy, never an alias, so donating the params stays safe.
  """

  def leaf(x):
    return jnp.array(x, dtype=dtype if is_float(x) else None, copy=True)

  return jax.tree.map(leaf, tree)


def lerp(a, x, w):
  """a + w·(x − a), exact at w = 0 and w = 1 (float leaves, one array each).

  The form in which the two weights sum to one in floating point: the old
  ``(1 − w)·a + w·x`` rounds 1 − w, so for w = 1e-4 its weights sum to
  1 ± 3e-8 and a float32 average drifts by ~ε/w (1.6e-4 after 10^5 steps,
  issue 23); here a constant sequence stays exactly constant. Like torch's
  ``lerp``, w ≥ 1/2 takes x − (1 − w)·(x − a) (1 − w exact there), so w = 1
  gives x exactly.
  """
  d = x - a
  return jnp.where(w < 0.5, a + w * d, x - (1 - w) * d)


def _lerp(average: PyTree, tree: PyTree, w: jax.Array) -> PyTree:
  """:func:`lerp` of float leaves; non-float leaves follow θ."""

  def leaf(a, x):
    if not is_float(a):
      return jnp.asarray(x, dtype=a.dtype)
    return lerp(a, x.astype(a.dtype), w.astype(a.dtype))

  return jax.tree.map(leaf, average, tree)


def _lerp_averager(weight_fn, *, start_step, every, accumulator_dtype) -> Averager:
  """a ← a + w·(θ − a) with w = weight_fn(p) at the p-th point, 1 while following."""
  wdt = _weight_dtype(accumulator_dtype)

  def weight(count):
    k = count - jnp.asarray(start_step, jnp.int32)  # k = t − s
    every_ = jnp.asarray(every, jnp.int32)
    is_point = (k > 0) & (k % every_ == 0)
    points = jnp.maximum(k // every_, 1).astype(wdt)
    w = jnp.where(k <= 0, 1.0, jnp.where(is_point, weight_fn(points, wdt), 0.0))
    return w.astype(wdt)

  def init(tree):
    return AverageState(count=jnp.zeros([], jnp.int32), average=_copy_as(tree, accumulator_dtype))

  def update(tree, state):
    count = state.count + 1
    return AverageState(count, _lerp(state.average, tree, weight(count)))

  return Averager(init, update, weight=weight)


def ema_averager(
  decay, *, start_step=0, every=1, debias=False, accumulator_dtype=FLOAT32
) -> Averager:
  """EMA a_t = (1 − δ)·a_{t−1} + δ·θ_t past ``start_step`` (paper eq. 25).

  The paper writes the kernel as δ Σ_t θ_t (1 − δ)^{t2−t}; its decay time is
  1/δ steps (e.g. δ = 1/450 for Fig. 9). With ``debias=True`` the p-th point
  has weight δ / (1 − (1 − δ)^p), which is the recursion satisfied by
  optax-style debiasing (zero-initialised accumulator divided by
  1 − (1 − δ)^p); 1 − (1 − δ)^p is computed as −expm1(p·log1p(−δ)).
  """
  check_spec(
    "ema",
    EMA_PARAMS,
    dict(
      decay=decay,
      start_step=start_step,
      every=every,
      debias=debias,
      accumulator_dtype=accumulator_dtype,
    ),
  )

  def weight(points, dtype):
    d = jnp.asarray(decay, dtype)
    # jnp.where, not `if`: inject_hyperparams may pass debias as an array.
    return jnp.where(debias, d / -jnp.expm1(points * jnp.log1p(-d)), d)

  return _lerp_averager(
    weight, start_step=start_step, every=every, accumulator_dtype=accumulator_dtype
  )


def power_ema_averager(gamma, *, start_step=0, every=1, accumulator_dtype=FLOAT32) -> Averager:
  """Power-function EMA (Karras et al. 2024, eq. 3): β_p = (1 − 1/p)^{γ+1}.

  The p-th point past ``start_step`` enters with weight 1 − β_p, so the first
  point replaces the average (β_1 = 0) and after k points

      a = Σ_{i=1..k} c_i θ_{s+i·every},   c_i = (i^{γ+1} − (i − 1)^{γ+1}) / k^{γ+1},

  a profile ∝ i^γ (c_i ≈ (γ+1) i^γ / k^{γ+1}) whose relative width does not
  depend on k: σ_rel = √((γ+1) / ((γ+2)²(γ+3))) (:func:`power_ema_sigma_rel`).
  Its step weights are w_j = 1 − (j/k)^{γ+1} (:func:`trajax.kernels.power_ema_step_weights`).
  1 − β_p is computed as −expm1((γ+1)·log1p(−1/p)), which keeps its digits
  for large p.
  """
  check_spec(
    "power_ema",
    POWER_EMA_PARAMS,
    dict(gamma=gamma, start_step=start_step, every=every, accumulator_dtype=accumulator_dtype),
  )

  def weight(points, dtype):
    g = jnp.asarray(gamma, dtype)
    # p = 1: log1p(−1) = −inf and the weight is exactly 1.
    return -jnp.expm1((g + 1) * jnp.log1p(-1.0 / points.astype(dtype)))

  return _lerp_averager(
    weight, start_step=start_step, every=every, accumulator_dtype=accumulator_dtype
  )


def power_ema_sigma_rel(gamma) -> float:
  """Karras et al.'s relative width σ_rel = √((γ+1) / ((γ+2)²(γ+3))) of the profile ∝ t^γ."""
  g = float(gamma)
  return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def power_ema_gamma(sigma_rel) -> float:
  """The γ > 0 whose power-EMA profile has relative width ``sigma_rel`` (inverse of
  :func:`power_ema_sigma_rel`): the real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²) = 0,
  which is (γ+2)²(γ+3)σ² = γ+1 expanded. Needs 0 < σ_rel < σ_rel(0) = √(1/12)."""
  s = float(sigma_rel)
  if not 0 < s < math.sqrt(1 / 12):
    raise ValueError(f"sigma_rel must be in (0, {math.sqrt(1 / 12):.4f}) (gamma > 0), got {s!r}")
  t = s**-2
  roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
  return float(max(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0))


def swa_averager(*, start_step=0, every=1, accumulator_dtype=FLOAT32) -> Averager:
  """SWA: the running mean of θ_{s+c}, θ_{s+2c}, …, θ_t (paper eq. 22).

  Equals ``torch.optim.swa_utils.AveragedModel`` updated after every c-th
  step past s: the p-th point has weight 1/p.
  """
  check_spec(
    "swa", SWA_PARAMS, dict(start_step=start_step, every=every, accumulator_dtype=accumulator_dtype)
  )
  return _lerp_averager(
    lambda points, dtype: 1.0 / points,
    start_step=start_step,
    every=every,
    accumulator_dtype=accumulator_dtype,
  )


def multi_point_averager(*, n, gap, start_step=0, accumulator_dtype=FLOAT32) -> Averager:
  """Mean of the n most recent snapshots taken every ``gap`` steps (paper A.4).

  Snapshots are θ_t for t ≥ s with (t − s) % gap == 0 (θ_s included). At a
  snapshot step with p snapshots so far the average is the mean of the
  min(p, n) newest ones; between snapshot steps it is held. Memory: n − 1
  snapshot trees plus the average (float leaves in ``accumulator_dtype``).

  This pure face keeps its snapshots as a shift register, newest first: its
  ``average`` is formed at every snapshot, which reads them all anyway, and
  the states it writes (``bn_average``) keep their checkpoint layout. The
  optax wrapper, whose update must not grow with n, keeps a ring buffer
  instead and forms the average only where it is read (its ``points``
  schedule, ``trajax.averaging.wrappers``).
  """
  check_spec(
    "multi_point",
    MULTI_POINT_PARAMS,
    dict(n=n, gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype),
  )
  n = int(n)
  dtype = jnp.dtype(accumulator_dtype)
  wdt = _weight_dtype(dtype)

  def schedule(count):
    k = count - jnp.asarray(start_step, jnp.int32)
    gap_ = jnp.asarray(gap, jnp.int32)
    follow = k < 0
    snap = (k >= 0) & (k % gap_ == 0)
    taken = jnp.where(follow, 0, k // gap_ + 1)
    return follow, snap, taken

  def init(tree):
    # Snapshot slots start as copies of θ_0 (so they carry its sharding); they
    # get zero weight until filled.
    snapshots = tuple(_copy_as(tree, dtype) for _ in range(n - 1))
    return AverageState(jnp.zeros([], jnp.int32), _copy_as(tree, dtype), snapshots)

  def update(tree, state):
    count = state.count + 1
    k = count - jnp.asarray(start_step, jnp.int32)
    gap_ = jnp.asarray(gap, jnp.int32)
    held = state.snapshots
    # Number of snapshots stored before this one (all are ≤ n − 1 = len(held)).
    stored = jnp.clip(k // gap_, 0, len(held))
    inv_m = (1.0 / (stored + 1).astype(wdt)).astype(wdt)

    # Selections, not lax.switch: every output is one fused elementwise pass
    # (a switch copies whole trees through the conditional on CPU).
    follow = k < 0
    snap = (k >= 0) & (k % gap_ == 0)

    def average_leaf(a, x, *olds):
      if not is_float(a):
        return jnp.asarray(x, a.dtype)
      x = x.astype(dtype)
      acc = x
      for i, old in enumerate(olds):
        acc = acc + jnp.where(i < stored, old, jnp.zeros((), dtype))
      return jnp.where(follow, x, jnp.where(snap, acc * inv_m.astype(dtype), a))

    average = jax.tree.map(average_leaf, state.average, tree, *held)
    shifted = ((tree,) + held[:-1]) if held else ()
    new_held = tuple(
      jax.tree.map(lambda new, old: jnp.where(snap, jnp.asarray(new, old.dtype), old), s, h)
      for s, h in zip(shifted, held, strict=True)
    )
    return AverageState(count, average, new_held)

  return Averager(init, update, points=Points(n, schedule))


def two_point_averager(*, gap, start_step=0, accumulator_dtype=FLOAT32) -> Averager:
  """(θ_s + θ_{s+gap})/2 at t = s + gap, then (θ_{t−gap} + θ_t)/2 each gap."""
  check_spec("two_point", TWO_POINT_PARAMS, dict(gap=gap, start_step=start_step))
  return multi_point_averager(
    n=2, gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype
  )


def identity_averager() -> Averager:
  """'none': the average is the params themselves (no extra memory)."""

  def init(tree):
    return AverageState(jnp.zeros([], jnp.int32), None)

  def update(tree, state):
    return AverageState(state.count + 1, None)

  return Averager(init, update)
