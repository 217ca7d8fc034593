"""Test instances of every registered averaging method, built from its record alone.

The contract suites are parametrized over :data:`trajax.averaging.METHODS`
through :func:`cases`, so a newly registered method is under them without a
hand-kept list: its required parameters get a value its record accepts, and
each optional parameter that changes the arithmetic (not a static one, not
the accumulator dtype) is also moved off its default in a case of its own.
:func:`expected_averages` is the NumPy reference where one is written
(:mod:`tests.averaging_reference`), else the method's pure averager.
"""

from __future__ import annotations

import inspect

import numpy as np
import optax

from tests import averaging_reference
from trajax import averaging

# Values tried, in order, for a required parameter: the first its record's
# range check accepts (small step counts, so that a few steps exercise it).
_TRY = {"int": (3, 2, 1), "float": (0.3, 0.9, 3.0), "bool": (True,)}
# Moved off the default: the value a case of its own uses.
_MOVED = {"int": lambda d: d + 2, "float": lambda d: d / 2 if d else 0.5, "bool": lambda d: not d}


def required_value(method: str, p) -> object:
  """A value of required parameter ``p`` of ``method`` that its record accepts."""
  for value in _TRY.get(p.kind, ()):
    if p.ok is None or p.ok(value):
      return value
  raise ValueError(
    f"averaging method {method!r}: no test value for {p.name} ({p.allowed}); tried {_TRY.get(p.kind)}"
  )


def base_params(method: str) -> dict:
  """The required parameters of ``method`` (the others keep their defaults)."""
  return {
    p.name: required_value(method, p) for p in averaging.get_method(method).params if p.required
  }


def static_args(method: str) -> tuple[str, ...]:
  """The parameters ``optax.inject_hyperparams`` must take as static (shapes, dtypes)."""
  return tuple(p.name for p in averaging.get_method(method).params if p.static)


def cases(methods=None) -> dict[str, tuple[str, dict]]:
  """``{case id: (method, params)}`` for every registered method (default all but 'none').

  One case with the required parameters only, then one per optional
  parameter moved off its default (``ema-debias``, ``swa-start_step``, …).
  """
  names = [m for m in averaging.METHODS if m != "none"] if methods is None else methods
  out = {}
  for method in names:
    base = base_params(method)
    out[method] = (method, base)
    for p in averaging.get_method(method).params:
      if p.required or p.static or p.kind not in _MOVED:
        continue
      out[f"{method}-{p.name}"] = (method, {**base, p.name: _MOVED[p.kind](p.default)})
  return out


def factory(method: str):
  """``(inner, **params) -> optax transformation``: the generic wrapper of ``method``.

  What a run builds (:func:`trajax.averaging.wrap` around the record's
  averager); the keyword form lets ``optax.inject_hyperparams`` trace the
  parameters.
  """

  def make(inner: optax.GradientTransformation, **params):
    return averaging.wrap(inner, averaging.make_averager(method, **params))

  # inject_hyperparams reads the keywords from the signature: the record's.
  keyword = inspect.Parameter.KEYWORD_ONLY
  make.__signature__ = inspect.Signature(
    [
      inspect.Parameter("inner", inspect.Parameter.POSITIONAL_OR_KEYWORD),
      *(
        inspect.Parameter(p.name, keyword, **({} if p.required else {"default": p.default}))
        for p in averaging.get_method(method).params
      ),
    ]
  )
  make.__name__ = f"wrap_{method}"
  return make


def expected_averages(method: str, thetas, params: dict) -> np.ndarray:
  """a_t for t = 0..T of ``method`` over ``thetas`` (stacked θ_t), float64.

  The written-out NumPy reference where there is one; for a method without
  one, its pure :class:`trajax.averaging.Averager` (checked against the
  wrappers, not against a definition: give it a reference of its own).
  """
  params = {k: v for k, v in params.items() if k != "accumulator_dtype"}
  if method in averaging_reference.METHODS:
    return averaging_reference.reference_average(method, thetas, **params)
  thetas = np.asarray(thetas, np.float64)
  averager = averaging.make_averager(method, **params)
  state = averager.init(thetas[0].astype(np.float32))
  out = [np.asarray(state.average, np.float64)]
  for theta in thetas[1:]:
    state = averager.update(theta.astype(np.float32), state)
    out.append(np.asarray(state.average, np.float64))
  return np.stack(out)
