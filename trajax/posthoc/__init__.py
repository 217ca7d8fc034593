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

Each kernel has its equivalent side-trip schedule (:func:`equivalent_schedule`,
through :func:`trajax.schedules.weights_from_kernel`, eq. * there): a
side-trip from the first step S of c's support, with learning rate
w_j · η_{S+j}, lands on the average for a loss linear per batch.

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
the run's snapshots rebuild within the threshold (the CLI's default sweep).

Nothing in the run's directory is written (reads go through
:meth:`trajax.runs.Run.state_at`). Core: no TensorFlow import here.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from trajax import averaging, schedules

__all__ = [
  "Average",
  "MissingSnapshotsError",
  "Plan",
  "basis",
  "combine",
  "equivalent_schedule",
  "RESIDUAL_THRESHOLD",
  "method_equivalent_schedule",
  "plan",
  "plans",
  "representable",
  "save_next_time",
  "posthoc_average",
  "run_profiles",
  "sidetrip_command",
  "target",
  "user_kernel",
]

PARAMS, AVERAGE, PROFILES = "params", "average", "profiles"
SOURCES = (PARAMS, AVERAGE, PROFILES)
EXACT_ATOL = 1e-9
# Kernel residual ‖Bx − c‖₁ above which an average is flagged approximate: at
# most 2.5 % of the kernel's mass misplaced (the residual counts it twice:
# missing where it belongs, present where it does not). The README's default
# run rebuilds EMAs of δ ≈ 9e-4 … 4e-3 and power EMAs of γ ≈ 3 … 22 within it.
RESIDUAL_THRESHOLD = 0.05


class MissingSnapshotsError(ValueError):
  """The run lacks the snapshots an exact post-hoc average needs."""


class Plan(NamedTuple):
  """How one target kernel is rebuilt from a run's snapshots.

  Attributes:
    label: a name for the target ('ema(decay=0.001)', 'kernel', ...).
    kernel: the target c over steps 0 … end (float64, sums to 1).
    coefficients: {(step, source): x} with source 'params' (θ_step),
      'average' (the run's in-training average at step) or 'profiles[i]'
      (the i-th profile of ``averaging.profiles`` at step); zeros dropped.
    residual: ‖B x − c‖₁, the kernel mass misplaced (0 where exact).
    exact: residual <= 1e-9.
    schedule_residual: ‖W(Bx − c)‖₂ / ‖W(c)‖₂, the relative error of the
      equivalent schedule's step weights (what the least squares minimises).
  """

  label: str
  kernel: np.ndarray
  coefficients: dict
  residual: float
  exact: bool
  schedule_residual: float = 0.0

  @property
  def approximate(self) -> bool:
    """Kernel residual above :data:`RESIDUAL_THRESHOLD`: not the average its label names."""
    return self.residual > RESIDUAL_THRESHOLD

  @property
  def support(self) -> tuple[int, int]:
    """First and last step where the target kernel is non-zero."""
    nz = np.flatnonzero(self.kernel)
    return int(nz[0]), int(nz[-1])


class Average(NamedTuple):
  """A post-hoc average: params, the (combined) BatchNorm statistics, its plan."""

  params: Any
  batch_stats: Any
  plan: Plan


# --------------------------------------------------------------------------- kernels


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
  end = _check_int("end", end, 1)
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
      s = _check_int("kernel step", k, 0)
      if not isinstance(v, numbers.Real) or not np.isfinite(v):
        raise ValueError(f"kernel[{s}] = {v!r}: must be a finite number")
      steps[s] = float(v)
    last = max(steps)
    end = last if end is None else _check_int("end", end, last)
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
      end = _check_int("end", end, c.size - 1)
      c = np.concatenate([c, np.zeros(end + 1 - c.size)])
  total = float(c.sum())
  if not total > 0:
    raise ValueError(
      f"kernel: total weight is {total:.6g}; an average needs a positive total "
      "(the weights are divided by it)"
    )
  return label, c / total


def _check_int(name, value, minimum) -> int:
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


# --------------------------------------------------------------------------- basis and plan


