"""The side-trip equivalent to a post-hoc average (Fig. 1 on a finished run), exact by construction.

A side-trip from θ_S at learning rate w_j · η_{S+j}, w the step weights of
the kernel c on θ_S … θ_E (w_j = Σ_{i>j} c_{S+i},
:meth:`trajax.averaging.Kernel.step_weights`, eq. * of
:mod:`trajax.schedules`), lands on Σ_t c_t θ_t for a loss linear per batch.
Posthoc hands the side-trip the kernel it built, as a
:class:`trajax.averaging.Kernel` value (``sidetrip.average``): the side-trip
runs that kernel's step weights, so it is the post-hoc average's equivalent
whatever method, parameters or user weights the kernel came from. No
parameter names cross over; the one condition left is that S be a committed
step of the run (:func:`sidetrip_command` picks the latest committed step at
or before the kernel's support: full steps, w_j = 1, up to it).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from trajax import averaging, paths, schedules
from trajax.posthoc.outputs import write_new
from trajax.posthoc.plan import Plan
from trajax.posthoc.targets import check_int

__all__ = ["equivalent_schedule", "sidetrip_command", "sidetrip_kernel"]


def _support(c: np.ndarray) -> tuple[int, int]:
  """First and last step of the side-trip over kernel c: (S, E), S < E."""
  nz = np.flatnonzero(c)
  if nz.size == 0:
    raise ValueError("kernel is zero everywhere")
  first, last = int(nz[0]), int(nz[-1])
  if first == last:
    first = max(last - 1, 0)
    if first == last:
      raise ValueError("a kernel on step 0 alone has no side-trip (it is θ_0)")
  return first, last


def sidetrip_kernel(kernel, *, start: int | None = None) -> tuple[int, averaging.Kernel]:
  """``(S, Kernel of c_S … c_E)``: the side-trip's branch step and the average it reaches.

  ``kernel``: a :class:`Plan` or a 1-D kernel c over steps 0 … E. S is
  ``start`` (at or before the first step of c's support; default that step,
  E − 1 for a one-point kernel); the weights before the support are 0 (full
  steps along the parent's trajectory).
  """
  c = np.asarray(kernel.kernel if isinstance(kernel, Plan) else kernel, np.float64)
  first, last = _support(c)
  if start is not None:
    start = check_int("start", start, 0)
    if start > first:
      raise ValueError(
        f"start = {start}: the kernel has weight on step {first} before it, which no "
        "side-trip from there reaches"
      )
    first = start
  return first, averaging.Kernel.of(c[first : last + 1])


def equivalent_schedule(kernel, base, *, start: int | None = None) -> tuple[int, int, Any]:
  """The side-trip equivalent to a post-hoc kernel: ``(start, window, schedule)``.

  ``kernel``: a :class:`Plan` or a 1-D kernel c over steps 0 … end. With S the
  first and E the last step of c's support (S = E − 1 for a one-point
  kernel; ``start``: an earlier S), w the step weights of c_S … c_E
  (:func:`sidetrip_kernel`) and ``schedule(j) = base(S + j) · w_j`` for
  j < E − S, 0 after (:func:`trajax.schedules.weighted_schedule`, the
  side-trip's own rule): a side-trip from θ_S with it lands on Σ_t c_t θ_t
  for a loss linear per batch. ``base``: the run's learning rate (float or
  schedule of the absolute step).

  Example:

    ¼ θ_2 + ¾ θ_4 is a side-trip from θ_2 at ¾ of the rate for two steps:

    >>> from trajax import posthoc
    >>> _, c = posthoc.user_kernel({2: 1, 4: 3})
    >>> start, window, sched = posthoc.equivalent_schedule(c, 0.1)
    >>> print(start, window, [round(float(sched(j)), 3) for j in range(3)])
    2 2 [0.075, 0.075, 0.0]
  """
  first, value = sidetrip_kernel(kernel, start=start)
  return first, value.window, schedules.weighted_schedule(base, value.step_weights(), start=first)


def _latest_committed(steps: Sequence[int], first: int) -> int | None:
  before = [s for s in steps if s <= first]
  return max(before) if before else None


def sidetrip_command(
  run,
  kernel,
  *,
  out: str,
  name: str,
  config_file: str,
  workdir: str,
  python: str = "python",
) -> dict:
  """The ``python -m trajax.sidetrip`` command whose average is ``kernel``, written as data.

  ``kernel`` (a :class:`Plan` or a 1-D kernel over steps) goes to the side-trip
  as it is: ``sidetrip.average`` is the :class:`trajax.averaging.Kernel` of
  c_S … c_E, ``sidetrip.window`` its E − S, from S the latest committed step
  at or before c's support. The section is JSON, ``OUT/NAME`` (``name`` a
  plain file name), which ``config_file`` (the fixed
  :data:`trajax.posthoc.outputs.RUN_CONFIG_PY`) reads when given as
  ``--config=CONFIG_FILE:NAME``; an OUT in a bucket (which ml_collections
  cannot load a config file from) is named by the side-trip's
  ``--sidetrip_section=OUT/NAME`` instead, its config then the parent's
  stored one. No value or path is put into code, and a kernel of any length
  stays off the command line.

  Returns ``{'command', 'start', 'window', 'exact', 'note', 'fields',
  'section', 'workdir'}``: ``fields`` the side-trip section, ``section`` its
  file; ``exact`` is True when S is a committed step (the side-trip then
  runs this kernel by construction), else ``note`` says why not.
  """
  if os.sep in name or name.startswith("."):
    raise ValueError(f"name = {name!r}: must be a plain file name")
  c = np.asarray(kernel.kernel if isinstance(kernel, Plan) else kernel, np.float64)
  first, _ = _support(c)
  committed = _latest_committed(run.steps, first)
  start, value = sidetrip_kernel(c, start=committed)
  fields = {"kind": "equivalent", "average": str(value), "window": value.window}
  section = paths.join(out, name)
  write_new(section, json.dumps(fields))
  flags = [f"--parent={run.directory}", f"--step={start}", f"--workdir={workdir}"]
  if paths.is_remote(section):
    # ml_collections loads a --config file only from a local disk: the section
    # is read through the path layer, the config is the parent's stored one.
    flags.append(f"--sidetrip_section={section}")
  else:
    flags.append(f"--config={config_file}:{name}")
  note = None
  if committed is None:
    note = (
      f"step S = {start} is not a committed checkpoint of the run (committed: {run.steps}); "
      "no committed step lies at or before the kernel's first step"
    )
  return {
    "command": shlex.join([python, "-m", "trajax.sidetrip", *flags]),
    "start": int(start),
    "window": int(value.window),
    "exact": note is None,
    "note": note,
    "fields": fields,
    "section": section,
    "workdir": workdir,
  }
