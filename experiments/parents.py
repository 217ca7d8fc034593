"""The parent run of an experiment and replays of it (paper Secs. 3, 5).

Every figure module branches from a main trajectory, its *parent*:

1. :func:`ensure_parent` trains it in ``DIR/parent`` with checkpoints at the
   steps the experiment branches from, or reuses a finished one (resumable: a
   killed run continues from its own latest checkpoint); ``--exp.parent``
   names an existing one instead (:func:`parent_dir`);
2. :func:`trajax.runs.open_run` reads it (or a side-trip's workdir) read-only:
   ``run.state_at(step)``, ``run.config_at(step)``, ``run.model``,
   ``run.dataset`` (never a ``CheckpointManager`` on another run's directory);
3. :func:`stepper` copies a state into :class:`trajax.runs.Stepper`, the
   engine's own step in lock-step, at a scaled rate and its own position in
   the batch stream; :func:`replay_averages` replays the parent's steps with
   averagers riding along.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping

import numpy as np

from experiments.cli import log

__all__ = [
  "committed_steps",
  "equivalent_sidetrip",
  "ensure_parent",
  "final_step",
  "metric_series",
  "parent_config",
  "parent_dir",
  "read_metrics",
  "replay_averages",
  "stepper",
  "window_average",
]

PARENT_SUBDIR = "parent"


# ----------------------------------------------------------------------------
# the parent run


def committed_steps(workdir: str) -> list[int]:
  """Committed checkpoint steps of a run (``[]`` when there is none)."""
  from trajax import checkpoint as ckpt_lib

  return ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints"))


def final_step(workdir: str) -> int | None:
  steps = committed_steps(workdir)
  return steps[-1] if steps else None


def parent_config(config, keep_steps: Iterable[int] = ()):
  """The parent's config: checkpoints kept at every step in ``keep_steps``.

  Side-trips and probes restore the parent at branch points, so the parent
  must keep those checkpoints: the cadence becomes the gcd of the branch
  points (the config's own cadence when there are none) and retention
  unlimited. Both are cadence / retention fields, allowed to change on resume.
  """
  import copy

  config = copy.deepcopy(config)
  every = 0
  for s in keep_steps:
    s = int(s)
    if s < 0 or s > int(config.total_steps):
      raise ValueError(f"keep_steps: step {s} outside [0, total_steps={config.total_steps}]")
    every = math.gcd(every, s)
  # No branch points: the config's own cadence. (The final step is always saved.)
  every = every or int(config.checkpoint_every_steps)
  with config.unlocked():
    config.checkpoint_every_steps = every
    config.checkpoint.max_to_keep = None
    config.checkpoint.async_save = False
  return config


def ensure_parent(
  config, workdir: str, keep_steps: Iterable[int] = (), *, quiet: bool = False
) -> str:
  """Trains (or reuses) the main trajectory in ``workdir/parent``; returns that path.

  A parent whose latest committed checkpoint is ``total_steps`` and which
  holds every step of ``keep_steps`` is reused as is (no model is built). A
  partial one resumes from its latest checkpoint (:func:`trajax.loop.train_and_evaluate`
  refuses a resume under a config that changes the trajectory, naming the
  fields). A finished parent lacking a branch point is an error: it cannot be
  recreated without retraining into a fresh workdir.
  """
  from trajax import loop

  keep = sorted({int(s) for s in keep_steps})
  pdir = os.path.join(os.path.abspath(workdir), PARENT_SUBDIR)
  os.makedirs(pdir, exist_ok=True)
  pconfig = parent_config(config, keep)
  steps = committed_steps(pdir)
  total = int(config.total_steps)
  if steps and steps[-1] >= total:
    missing = [s for s in keep if s > 0 and s not in steps]
    if missing:
      raise FileNotFoundError(
        f"parent run {pdir!r} is finished but lacks checkpoints at {missing} "
        f"(has {steps}); use a fresh --workdir"
      )
    if not quiet:
      log(f"reusing finished parent run {pdir} (checkpoints {steps})")
    return pdir
  start = steps[-1] if steps else 0
  if not quiet:
    log(
      f"training parent run {pdir}: steps {start} -> {total}, checkpoints every "
      f"{pconfig.checkpoint_every_steps}"
    )
  t0 = time.perf_counter()
  every = max(total // 10, 1)

  def progress(step):
    if not quiet and (step % every == 0 or step == total):
      rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
      log(f"  parent step {step}/{total} ({rate:.0f} steps/s)")

  loop.train_and_evaluate(pconfig, pdir, callbacks=[progress])
  return pdir


def parent_dir(config, exp, workdir: str, keep_steps) -> str:
  """``exp.parent`` if given (must hold the steps), else :func:`ensure_parent`."""
  if exp.parent:
    have = committed_steps(exp.parent)
    missing = [s for s in keep_steps if s not in have]
    if missing:
      raise FileNotFoundError(
        f"exp.parent={exp.parent!r} lacks committed checkpoints at {missing} (has {have})"
      )
    return os.path.abspath(exp.parent)
  return ensure_parent(config, workdir, keep_steps)


# ----------------------------------------------------------------------------
# metrics


def read_metrics(workdir: str) -> list[dict]:
  """The records of ``workdir/metrics.jsonl`` (``[]`` when there is no file)."""
  from trajax import metrics

  path = os.path.join(workdir, "metrics.jsonl")
  return metrics.read_jsonl(path) if os.path.exists(path) else []


def metric_series(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of every record holding ``key``, in step order (last write wins)."""
  by_step = {}
  for r in records:
    if key in r and r[key] is not None and "step" in r:
      by_step[int(r["step"])] = float(r[key])
  steps = np.array(sorted(by_step), dtype=np.int64)
  return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


# ----------------------------------------------------------------------------
# replays


def stepper(run, state, *, lr_factor: float = 1.0, stream_offset: int = 0):
  """A copy of ``state`` (of ``run``) stepped by the engine's own step (:class:`trajax.runs.Stepper`).

  Args:
    run: the :class:`trajax.runs.Run` the state belongs to (its config at the
      state's step, model and dataset).
    state: the start, e.g. ``run.state_at(S)`` (copied, never donated).
    lr_factor: f in eta'_t = f * eta_t (the config's schedule, absolute step t),
      the side-trip ``kind='schedule', schedule='config', lr_factor=f``.
    stream_offset: reads training batch ``t + stream_offset`` at step t; 0 is
      the parent's batch order, ``total_steps`` a different order on the same
      data (positions the parent never reached).

  Returns:
    The stepper (``.state``, ``.step``, ``.params``, ``.advance_to(step)``).
  """
  from trajax import runs

  return runs.Stepper(
    run.config_at(int(state.step)),
    run.model,
    run.dataset,
    state,
    lr_factor=lr_factor,
    stream_offset=stream_offset,
  )


def window_average(config, method: str, window: int):
  """``method``'s average over the ``window`` steps after a branch step S, as a value.

  The :class:`trajax.averaging.Average` whose parameters are the config's
  ``averaging`` fields for the method (``decay``, ``every``, ``debias``,
  ``n``, ``gamma``, ...), with what the window fixes set by the method's
  record (:func:`trajax.averaging.params_for_window`: two-point's gap = k,
  multi-point's gap = k/(n - 1), ...) and ``start_step`` 0: the average
  starts at S (the averager is initialised at theta_S), the one an equivalent
  side-trip branched at S reaches (:mod:`trajax.sidetrip`: the parent's
  ``start_step`` says when the *parent's* averager starts).
  """
  from trajax import averaging

  given = averaging.method_params(method, config.averaging)
  given.pop("start_step", None)
  return averaging.average(method, **averaging.params_for_window(method, int(window), given))


def replay_averages(run, state, end: int, averages: Mapping) -> tuple:
  """One replay of ``run`` from ``state`` (step S) to ``end``; every average at ``end``.

  Each average (a :class:`trajax.averaging.Average`, keyed by any name) is
  started at S (its averager's ``init`` at theta_S), then takes one
  ``update`` per replayed step, so at ``end`` it holds its convex combination
  of theta_S .. theta_end -- for a window of k = end - S steps, the one the
  method's Table 1 side-trip reaches. The replay is the parent's own steps
  (:func:`stepper`, f = 1), bit-exact with the parent. Returns
  ``(stepper, {name: averaged params})``.
  """
  import jax

  averagers = {m: a.averager() for m, a in averages.items()}
  replay = stepper(run, state)
  states = {m: a.init(replay.params) for m, a in averagers.items()}
  updates = {m: jax.jit(a.update) for m, a in averagers.items()}
  for t in range(int(state.step) + 1, int(end) + 1):
    replay.advance_to(t)
    states = {m: updates[m](replay.params, s) for m, s in states.items()}
  return replay, {m: s.average for m, s in states.items()}


def equivalent_sidetrip(
  parent: str, config, S: int, tdir: str, *, average, window: int, eval_at
) -> str:
  """The Table 1 side-trip of ``average`` from the parent's step S; its workdir ``tdir``.

  :func:`trajax.sidetrip.run_sidetrip` of kind 'equivalent' (the schedule
  that makes the side-trip equal, in expectation, to the average over [S, S +
  window]) under ``config`` (the parent's config at S), evaluated at the
  steps ``eval_at`` after S; reused as is when ``tdir`` already holds step
  S + window. ``average``: a :class:`trajax.averaging.Average` (e.g. from
  :func:`window_average`), written into ``sidetrip.average`` whole (its
  ``start_step`` counts from S).
  """
  import copy

  from trajax import sidetrip

  if (int(S) + int(window)) not in committed_steps(tdir):
    os.makedirs(os.path.dirname(os.path.abspath(tdir)), exist_ok=True)
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.checkpoint.async_save = False
    cfg = sidetrip.with_sidetrip(
      cfg,
      kind="equivalent",
      average=str(average),
      window=int(window),
      eval_at=tuple(int(j) for j in eval_at),
    )
    res = sidetrip.run_sidetrip(cfg, parent, int(S), tdir)
    log(f"equivalent side-trip {average} {S} -> {res.step} done (timings {res.timings})")
  return tdir
