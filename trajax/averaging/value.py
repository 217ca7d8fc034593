"""An average is a value: a registered method with its parameters, or any kernel.

Two immutable values stand for "an average of the trajectory" wherever one
crosses a boundary (a config field, a side-trip, posthoc, an experiment):

* :class:`Average` -- a method of :data:`trajax.averaging.METHODS` with its
  parameters, checked by the method's record and with its defaults filled in
  (``average('ema', decay=0.01)``);
* :class:`Kernel` -- an average without a name: the weights c_0 … c_k it
  puts on θ_s … θ_{s+k} (finite, summing to one), e.g. the kernel posthoc
  rebuilt from a run's snapshots.

Both answer the same questions: ``kernel(window)`` (c on θ_s … θ_{s+window},
float64; for a method the derived :func:`trajax.averaging.kernel`),
``step_weights(window)`` (w_j = Σ_{i>j} c_i, the learning-rate factors of
the equivalent side-trip, :mod:`trajax.schedules` eq. *),
``default_window()``, ``to_dict()`` / :func:`from_dict` (JSON-able) and a
text spelling, ``str(v)``, read back by :func:`parse` without ``eval``::

  ema(decay=0.01, start_step=0, every=1, debias=False)
  swa                      (a method's defaults)
  kernel(0.25, 0.25, 0.5)  (c_0 … c_k; each float as repr writes it, so exact)

:func:`as_average` accepts any of these forms (a value, a spelling, a dict,
an array of kernel weights) and is what every caller taking an average uses.

Parameters whose kind is 'dtype' (``accumulator_dtype``) are arithmetic, not
part of the average: a value leaves them out and :meth:`Average.averager`
takes one as an argument.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from trajax.averaging import methods as methods_lib

__all__ = [
  "KERNEL",
  "Average",
  "Kernel",
  "as_average",
  "average",
  "from_dict",
  "parse",
]

# The name a kernel is spelt with (``kernel(0.25, 0.75)``); no method may take it.
KERNEL = "kernel"
# |Σ c − 1| allowed for a kernel (an average keeps the mean of a constant trajectory).
SUM_TOLERANCE = 1e-9


def _value_params(method: str) -> tuple:
  """The record's parameters a value holds (every kind but 'dtype')."""
  return tuple(p for p in methods_lib.get_method(method).params if p.kind != "dtype")


def _plain(kind: str, value):
  """A checked parameter value as a plain Python int, float or bool."""
  if kind == "int":
    return int(value)
  if kind == "float":
    return float(value)
  if kind == "bool":
    return bool(value)
  return value


def _show(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)


class Average(NamedTuple):
  """A registered averaging method with its parameters (immutable, hashable).

  Build it with :func:`average` (or :meth:`of`), which checks the parameters
  against the method's record and fills in the defaults; ``params`` is then
  a tuple of ``(name, value)`` pairs in the record's order, plain Python
  values. :attr:`values` gives them as a dict.

  Example:

    >>> from trajax import averaging
    >>> a = averaging.average("two_point", gap=4)
    >>> str(a)
    'two_point(gap=4, start_step=0)'
    >>> averaging.Average.parse(str(a)) == a
    True
    >>> print(a.kernel())  # ½ θ_0 + ½ θ_4
    [0.5 0.  0.  0.  0.5]
  """

  method: str
  params: tuple = ()

  @classmethod
  def of(cls, method: str, **params) -> Average:
    """The value of ``method`` with ``params`` (checked; defaults filled in)."""
    m = methods_lib.get_method(method)
    dtype_names = {p.name for p in m.params if p.kind == "dtype"}
    given = {k: v for k, v in params.items() if k not in dtype_names}
    full = methods_lib.check_params(method, given)
    out = tuple((p.name, _plain(p.kind, full[p.name])) for p in _value_params(method))
    return cls(method, out)

  parse = staticmethod(lambda text: parse(text))
  from_dict = staticmethod(lambda d: from_dict(d))

  @property
  def values(self) -> dict:
    """The parameters as a dict (defaults included)."""
    return dict(self.params)

  @property
  def record(self) -> methods_lib.Method:
    return methods_lib.get_method(self.method)

  def replace_params(self, **changes) -> Average:
    """A new value with some parameters changed (checked again)."""
    return Average.of(self.method, **{**self.values, **changes})

  def for_window(self, window: int) -> Average:
    """The value covering ``window`` steps (:func:`trajax.averaging.params_for_window`)."""
    return Average.of(
      self.method, **methods_lib.params_for_window(self.method, window, self.values)
    )

  def averager(self, *, accumulator_dtype=None):
    """The :class:`trajax.averaging.Averager` (``accumulator_dtype``: its default if None)."""
    extra = {}
    if accumulator_dtype is not None:
      extra["accumulator_dtype"] = accumulator_dtype
    return methods_lib.make_averager(self.method, **self.values, **extra)

  def default_window(self) -> int | None:
    """The window an equivalent side-trip covers by default (None: give one)."""
    full = methods_lib.check_params(self.method, self.values)
    return self.record.default_window(full)

  def _window(self, window) -> int:
    if window is None:
      window = self.default_window()
      if window is None:
        raise ValueError(
          f"window: averaging method {self.method!r} has no default window; give the "
          "number of steps the average covers"
        )
    return methods_lib.check_window(window)

  def kernel(self, window: int | None = None) -> np.ndarray:
    """c_0 … c_window: the weight of θ_i in the average after ``window`` updates (float64)."""
    return methods_lib.kernel(self.method, window=self._window(window), **self.values)

  def step_weights(self, window: int | None = None) -> np.ndarray:
    """w_j = Σ_{i>j} c_i, j = 0 … window − 1 (float64; the registered closed form where one applies)."""
    return methods_lib.step_weights_table(self.method, window=self._window(window), **self.values)

  def to_dict(self) -> dict:
    """``{'method': name, <param>: value, ...}`` (JSON-able; :func:`from_dict` reads it)."""
    return {"method": self.method, **self.values}

  def __str__(self) -> str:
    inner = ", ".join(f"{k}={_show(v)}" for k, v in self.params)
    return f"{self.method}({inner})"


