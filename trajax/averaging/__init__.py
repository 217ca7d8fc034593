"""Parameter averaging: each method defined once, with its three faces.

Let θ_0 be the params given to ``init`` and θ_t the params after the t-th
update. With s = start_step, the average a_t after the t-th update is

* t ≤ s: ``a_t = θ_t`` (the average follows the params until averaging starts);
* EMA (paper eq. 25): ``a_t = (1 − δ)·a_{t−1} + δ·θ_t`` with ``a_s = θ_s``;
  with ``debias=True`` the accumulator starts from zero at s and is divided by
  ``1 − (1 − δ)^p`` after p points, so θ_s itself is not part of the average;
* SWA (Izmailov et al. 2018; paper eqs. 22-24): the mean of θ_{s+1}, …, θ_t;
* ``every=c`` (EMA, SWA): θ_t enters only when (t − s) is a multiple of c,
  and the average is held in between (SWA's cycle length);
* power EMA (Karras et al. 2024): ``a_t = β_p a_{t−1} + (1 − β_p) θ_t`` at the
  p-th point, β_p = (1 − 1/p)^{γ+1}: a profile ∝ p^γ whose width grows with t;
* multi-point (paper A.4), n points ``gap`` apart: a snapshot of θ_t is taken
  whenever t ≥ s and (t − s) is a multiple of ``gap``; the average is the mean
  of the n most recent snapshots (of all of them while fewer than n exist).
  Between snapshot steps it is held. Two-point (paper Sec. 4, A.3) is n = 2.

Every method but multi-point is one update ``a ← a + w_t·(θ_t − a)`` (w_t
is 1 while following, 0 between points, δ for EMA, 1/p for SWA,
δ / (1 − (1 − δ)^p) for debiased EMA): the lerp form, whose two weights sum
to one in floating point, so a float32 average does not drift over 10^6
steps (:func:`trajax.averaging.averagers.lerp`); it is exact at w = 0 and 1.

One definition, three faces. :data:`METHODS` maps each name to a
:class:`Method`: its parameters (type, range, default, static or not), its
averager factory, its default window and optional closed-form fast paths
(:mod:`trajax.kernels`). Everything else derives from it:

* the arithmetic: :func:`make_averager` → :class:`Averager` (pure
  ``init``/``update`` on any pytree, e.g. Flax ``batch_stats``), and the optax
  wrappers (:func:`wrap`, :func:`ema`, … in ``trajax.averaging.wrappers``, exact in any
  ``optax.chain`` position: read the average with ``averaged_params(state, params)``);
* the kernel c_i, the weight of θ_i in a_k, *derived* by running the averager
  (it is linear in θ) — :func:`kernel` — from which :mod:`trajax.schedules`
  builds the equivalent learning-rate schedule and :mod:`trajax.theory` the
  stationary variance;
* config checks: :func:`validate_params` and :func:`method_params` read the
  flat ``averaging`` config section;
* the value: :class:`Average` (a method with its checked parameters) and
  :class:`Kernel` (any average, by its weights), one immutable value that
  the config, side-trips, posthoc and experiments hand around
  (:func:`average`, :func:`as_average`, spelt ``ema(decay=0.01, every=1)``);
  :func:`params_for_window` (the inverse of a record's default window) and
  each record's :class:`Sweep` (which parameter a sweep varies).

A new method is one :func:`register` call; its schedule and theory follow.

Profiles: :func:`with_profiles` keeps extra averages of the params beside an
optimizer (``averaging.profiles`` of a run config, read back with
:func:`profile_averages`), the snapshots :mod:`trajax.posthoc` rebuilds any
EMA from.
"""

from trajax.averaging.averagers import (
  ACCUMULATOR_DTYPE,
  DEBIAS,
  DECAY,
  EVERY,
  GAMMA,
  GAP,
  START_STEP,
  Averager,
  AverageState,
  N,
  Param,
  Points,
  ema_averager,
  identity_averager,
  multi_point_averager,
  power_ema_averager,
  power_ema_gamma,
  power_ema_sigma_rel,
  swa_averager,
  two_point_averager,
)
from trajax.averaging.methods import (
  METHODS,
  Method,
  Sweep,
  check_params,
  get_method,
  kernel,
  make_averager,
  make_profiles,
  method_params,
  params_for_window,
  profile_params,
  register,
  step_weights_table,
  validate_params,
  validate_profiles,
)
from trajax.averaging.value import (
  KERNEL,
  Average,
  Kernel,
  as_average,
  average,
)
from trajax.averaging.wrappers import (
  AveragingState,
  ProfilesState,
  ProfileState,
  averaged_params,
  ema,
  find_profiles,
  find_states,
  from_eager_state,
  multi_point,
  power_ema,
  profile_averages,
  profile_from_eager_state,
  swa,
  two_point,
  with_profiles,
  wrap,
)

__all__ = [
  "ACCUMULATOR_DTYPE",
  "DEBIAS",
  "DECAY",
  "EVERY",
  "GAMMA",
  "GAP",
  "KERNEL",
  "METHODS",
  "N",
  "START_STEP",
  "Average",
  "AverageState",
  "Averager",
  "AveragingState",
  "Kernel",
  "Method",
  "Param",
  "Points",
  "ProfileState",
  "ProfilesState",
  "Sweep",
  "as_average",
  "average",
  "averaged_params",
  "check_params",
  "ema",
  "ema_averager",
  "find_profiles",
  "find_states",
  "from_eager_state",
  "get_method",
  "identity_averager",
  "kernel",
  "make_averager",
  "make_profiles",
  "method_params",
  "multi_point",
  "multi_point_averager",
  "params_for_window",
  "power_ema",
  "power_ema_averager",
  "power_ema_gamma",
  "power_ema_sigma_rel",
  "profile_averages",
  "profile_from_eager_state",
  "profile_params",
  "register",
  "step_weights_table",
  "swa",
  "swa_averager",
  "two_point",
  "two_point_averager",
  "validate_params",
  "validate_profiles",
  "with_profiles",
  "wrap",
]
