"""The one host loop: a main run, a side-trip and a replay differ only in start, rate and batches.

:func:`fit` trains ``config`` in ``workdir`` from a start chosen by one written
precedence (big_vision's):

1. the run's own latest committed checkpoint (``WORKDIR/checkpoints``), so a
   preempted run -- a side-trip included -- continues from itself and never
   needs what it started from again;
2. else ``start``, a :class:`FromCheckpoint` -- another run's committed step,
   read through :func:`trajax.checkpoint.restore_readonly` (nothing is written,
   pruned or cleaned up there);
3. else a fresh init (:func:`trajax.state.create_train_state`).

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
* ``optimizer`` -- 'config' or 'fixed_batch_gd' (:func:`trajax.state.fixed_batch_gd`).

The step itself is :func:`trajax.train.make_step` (compiled once per static
key); :class:`trajax.runs.Stepper` drives the same step in lock-step from a
state in memory (experiments' replays), and :func:`trajax.runs.open_run`
reads a run's config, steps and states read-only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NamedTuple

import jax
from absl import logging

from trajax import state as state_lib
from trajax import train

__all__ = [
  "FromCheckpoint",
  "LearningRate",
  "ScaledRate",
  "TrainResult",
  "RESUME_MODES",
  "fit",
  "stored_config",
  "train_and_evaluate",
]


class FromCheckpoint(NamedTuple):
  """Start from another run's committed step (read-only).

  path: that run's WORKDIR (or its ``checkpoints`` directory).
  step: the committed step.
  config: the config it was written under (its layout); default the stored one.
  """

  path: str
  step: int
  config: Any = None


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


def stored_config(meta: dict):
  """The training config stored in a checkpoint's metadata (its ``sidetrip`` section dropped).

  Typed and locked (:func:`trajax.config.from_dict`): fields the stored config
  lacks keep ``base_config()``'s defaults; one this version does not declare
  raises :class:`trajax.config.ConfigError` naming it.
  """
  from trajax import config as config_lib

  return config_lib.from_dict({k: v for k, v in meta["config"].items() if k != "sidetrip"})


# ----------------------------------------------------------------------------
# the loop

# A copy on device (an add, so jit cannot forward the donated input buffer).
# A log window's per-step metrics as one [n] array per name: one transfer, same values.
_stack = jax.jit(lambda window: jax.tree.map(lambda *xs: jax.numpy.stack(xs), *window))
_snapshot = jax.jit(lambda tree: jax.tree.map(lambda x: x + jax.numpy.zeros_like(x), tree))


def _restore_start(start, model, input_shape, mesh):
  """``(state, meta)`` of ``start`` laid out for this run (see :class:`FromCheckpoint`)."""
  from trajax import checkpoint as ckpt_lib

  directory = ckpt_lib.resolve_directory(start.path)
  step = int(start.step)
  start_config = start.config
  if start_config is None:
    start_config = stored_config(ckpt_lib.read_metadata(directory, step))
  # The start's own layout (its optimizer), on this run's mesh.
  target = state_lib.abstract_state(start_config, model, input_shape, mesh)
  state, meta = ckpt_lib.restore_readonly(directory, step=step, target=target)
  if int(state.step) != step:
    raise state_lib.ResumeError(
      f"checkpoint {step} of {directory!r} holds a state at step {int(state.step)}"
    )
  return state, meta


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

  Order (nothing is allocated or written before the workdir and a resumed
  config are checked): inspect the workdir (plain file reads); refuse a resume
  under a changed config; build mesh, data and model; open the workdir's
  ``Checkpointer`` (first thing written there); restore (own latest, else
  ``start``, else init); open the metrics files; train.

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
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation, host, metrics

  t_begin = time.perf_counter()
  stored = config if stored is None else stored
  from trajax import paths, workdir_lock

  workdir = host.check_workdir(paths.check_local_path(workdir))
  # Nothing is written through a link or over a file of the wrong kind.
  paths.check_entries(workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = ckpt_lib.committed_steps(ckpt_dir)
  latest = steps[-1] if steps else None
  if latest is not None:
    # A busy workdir is the first thing to say (before, e.g., a config diff
    # against the checkpoints the holder is writing).
    workdir_lock.probe(workdir)
  if resume == "require" and latest is None:
    raise state_lib.ResumeError(
      f"resume='require' but {ckpt_dir!r} holds no committed checkpoint "
      f"(found: {sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else 'no directory'})"
    )
  if resume == "never" and latest is not None:
    raise state_lib.ResumeError(f"resume='never' but {ckpt_dir!r} holds checkpoints {steps}")
  if latest is not None:
    allowed = config_validation.RESUME_ALLOWED if resume_allowed is None else resume_allowed
    # Against the newest checkpoint whose metadata verifies (a damaged one is
    # quarantined once the lock is held: Checkpointer.restore_latest_good).
    own_meta = ckpt_lib.newest_good_metadata(ckpt_dir, steps)
    if own_meta is not None:
      for field, old, new in config_validation.check_resume(
        own_meta["config"], stored, allowed=frozenset(allowed)
      ):
        logging.info("resume: %s changed %r -> %r (allowed)", field, old, new)

  process_index = jax.process_index()
  mesh = state_lib.make_mesh(config)
  if dataset is None:
    from trajax import data as data_lib

    dataset = data_lib.get_dataset(
      config, process_index=process_index, process_count=jax.process_count()
    )
  input_shape = tuple(dataset.info.input_shape)
  if model is None:
    from trajax import models

    model = models.create_model(config.model, num_classes=int(dataset.info.num_classes))
  end = int(config.total_steps if end is None else end)
  abstract = state_lib.abstract_state(config, model, input_shape, mesh, optimizer=optimizer)
  shardings = state_lib.shardings_of(abstract)

  # From here on SIGTERM means "save at the current step and return" (a
  # signal during init, restore or compilation is acted on before step 1).
  stop = host._StopFlag()
  checkpointer = None
  try:
    os.makedirs(workdir, exist_ok=True)
    # The workdir's writer comes first: nothing else is written there before it.
    checkpointer = ckpt_lib.Checkpointer(
      ckpt_dir,
      max_to_keep=config.checkpoint.max_to_keep,
      keep_period=config.checkpoint.keep_period,
      async_save=config.checkpoint.async_save,
    )
    hyper = {}
    # The newest own checkpoint that passes its digest and value checks; damaged
    # newer ones are quarantined (Checkpointer.restore_latest_good).
    good = checkpointer.restore_latest_good(abstract) if latest is not None else None
    latest = None if good is None else good[0]
    if good is not None:
      _, state, meta = good
      step = int(state.step)
      if meta.get("data_position", step) != step:
        raise state_lib.ResumeError(
          f"checkpoint {step}: data position {meta.get('data_position')} != step {step}"
        )
      origin = f"own:{step}"
      if schedule is not None:
        hyper = meta.get("lr_hyper", schedule.hyper)
        if callable(hyper):
          raise state_lib.ResumeError(
            f"checkpoint {step} of {ckpt_dir!r} holds no 'lr_hyper' and the schedule's "
            "scalars are computed from the start state: restart in a new workdir"
          )
    else:
      if start is not None:
        state, _ = _restore_start(start, model, input_shape, mesh)
        origin = f"from:{int(start.step)}"
      else:
        state, _ = state_lib.create_train_state(config, model, input_shape, mesh)
        origin = "fresh"
      if schedule is not None:
        hyper = schedule.hyper(state) if callable(schedule.hyper) else dict(schedule.hyper)
      if optimizer == "fixed_batch_gd":
        to_gd = functools.partial(state_lib.fixed_batch_start, config=config)
        state = jax.jit(to_gd, out_shardings=shardings)(state)
      else:
        state = jax.device_put(state, shardings)
    state = jax.block_until_ready(state)
    restore_s = time.perf_counter() - t_begin
    step = int(state.step)
    logging.info("%s: starting at step %d (%s) in %.2fs", workdir, step, origin, restore_s)
    last_good = checkpointer.path(step) if origin.startswith("own") else None

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    fp_path = os.path.join(workdir, "batch_fingerprints.jsonl")
    own = origin.startswith("own")
    if process_index == 0:
      host.truncate_jsonl(metrics_path, step if own else None)
      # batch `step` is consumed again after the resume
      host.truncate_jsonl(fp_path, step - 1 if own else None)
    writer = metrics.create_writer(workdir, process_index=process_index)
    if not own:
      writer.write_hparams(config_validation.flatten(stored))
    progress = metrics.progress_reporter(end, writer, config.log_every_steps)
    log_fp = config.log_batch_fingerprints and process_index == 0
    fp_file = open(fp_path, "a") if log_fp else None
    if fp_file is not None:
      from trajax import data as data_lib

    hyper_arrays = train.hyper_arrays(hyper)
    ev = train.evaluator(model, mesh)
    if eval_average is None:
      eval_average = config.averaging.method != "none" and optimizer == "config"
    eval_points = None if eval_at is None else {int(s) for s in eval_at} | {end}
    save_points = {int(s) for s in save_at}
    extra = scalars or (lambda s: {})

    def check_health():
      health = jax.device_get(state.health)
      if int(health.bad_step) >= 0:
        raise state_lib.health_error(health, last_good)
      return health

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
      check_health()
      if not bool(train.state_finite(state)):  # belt and braces: health should have caught it
        raise state_lib.NonFiniteError(f"state at step {step} holds non-finite values; not saved")
      meta = ckpt_lib.make_metadata(stored, step=step)
      if metadata is not None:
        meta.update(metadata(step))
      if schedule is not None:
        meta["lr_hyper"] = hyper
      if fp_file is not None:
        fp_file.flush()  # the fingerprints of steps < step must survive once `step` commits
      checkpointer.save(step, state, meta)
      last_good = checkpointer.path(step)

    pool = None
    if batches is None:
      from trajax.data import device as data_device

      # In-memory sources: the pool lives on the devices and only the batch's
      # pool indices travel each step (trajax.data.device; same batches, bit
      # for bit). Streamed sources and custom batches keep the host pipeline.
      pool = data_device.device_pool(dataset, mesh)
    p_step = train.make_step(
      config,
      model,
      mesh,
      shardings,
      rule=schedule.rule if schedule else None,
      optimizer=optimizer,
      gather=None if pool is None else data_device.gather_step,
    )
    cache_before = train.compilations(p_step)
    if pool is not None:
      prefetch = pool.stream(step)
    else:
      stream = (batches or dataset.train_batches)(step)
      prefetch = host.Prefetch(stream, state_lib.batch_sharding(mesh), threads=1)
  except BaseException:
    stop.close()
    if checkpointer is not None:
      checkpointer.close()
    raise
  window, window_start, wait_start = [], time.perf_counter(), 0.0
  eval_out, evals, preempted, first_step_s = {}, {}, False, None
  pending = None  # a log point's (step, metrics, health, clock, wait), read one step late

  def write_log(log_step, fetched_window, health_ref, now, wait_now):
    # Blocks on step `log_step` only; the next step is already queued behind it.
    columns, health = jax.device_get((_stack(fetched_window), health_ref))
    fetched = [{k: v[i] for k, v in columns.items()} for i in range(len(fetched_window))]
    if int(health.bad_step) >= 0:
      raise state_lib.health_error(health, last_good)
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

  try:
    if not own and eval_points is not None and step in eval_points:
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
        check_health()
        eval_out = run_eval()
      if save_now:
        save()
    flush_pending()
    checkpointer.wait()
  finally:
    prefetch.close()
    stop.close()
    if fp_file is not None:
      fp_file.close()
    checkpointer.close()
    writer.flush()
    writer.close()
  timings = {
    "restore_s": restore_s,
    "first_step_s": first_step_s,
    "compiled": None if cache_before is None else train.compilations(p_step) > cache_before,
  }
  return TrainResult(state, step, preempted, eval_out, evals, origin, timings)


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