class Kernel(NamedTuple):
  """An average without a name: the weights c_0 … c_k on θ_s … θ_{s+k}.

  Build it with :meth:`of` (checked: 1-D, at least two entries, finite, Σ c
  = 1 within 1e-9); ``weights`` is a tuple of Python floats (hashable, exact
  in its spelling). Its window is k = len(weights) − 1.

  Example:

    >>> from trajax import averaging
    >>> k = averaging.Kernel.of([0.25, 0.25, 0.5])
    >>> str(k), k.default_window()
    ('kernel(0.25, 0.25, 0.5)', 2)
    >>> print(k.step_weights())
    [0.75 0.5 ]
  """

  weights: tuple

  @classmethod
  def of(cls, weights) -> Kernel:
    try:
      c = np.asarray(weights, np.float64)
    except (TypeError, ValueError):
      raise ValueError(f"kernel = {weights!r}: must be an array of numbers") from None
    if c.ndim != 1 or c.size < 2:
      raise ValueError(
        f"kernel of shape {c.shape}: must be 1-D with k + 1 >= 2 weights (on θ_s … θ_s+k)"
      )
    if not np.all(np.isfinite(c)):
      raise ValueError(f"kernel: every weight must be finite, got {c[~np.isfinite(c)][:3]}")
    total = math.fsum(c.tolist())
    if abs(total - 1.0) > SUM_TOLERANCE:
      raise ValueError(f"kernel: the weights must sum to 1 (an average), they sum to {total!r}")
    return cls(tuple(float(x) for x in c))

  parse = staticmethod(lambda text: parse(text))
  from_dict = staticmethod(lambda d: from_dict(d))

  method = None  # no registered method

  @property
  def window(self) -> int:
    return len(self.weights) - 1

  def default_window(self) -> int:
    return self.window

  def _window(self, window) -> int:
    if window is not None and window != self.window:
      raise ValueError(
        f"window = {window!r}: this kernel covers {self.window} steps (its weights are "
        f"on θ_s … θ_s+{self.window}); give window={self.window} or None"
      )
    return self.window

  def kernel(self, window: int | None = None) -> np.ndarray:
    """The weights c_0 … c_k (float64); ``window`` must be k or None."""
    self._window(window)
    return np.asarray(self.weights, np.float64)

  def step_weights(self, window: int | None = None) -> np.ndarray:
    """w_j = Σ_{i>j} c_i, j = 0 … k − 1 (float64)."""
    c = self.kernel(window)
    return np.cumsum(c[::-1])[::-1][1:]

  def to_dict(self) -> dict:
    return {"kernel": list(self.weights)}

  def __str__(self) -> str:
    return f"{KERNEL}({', '.join(repr(w) for w in self.weights)})"


