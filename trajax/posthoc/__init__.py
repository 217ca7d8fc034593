"""Averages chosen after training: any kernel, rebuilt from a run's checkpoints.

Every average of the trajectory is a kernel c over steps (paper eqs. 22-29,
:func:`trajax.averaging.kernel`): a_T = Σ_t c_t θ_t with c ≥ 0, Σ c = 1. A
finished run saved some snapshots: the params θ_t at each committed step t,
and, if it averaged during training, the in-training average a^run_t, itself
a known kernel k^run_t (derived from the run's own averager). Each snapshot is
a column of a basis B over steps (a one-hot column e_t for θ_t, k^run_t for
a^run_t).

Which combination Bx is "best"? With θ_t = θ_0 − Σ_{j<t} Δ_j (Δ_j = λ_j g_j,
the j-th update) and both kernels summing to one,

    Σ_t (Bx − c)_t θ_t = −Σ_j (W(Bx)_j − W(c)_j) Δ_j,   W(v)_j = Σ_{i>j} v_i,

where W(c) are the step weights of c's equivalent schedule (eq. * of
:mod:`trajax.schedules`). When the updates are uncorrelated with equal
variance (SGD's noise-dominated phase, the paper's quadratic model in its
stationary regime) the expected squared error of the rebuilt average is
σ² ‖W(Bx − c)‖², so post-hoc averaging solves

    x* = argmin_x ‖W(B x − c)‖²  subject to  Σ_j x_j = 1                   (PH)

and returns Σ_j x*_j · snapshot_j. (A plain ‖Bx − c‖² would ignore where the
missing mass lies: for one-hot columns its answer hardly depends on c.) W is
invertible on kernels summing to one, so where c's support lies on saved
steps (PH) reproduces it exactly: the result is the in-training average of
the same method to float32 round-off, and if the params alone do that they
are used alone. Elsewhere it is the least-squares best combination of what
was saved (the anchor is Karras et al. 2024's post-hoc EMA, whose basis is a
few in-training EMA profiles). Reported with it: :attr:`Plan.residual` =
‖B x* − c‖₁, the kernel mass put in the wrong place (0: exact, up to 2), and
:attr:`Plan.schedule_residual` = ‖W(Bx* − c)‖₂ / ‖W(c)‖₂, the relative error
of the equivalent schedule, which (PH) minimises.

Each kernel has its equivalent side-trip (:func:`equivalent_schedule`,
through the step weights of :class:`trajax.averaging.Kernel`, eq. * of
:mod:`trajax.schedules`): a side-trip from the first step S of c's support,
with learning rate w_j · η_{S+j}, lands on the average for a loss linear per
batch. :func:`sidetrip_command` hands the side-trip that kernel itself
(``sidetrip.average``), so it is exact by construction.

Usage::

  run = open_run("workdirs/mnist1d")
  plans = [posthoc.plan(run, posthoc.target("ema", end=6000, decay=d)) for d in decays]
  for plan, avg in zip(plans, posthoc.combine(run, plans)):
    print(plan.label, plan.residual, avg.params)

A plan whose kernel residual exceeds :data:`RESIDUAL_THRESHOLD` (0.05: 2.5 %
of the kernel's mass in the wrong place) is *approximate*
(:attr:`Plan.approximate`): it is not the average it is labelled with, and
:func:`save_next_time` says what a run must save to make it exact.
:func:`representable` picks, from a grid of a method's parameter, the values
the run's snapshots rebuild within the threshold.

Nothing in the run's directory is written (reads go through
:meth:`trajax.runs.Run.state_at`). Core: no TensorFlow import here.

Modules, one idea each: :mod:`~trajax.posthoc.targets` (the kernel c of a
method or of user weights), :mod:`~trajax.posthoc.plan` (the basis and
(PH)), :mod:`~trajax.posthoc.combine` (one pass over the checkpoints),
:mod:`~trajax.posthoc.sidetrips` (the equivalent side-trip),
:mod:`~trajax.posthoc.evaluation` (:class:`Evaluator`: the run's metrics and
BatchNorm policy); for ``python -m trajax.posthoc``: :mod:`~trajax.posthoc.cli`
(flags generated from the averaging registry), :mod:`~trajax.posthoc.outputs`
(where and what it writes), :mod:`~trajax.posthoc.report` (console and plot).
"""

from __future__ import annotations

from trajax.posthoc.combine import Average, combine, posthoc_average
from trajax.posthoc.evaluation import Evaluator
from trajax.posthoc.plan import (
  RESIDUAL_THRESHOLD,
  MissingSnapshotsError,
  Plan,
  basis,
  plan,
  plans,
  representable,
  run_averaging,
  run_profiles,
  save_next_time,
)
from trajax.posthoc.sidetrips import equivalent_schedule, sidetrip_command, sidetrip_kernel
from trajax.posthoc.targets import target, user_kernel

__all__ = [
  "Average",
  "Evaluator",
  "MissingSnapshotsError",
  "Plan",
  "basis",
  "combine",
  "equivalent_schedule",
  "RESIDUAL_THRESHOLD",
  "plan",
  "plans",
  "representable",
  "save_next_time",
  "posthoc_average",
  "run_averaging",
  "run_profiles",
  "sidetrip_command",
  "sidetrip_kernel",
  "target",
  "user_kernel",
]
