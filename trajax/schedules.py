"""Learning-rate schedules equivalent to weight averaging (paper Table 1, Lemma 2, A.5).

The exact statement. Let θ_t be the params after the t-th update, s = start,
k = window, λ_t = base(t) the learning rate of the update that makes θ_{t+1}
(optax evaluates a schedule at the number of updates already applied), and
g_t the update direction of that step *before* the learning rate: the
gradient for plain SGD, the momentum trace for ``optax.sgd(lr, momentum)``
(optax scales by the learning rate after the trace). Then

    θ_{s+i} = θ_s − Σ_{j<i} λ_{s+j} g_{s+j}.

Every method of :mod:`trajax.averaging` started at ``start_step=s`` gives, after
k further steps, a fixed convex combination a_{s+k} = Σ_{i=0..k} c_i θ_{s+i}
(its *kernel* c on θ_s … θ_{s+k}), so

    a_{s+k} = θ_s − Σ_{j=0}^{k−1} w_j λ_{s+j} g_{s+j},   w_j = Σ_{i>j} c_i.      (*)

A side-trip that starts from θ_s with the optimizer state at s and takes k
steps with learning rate λ'_j = w_j λ_{s+j} on the same batches reaches the
right side of (*) exactly whenever g does not depend on θ or on the learning
rate: a linear loss per batch (the lemma's assumption), with or without
(Nesterov) momentum, because the momentum trace is built from the gradients
alone. This module returns that schedule (:func:`equivalent_schedule`) and
recognises the averaging behind a given schedule (:func:`matching_averaging`).

The step weights w_j, j = 0 … k−1 (0-based: j counts the side-trip's steps):

==============  ============================  ===================================
method          kernel c on θ_s … θ_{s+k}     w_j
==============  ============================  ===================================
swa (window k)  0, 1/k, …, 1/k                (k − j)/k
two_point       1/2 at θ_s and θ_{s+gap}      1/2 (k = gap)
multi_point     1/n at θ_{s+m·gap}, m<n       (n − 1 − ⌊j/gap⌋)/n (k = (n−1)·gap)
ema (decay δ)   (1−δ)^k, δ(1−δ)^{k−i} (i≥1)   1 − (1 − δ)^{k−j}
==============  ============================  ===================================

Index conventions and the paper. Table 1 prints the weights with a 1-based
step i = j + 1. For SWA it reads (k + 1 − i)/k, which agrees with the above;
for EMA it reads 1 − (1 − δ)^{k−i}, which is off by one: with i = j + 1 it
gives the last step the weight 0 instead of δ. Eq. 29 (0-based t = s + j,
t_2 = s + k) has the right exponent, 1 − (1 − δ)^{t_2 − t}. The EMA result is
exact, not only for k ≫ 1/δ as the paper says: the wrapper pins a_s = θ_s, so
the mass (1 − δ)^k that the paper drops in eq. 26 stays on θ_s, which the
side-trip starts from. The multi-point staircase is not printed in the
paper; it follows from (*) in the same way: n − 1 stairs of ``gap`` steps at
heights (n−1)/n, (n−2)/n, …, 1/n of the base rate. Two more index slips in
A.5: the first line sums i = t_1 … t_2 where θ_{t_2} needs i < t_2, and eq. 22
divides a sum of t_2 − t_1 + 1 points (t = t_1 … t_2) by t_2 − t_1; the
weights (t_2 − t)/(t_2 − t_1) of eq. 24 are those of the mean of
θ_{t_1+1} … θ_{t_2}, which is what SWA (and ``trajax.averaging.swa``) computes.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
  "METHODS",
  "Averaging",
  "equivalent_schedule",
  "kernel_from_weights",
  "matching_averaging",
  "step_weights",
  "weights_from_kernel",
]

METHODS = ("ema", "swa", "two_point", "multi_point")

ScalarOrSchedule = float | optax.Schedule

# The parameters each method takes besides window (names as in trajax.averaging).
_PARAMS = {
  "ema": ("decay",),
  "swa": (),
  "two_point": ("gap",),
  "multi_point": ("n", "gap"),
}


class Averaging(NamedTuple):
  """An averaging method with its parameters, as ``trajax.averaging`` takes them.

  ``trajax.averaging.make_averager(a.method, start_step=s, **a.params)`` builds
  it; after ``window`` steps past s it equals the side-trip.
  """

  method: str
  params: dict
  window: int


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_method_params(method, window, decay, n, gap):
  """Validates the method's parameters and returns them as a dict."""
  if method not in _PARAMS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  window = _check_int("window", window, 1)
  given = {"decay": decay, "n": n, "gap": gap}
  for name, value in given.items():
    if value is not None and name not in _PARAMS[method]:
      raise ValueError(
        f"{name}={value!r} is not a parameter of method {method!r} "
        f"(it takes window and {_PARAMS[method] or 'nothing else'})"
      )
    if value is None and name in _PARAMS[method]:
      raise ValueError(f"method {method!r} needs {name}")
  params = {}
  if method == "ema":
    if not isinstance(decay, numbers.Real) or not 0.0 < float(decay) <= 1.0:
      raise ValueError(f"decay must be a float in (0, 1], got {decay!r}")
    params["decay"] = float(decay)
  if method in ("two_point", "multi_point"):
    params["gap"] = _check_int("gap", gap, 1)
  if method == "multi_point":
    params["n"] = _check_int("n", n, 2)
  if method == "two_point" and window != params["gap"]:
    raise ValueError(
      f"two_point averages θ_start and θ_(start+gap): window must equal gap={gap}, "
      f"got window={window}"
    )
  if method == "multi_point" and window != (params["n"] - 1) * params["gap"]:
    raise ValueError(
      f"multi_point with n={n}, gap={gap} spans (n - 1)*gap = {(n - 1) * gap} steps: "
      f"window must equal that, got window={window}"
    )
  return window, params


