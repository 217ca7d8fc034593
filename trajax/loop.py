"""The one host loop: a main run, a side-trip and a replay differ only in start, rate and batches.

:func:`fit` trains ``config`` in ``workdir`` in two halves:
:func:`open_and_restore` (:mod:`trajax.start`: the workdir and config checks,
the writer, and the start by one written precedence -- the run's own latest
checkpoint, else a :class:`FromCheckpoint` (another run's committed step, read
read-only), else a fresh init), then :func:`run_loop`, the host loop.
:func:`train_and_evaluate` is the main run: :func:`fit` with no parent.

Whatever the start, every run gets the same machinery: the workdir's
``Checkpointer`` opened before anything else is written there, SIGTERM saves
at the current step and returns (exit 0 from the CLIs), the input pipeline,
per-step batch fingerprints, the progress reporter, TensorBoard + JSON-lines
metrics, and the health / finiteness checks before every save.

Input: an in-memory source (mnist1d, digits, CIFAR) keeps its training pool on
the devices and the train step gathers batch i there from its pool indices
(:mod:`trajax.data.device`; bit-identical to the host batch i, whose
fingerprint is the one logged); streamed sources and custom ``batches`` go
through the host pipeline with prefetch. No host sync per step: a log step's
metrics (stacked on device, one transfer) and health record are read after
the next step is dispatched; only log, eval and save points wait on the device.

What differs between runs is data, not code:

* ``schedule`` -- a :class:`LearningRate`: a static, hashable rule
  ``rule(base, hyper) -> η'(t)`` of the config's schedule η and scalars
  ``hyper`` that enter the jitted step as *traced* arguments, so one
  compilation serves every branch point. The hyper values are fixed at the
  start and stored in every checkpoint (``meta['lr_hyper']``), so a resume
  reproduces them without the start.
* ``batches`` -- a function of the start step to an iterator of host batches
  (default the config's training stream; a fixed-batch side-trip repeats one).
* ``optimizer`` -- 'config' or 'fixed_batch_gd' (:func:`trajax.probes.fixed_batch_gd`).

The step itself is :func:`trajax.train.make_step` (compiled once per static
key); :class:`trajax.runs.Stepper` drives the same step in lock-step from a
state in memory (experiments' replays), and :func:`trajax.runs.open_run`
reads a run's config, steps and states read-only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NamedTuple

import jax
from absl import logging

from trajax import state as state_lib
from trajax import train
from trajax.start import FromCheckpoint, Opened, open_and_restore, stored_config

__all__ = [
  "RESUME_MODES",
  "FromCheckpoint",
  "LearningRate",
  "Opened",
  "ScaledRate",
  "TrainResult",
  "check_health",
  "fit",
  "open_and_restore",
  "run_loop",
  "stored_config",
  "train_and_evaluate",
]


class LearningRate(NamedTuple):
  """η'(t) = ``rule(base, hyper)(t)``: a static rule and its traced scalars.

  rule: hashable callable ``(base: optax.Schedule, hyper: dict) -> optax.Schedule``
    (part of the compilation key; keep it a NamedTuple or a module function).
  hyper: ``{name: python int or float}`` or a function of the start state
    giving it (called once, on a start that is not the run's own checkpoint).
    Ints enter the step as int32, floats as float32.
  """

  rule: Callable
  hyper: dict | Callable[[Any], dict]


class ScaledRate(NamedTuple):
  """η'(t) = f · η_t with f = ``hyper['scale']`` (f = 1: exactly η, bit for bit)."""

  def __call__(self, base, hyper):
    return lambda t: base(t) * hyper["scale"]


@dataclasses.dataclass
class TrainResult:
  """What :func:`fit` (and :func:`train_and_evaluate`) returns.

  state: the final :class:`trajax.state.TrainState` (on device); step: its step.
  preempted: True when SIGTERM stopped the run early (after a committed save).
  eval: the last evaluation, ``{'raw': {...}, 'avg': {...}}``.
  evals: ``{step: {'eval/loss': ..., ...}}`` for every evaluation of this call.
  origin: where it started: ``'own:<step>'``, ``'from:<step>'`` or ``'fresh'``.
  timings: ``restore_s``, ``first_step_s`` (compilation included, blocked on)
    and ``compiled`` (False when the step function was cached).
  """

  state: Any
  step: int
  preempted: bool
  eval: dict
  evals: dict = dataclasses.field(default_factory=dict)
  origin: str = "fresh"
  timings: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------
# the loop

# A copy on device (an add, so jit cannot forward the donated input buffer).
# A log window's per-step metrics as one [n] array per name: one transfer, same values.
_stack = jax.jit(lambda window: jax.tree.map(lambda *xs: jax.numpy.stack(xs), *window))
_snapshot = jax.jit(lambda tree: jax.tree.map(lambda x: x + jax.numpy.zeros_like(x), tree))


def check_health(health, last_good) -> state_lib.Health:
  """Reads ``health`` (a state's record, on device or not); raises if the state is frozen.

  ``health.bad_step >= 0`` (a non-finite step froze the state, or too many in
  a row were skipped): :func:`trajax.state.health_error`, naming the
  quantity, the step and ``last_good`` (the last good checkpoint, or where
  the state started). The one check of :func:`fit` and
  :class:`trajax.runs.Stepper`.
  """
  health = jax.device_get(health)
  if int(health.bad_step) >= 0:
    raise state_lib.health_error(health, last_good)
  return health


def fit(
  config,
  workdir: str,
  *,
  start: FromCheckpoint | None = None,
  schedule: LearningRate | None = None,
  batches: Callable[[int], Iterator[dict]] | None = None,
  optimizer: str = "config",
  end: int | None = None,
  eval_at: Collection[int] | None = None,
  eval_average: bool | None = None,
  extra_eval: Callable[[Any], dict] | None = None,
  save_at: Collection[int] = (),
  scalars: Callable[[int], dict] | None = None,
  metadata: Callable[[int], dict] | None = None,
  stored: Any = None,
  resume_allowed: Collection[str] | None = None,
  resume: str = "auto",
  dataset=None,
  model=None,
  callbacks: Iterable[Callable[[int], None]] = (),
) -> TrainResult:
  """Trains ``config`` in ``workdir`` up to step ``end`` (see the module docstring).

  :func:`open_and_restore` (workdir, config checks, the start), then
  :func:`run_loop` (the host loop) on what it opened.

  Args:
    config: the (validated) training config: model, data, optimizer, cadences.
    workdir: the run's own directory (created; its parent must exist).
    start: where to start when the workdir holds no checkpoint (None: init).
    schedule: a :class:`LearningRate` (None: the config's schedule).
    batches: ``batches(step)`` -> host batches from ``step`` on (default
      ``dataset.train_batches``).
    optimizer: 'config' or 'fixed_batch_gd' (the state's layout and update).
    end: the last step (default ``config.total_steps``).
    eval_at: absolute steps to evaluate at (and ``end``); None: every
      ``eval_every_steps``. A start step in it is evaluated before training.
    eval_average: also evaluate the averaged params (default: the config
      averages); extra_eval: ``f(state) -> {name: value}`` added to each eval.
    save_at: steps saved besides every ``checkpoint_every_steps`` and ``end``.
    scalars: ``f(step) -> {name: value}`` added to every metrics record.
    metadata: ``f(step) -> dict`` merged into every checkpoint's metadata.
    stored: the config stored in checkpoints and hparams (default ``config``).
    resume_allowed: fields that may differ on resume (default
      ``config_validation.RESUME_ALLOWED``).
    resume: 'auto' | 'require' (error without an own checkpoint) | 'never'.
    dataset, model: overrides (tests); callbacks: ``cb(step)`` after each step.

  Raises:
    trajax.config_validation.ConfigError: a resume under a changed config.
    trajax.state.ResumeError: workdir problems.
    trajax.state.NonFiniteError: a non-finite step.
  """
  opened = open_and_restore(
    config,
    workdir,
    start=start,
    schedule=schedule,
    optimizer=optimizer,
    stored=stored,
    resume_allowed=resume_allowed,
    resume=resume,
    dataset=dataset,
    model=model,
  )
  return run_loop(
    config,
    opened,
    batches=batches,
    end=end,
    eval_at=eval_at,
    eval_average=eval_average,
    extra_eval=extra_eval,
    save_at=save_at,
    scalars=scalars,
    metadata=metadata,
    stored=stored,
    callbacks=callbacks,
  )


def _open_outputs(config, opened: Opened, stored):
  """``(writer, fingerprint file or None)``: the metrics and fingerprint files, truncated
  to the resumed step (a resume rewrites what followed it) or started afresh."""
  from trajax import config_validation, host, metrics

  process_index = jax.process_index()
  step = int(opened.state.step)
  metrics_path = os.path.join(opened.workdir, "metrics.jsonl")
  fp_path = os.path.join(opened.workdir, "batch_fingerprints.jsonl")
  if process_index == 0:
    host.truncate_jsonl(metrics_path, step if opened.resumed else None)
    # batch `step` is consumed again after the resume
    host.truncate_jsonl(fp_path, step - 1 if opened.resumed else None)
  writer = metrics.create_writer(opened.workdir, process_index=process_index)
  if not opened.resumed:
    writer.write_hparams(config_validation.flatten(stored))
  log_fp = config.log_batch_fingerprints and process_index == 0
  return writer, open(fp_path, "a") if log_fp else None


def _open_input(config, opened: Opened, batches):
  """``(compiled step, batch iterator, pool or None)`` from the start step on.

  In-memory sources: the pool lives on the devices and only the batch's pool
  indices travel each step (trajax.data.device; same batches, bit for bit).
  Streamed sources and custom ``batches`` keep the host pipeline.
  """
  from trajax import host
  from trajax.data import device as data_device

  step = int(opened.state.step)
  pool = data_device.device_pool(opened.dataset, opened.mesh) if batches is None else None
  p_step = train.make_step(
    config,
    opened.model,
    opened.mesh,
    opened.shardings,
    rule=opened.schedule.rule if opened.schedule else None,
    optimizer=opened.optimizer,
    gather=None if pool is None else data_device.gather_step,
  )
  if pool is not None:
    return p_step, pool.stream(step), pool
  stream = (batches or opened.dataset.train_batches)(step)
  return p_step, host.Prefetch(stream, state_lib.batch_sharding(opened.mesh), threads=1), None


def run_loop(
  config,
  opened: Opened,
  *,
  batches: Callable[[int], Iterator[dict]] | None = None,
  end: int | None = None,
  eval_at: Collection[int] | None = None,
  eval_average: bool | None = None,
  extra_eval: Callable[[Any], dict] | None = None,
  save_at: Collection[int] = (),
  scalars: Callable[[int], dict] | None = None,
  metadata: Callable[[int], dict] | None = None,
  stored: Any = None,
  callbacks: Iterable[Callable[[int], None]] = (),
) -> TrainResult:
  """The host loop from ``opened``'s state up to step ``end``: the second half of :func:`fit`.

  Opens the metrics files and the input, then steps; evaluates, logs and
  saves at their points (health read at each), saves and returns on SIGTERM.
  Closes ``opened`` (and everything it opened) however it ends. Arguments as
  :func:`fit`'s.
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import host, metrics

  stored = config if stored is None else stored
  state, step, last_good = opened.state, int(opened.state.step), opened.last_good
  dataset, checkpointer, hyper = opened.dataset, opened.checkpointer, opened.hyper
  writer = fp_file = None
  try:
    end = int(config.total_steps if end is None else end)
    writer, fp_file = _open_outputs(config, opened, stored)
    progress = metrics.progress_reporter(end, writer, config.log_every_steps)
    if fp_file is not None:
      from trajax import data as data_lib
    hyper_arrays = train.hyper_arrays(hyper)
    ev = train.evaluator(opened.model, opened.mesh)
    if eval_average is None:
      eval_average = config.averaging.method != "none" and opened.optimizer == "config"
    eval_points = None if eval_at is None else {int(s) for s in eval_at} | {end}
    save_points = {int(s) for s in save_at}
    extra = scalars or (lambda s: {})
    p_step, prefetch, pool = _open_input(config, opened, batches)
    cache_before = train.compilations(p_step)
  except BaseException:
    for f in (fp_file, writer):
      if f is not None:
        f.close()
    opened.close()
    raise

  def run_eval():
    out = {"raw": ev.evaluate(state.params, state.batch_stats, dataset.eval_batches("test"))}
    if eval_average:
      params, stats = train.averaged_variables(state, config, ev, dataset)
      out["avg"] = ev.evaluate(params, stats, dataset.eval_batches("test"))
    flat = {f"eval/{k}": v for k, v in out["raw"].items()}
    flat.update({f"eval_avg/{k}": v for k, v in out.get("avg", {}).items()})
    if extra_eval is not None:
      flat.update(extra_eval(state))
    evals[step] = flat
    writer.write_scalars(step, {**flat, **extra(step)})
    return out

  def save():
    nonlocal last_good
    check_health(state.health, last_good)
    if not bool(train.state_finite(state)):  # belt and braces: health should have caught it
      raise state_lib.NonFiniteError(f"state at step {step} holds non-finite values; not saved")
    meta = ckpt_lib.make_metadata(stored, step=step)
    if metadata is not None:
      meta.update(metadata(step))
    if opened.schedule is not None:
      meta["lr_hyper"] = hyper
    if fp_file is not None:
      fp_file.flush()  # the fingerprints of steps < step must survive once `step` commits
    checkpointer.save(step, state, meta)
    last_good = checkpointer.path(step)

  window, window_start, wait_start = [], time.perf_counter(), 0.0
  eval_out, evals, preempted, first_step_s = {}, {}, False, None
  pending = None  # a log point's (step, metrics, health, clock, wait), read one step late

  def write_log(log_step, fetched_window, health_ref, now, wait_now):
    # Blocks on step `log_step` only; the next step is already queued behind it.
    columns, health = jax.device_get((_stack(fetched_window), health_ref))
    fetched = [{k: v[i] for k, v in columns.items()} for i in range(len(fetched_window))]
    check_health(health, last_good)
    summary = host.summarize(fetched)
    elapsed = max(now - window_start, 1e-9)
    summary["train/input_wait_fraction"] = (wait_now - wait_start) / elapsed
    summary["train/skipped_steps"] = float(health.total_skips)
    # The steps this record averages: log_every_steps, except after a resume
    # from a preemption between log points (the steps since the resumed step).
    summary["train/steps_averaged"] = float(len(fetched_window))
    writer.write_scalars(log_step, {**summary, **extra(log_step)})
    line = metrics.progress_line(log_step, end, summary, len(fetched_window) / elapsed)
    if len(fetched_window) != config.log_every_steps:  # a short window says so
      line += f"  (mean of {len(fetched_window)} steps)"
    logging.info("%s", line)

  def flush_pending():
    nonlocal pending, window_start, wait_start
    if pending is not None:
      write_log(*pending)
      window_start, wait_start = pending[3], pending[4]
      pending = None

  stop = opened.stop
  try:
    if not opened.resumed and eval_points is not None and step in eval_points:
      eval_out = run_eval()
    t_first = time.perf_counter()
    while step < end:
      if stop.requested and (jax.process_count() == 1 or step % config.log_every_steps == 0):
        if host.any_process(stop.requested):
          flush_pending()
          save()
          checkpointer.wait()
          preempted = True
          break
      host_batch, batch = next(prefetch)
      if fp_file is not None:
        # From the host batch of the same step (the device gather equals it).
        fp_batch = dataset.train_batch(step) if pool is not None else host_batch
        fp = data_lib.batch_fingerprint(fp_batch)
        fp_file.write(json.dumps({"step": step, "fingerprint": fp}) + "\n")
      state, step_metrics = p_step(state, batch, hyper_arrays)
      if first_step_s is None:
        jax.block_until_ready(step_metrics)
        first_step_s = time.perf_counter() - t_first
      step += 1
      # Step `step` is dispatched: now read the previous log point's values.
      flush_pending()
      window.append(step_metrics)
      progress(step)
      for cb in callbacks:
        cb(step)
      evaluate_now = step == end or (
        step % config.eval_every_steps == 0 if eval_points is None else step in eval_points
      )
      save_now = step % config.checkpoint_every_steps == 0 or step == end or step in save_points
      if step % config.log_every_steps == 0 or step == end:
        # The health record is donated with the state: keep a copy of this step's.
        pending = (step, window, _snapshot(state.health), time.perf_counter(), prefetch.wait_s)
        window = []
        if evaluate_now or save_now:  # these synchronise anyway
          flush_pending()
      if evaluate_now:
        check_health(state.health, last_good)
        eval_out = run_eval()
      if save_now:
        save()
    flush_pending()
    checkpointer.wait()
  finally:
    prefetch.close()
    if fp_file is not None:
      fp_file.close()
    opened.close()
    writer.flush()
    writer.close()
  timings = {
    "restore_s": opened.restore_s,
    "first_step_s": first_step_s,
    "compiled": None if cache_before is None else train.compilations(p_step) > cache_before,
  }
  return TrainResult(state, step, preempted, eval_out, evals, opened.origin, timings)


# ----------------------------------------------------------------------------
# the main run

RESUME_MODES = ("auto", "require", "never")


def train_and_evaluate(
  config,
  workdir: str,
  *,
  resume: str = "auto",
  dataset=None,
  model=None,
  callbacks: Iterable[Callable[[int], None]] = (),
):
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint.

  A thin call of :func:`fit` with the config's schedule and batch
  stream and no parent: the run's own latest checkpoint, else a fresh init.

  Args:
    config: a (locked) ``ml_collections.ConfigDict`` from ``configs/``.
    workdir: run directory; created if missing, but its parent must exist (a
      mistyped path is an error, never a silent fresh start elsewhere).
    resume: 'auto' (continue if a committed checkpoint exists, else start),
      'require' (error if there is none: restart scripts), 'never' (error if
      there is one).
    dataset, model: override ``trajax.data.get_dataset`` /
      ``trajax.models.create_model`` (tests).
    callbacks: called as ``cb(step)`` on the host after each dispatched step.

  Returns:
    A :class:`TrainResult`.

  Raises:
    trajax.config_validation.ConfigError: bad config or refused resume.
    trajax.state.ResumeError: workdir problems.
    trajax.state.NonFiniteError: a non-finite step (see :mod:`trajax.train`).
  """
  from trajax import config_validation

  if resume not in RESUME_MODES:
    raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
  config_validation.validate(config)
  return fit(
    config, workdir, start=None, resume=resume, dataset=dataset, model=model, callbacks=callbacks
  )
