"""Targets: the kernel c over steps an average is, from a registered method or given by the user.

A target is ``(label, c)`` with c over steps 0 … end, c ≥ 0, Σ c = 1 (paper
eqs. 22-29): :func:`target` derives a registered method's
(:func:`trajax.averaging.step_weights_table`, its closed form where one is
registered), :func:`user_kernel` normalises any weights. Planning only: NumPy.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from trajax import averaging, schedules

__all__ = ["check_int", "target", "user_kernel"]


def target(method: str, *, end: int, **params) -> tuple[str, np.ndarray]:
  """The kernel of registered ``method`` at step ``end``: ``(label, c_0 … c_end)``.

  The average ``make_averager(method, **params)`` holds after ``end`` updates
  from θ_0 (its ``start_step`` as given), derived by running the averager
  (:func:`trajax.averaging.kernel`). E.g. SWA over the last W steps of a run of
  T: ``target('swa', end=T, start_step=T - W)``.

  Example:

    >>> from trajax import posthoc
    >>> label, c = posthoc.target("swa", end=4, start_step=2)
    >>> print(label, c.round(2) + 0.0)  # the mean of θ_3 and θ_4
    swa(start_step=2) [0.  0.  0.  0.5 0.5]
  """
  end = check_int("end", end, 1)
  given = {k: v for k, v in params.items() if v is not None}
  start = given.get("start_step", 0)
  if isinstance(start, (numbers.Integral, np.integer)) and 0 < start < end:
    # Every method follows θ until start_step and is defined in t − start_step
    # after it, so its kernel is the start_step = 0 one on the last end − s
    # steps: the closed-form fast paths (trajax.kernels) then apply.
    rest = {k: v for k, v in given.items() if k != "start_step"}
    c = np.concatenate([np.zeros(start), _kernel(method, end - start, rest)])
  else:
    c = _kernel(method, end, given)
  label = f"{method}({', '.join(f'{k}={v}' for k, v in sorted(given.items()))})"
  return label, c


def _kernel(method: str, window: int, params: dict) -> np.ndarray:
  """The kernel on θ_0 … θ_window from the step weights (closed form where registered)."""
  w = averaging.step_weights_table(method, window=window, **params)
  return schedules.kernel_from_weights(w)


def user_kernel(
  weights, *, end: int | None = None, label: str = "kernel"
) -> tuple[str, np.ndarray]:
  """A user kernel ``{step: weight}`` (or a 1-D array over steps 0 …) as a target.

  Weights may be unnormalised; they are divided by their total, which must be
  positive and finite. ``end`` (default the last step given) sets the length.

  Example:

    >>> from trajax import posthoc
    >>> posthoc.user_kernel({2: 1, 4: 3}, end=5)
    ('kernel', array([0.  , 0.  , 0.25, 0.  , 0.75, 0.  ]))
  """
  if isinstance(weights, Mapping):
    if not weights:
      raise ValueError("kernel: no steps given")
    steps = {}
    for k, v in weights.items():
      s = check_int("kernel step", k, 0)
      if not isinstance(v, numbers.Real) or not np.isfinite(v):
        raise ValueError(f"kernel[{s}] = {v!r}: must be a finite number")
      steps[s] = float(v)
    last = max(steps)
    end = last if end is None else check_int("end", end, last)
    c = np.zeros(end + 1)
    for s, v in steps.items():
      c[s] += v
  else:
    c = np.asarray(weights, np.float64)
    if c.ndim != 1 or c.size < 1:
      raise ValueError(f"kernel must be a mapping or a 1-D array, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
      raise ValueError("kernel: weights must be finite")
    if end is not None:
      end = check_int("end", end, c.size - 1)
      c = np.concatenate([c, np.zeros(end + 1 - c.size)])
  total = float(c.sum())
  if not total > 0:
    raise ValueError(
      f"kernel: total weight is {total:.6g}; an average needs a positive total "
      "(the weights are divided by it)"
    )
  return label, c / total


def check_int(name, value, minimum) -> int:
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)
