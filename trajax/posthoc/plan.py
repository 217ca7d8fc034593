"""The plan: which combination of a run's snapshots rebuilds a target kernel, solved as (PH).

The basis B (:func:`basis`) has one column per snapshot: a one-hot e_t for
θ_t, the run's in-training kernel k^run_t for its average at t, a profile's
k^i_t. :func:`plan` solves

    x* = argmin_x ‖W(B x − c)‖²  subject to  Σ_j x_j = 1                   (PH)

with W(v)_j = Σ_{i>j} v_i (the package docstring derives it) and reports the
kernel residual ‖Bx* − c‖₁. :func:`representable` picks the parameter values
a run rebuilds within :data:`RESIDUAL_THRESHOLD`; :func:`save_next_time`
says what a run must save to make an average exact. Planning only: NumPy,
no checkpoint is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from trajax import averaging
from trajax.posthoc.targets import target

__all__ = [
  "AVERAGE",
  "EXACT_ATOL",
  "MissingSnapshotsError",
  "PARAMS",
  "PROFILES",
  "Plan",
  "RESIDUAL_THRESHOLD",
  "SOURCES",
  "basis",
  "plan",
  "plans",
  "profile_source",
  "representable",
  "run_averaging",
  "run_profiles",
  "save_next_time",
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


def run_averaging(run) -> tuple[str, dict]:
  """``(method, params)`` of the run's in-training averaging (config of its last step)."""
  section = run.config.averaging
  method = section.method
  return method, averaging.method_params(method, section)


def run_profiles(run) -> list[tuple[str, dict]]:
  """``(method, params)`` of each of the run's profiles (``averaging.profiles``; may be empty)."""
  profiles = run.config.averaging.get("profiles", ()) or ()
  return [averaging.profile_params(entry) for entry in profiles]


def profile_source(i: int) -> str:
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
  kept += [(profile_source(i), *profiles[i]) for i in profile_ids]
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
