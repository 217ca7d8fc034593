"""The registry of averaging methods, and what derives from a record alone.

:data:`METHODS` maps each name to its :class:`Method` record (parameters,
averager factory, windows, closed-form fast paths). From a record alone:
:func:`make_averager`, :func:`validate_params`, :func:`method_params`, the
derived :func:`kernel` and the step weights :func:`step_weights_table`.

Why one module of over 500 lines: the :class:`Method` record, the registry and
the five registered methods' definitions are read side by side (each method's
windows and closed forms against the record's contract); split apart, a
reader checking one method would hold three files open.
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
from trajax.averaging.averagers import (
  EMA_PARAMS,
  MULTI_POINT_PARAMS,
  POWER_EMA_PARAMS,
  SWA_PARAMS,
  TWO_POINT_PARAMS,
  Averager,
  Param,
  check_spec,
  ema_averager,
  identity_averager,
  is_concrete,
  multi_point_averager,
  param_error,
  power_ema_averager,
  swa_averager,
  two_point_averager,
)

# ----------------------------------------------------------------------------
# The registry.


class Sweep(NamedTuple):
  """Which parameter a sweep over a method varies, and its default grid.

  Attributes:
    param: a parameter of the method, or ``'window'`` where the window is
      what varies (SWA: the average of the last k steps, for several k).
    kind: 'int' or 'float' (how a grid given as text is read).
    bounds: ``(low, high, count)``: the default grid is ``count`` points
      spaced evenly in log between ``low`` and ``high`` (:attr:`grid`);
      None: no default grid (the caller picks one, e.g. from the run).
  """

  param: str
  kind: str
  bounds: tuple[float, float, int] | None = None

  @property
  def grid(self) -> tuple:
    """The default grid (3 significant digits), or ``()`` without ``bounds``."""
    if self.bounds is None:
      return ()
    low, high, count = self.bounds
    values = np.geomspace(low, high, int(count))
    if self.kind == "int":
      return tuple(sorted({int(round(v)) for v in values}))
    return tuple(sorted({float(f"{v:.3g}") for v in values}))


def _window_free(k: int, base: dict) -> dict:
  """The window is not a parameter: the average covers whatever window it is given."""
  return dict(base)


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
    params_for_window: ``(k, base) -> params``: the inverse of
      ``default_window``: ``base`` (the method's parameters, possibly
      partial) changed to cover a window of k steps, so that
      ``default_window(params_for_window(k, base)) == k`` wherever the method
      has a default window (two_point: gap = k). A method without one (EMA,
      SWA, power EMA) covers any window it is given: its parameters do not
      depend on k and ``base`` comes back as it is. Raises ValueError when
      no parameters give k (multi-point: k must be a multiple of n − 1).
    sweep: the :class:`Sweep` a parameter sweep over the method uses (None:
      not swept, e.g. 'none').
  """

  name: str
  params: tuple[Param, ...]
  averager: Callable[..., Averager]
  default_window: Callable[[dict], int | None] = lambda p: None
  memory: Callable[[dict], int | None] = lambda p: None
  step_weights: Callable[[int, dict], np.ndarray | None] | None = None
  bracket: Callable[..., np.ndarray | None] | None = None
  match: Callable[[np.ndarray, float], dict | None] | None = None
  params_for_window: Callable[[int, dict], dict] = _window_free
  sweep: Sweep | None = None

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
  return check_spec(method, get_method(method).params, params)


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


def params_for_window(method: str, window: int, base: Mapping | None = None) -> dict:
  """The parameters of ``method`` that cover ``window`` steps, from ``base``.

  ``base`` is a mapping of parameters or a flat ``averaging`` config section
  (the method's own fields are picked, :func:`method_params`); the record's
  ``params_for_window`` sets what the window fixes (two_point's gap,
  multi_point's gap for the base's n), and the result is checked
  (:func:`check_params`, defaults filled in, ``accumulator_dtype`` left out).

  Example:

    >>> from trajax import averaging
    >>> averaging.params_for_window("multi_point", 12, {"n": 4, "decay": 0.1})
    {'n': 4, 'gap': 4, 'start_step': 0}
  """
  m = get_method(method)
  window = check_window(window)
  picked = method_params(method, base or {})
  picked.pop("accumulator_dtype", None)
  given = m.params_for_window(window, picked)
  out = check_params(method, given)
  out.pop("accumulator_dtype", None)
  return out


