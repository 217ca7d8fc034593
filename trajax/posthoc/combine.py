"""One pass over a run's checkpoints: every plan's average, params and BatchNorm statistics.

Σ_j x_j · snapshot_j in float64, each needed checkpoint read once
(:meth:`trajax.runs.Run.state_at`; nothing in the run is written), cast back
to the params' dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from trajax import averaging
from trajax.posthoc.plan import AVERAGE, PARAMS, PROFILES, Plan, plan, profile_source
from trajax.posthoc.targets import target, user_kernel

__all__ = ["Average", "combine", "posthoc_average"]


class Average(NamedTuple):
  """A post-hoc average: params, the (combined) BatchNorm statistics, its plan."""

  params: Any
  batch_stats: Any
  plan: Plan


def combine(run, plans: Sequence[Plan]) -> list[Average]:
  """Every plan's average, reading each needed checkpoint once (float64 sums).

  Params and BatchNorm statistics are combined with the same coefficients
  (the run's averaged statistics for 'average' columns, where it kept them;
  the step's own statistics for profile columns, which average params only).
  """
  plans = list(plans)
  needed = sorted({t for p in plans for (t, _) in p.coefficients})
  acc = [None] * len(plans)
  dtypes = None
  for t in needed:
    state = run.state_at(t)
    snap = {PARAMS: (state.params, state.batch_stats)}
    if any((t, AVERAGE) in p.coefficients for p in plans):
      avg = averaging.averaged_params(state.opt_state, state.params)
      bn = getattr(state.bn_average, "average", None)
      snap[AVERAGE] = (avg, bn if bn is not None else state.batch_stats)
    if any(src.startswith(PROFILES) for p in plans for (s_, src) in p.coefficients if s_ == t):
      profiles = averaging.profile_averages(state.opt_state, state.params)
      for i, prof in enumerate(profiles):
        snap[profile_source(i)] = (prof, state.batch_stats)
    snap = {k: jax.tree.map(lambda a: np.asarray(a, np.float64), v) for k, v in snap.items()}
    if dtypes is None:
      dtypes = jax.tree.map(lambda a: np.asarray(a).dtype, (state.params, state.batch_stats))
    for i, p in enumerate(plans):
      for src in snap:
        x = p.coefficients.get((t, src))
        if x is None:
          continue
        term = jax.tree.map(lambda a, x=x: x * a, snap[src])
        acc[i] = term if acc[i] is None else jax.tree.map(np.add, acc[i], term)
  out = []
  for p, a in zip(plans, acc, strict=True):
    params, stats = jax.tree.map(lambda v, d: np.asarray(v, d), a, dtypes)
    out.append(Average(params, stats, p))
  return out


def posthoc_average(
  run,
  method: str | None = None,
  *,
  kernel=None,
  end: int | None = None,
  sources: Sequence[str] | None = None,
  exact: bool = False,
  **params,
) -> Average:
  """One post-hoc average: of registered ``method`` (with ``params``) or of a user ``kernel``.

  ``end`` defaults to the run's last committed step (a method's average at
  ``end``; a user kernel's length).
  """
  if (method is None) == (kernel is None):
    raise ValueError("give exactly one of method= (a registered averaging method) or kernel=")
  if method is not None:
    tgt = target(method, end=run.steps[-1] if end is None else end, **params)
  else:
    tgt = user_kernel(kernel, end=end)
  return combine(run, [plan(run, tgt, sources=sources, exact=exact)])[0]
