"""Where a run starts: its workdir opened and its start restored (half of :func:`trajax.loop.fit`).

:func:`open_and_restore` inspects the workdir (plain file reads: a busy
workdir, a ``resume`` mode it contradicts and a resume under a changed config
are refused before anything is written), builds mesh, data and model, opens
the workdir's ``Checkpointer`` (the first thing written there) and restores
the start by one written precedence (big_vision's):

1. the run's own latest committed checkpoint that verifies
   (``WORKDIR/checkpoints``), so a preempted run -- a side-trip included --
   continues from itself and never needs what it started from again;
2. else ``start``, a :class:`FromCheckpoint` -- another run's committed step,
   read through :func:`trajax.checkpoint.restore_readonly` (nothing is written,
   pruned or cleaned up there);
3. else a fresh init (:func:`trajax.state.create_train_state`).

It returns an :class:`Opened`, which :func:`trajax.loop.run_loop` trains from
and closes. The names are re-exported by :mod:`trajax.loop`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Collection
from typing import Any, NamedTuple

import jax
from absl import logging

from trajax import state as state_lib

__all__ = ["FromCheckpoint", "Opened", "open_and_restore", "stored_config"]


class FromCheckpoint(NamedTuple):
  """Start from another run's committed step (read-only).

  path: that run's WORKDIR (or its ``checkpoints`` directory).
  step: the committed step.
  config: the config it was written under (its layout); default the stored one.
  """

  path: str
  step: int
  config: Any = None


def stored_config(meta: dict):
  """The training config stored in a checkpoint's metadata (its ``sidetrip`` section dropped).

  Typed and locked (:func:`trajax.config.from_dict`): fields the stored config
  lacks keep ``base_config()``'s defaults; one this version does not declare
  raises :class:`trajax.config.ConfigError` naming it.
  """
  from trajax import config as config_lib

  return config_lib.from_dict({k: v for k, v in meta["config"].items() if k != "sidetrip"})


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


class Opened(NamedTuple):
  """A workdir opened for training and the state it starts from (:func:`open_and_restore`).

  workdir: the absolute run directory; checkpointer: its only writer (open);
  stop: the SIGTERM flag (set: save and return); mesh, dataset, model,
  shardings: the run's; state: the start, laid out on the mesh; origin:
  ``'own:<step>'``, ``'from:<step>'`` or ``'fresh'``; optimizer: the state's
  layout; schedule, hyper: the :class:`trajax.loop.LearningRate` and its
  scalars (fixed at the start, or read back from the own checkpoint);
  last_good: the own checkpoint resumed from (None otherwise); restore_s:
  seconds to here.
  """

  workdir: str
  checkpointer: Any
  stop: Any
  mesh: Any
  dataset: Any
  model: Any
  shardings: Any
  state: Any
  origin: str
  optimizer: str
  schedule: Any
  hyper: dict
  last_good: str | None
  restore_s: float

  @property
  def resumed(self) -> bool:
    """Whether the start is the run's own checkpoint."""
    return self.origin.startswith("own")

  def close(self) -> None:
    self.stop.close()
    self.checkpointer.close()


