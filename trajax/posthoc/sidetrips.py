"""The side-trip equivalent to a post-hoc average (Fig. 1 on a finished run).

A side-trip from θ_S at learning rate w_j · η_{S+j}, w the step weights of
the kernel c (:func:`trajax.schedules.weights_from_kernel`, eq. * there),
lands on Σ_t c_t θ_t for a loss linear per batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trajax import averaging, schedules
from trajax.posthoc.plan import Plan
from trajax.posthoc.targets import check_int

__all__ = ["equivalent_schedule", "method_equivalent_schedule", "sidetrip_command"]


def equivalent_schedule(kernel, base, *, start: int | None = None) -> tuple[int, int, Any]:
  """The side-trip equivalent to a post-hoc kernel: ``(start, window, schedule)``.

  ``kernel``: a :class:`Plan` or a 1-D kernel c over steps 0 … end. With S the
  first and E the last step of c's support (S = E − 1 for a one-point
  kernel), w_j = Σ_{i>j} c_{S+i} (:func:`trajax.schedules.weights_from_kernel`)
  and ``schedule(j) = base(S + j) · w_j`` for j < E − S, 0 after: a side-trip
  from θ_S with it lands on Σ_t c_t θ_t for a loss linear per batch (eq. * of
  :mod:`trajax.schedules`). ``base``: the run's learning rate (float or
  schedule of the absolute step), e.g. ``state.make_schedule(config.optimizer,
  config.total_steps)``.

  ``start``: S itself, at or before the support's first step (default: that
  step). A method's average started at s has its kernel's support from s (or
  s + 1), but a power EMA's first weights are below float64's resolution
  (c_1 = k^{−(γ+1)}); from S = s the schedule is the method's own (w_j = 1
  where c vanishes before the support: full steps), as the side-trip runs it.

  Example:

    ¼ θ_2 + ¾ θ_4 is a side-trip from θ_2 at ¾ of the rate for two steps:

    >>> from trajax import posthoc
    >>> _, c = posthoc.user_kernel({2: 1, 4: 3})
    >>> start, window, sched = posthoc.equivalent_schedule(c, 0.1)
    >>> print(start, window, [round(float(sched(j)), 3) for j in range(3)])
    2 2 [0.075, 0.075, 0.0]
  """
  import jax.numpy as jnp

  c = np.asarray(kernel.kernel if isinstance(kernel, Plan) else kernel, np.float64)
  nz = np.flatnonzero(c)
  if nz.size == 0:
    raise ValueError("kernel is zero everywhere")
  first, last = int(nz[0]), int(nz[-1])
  if first == last:
    first = max(last - 1, 0)
    if first == last:
      raise ValueError("a kernel on step 0 alone has no side-trip (it is θ_0)")
  if start is not None:
    start = check_int("start", start, 0)
    if start > first:
      raise ValueError(
        f"start = {start}: the kernel has weight on step {first} before it, which no "
        "side-trip from there reaches"
      )
    first = start
  w = schedules.weights_from_kernel(c[first : last + 1])
  table = jnp.asarray(np.concatenate([w, [0.0]]), jnp.float32)
  k = last - first

  def schedule(j):
    j = jnp.asarray(j)
    lr = base(first + j) if callable(base) else jnp.float32(base)
    return lr * table[jnp.clip(j, 0, k)]

  return first, k, schedule


def _flag_value(v) -> str:
  return repr(float(v)) if isinstance(v, float) else str(v)


def sidetrip_command(
  run,
  kernel,
  method: str,
  params: Mapping[str, Any],
  *,
  config_file: str,
  workdir: str,
  python: str = "python",
) -> dict:
  """The ``python -m trajax.sidetrip`` command whose schedule is ``kernel``'s equivalent one.

  ``kernel`` (a :class:`Plan` or a 1-D kernel over steps) is the average of
  registered ``method`` with ``params`` (``start_step`` included); S, the
  first step of its support, is the branch step and its length k the
  side-trip's window (:func:`equivalent_schedule`): an 'equivalent' side-trip
  (``--config.sidetrip.kind=equivalent``, ``.method``, ``.window`` and the
  overrides ``.decay/.gap/.n/.gamma`` it takes) from the run's step S. Fig. 1's
  comparison on the real network: "this average" against "this schedule from S".

  ``config_file``: a config file giving the run's own config (the side-trip
  refuses any other), e.g. the one the CLI writes beside its output.

  Returns ``{'command', 'start', 'window', 'exact', 'note', 'fields',
  'workdir'}`` (``fields``: the ``sidetrip`` section the command sets): ``exact`` is True
  when the side-trip's own :func:`trajax.sidetrip.resolve` of the command's
  fields gives the same step weights as :func:`equivalent_schedule` (the
  side-trip takes the method's other parameters, e.g. ``every``, ``debias``,
  from the run's ``averaging`` section) and S is a committed step; ``note``
  says otherwise why not.
  """
  import shlex

  from trajax import config_validation as cv
  from trajax.sidetrip.spec import METHOD_OVERRIDES

  c = np.asarray(kernel.kernel if isinstance(kernel, Plan) else kernel, np.float64)
  start, window, _ = equivalent_schedule(c, 1.0, start=_method_start(c, params))
  given = {k: v for k, v in dict(params).items() if v is not None and k != "start_step"}
  fields = {"kind": "equivalent", "method": method, "window": int(window)}
  fields.update({k: given[k] for k in METHOD_OVERRIDES if k in given})
  flags = [
    f"--parent={run.directory}",
    f"--step={start}",
    f"--workdir={workdir}",
    f"--config={config_file}",
    *(f"--config.sidetrip.{k}={_flag_value(v)}" for k, v in fields.items()),
  ]
  command = shlex.join([python, "-m", "trajax.sidetrip", *flags])
  notes = []
  try:
    got, ref = _sidetrip_rates(run.config, fields, start, window, c)
    if not np.allclose(got, ref, rtol=1e-6, atol=1e-12):
      theirs = averaging.method_params(method, run.config.averaging)
      notes.append(
        "the side-trip's schedule differs from this kernel's: it can set only window and "
        f"{', '.join(METHOD_OVERRIDES)}, and takes the method's other parameters from the run's "
        f"averaging section (wanted {given}; the run's: {theirs})"
      )
  except (cv.ConfigError, ValueError, TypeError) as e:
    notes.append(f"the side-trip refuses these fields: {e}")
  if start not in run.steps:
    notes.append(
      f"step S = {start} is not a committed checkpoint of the run (committed: {run.steps}); "
      "pick a start_step among them"
    )
  return {
    "command": command,
    "start": int(start),
    "window": int(window),
    "exact": not notes,
    "note": "; ".join(notes) or None,
    "fields": fields,
    "workdir": workdir,
  }


def method_equivalent_schedule(kernel, base, params: Mapping[str, Any]) -> tuple[int, int, Any]:
  """:func:`equivalent_schedule` from the method's own start (``params['start_step']``, default
  0) where that is at or before the kernel's support: the schedule the side-trip runs."""
  c = np.asarray(kernel.kernel if isinstance(kernel, Plan) else kernel, np.float64)
  return equivalent_schedule(c, base, start=_method_start(c, params))