def run_averaging(run) -> tuple[str, dict]:
  """``(method, params)`` of the run's in-training averaging (config of its last step)."""
  section = run.config.averaging
  method = section.method
  return method, averaging.method_params(method, section)


def run_profiles(run) -> list[tuple[str, dict]]:
  """``(method, params)`` of each of the run's profiles (``averaging.profiles``; may be empty)."""
  profiles = run.config.averaging.get("profiles", ()) or ()
  return [averaging.profile_params(entry) for entry in profiles]


def _profile_source(i: int) -> str:
  return f"{PROFILES}[{i}]"


def _check_sources(run, sources) -> tuple[bool, bool, list[int]]:
  """``(params, average, profile indices)`` the columns may use.

  ``None``: everything the run saved. Explicit sources must exist in the run:
  'average' needs an in-training average, 'profiles' (all) or 'profiles[i]'
  a profile, else :class:`MissingSnapshotsError` names the config field.
  """
  method, _ = run_averaging(run)
  n = len(run_profiles(run))
  if sources is None:
    return True, method != "none", list(range(n))
  if isinstance(sources, str):
    sources = (sources,)
  allowed = f"{SOURCES} or 'profiles[i]'"
  use_params = use_average = False
  profiles: set[int] = set()
  for src in sources:
    if src == PARAMS:
      use_params = True
    elif src == AVERAGE:
      if method == "none":
        raise MissingSnapshotsError(
          f"sources: 'average' needs the run's in-training average, but {run.directory!r} "
          "kept none (its averaging.method is 'none')"
        )
      use_average = True
    elif isinstance(src, str) and (src == PROFILES or src.startswith(PROFILES + "[")):
      if src == PROFILES:
        wanted = range(n)
      else:
        inside = src[len(PROFILES) + 1 : -1]
        if not (src.endswith("]") and inside.isdigit()):
          raise ValueError(f"sources: {src!r} is not one of {allowed}")
        wanted = [int(inside)]
      missing = [i for i in wanted if i >= n] if src != PROFILES else ([] if n else [0])
      if missing:
        raise MissingSnapshotsError(
          f"sources: {src!r} needs averaging.profiles[{missing[0]}], but {run.directory!r} "
          f"kept {n} profile(s) (its averaging.profiles = {tuple(run.config.averaging.profiles)!r})"
        )
      profiles.update(wanted)
    else:
      raise ValueError(f"sources: {src!r} is not one of {allowed}")
  return use_params, use_average, sorted(profiles)


def basis(
  run, end: int, *, sources: Sequence[str] | None = None, steps: Iterable[int] | None = None
) -> tuple[list[tuple[int, str]], np.ndarray]:
  """The snapshot columns over steps 0 … end: ``(columns, B)`` with B of shape (end+1, n).

  ``sources``: 'params', 'average', 'profiles' (every profile) or
  'profiles[i]'; None (default) uses every snapshot the run saved.
  ``steps`` (default: every committed step <= end) must all be committed.
  The 'average' columns are the run's derived kernels k^run_t (none if the
  run did not average), the 'profiles[i]' columns the i-th profile's k^i_t.
  """
  use_params, use_average, profile_ids = _check_sources(run, sources)
  committed = run.steps
  if steps is None:
    steps = [s for s in committed if s <= end]
  else:
    steps = sorted({int(s) for s in steps})
    missing = [s for s in steps if s not in committed]
    if missing:
      raise MissingSnapshotsError(
        f"steps {missing} are not committed checkpoints of {run.directory!r} "
        f"(committed: {committed})"
      )
    late = [s for s in steps if s > end]
    if late:
      raise ValueError(f"steps {late} lie after the kernel's end step {end}")
  if not steps:
    raise MissingSnapshotsError(
      f"no committed checkpoint at or before step {end} in {run.directory!r} "
      f"(committed: {committed})"
    )
  method, params = run_averaging(run)
  kept = [(AVERAGE, method, params)] if use_average and method != "none" else []
  profiles = run_profiles(run)
  kept += [(_profile_source(i), *profiles[i]) for i in profile_ids]
  columns, vectors = [], []
  for t in steps:
    if use_params:
      e = np.zeros(end + 1)
      e[t] = 1.0
      columns.append((t, PARAMS))
      vectors.append(e)
    if t < 1:
      continue  # every average is θ_0 at step 0
    for source, m, p in kept:
      _, k = target(m, end=t, **p)
      columns.append((t, source))
      vectors.append(np.concatenate([k, np.zeros(end - t)]))
  if not columns:
    raise MissingSnapshotsError(
      f"sources {tuple(sources)!r}: no snapshot at steps {steps} of {run.directory!r}"
    )
  return columns, np.stack(vectors, axis=1)