def average(method: str, **params) -> Average:
  """``Average.of(method, **params)``: a registered method with its parameters, checked."""
  return Average.of(method, **params)


# ----------------------------------------------------------------------------
# Text and dict forms.

_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _allowed() -> str:
  names = [m for m in methods_lib.METHODS]
  return (
    f"a method of {names} with optional parameters, e.g. 'ema(decay=0.01, every=1)', "
    f"or '{KERNEL}(c_0, …, c_k)'"
  )


def _number(text: str, where: str):
  token = text.strip()
  if token in ("True", "False"):
    return token == "True"
  if not _NUMBER.match(token):
    raise ValueError(f"{where}: {token!r} is not a number, True or False")
  if re.match(r"^[+-]?\d+$", token):
    return int(token)
  return float(token)


def parse(text: str) -> Average | Kernel:
  """The value spelt ``text`` (``str`` of an :class:`Average` or :class:`Kernel`).

  A tiny parser, no ``eval``: ``name``, ``name()`` or ``name(k=v, …)`` with
  numbers, True and False as values; ``kernel(c_0, …, c_k)`` for a kernel.

  Raises:
    ValueError: one line naming the text and what is allowed.
  """
  if not isinstance(text, str):
    raise TypeError(f"average spelling must be a string, got {text!r}")
  match = _CALL.match(text)
  if match is None:
    raise ValueError(f"average {text!r}: not understood; must be {_allowed()}")
  name, inner = match.group(1), (match.group(2) or "").strip()
  parts = [p for p in (s.strip() for s in inner.split(",")) if p] if inner else []
  try:
    if name == KERNEL:
      if any("=" in p for p in parts):
        raise ValueError("a kernel takes weights only, no name=value")
      weights = [float(_number(p, "weight")) for p in parts]
    elif name not in methods_lib.METHODS:
      raise ValueError(f"unknown method {name!r}")
    else:
      params = {}
      for p in parts:
        key, eq, value = p.partition("=")
        key = key.strip()
        if not eq or not re.match(r"^[A-Za-z_]\w*$", key):
          raise ValueError(f"{p!r} is not name=value")
        if key in params:
          raise ValueError(f"{key} given twice")
        params[key] = _number(value, key)
  except ValueError as e:
    raise ValueError(f"average {text!r}: {e}; must be {_allowed()}") from None
  try:  # the spelling is fine: the record (or the kernel's check) says what is wrong
    return Kernel.of(weights) if name == KERNEL else Average.of(name, **params)
  except (TypeError, ValueError) as e:
    raise ValueError(f"average {text!r}: {e}") from None


def from_dict(d: Mapping) -> Average | Kernel:
  """The value of ``to_dict()``: ``{'method': m, <param>: v, …}`` or ``{'kernel': [c_0, …]}``.

  ``{'method': m, 'params': {…}}`` is read too.
  """
  if not isinstance(d, Mapping):
    raise TypeError(f"average dict must be a mapping, got {d!r}")
  d = dict(d)
  if KERNEL in d:
    if len(d) != 1:
      raise ValueError(f"average {d!r}: a kernel dict holds only 'kernel'")
    return Kernel.of(d[KERNEL])
  if "method" not in d:
    raise ValueError(
      f"average {d!r}: needs 'method' (one of {list(methods_lib.METHODS)}) or 'kernel'"
    )
  method = d.pop("method")
  params = d.pop("params", None)
  if params is not None:
    d.update(params)
  return Average.of(method, **d)


def as_average(x: Any) -> Average | Kernel:
  """An :class:`Average` or :class:`Kernel` from any of its forms.

  Accepts an Average or Kernel (returned as is), a spelling (:func:`parse`),
  a dict (:func:`from_dict`) or a 1-D array / sequence of numbers (a kernel).
  """
  if isinstance(x, (Average, Kernel)):
    return x
  if isinstance(x, str):
    return parse(x)
  if isinstance(x, Mapping):
    return from_dict(x)
  if isinstance(x, (np.ndarray, list, tuple)) and all(
    isinstance(v, (numbers.Real, np.floating, np.integer)) for v in np.ravel(np.asarray(x, object))
  ):
    return Kernel.of(x)
  if hasattr(x, "__array__"):
    return Kernel.of(np.asarray(x))
  raise TypeError(
    f"an average must be an Average, a Kernel, a spelling, a dict or kernel weights; got {x!r}"
  )