def _method_start(c: np.ndarray, params: Mapping[str, Any]) -> int | None:
  """A method's start_step as the side-trip's S, where it is at or before the support."""
  s = params.get("start_step")
  if s is None:
    s = 0
  nz = np.flatnonzero(c)
  return int(s) if nz.size and int(s) <= int(nz[0]) else None


def _sidetrip_rates(config, fields: dict, start: int, window: int, c) -> tuple:
  """``(side-trip η'(S + j), equivalent_schedule(c)(j))`` for j = 0 … window.

  The first: what ``python -m trajax.sidetrip`` with these ``--config.sidetrip``
  ``fields`` runs from step S (its :func:`trajax.sidetrip.resolve` and
  learning-rate rule, on the run's schedule η); the second: this module's.
  """
  from trajax import state as state_lib
  from trajax.sidetrip import spec as sidetrip_spec

  spec = sidetrip_spec.resolve(sidetrip_spec.with_sidetrip(config, **fields), start)
  base = state_lib.make_schedule(config.optimizer, config.total_steps)
  rule = sidetrip_spec.SidetripRate.of(spec)
  rate = sidetrip_spec.make_lr_schedule(spec, base, rule.hyper(spec, base, start))
  j = np.arange(window + 1)
  _, _, mine = equivalent_schedule(c, base, start=start)
  return np.asarray(rate(start + j), np.float64), np.asarray(mine(j), np.float64)