def _tail(v: np.ndarray) -> np.ndarray:
  """W(v)_j = Σ_{i>j} v_i, j = 0 … end−1 (along axis 0)."""
  return np.cumsum(v[::-1], axis=0)[::-1][1:]


def _solve(B: np.ndarray, c: np.ndarray) -> np.ndarray:
  """(PH) via its KKT system, in least squares (B may be rank-deficient)."""
  tb, tc = _tail(B), _tail(c)
  n = B.shape[1]
  kkt = np.zeros((n + 1, n + 1))
  kkt[:n, :n] = tb.T @ tb
  kkt[:n, n] = kkt[n, :n] = 1.0
  rhs = np.concatenate([tb.T @ tc, [1.0]])
  return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]


def plan(
  run,
  kernel: tuple[str, np.ndarray],
  *,
  sources: Sequence[str] | None = None,
  steps: Iterable[int] | None = None,
  exact: bool = False,
) -> Plan:
  """Solves (PH) for ``kernel`` = ``(label, c)`` (from :func:`target`, :func:`user_kernel`).

  Args:
    run: a :class:`trajax.runs.Run`.
    kernel: the target.
    sources: which snapshots may be used: 'params' (θ_t), 'average' (the run's
      in-training average at t), 'profiles' / 'profiles[i]' (its extra
      averages); None: all the run saved.
    steps: restrict to these committed steps (default all up to the end).
    exact: raise :class:`MissingSnapshotsError` naming the missing steps
      unless the result is exact.
  """
  return plans(run, [kernel], sources=sources, steps=steps, exact=exact)[0]


def plans(
  run,
  kernels: Sequence[tuple[str, np.ndarray]],
  *,
  sources: Sequence[str] | None = None,
  steps: Iterable[int] | None = None,
  exact: bool = False,
) -> list[Plan]:
  """:func:`plan` of each kernel, the basis built once per end step (a sweep's grid)."""
  steps = None if steps is None else list(steps)
  cache: dict[int, tuple] = {}
  out = []
  for label, c in kernels:
    c = np.asarray(c, np.float64)
    end = c.size - 1
    if end > run.steps[-1]:
      raise MissingSnapshotsError(
        f"{label}: the kernel ends at step {end}, after the run's last committed step "
        f"{run.steps[-1]} ({run.directory!r})"
      )
    if end not in cache:
      cache[end] = basis(run, end, sources=sources, steps=steps)
    columns, B = cache[end]
    out.append(_plan(run, label, c, columns, B, exact))
  return out


def _plan(run, label: str, c: np.ndarray, columns, B: np.ndarray, exact: bool) -> Plan:
  x = None
  # The plainest exact combination first: one snapshot that is the target
  # (the run's average or a profile of the same method at the end step),
  # then the params alone.
  single = np.abs(B - c[:, None]).sum(axis=0)
  if single.size and single.min() <= EXACT_ATOL:
    x = np.zeros(len(columns))
    x[int(np.argmin(single))] = 1.0
  own = [i for i, (_, src) in enumerate(columns) if src == PARAMS]
  if x is None and len(own) < len(columns) and own:
    # The params alone, if they are exact: the plainest combination.
    x_own = _solve(B[:, own], c)
    if np.abs(B[:, own] @ x_own - c).sum() <= EXACT_ATOL:
      x = np.zeros(len(columns))
      x[own] = x_own
  if x is None:
    x = _solve(B, c)
  residual = float(np.abs(B @ x - c).sum())
  tc = _tail(c)
  norm = float(np.linalg.norm(tc))
  sched_res = float(np.linalg.norm(_tail(B @ x - c)) / norm) if norm > 0 else 0.0
  coefficients = {col: float(v) for col, v in zip(columns, x, strict=True) if abs(v) > 1e-12}
  is_exact = residual <= EXACT_ATOL
  if exact and not is_exact:
    saved = {t for t, _ in columns}
    missing = [int(t) for t in np.flatnonzero(c) if t not in saved]
    shown = missing[:20] + (["…"] if len(missing) > 20 else [])
    used = sorted({src for _, src in columns})
    raise MissingSnapshotsError(
      f"{label}: not exact from the run's snapshots {used} (kernel residual {residual:.3g}); "
      f"it needs steps {shown} ({len(missing)} missing) in {run.directory!r}, or a profile "
      "of its method and parameters (averaging.profiles)"
    )
  return Plan(label, c, coefficients, residual, is_exact, sched_res)