def _multi_point_for_window(k: int, p: dict) -> dict:
  n = p.get("n")
  if n is None:
    raise ValueError(f"multi_point: a window of {k} steps needs n (the number of points)")
  if n < 2 or k % (n - 1):
    raise ValueError(
      f"multi_point with n={n}: a window of {k} steps needs n >= 2 and k divisible by n - 1"
    )
  return {**p, "gap": k // (n - 1)}


def validate_params(
  method: str,
  params: Mapping[str, Any],
  *,
  total_steps: int | None = None,
  prefix: str = "averaging.",
) -> list[str]:
  """Human error messages for ``method`` with ``params`` (empty: all good).

  Each names the dotted field (``prefix`` + name), its value and what is
  allowed. The config holds every method's parameters in one flat section,
  so a key ``method`` does not take is not required, but a value given there
  that *no* registered method accepts (``decay = -5`` beside ``swa``) is an
  error too: it is a typo waiting for the day the method changes. Keys no
  method declares are ignored. With ``total_steps``, the same rules hold for
  every method: ``start_step < total_steps``, and step counts (``every``,
  ``gap``) at most ``total_steps``.
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
  taken = {p.name for p in METHODS[method].params}
  for name in sorted(set(params) - taken, key=str):
    rules = [p for m in METHODS.values() for p in m.params if p.name == name]
    value = params[name]
    if value is None or not rules:
      continue
    problems = [param_error(p, value) for p in rules]
    if all(problems):
      errors.append(
        f"{prefix}{name} = {value!r}: {problems[0]} (unused by averaging method {method!r}, "
        "but no method accepts this value)"
      )
  return errors


# ----------------------------------------------------------------------------
# Profiles: extra in-training averages (``averaging.profiles``).

PROFILES_FIELD = "averaging.profiles"


def validate_profiles(
  profiles, *, total_steps: int | None = None, prefix: str = PROFILES_FIELD
) -> list[str]:
  """Human error messages for a profiles list (empty: all good).

  ``profiles`` is a sequence of mappings ``{'method': name, <param>: value,
  ...}``, each an averager the run keeps beside its params (e.g. two power
  EMAs, ``({'method': 'power_ema', 'gamma': 16.97}, {'method': 'power_ema',
  'gamma': 6.94})``). Each message names ``averaging.profiles[i].<field>``,
  the value and what is allowed; a method's own rules are
  :func:`validate_params`'s.
  """
  if isinstance(profiles, (str, bytes)) or not isinstance(profiles, (tuple, list)):
    return [f"{prefix} = {profiles!r}: must be a tuple of {{'method': ..., <params>}} mappings"]
  errors = []
  methods = [m for m in METHODS if m != "none"]
  for i, entry in enumerate(profiles):
    where = f"{prefix}[{i}]"
    if not isinstance(entry, Mapping):
      errors.append(f"{where} = {entry!r}: must be a mapping {{'method': one of {methods}, ...}}")
      continue
    method = entry.get("method")
    if method not in methods:
      errors.append(f"{where}.method = {method!r}: must be one of {methods}")
      continue
    names = [p.name for p in METHODS[method].params]
    for key in sorted(set(entry) - {"method", *names}, key=str):
      errors.append(
        f"{where}.{key} = {entry[key]!r}: not a parameter of {method!r} "
        f"(its parameters: {', '.join(names) or 'none'})"
      )
    params = {k: v for k, v in entry.items() if k != "method"}
    errors += validate_params(method, params, total_steps=total_steps, prefix=f"{where}.")
  return errors


def make_profiles(profiles) -> tuple[Averager, ...]:
  """One :class:`Averager` per entry of a profiles list (see :func:`validate_profiles`).

  Raises ValueError listing every bad entry.
  """
  errors = validate_profiles(profiles)
  if errors:
    raise ValueError("; ".join(errors))
  out = []
  for entry in profiles:
    params = {k: v for k, v in entry.items() if k != "method"}
    out.append(make_averager(entry["method"], **params))
  return tuple(out)


def profile_params(entry: Mapping) -> tuple[str, dict]:
  """``(method, params)`` of one profiles entry, None values dropped."""
  return entry["method"], {k: v for k, v in entry.items() if k != "method" and v is not None}


# ----------------------------------------------------------------------------
# The kernel, derived from the averager.


def check_window(window, name: str = "window", minimum: int = 1) -> int:
  """``window`` as an int >= ``minimum`` (a bool is refused)."""
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

  Example:

    >>> from trajax import averaging
    >>> print(averaging.kernel("ema", window=3, decay=0.5))  # δ(1 − δ)^(3−i), θ_0 the rest
    [0.125 0.125 0.25  0.5  ]
    >>> print(averaging.kernel("two_point", window=4, gap=2))  # ½ θ_2 + ½ θ_4
    [0.  0.  0.5 0.  0.5]
  """
  window = check_window(window)
  given = check_params(method, params)
  for name, value in given.items():
    if not is_concrete(value):
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
  # Eager even when called while a jit is tracing (the engine builds its
  # side-trip schedule inside the step function): the kernel is a constant.
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
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
  window = check_window(window)
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


def _match_power_ema(c, atol):
  """c_0 = 0 and c_k = 1 − (1 − 1/k)^{γ+1} give γ (the kernel check decides)."""
  k = c.size - 1
  if k < 2 or abs(c[0]) > atol or not 0 < c[-1] < 1:
    return None
  gamma = math.log1p(-c[-1]) / math.log1p(-1.0 / k) - 1
  return {"gamma": float(gamma)} if gamma > 0 else None


# Default sweep grids: 10 per decade of EMA's δ, 4 per octave of power EMA's γ.
EMA_SWEEP = Sweep("decay", "float", (1e-4, 0.1, 31))
POWER_EMA_SWEEP = Sweep("gamma", "float", (1.0, 64.0, 25))

register(Method("none", (), identity_averager))
register(
  Method(
    "ema",
    EMA_PARAMS,
    ema_averager,
    memory=_ema_memory,
    step_weights=kernels.ema_step_weights,
    bracket=kernels.ema_bracket,
    match=_match_ema,
    sweep=EMA_SWEEP,
  )
)
register(
  Method(
    "swa",
    SWA_PARAMS,
    swa_averager,
    step_weights=kernels.swa_step_weights,
    bracket=kernels.swa_bracket,
    match=_match_swa,
    sweep=Sweep("window", "int"),
  )
)
register(
  Method(
    "two_point",
    TWO_POINT_PARAMS,
    two_point_averager,
    default_window=lambda p: int(p["gap"]),
    memory=lambda p: int(p["gap"]),
    step_weights=kernels.multi_point_step_weights,
    bracket=kernels.two_point_bracket,
    match=_match_two_point,
    params_for_window=lambda k, p: {**p, "gap": k},
    sweep=Sweep("gap", "int"),
  )
)
register(
  Method(
    "multi_point",
    MULTI_POINT_PARAMS,
    multi_point_averager,
    default_window=lambda p: (int(p["n"]) - 1) * int(p["gap"]),
    memory=lambda p: (int(p["n"]) - 1) * int(p["gap"]),
    step_weights=kernels.multi_point_step_weights,
    bracket=kernels.multi_point_bracket,
    match=_match_points,
    params_for_window=_multi_point_for_window,
    sweep=Sweep("gap", "int"),
  )
)
register(
  Method(
    "power_ema",
    POWER_EMA_PARAMS,
    power_ema_averager,
    step_weights=kernels.power_ema_step_weights,
    match=_match_power_ema,
    sweep=POWER_EMA_SWEEP,
  )
)