def _inspect_workdir(workdir, *, stored, resume, resume_allowed) -> tuple[str, list[int]]:
  """``(workdir, committed steps)``: plain file reads; refuses what ``resume`` forbids.

  A busy workdir is refused first; a resume under a config that differs from
  the newest verified own checkpoint's in a field outside ``resume_allowed``
  raises :class:`trajax.config_validation.ConfigError`.
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation, host, paths, workdir_lock

  workdir = host.check_workdir(paths.check_path(workdir))
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
  return workdir, steps


def _start_state(
  config,
  checkpointer,
  abstract,
  *,
  steps,
  start,
  schedule,
  optimizer,
  model,
  input_shape,
  mesh,
  shardings,
) -> tuple[Any, str, dict]:
  """``(state, origin, hyper)`` by the precedence of the module docstring, on the mesh."""
  hyper = {}
  # The newest own checkpoint that passes its digest and value checks; damaged
  # newer ones are quarantined (Checkpointer.restore_latest_good).
  good = checkpointer.restore_latest_good(abstract) if steps else None
  if good is not None:
    _, state, meta = good
    step = int(state.step)
    if meta.get("data_position", step) != step:
      raise state_lib.ResumeError(
        f"checkpoint {step}: data position {meta.get('data_position')} != step {step}"
      )
    if schedule is not None:
      hyper = meta.get("lr_hyper", schedule.hyper)
      if callable(hyper):
        raise state_lib.ResumeError(
          f"checkpoint {step} of {checkpointer.directory!r} holds no 'lr_hyper' and the "
          "schedule's scalars are computed from the start state: restart in a new workdir"
        )
    return state, f"own:{step}", hyper
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
  return state, origin, hyper


def open_and_restore(
  config,
  workdir: str,
  *,
  start: FromCheckpoint | None = None,
  schedule: Any = None,
  optimizer: str = "config",
  stored: Any = None,
  resume_allowed: Collection[str] | None = None,
  resume: str = "auto",
  dataset=None,
  model=None,
) -> Opened:
  """Opens ``workdir`` for training and restores the start (:func:`trajax.loop.fit`'s first half).

  Order (nothing is allocated or written before the workdir and a resumed
  config are checked): inspect the workdir (plain file reads; a busy one, a
  ``resume`` it forbids and a resume under a changed config are refused);
  build mesh, data and model; open the workdir's ``Checkpointer`` (first thing
  written there); restore by the written precedence -- the own latest good
  checkpoint, else ``start``, else a fresh init. From here on SIGTERM means
  "save at the current step and return" (a signal during init, restore or
  compilation is acted on before step 1). Arguments as
  :func:`trajax.loop.fit`'s; the caller closes the result
  (:func:`trajax.loop.run_loop` does).
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import host, paths

  t_begin = time.perf_counter()
  stored = config if stored is None else stored
  workdir, steps = _inspect_workdir(
    workdir, stored=stored, resume=resume, resume_allowed=resume_allowed
  )
  mesh = state_lib.make_mesh(config)
  if dataset is None:
    from trajax import data as data_lib

    dataset = data_lib.get_dataset(
      config, process_index=jax.process_index(), process_count=jax.process_count()
    )
  input_shape = tuple(dataset.info.input_shape)
  if model is None:
    from trajax import models

    model = models.create_model(config.model, num_classes=int(dataset.info.num_classes))
  abstract = state_lib.abstract_state(config, model, input_shape, mesh, optimizer=optimizer)
  shardings = state_lib.shardings_of(abstract)

  stop = host.StopFlag()
  checkpointer = None
  try:
    paths.makedirs(workdir)
    # The workdir's writer comes first: nothing else is written there before it.
    checkpointer = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.checkpoint.max_to_keep,
      keep_period=config.checkpoint.keep_period,
      async_save=config.checkpoint.async_save,
    )
    state, origin, hyper = _start_state(
      config,
      checkpointer,
      abstract,
      steps=steps,
      start=start,
      schedule=schedule,
      optimizer=optimizer,
      model=model,
      input_shape=input_shape,
      mesh=mesh,
      shardings=shardings,
    )
    state = jax.block_until_ready(state)
  except BaseException:
    stop.close()
    if checkpointer is not None:
      checkpointer.close()
    raise
  restore_s = time.perf_counter() - t_begin
  step = int(state.step)
  logging.info("%s: starting at step %d (%s) in %.2fs", workdir, step, origin, restore_s)
  last_good = checkpointer.path(step) if origin.startswith("own") else None
  return Opened(
    workdir, checkpointer, stop, mesh, dataset, model, shardings, state, origin, optimizer,
    schedule, hyper, last_good, restore_s,
  )  # fmt: skip