def representable(
  run,
  method: str,
  name: str,
  candidates: Iterable[float],
  *,
  end: int | None = None,
  threshold: float = RESIDUAL_THRESHOLD,
  sources: Sequence[str] | None = None,
  **params,
) -> list[tuple[float, float]]:
  """``(value, residual)`` for each candidate of ``method``'s parameter ``name`` whose
  average at ``end`` (default: the last step) the run's snapshots rebuild with kernel
  residual ‖Bx − c‖₁ <= ``threshold``; ``params`` are the method's other parameters.

  E.g. the EMA decays a run supports: ``representable(run, 'ema', 'decay',
  np.geomspace(1e-4, 0.1, 61))``. Planning only (NumPy): no checkpoint is read.
  """
  end = run.steps[-1] if end is None else end
  values = [float(v) for v in candidates]
  kernels = [target(method, end=end, **{**params, name: v}) for v in values]
  got = plans(run, kernels, sources=sources)
  return [(v, p.residual) for v, p in zip(values, got, strict=True) if p.residual <= threshold]


def save_next_time(run, approximate: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
  """What a run must save for these averages to be exact: one sentence.

  ``approximate``: ``(method, params)`` of each approximate average. A
  profile of the same method and parameters (``averaging.profiles``) holds
  that average at every saved step, so it is exact from it; otherwise every
  step of its kernel must be a kept checkpoint.
  """
  entries = [dict(e) for e in (run.config.averaging.get("profiles", ()) or ())]
  wanted = []
  for method, params in approximate:
    entry = {"method": method, **{k: v for k, v in params.items() if v is not None}}
    if method in ("ema", "power_ema") and entry not in wanted and entry not in entries:
      wanted.append(entry)
  parts = []
  if len(wanted) > 3:
    # A whole grid: one profile each is too many; the two power-EMA profiles of
    # Karras et al. with every checkpoint kept rebuild a range of them.
    pair = "({'method': 'power_ema', 'gamma': 16.97}, {'method': 'power_ema', 'gamma': 6.94})"
    parts.append(
      f'--config.averaging.profiles="{pair}" and --config.checkpoint.max_to_keep=None '
      "(as configs/mnist1d.py: they rebuild EMAs whose memory 1/δ spans 0.5 … 2.5 checkpoint "
      "intervals)"
    )
  elif wanted:
    shown = entries + wanted
    profiles = "(" + ", ".join(repr(e) for e in shown) + ("," if len(shown) == 1 else "") + ")"
    parts.append(f'--config.averaging.profiles="{profiles}": a profile\'s own average is exact')
  parts.append(
    ("or " if parts else "")
    + "keep every step the kernel weighs: --config.checkpoint.max_to_keep=None with "
    "--config.checkpoint_every_steps=1 (or a cadence well under the averages' memory)"
  )
  return (
    "to make them exact next time, " + ("train with " if len(parts) > 1 else "") + "; ".join(parts)
  )


# --------------------------------------------------------------------------- one pass


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
        snap[_profile_source(i)] = (prof, state.batch_stats)
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


# --------------------------------------------------------------------------- schedules


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
    start = _check_int("start", start, 0)
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


# --------------------------------------------------------------------------- side-trip command


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
