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
(its *kernel* c on θ_s … θ_{s+k}, :func:`trajax.averaging.kernel`, derived by
running the averager itself), so

    a_{s+k} = θ_s − Σ_{j=0}^{k−1} w_j λ_{s+j} g_{s+j},   w_j = Σ_{i>j} c_i.      (*)

A side-trip that starts from θ_s with the optimizer state at s and takes k
steps with learning rate λ'_j = w_j λ_{s+j} on the same batches reaches the
right side of (*) exactly whenever g does not depend on θ or on the learning
rate: a linear loss per batch (the lemma's assumption), with or without
(Nesterov) momentum, because the momentum trace is built from the gradients
alone. This module returns that schedule (:func:`equivalent_schedule`) and
recognises the averaging behind a given schedule (:func:`matching_averaging`).

The step weights w_j, j = 0 … k−1 (0-based: j counts the side-trip's steps),
come from that derived kernel for every parameter the averager takes (``every``,
``debias``, a ``start_step`` inside the window), so they are exact for every
configuration; the closed forms below are registered fast paths, tested
against the derivation. For instance EMA with δ = 0.1, every = 3 and
debias = True over k = 6 puts 0.474 on θ_{s+3} and 0.526 on θ_{s+6}:
w = (1, 1, 1, 0.526, 0.526, 0.526).

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

from trajax import averaging

__all__ = [
  "METHODS",
  "Averaging",
  "equivalent_schedule",
  "kernel_from_weights",
  "matching_averaging",
  "step_weights",
  "weighted_schedule",
  "weights_from_kernel",
]

# The registry itself (one definition per method): every registered method,
# 'none' included (its equivalent side-trip is the base schedule).
METHODS = averaging.METHODS

ScalarOrSchedule = float | optax.Schedule


class Averaging(NamedTuple):
  """An averaging method with its parameters, as ``trajax.averaging`` takes them.

  ``trajax.averaging.make_averager(a.method, start_step=s, **a.params)`` builds
  it; after ``window`` steps past s it equals the side-trip.
  """

  method: str
  params: dict
  window: int


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _table(method: str, window, params: dict, *, start=0) -> tuple[int, np.ndarray]:
  """(k, w_0 … w_{k−1}) in float64 for ``method`` with the averager's ``params``.

  ``params`` may hold every parameter the averager takes; None means absent.
  ``start_step`` is the averager's, in absolute steps: it must be >= ``start``
  (an average started before the branch point also weighs θ before it, which
  no side-trip from θ_start reaches), and enters as start_step − start.
  """
  params = {k: v for k, v in params.items() if v is not None}
  start_step = params.pop("start_step", None)
  given = averaging.check_params(method, params)
  for name in params:
    if not _is_concrete(params[name]):
      raise TypeError(f"{name} must be concrete to build a schedule, got a traced value")
  if start_step is not None:
    if not _is_concrete(start):
      raise TypeError(
        f"start_step={start_step!r} with a traced start: the average that a side-trip "
        "reaches starts at the branch point; leave start_step out"
      )
    start_step = _check_int("start_step", start_step, 0)
    if start_step < start:
      raise ValueError(
        f"start_step={start_step} < start={start}: that average also weighs θ before the "
        "branch point, which no side-trip from θ_start reaches: no exact schedule"
      )
    params["start_step"] = start_step - start
  if window is None:
    window = averaging.get_method(method).default_window(given)
    if window is None:
      raise ValueError(
        f"window: averaging method {method!r} has no default window; give the number of "
        "steps the average covers"
      )
  window = _check_int("window", window, 1)
  return window, averaging.step_weights_table(method, window=window, **params)


def _lookup(table: np.ndarray, j) -> jax.Array:
  """table[j] as float32 for 0 ≤ j < len(table), else 0; j may be traced."""
  j = jnp.asarray(j)
  k = table.shape[0]
  w = jnp.asarray(table, jnp.float32)[jnp.clip(j, 0, k - 1)]
  return jnp.where((j >= 0) & (j < k), w, 0.0).astype(jnp.float32)


def step_weights(method: str, j, *, window: int | None = None, **params):
  """w_j: the factor on the learning rate of side-trip step j (module table).

  Args:
    method: a registered method of ``trajax.averaging.METHODS``.
    j: the side-trip's step, 0-based (int or int array, may be traced).
    window: k, the number of steps the average covers (default: the
      method's own, e.g. ``gap`` for 'two_point').
    **params: the averager's parameters (decay, every, debias, n, gap, …;
      None means absent); ``start_step`` counts from the window's start.

  Returns:
    float32 array of j's shape; 0 outside 0 ≤ j < window (the side-trip has
    landed and stays where it is).
  """
  _, table = _table(method, window, params)
  return _lookup(table, j)


def equivalent_schedule(
  method: str,
  base: ScalarOrSchedule,
  *,
  start,
  window: int | None = None,
  **params,
) -> optax.Schedule:
  """The side-trip schedule equivalent to an averaging method (Table 1, eq. 29).

  ``schedule(j) = base(start + j) · w_j`` for the side-trip's own step
  j = 0 … window−1 (and 0 afterwards), with w_j from the averager's derived
  kernel. A side-trip that starts from θ_start with the optimizer state at
  ``start`` (momentum trace included; its step counter restarted at 0) and
  follows this schedule on the batches start … start+window−1 lands exactly
  where ``make_averager(method, start_step=start, **params)`` is after
  ``window`` further steps, if every batch's gradient is independent of θ
  (linear loss per batch); for plain SGD and ``optax.sgd`` with (Nesterov)
  momentum. Every parameter the averager takes is honoured.

  Args:
    method: a registered method ('none', 'ema', 'swa', 'two_point', …).
    base: the main run's learning rate: a float or an optax schedule of the
      absolute step.
    start: the branch step (the averager's start_step), an integer >= 0; may
      be a traced int scalar, so one compiled step serves every branch point
      (the weights are a static table indexed by j).
    window: the steps the average covers (default: the method's own window,
      ``gap`` for 'two_point', ``(n − 1)·gap`` for 'multi_point'; 'ema' and
      'swa' need one).
    **params: the averager's parameters as ``trajax.averaging`` takes them
      (None means absent). A ``start_step`` must be >= ``start`` (concrete):
      averaging then begins start_step − start steps into the window; an
      earlier start has no exact schedule and raises.

  Returns:
    An optax schedule of the side-trip step.

  Example:

    SWA over a window of 4 is a rate decaying linearly to zero (Table 1):

    >>> import optax
    >>> from trajax import schedules
    >>> sched = schedules.equivalent_schedule("swa", 0.1, start=1000, window=4)
    >>> print([round(float(sched(j)), 4) for j in range(5)])
    [0.1, 0.075, 0.05, 0.025, 0.0]
    >>> side_trip = optax.sgd(sched, momentum=0.9)  # continue from step 1000
  """
  if _is_concrete(start):
    if isinstance(start, (jax.Array, np.ndarray, np.generic)) and np.shape(start) == ():
      if jnp.issubdtype(start.dtype, jnp.integer):
        start = int(start)  # a concrete integer scalar (e.g. jnp.int32(S) outside jit)
    start = _check_int("start", start, 0)
  elif not jnp.issubdtype(start.dtype, jnp.integer) or start.shape != ():
    raise TypeError(f"start must be an integer scalar, got {start!r}")
  if not (callable(base) or isinstance(base, numbers.Real)):
    raise TypeError(f"base must be a float or an optax schedule, got {base!r}")
  _, table = _table(method, window, params, start=start)
  return weighted_schedule(base, table, start=start)


def weighted_schedule(base: ScalarOrSchedule, weights, *, start) -> optax.Schedule:
  """``schedule(j) = base(start + j) · w_j`` for j = 0 … k − 1, and 0 from j = k on.

  The side-trip schedule of any average whose step weights are ``weights``
  (w_0 … w_{k−1}, e.g. :meth:`trajax.averaging.Average.step_weights` or
  :func:`weights_from_kernel` of a kernel): a static table (float64, looked
  up as float32) indexed by the side-trip step j, which may be traced, as
  may ``start``: one compiled step serves every branch point.
  """
  table = np.asarray(weights, np.float64)
  if table.ndim != 1 or table.size < 1:
    raise ValueError(f"weights must be 1-D with k >= 1 entries, got shape {table.shape}")

  def schedule(j):
    j = jnp.asarray(j)
    lr = base(start + j) if callable(base) else jnp.float32(base)
    return lr * _lookup(table, j)

  return schedule


def weights_from_kernel(kernel) -> np.ndarray:
  """w_j = Σ_{i>j} c_i for j = 0 … k−1, from a kernel c on θ_s … θ_{s+k} (eq. * above).

  Example:

    >>> from trajax import schedules
    >>> print(schedules.weights_from_kernel([0.25, 0.25, 0.5]))
    [0.75 0.5 ]
  """
  c = np.asarray(kernel, np.float64)
  if c.ndim != 1 or c.size < 2:
    raise ValueError(f"kernel must be 1-D with k + 1 >= 2 entries, got shape {c.shape}")
  return np.cumsum(c[::-1])[::-1][1:]


def kernel_from_weights(weights) -> np.ndarray:
  """The kernel on θ_s … θ_{s+k} behind step weights w_0 … w_{k−1}.

  c_0 = 1 − w_0, c_i = w_{i−1} − w_i, c_k = w_{k−1}: the inverse of
  :func:`weights_from_kernel` for a kernel summing to one. It is an average
  (non-negative c) exactly when 1 ≥ w_0 ≥ w_1 ≥ … ≥ w_{k−1} ≥ 0.

  Example:

    >>> from trajax import schedules
    >>> print(schedules.kernel_from_weights([0.75, 0.5]))
    [0.25 0.25 0.5 ]
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
  recognises it, to ``atol``: each registered method with a ``match`` rule
  proposes parameters, and the proposal stands if the method's derived kernel
  agrees. With the built-in methods: linear decay to zero, w_j = (k − j)/k,
  is 'swa'; a staircase of n − 1 equal stairs of ``gap`` steps at
  (n−1)/n, …, 1/n is 'multi_point' (n, gap), 'two_point' when n = 2 (a
  constant half rate); 1 − (1 − δ)^{k−j} is 'ema' with decay δ.

  Other non-increasing weights in [0, 1] are still an average of θ_s … θ_{s+k}
  (the kernel), just not a registered method: that raises, and the message
  says so.

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
  for name, m in averaging.METHODS.items():
    proposal = None if m.match is None else m.match(c, atol)
    if proposal is None:
      continue
    try:
      _, w = _table(name, k, dict(proposal))
    except (TypeError, ValueError):
      continue
    if np.all(np.abs(kernel_from_weights(w) - c) <= atol):
      return Averaging(name, proposal, k)
  if np.any(c < -atol):
    raise ValueError(
      "the schedule's weights schedule(j)/base(start+j) rise somewhere or exceed 1: "
      "no average with non-negative weights matches it"
    )
  raise ValueError(
    "the schedule matches an average of θ_start … θ_(start+window) with kernel "
    f"{np.array2string(c, precision=4, threshold=12)}, but not one of the registered "
    f"methods {list(averaging.METHODS)}"
  )