def step_weights(method: str, j, *, window: int, decay=None, n=None, gap=None):
  """w_j: the factor on the learning rate of side-trip step j (table above).

  Args:
    method: 'ema', 'swa', 'two_point' or 'multi_point'.
    j: the side-trip's step, 0-based (int or int array, may be traced).
    window: k, the number of steps the average covers.
    decay, n, gap: the method's parameters, as in ``trajax.averaging``.

  Returns:
    float32 array of j's shape; 0 outside 0 ≤ j < window (the side-trip has
    landed and stays where it is).
  """
  window, p = _check_method_params(method, window, decay, n, gap)
  j = jnp.asarray(j)
  k = jnp.float32(window)
  jf = j.astype(jnp.float32)
  if method == "swa":
    w = (k - jf) / k
  elif method == "two_point":
    w = jnp.full(j.shape, 0.5, jnp.float32)
  elif method == "multi_point":
    stair = (j // p["gap"]).astype(jnp.float32)
    w = (p["n"] - 1 - stair) / p["n"]
  else:  # ema: 1 − (1 − δ)^{k−j}, via expm1/log1p so small δ keeps its digits.
    w = -jnp.expm1((k - jf) * jnp.log1p(-jnp.float32(p["decay"])))
  inside = (j >= 0) & (j < window)
  return jnp.where(inside, w, 0.0).astype(jnp.float32)


def equivalent_schedule(
  method: str,
  base: ScalarOrSchedule,
  *,
  start: int,
  window: int,
  decay: float | None = None,
  n: int | None = None,
  gap: int | None = None,
) -> optax.Schedule:
  """The side-trip schedule equivalent to an averaging method (Table 1, eq. 29).

  ``schedule(j) = base(start + j) · w_j`` for the side-trip's own step
  j = 0 … window−1 (and 0 afterwards), with w_j from the module table. A
  side-trip that starts from θ_start with the optimizer state at ``start``
  (momentum trace included; its step counter restarted at 0) and follows this
  schedule on the batches start … start+window−1 lands exactly where the
  ``trajax.averaging`` wrapper with ``start_step=start`` is after ``window``
  further steps, if every batch's gradient is independent of θ (linear loss
  per batch); for plain SGD and ``optax.sgd`` with (Nesterov) momentum.

  Args:
    method: 'ema', 'swa', 'two_point' or 'multi_point'.
    base: the main run's learning rate: a float or an optax schedule of the
      absolute step.
    start: the averaging wrapper's ``start_step`` (the step the side-trip
      branches off at), an integer >= 0.
    window: the steps the average covers: any k >= 1 for 'ema' and 'swa';
      ``gap`` for 'two_point'; ``(n − 1)·gap`` for 'multi_point'.
    decay: EMA weight δ in (0, 1] ('ema' only).
    n: number of points, >= 2 ('multi_point' only).
    gap: steps between points ('two_point', 'multi_point').

  Returns:
    An optax schedule of the side-trip step.

  Example::

    sched = equivalent_schedule('swa', 0.1, start=1000, window=500)
    side_trip = optax.sgd(sched, momentum=0.9)   # continue from step 1000
  """
  if not isinstance(start, jax.Array):  # a traced start serves every branch point (sidetrip)
    start = _check_int("start", start, 0)
  window, params = _check_method_params(method, window, decay, n, gap)
  if not (callable(base) or isinstance(base, numbers.Real)):
    raise TypeError(f"base must be a float or an optax schedule, got {base!r}")

  def schedule(j):
    j = jnp.asarray(j)
    lr = base(start + j) if callable(base) else jnp.float32(base)
    return lr * step_weights(method, j, window=window, **params)

  return schedule


def weights_from_kernel(kernel) -> np.ndarray:
  """w_j = Σ_{i>j} c_i for j = 0 … k−1, from a kernel c on θ_s … θ_{s+k} (eq. *)."""
  c = np.asarray(kernel, np.float64)
  if c.ndim != 1 or c.size < 2:
    raise ValueError(f"kernel must be 1-D with k + 1 >= 2 entries, got shape {c.shape}")
  return np.cumsum(c[::-1])[::-1][1:]


def kernel_from_weights(weights) -> np.ndarray:
  """The kernel on θ_s … θ_{s+k} behind step weights w_0 … w_{k−1}.

  c_0 = 1 − w_0, c_i = w_{i−1} − w_i, c_k = w_{k−1}: the inverse of
  :func:`weights_from_kernel` for a kernel summing to one. It is an average
  (non-negative c) exactly when 1 ≥ w_0 ≥ w_1 ≥ … ≥ w_{k−1} ≥ 0.
  """
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or w.size < 1:
    raise ValueError(f"weights must be 1-D with k >= 1 entries, got shape {w.shape}")
  return -np.diff(np.concatenate([[1.0], w, [0.0]]))


def matching_averaging(
  schedule: ScalarOrSchedule,
  base: ScalarOrSchedule,
  *,
  start: int,
  window: int,
  atol: float = 1e-6,
) -> Averaging:
  """The averaging method a side-trip schedule is equivalent to (converse of Table 1).

  Reads the step weights w_j = schedule(j) / base(start + j), turns them into
  the kernel c on θ_start … θ_{start+window} (:func:`kernel_from_weights`) and
  recognises it, to ``atol``:

  * linear decay to zero, w_j = (k − j)/k (``optax.linear_schedule(λ, 0, k)``
    on a constant base): 'swa' over the window;
  * a staircase of n − 1 equal stairs of ``gap`` steps at (n−1)/n, …, 1/n:
    'multi_point' (n, gap), 'two_point' when n = 2 (a constant half rate);
  * 1 − (1 − δ)^{k−j}: 'ema' with decay δ.

  Other non-increasing weights in [0, 1] are still an average of θ_s … θ_{s+k}
  (the kernel), just not one of trajax.averaging's methods: that raises, and
  the message says so.

  Args:
    schedule: the side-trip schedule of its own step j (or a float).
    base: the main run's schedule of the absolute step (or a float).
    start: the step the side-trip branches off at.
    window: k, the side-trip's length.
    atol: tolerance on the kernel entries.

  Returns:
    :class:`Averaging` (method, params, window).
  """
  start = _check_int("start", start, 0)
  k = _check_int("window", window, 1)
  j = np.arange(k)
  lr = np.asarray(
    schedule(jnp.asarray(j)) if callable(schedule) else np.full(k, schedule), np.float64
  )
  lr0 = np.asarray(base(jnp.asarray(start + j)) if callable(base) else np.full(k, base), np.float64)
  if np.any(lr0 == 0):
    raise ValueError("base is zero on the window: the step weights are undefined")
  c = kernel_from_weights(lr / lr0)
  close = lambda a, b: bool(np.all(np.abs(np.asarray(a) - b) <= atol))
  if close(c[0], 0.0) and close(c[1:], 1.0 / k):
    return Averaging("swa", {}, k)
  support = np.flatnonzero(np.abs(c) > atol)
  if support.size >= 2 and support[0] == 0 and support[-1] == k:
    gaps = np.diff(support)
    n = support.size
    if np.all(gaps == gaps[0]) and close(c[support], 1.0 / n):
      gap = int(gaps[0])
      if n == 2:
        return Averaging("two_point", {"gap": gap}, k)
      return Averaging("multi_point", {"n": n, "gap": gap}, k)
  delta = c[k]
  if 0.0 < delta <= 1.0:
    expected = np.concatenate(
      [[(1 - delta) ** k], delta * (1 - delta) ** (k - np.arange(1, k + 1))]
    )
    if close(c, expected):
      return Averaging("ema", {"decay": float(delta)}, k)
  if np.any(c < -atol):
    raise ValueError(
      "the schedule's weights schedule(j)/base(start+j) rise somewhere or exceed 1: "
      "no average with non-negative weights matches it"
    )
  raise ValueError(
    "the schedule matches an average of θ_start … θ_(start+window) with kernel "
    f"{np.array2string(c, precision=4, threshold=12)}, but not one of {METHODS} "
    "(linear decay to 0, an n-1 stair staircase at (n-1)/n … 1/n, or EMA)"
  )
