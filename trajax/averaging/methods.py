"""The averaging methods: their arithmetic, their one definition each, their kernel.

See :mod:`trajax.averaging` for the definitions of the averages. This module
holds the pure :class:`Averager` of each method, the registry
:data:`METHODS` of :class:`Method` records (parameters, averager factory,
windows, closed-form fast paths), and what derives from a record alone:
:func:`make_averager`, :func:`validate_params`, :func:`method_params` and the
kernel :func:`kernel`.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trajax import kernels

PyTree = Any
# A dtype instance, not the jnp.float32 scalar type: optax.inject_hyperparams
# treats callables (and jnp.float32 is one) as schedules.
_FLOAT32 = jnp.dtype(jnp.float32)
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


class Averager(NamedTuple):
  """Pure averaging arithmetic over a sequence of pytrees θ_0, θ_1, ….

  ``init(θ_0) -> AverageState``; ``update(θ_t, state) -> AverageState`` after
  the t-th step. ``state.average`` is a_t. An averager is linear in θ (every
  float leaf of the new state is a fixed combination of θ_t and the old
  state's float leaves, with scalar weights that depend on the count only):
  the kernel, the equivalent schedule and the theory rely on it.
  """

  init: Callable[[PyTree], AverageState]
  update: Callable[[PyTree, AverageState], AverageState]


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
  """

  name: str
  kind: str
  allowed: str
  ok: Callable[[Any], bool] | None = None
  default: Any = _REQUIRED
  static: bool = False
  steps: bool = False

  @property
  def required(self) -> bool:
    return self.default is _REQUIRED


START_STEP = Param("start_step", "int", "an integer >= 0", lambda v: v >= 0, default=0)
EVERY = Param("every", "int", "an integer >= 1", lambda v: v >= 1, default=1, steps=True)
DECAY = Param("decay", "float", "a float in (0, 1]", lambda v: 0 < v <= 1)
DEBIAS = Param("debias", "bool", "True or False", default=False)
GAP = Param("gap", "int", "an integer >= 1", lambda v: v >= 1, steps=True)
N = Param("n", "int", "an integer >= 1", lambda v: v >= 1, static=True)
ACCUMULATOR_DTYPE = Param(
  "accumulator_dtype", "dtype", "a floating dtype", default=_FLOAT32, static=True
)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _kind_ok(kind: str, value) -> bool:
  if kind == "dtype":
    try:
      return bool(jnp.issubdtype(jnp.dtype(value), jnp.floating))
    except TypeError:
      return False
  if not _is_concrete(value):
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
  if p.static and not _is_concrete(value):
    return (
      f"sets array shapes or dtypes and must be concrete ({p.allowed}); with "
      f"optax.inject_hyperparams pass static_args=({p.name!r},)"
    )
  if not _kind_ok(p.kind, value):
    return f"must be {p.allowed}"
  if p.ok is not None and _is_concrete(value) and not p.ok(np.asarray(value).item()):
    return f"must be {p.allowed}"
  return None


# ----------------------------------------------------------------------------
# The arithmetic.


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _weight_dtype(accumulator_dtype):
  """Step weights in float32, or float64 for a float64 accumulator."""
  return jnp.promote_types(jnp.dtype(accumulator_dtype), jnp.float32)


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


def _lerp_averager(weight_fn, *, start_step, every, accumulator_dtype) -> Averager:
  """a ← (1 − w)·a + w·θ with w = weight_fn(p) at the p-th point, 1 while following."""
  wdt = _weight_dtype(accumulator_dtype)

  def init(tree):
    return AverageState(count=jnp.zeros([], jnp.int32), average=_copy_as(tree, accumulator_dtype))

  def update(tree, state):
    count = state.count + 1
    k = count - jnp.asarray(start_step, jnp.int32)  # k = t − s
    every_ = jnp.asarray(every, jnp.int32)
    is_point = (k > 0) & (k % every_ == 0)
    points = jnp.maximum(k // every_, 1).astype(wdt)
    w = jnp.where(k <= 0, 1.0, jnp.where(is_point, weight_fn(points, wdt), 0.0))
    return AverageState(count, _lerp(state.average, tree, w.astype(wdt)))

  return Averager(init, update)


def ema_averager(
  decay, *, start_step=0, every=1, debias=False, accumulator_dtype=_FLOAT32
) -> Averager:
  """EMA a_t = (1 − δ)·a_{t−1} + δ·θ_t past ``start_step`` (paper eq. 25).

  The paper writes the kernel as δ Σ_t θ_t (1 − δ)^{t2−t}; its decay time is
  1/δ steps (e.g. δ = 1/450 for Fig. 9). With ``debias=True`` the p-th point
  has weight δ / (1 − (1 − δ)^p), which is the recursion satisfied by
  optax-style debiasing (zero-initialised accumulator divided by
  1 − (1 − δ)^p); 1 − (1 − δ)^p is computed as −expm1(p·log1p(−δ)).
  """
  check_params(
    "ema",
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


def swa_averager(*, start_step=0, every=1, accumulator_dtype=_FLOAT32) -> Averager:
  """SWA: the running mean of θ_{s+c}, θ_{s+2c}, …, θ_t (paper eq. 22).

  Equals ``torch.optim.swa_utils.AveragedModel`` updated after every c-th
  step past s: the p-th point has weight 1/p.
  """
  check_params("swa", dict(start_step=start_step, every=every, accumulator_dtype=accumulator_dtype))
  return _lerp_averager(
    lambda points, dtype: 1.0 / points,
    start_step=start_step,
    every=every,
    accumulator_dtype=accumulator_dtype,
  )


def multi_point_averager(*, n, gap, start_step=0, accumulator_dtype=_FLOAT32) -> Averager:
  """Mean of the n most recent snapshots taken every ``gap`` steps (paper A.4).

  Snapshots are θ_t for t ≥ s with (t − s) % gap == 0 (θ_s included). At a
  snapshot step with p snapshots so far the average is the mean of the
  min(p, n) newest ones; between snapshot steps it is held. Memory: n − 1
  snapshot trees plus the average (float leaves in ``accumulator_dtype``).
  """
  check_params(
    "multi_point",
    dict(n=n, gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype),
  )
  n = int(n)
  dtype = jnp.dtype(accumulator_dtype)
  wdt = _weight_dtype(dtype)

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

    def take_snapshot(_):
      def mean(x, *olds):
        if not _is_float(x):
          return jnp.asarray(x)
        acc = x.astype(dtype)
        for i, old in enumerate(olds):
          acc = acc + jnp.where(i < stored, old, jnp.zeros((), dtype))
        return acc * inv_m.astype(dtype)

      average = jax.tree.map(mean, tree, *held)
      new_held = ((_copy_as(tree, dtype),) + held[:-1]) if held else ()
      return average, new_held

    def follow(_):
      return _copy_as(tree, dtype), held

    def hold(_):
      average = jax.tree.map(
        lambda a, x: a if _is_float(a) else jnp.asarray(x), state.average, tree
      )
      return average, held

    branch = jnp.where(k < 0, 0, jnp.where((k >= 0) & (k % gap_ == 0), 1, 2))
    average, new_held = jax.lax.switch(branch, (follow, take_snapshot, hold), None)
    return AverageState(count, average, new_held)

  return Averager(init, update)


def two_point_averager(*, gap, start_step=0, accumulator_dtype=_FLOAT32) -> Averager:
  """(θ_s + θ_{s+gap})/2 at t = s + gap, then (θ_{t−gap} + θ_t)/2 each gap."""
  check_params("two_point", dict(gap=gap, start_step=start_step))
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


# ----------------------------------------------------------------------------
# The registry.


class Method(NamedTuple):
  """One averaging method, defined once.

  Attributes:
    name: the registry key and ``averaging.method`` config value.
    params: its parameters, in the order of the factory's keywords.
    averager: factory ``averager(**params) -> Averager``; it must be linear in
      θ (see :class:`Averager`) and, to give float64 kernels, take
      ``accumulator_dtype``.
    default_window: ``params -> int | None``: the window an equivalent
      side-trip covers by default (None: the caller must give one).
    memory: ``params -> int | None``: the window after which the kernel on
      lags no longer changes (to 1e-12): the stationary kernel's support
      (None: never, e.g. SWA's running mean; give a window).
    step_weights: optional closed form ``(window, params) -> w | None`` of
      the step weights (:mod:`trajax.kernels`); None where it does not apply.
    bracket: optional closed form ``(gamma, params, window) -> | None`` of
      the stationary bracket of eq. 19 (window None: ``memory``).
    match: optional ``(kernel, atol) -> params | None`` proposing parameters
      from a kernel, for :func:`trajax.schedules.matching_averaging` (the
      proposal is accepted only if the derived kernel agrees).
  """

  name: str
  params: tuple[Param, ...]
  averager: Callable[..., Averager]
  default_window: Callable[[dict], int | None] = lambda p: None
  memory: Callable[[dict], int | None] = lambda p: None
  step_weights: Callable[[int, dict], np.ndarray | None] | None = None
  bracket: Callable[..., np.ndarray | None] | None = None
  match: Callable[[np.ndarray, float], dict | None] | None = None

  def param(self, name: str) -> Param | None:
    return next((p for p in self.params if p.name == name), None)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds ``method`` to :data:`METHODS` (replacing one of the same name)."""
  if not isinstance(method, Method):
    raise TypeError(f"register needs a trajax.averaging.Method, got {method!r}")
  METHODS[method.name] = method
  return method


def get_method(method: str) -> Method:
  """The registered :class:`Method` named ``method``."""
  if not isinstance(method, str) or method not in METHODS:
    raise ValueError(f"averaging method must be one of {list(METHODS)}, got {method!r}")
  return METHODS[method]


def check_params(method: str, params: Mapping[str, Any]) -> dict:
  """``params`` with defaults filled in, checked against ``method``'s record.

  A value of None means "not given" (the default). Raises ValueError or
  TypeError naming the first bad parameter, its value and what is allowed.
  """
  m = get_method(method)
  names = [p.name for p in m.params]
  for name, value in params.items():
    if name not in names and value is not None:
      raise TypeError(
        f"averaging method {method!r}: {name}={value!r} is not one of its parameters "
        f"({', '.join(names) or 'it takes none'})"
      )
  out = {}
  for p in m.params:
    value = params.get(p.name)
    if value is None:
      if p.required:
        raise ValueError(f"averaging method {method!r} needs {p.name} ({p.allowed})")
      out[p.name] = p.default
      continue
    error = param_error(p, value)
    if error is not None:
      bad_kind = not _kind_ok(p.kind, value) or (p.static and not _is_concrete(value))
      raise (TypeError if bad_kind else ValueError)(f"{p.name} {error}, got {value!r}")
    out[p.name] = value
  return out


def make_averager(method: str, **params) -> Averager:
  """The :class:`Averager` of registered ``method`` with ``params``."""
  m = get_method(method)
  given = check_params(method, params)
  return m.averager(**given)


def method_params(method: str, section: Mapping) -> dict:
  """The parameters ``method`` takes, picked from a flat config section.

  ``section`` is the ``averaging`` config (a dict or ConfigDict) holding the
  parameters of every method; fields the method does not take, or set to
  None, are left out. The result feeds :func:`make_averager` and
  :func:`trajax.schedules.equivalent_schedule` alike.
  """
  m = get_method(method)
  out = {}
  for p in m.params:
    try:
      value = section[p.name]
    except (KeyError, AttributeError):
      continue
    if value is not None:
      out[p.name] = value
  return out


def validate_params(
  method: str,
  params: Mapping[str, Any],
  *,
  total_steps: int | None = None,
  prefix: str = "averaging.",
) -> list[str]:
  """Human error messages for ``method`` with ``params`` (empty: all good).

  Each names the dotted field (``prefix`` + name), its value and what is
  allowed. Keys ``method`` does not take are ignored (the config holds every
  method's parameters in one flat section). With ``total_steps``, the same
  rules hold for every method: ``start_step < total_steps``, and step
  counts (``every``, ``gap``) at most ``total_steps``.
  """
  if not isinstance(method, str) or method not in METHODS:
    return [f"{prefix}method = {method!r}: must be one of {list(METHODS)}"]
  errors = []
  for p in METHODS[method].params:
    value = params.get(p.name)
    field = f"{prefix}{p.name}"
    if value is None:
      if p.required:
        errors.append(f"{field} = None: averaging method {method!r} needs it ({p.allowed})")
      continue
    error = param_error(p, value)
    if error is not None:
      errors.append(f"{field} = {value!r}: {error}")
    elif total_steps is not None and p.kind == "int":
      if p.name == "start_step" and value >= total_steps:
        errors.append(f"{field} = {value!r}: must be < total_steps={total_steps}")
      elif p.steps and value > total_steps:
        errors.append(f"{field} = {value!r}: must be <= total_steps={total_steps}")
  return errors


# ----------------------------------------------------------------------------
# The kernel, derived from the averager.


def _check_window(window, name: str = "window", minimum: int = 1) -> int:
  if (
    isinstance(window, bool)
    or not isinstance(window, (numbers.Integral, np.integer))
    or window < minimum
  ):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {window!r}")
  return int(window)


def _hashable(params: dict) -> tuple:
  return tuple(sorted((k, str(v) if k == "accumulator_dtype" else v) for k, v in params.items()))


def kernel(method: str, *, window: int, **params) -> np.ndarray:
  """c_i, i = 0 … window: the weight of θ_i in a_window, derived (float64).

  The average after ``window`` updates of ``make_averager(method, **params)``
  (``start_step`` as given, default 0) is a_k = Σ_i c_i θ_i. Because the
  averager is linear, c = ∂a_k/∂θ: the averager itself is run on a scalar
  trajectory and differentiated (reverse mode: the transpose of running it
  on the one-hot trajectories θ_i = e_i, at O(k) cost), in float64. For an
  average, c ≥ 0 and Σ c = 1.
  """
  window = _check_window(window)
  given = check_params(method, params)
  for name, value in given.items():
    if not _is_concrete(value):
      raise TypeError(f"kernel: {name} must be concrete, got a traced value")
  given.pop("accumulator_dtype", None)
  try:
    key = _hashable(given)
    hash(key)
  except TypeError:
    return _derive(method, window, tuple(given.items())).copy()
  return _derive_cached(method, window, key).copy()


def _derive(method: str, window: int, items: tuple) -> np.ndarray:
  m = METHODS[method]
  params = dict(items)
  if m.param("accumulator_dtype") is not None:
    params["accumulator_dtype"] = jnp.dtype(np.float64)
  with jax.enable_x64(True):
    averager = m.averager(**params)

    def final(thetas):
      state = averager.init(thetas[0])
      state, _ = jax.lax.scan(lambda s, th: (averager.update(th, s), None), state, thetas[1:])
      return thetas[-1] if state.average is None else state.average

    c = jax.jit(jax.grad(final))(jnp.zeros(window + 1, jnp.float64))
    return np.asarray(c, np.float64)


@functools.lru_cache(maxsize=256)
def _derive_cached(method: str, window: int, key: tuple) -> np.ndarray:
  items = tuple((k, v) for k, v in key)
  return _derive(method, window, items)


def step_weights_table(method: str, *, window: int, **params) -> np.ndarray:
  """w_j = Σ_{i>j} c_i, j = 0 … window−1 (float64): the closed form where one
  is registered and applies, else from the derived :func:`kernel`."""
  window = _check_window(window)
  m = get_method(method)
  given = check_params(method, params)
  if m.step_weights is not None:
    fast = m.step_weights(window, given)
    if fast is not None:
      return np.asarray(fast, np.float64)
  c = kernel(method, window=window, **params)
  if abs(c.sum() - 1.0) > 1e-9:
    raise ValueError(
      f"averaging method {method!r}: its kernel sums to {c.sum():.12g}, not 1, so it is "
      "not an average of the trajectory and has no equivalent step weights"
    )
  return np.cumsum(c[::-1])[::-1][1:]


def _ema_memory(p: dict) -> int:
  decay = float(p["decay"])
  points = 1 if decay == 1 else math.ceil(math.log(1e-12) / math.log1p(-decay))
  return int(p.get("every", 1)) * max(points, 1)


def _support(c: np.ndarray, atol: float) -> np.ndarray:
  return np.flatnonzero(np.abs(c) > atol)


def _match_swa(c, atol):
  return {} if abs(c[0]) <= atol and np.all(np.abs(c[1:] - c[-1]) <= atol) else None


def _match_points(c, atol):
  s = _support(c, atol)
  if s.size < 2 or s[0] != 0 or s[-1] != c.size - 1 or np.any(np.diff(s) != s[1] - s[0]):
    return None
  return {"n": int(s.size), "gap": int(s[1] - s[0])}


def _match_two_point(c, atol):
  p = _match_points(c, atol)
  return {"gap": p["gap"]} if p is not None and p["n"] == 2 else None


def _match_ema(c, atol):
  return {"decay": float(c[-1])} if 0 < c[-1] <= 1 else None


register(Method("none", (), identity_averager))
register(
  Method(
    "ema",
    (DECAY, START_STEP, EVERY, DEBIAS, ACCUMULATOR_DTYPE),
    ema_averager,
    memory=_ema_memory,
    step_weights=kernels.ema_step_weights,
    bracket=kernels.ema_bracket,
    match=_match_ema,
  )
)
register(
  Method(
    "swa",
    (START_STEP, EVERY, ACCUMULATOR_DTYPE),
    swa_averager,
    step_weights=kernels.swa_step_weights,
    bracket=kernels.swa_bracket,
    match=_match_swa,
  )
)
register(
  Method(
    "two_point",
    (GAP, START_STEP, ACCUMULATOR_DTYPE),
    two_point_averager,
    default_window=lambda p: int(p["gap"]),
    memory=lambda p: int(p["gap"]),
    step_weights=kernels.multi_point_step_weights,
    bracket=kernels.two_point_bracket,
    match=_match_two_point,
  )
)
register(
  Method(
    "multi_point",
    (N, GAP, START_STEP, ACCUMULATOR_DTYPE),
    multi_point_averager,
    default_window=lambda p: (int(p["n"]) - 1) * int(p["gap"]),
    memory=lambda p: (int(p["n"]) - 1) * int(p["gap"]),
    step_weights=kernels.multi_point_step_weights,
    bracket=kernels.multi_point_bracket,
    match=_match_points,
  )
)
