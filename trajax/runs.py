"""Reading a finished (or running) run, and replaying it: :func:`open_run`, :class:`Stepper`.

For experiments and probes, which must never open a ``CheckpointManager`` on
another run's directory::

  run = open_run("workdirs/mnist1d")          # main run or side-trip workdir
  run.steps                                   # committed steps
  state = run.state_at(3000)                  # TrainState, read-only restore
  replay = Stepper.at(run, 3000, lr_factor=0.5)
  replay.advance_to(3100)                     # the engine's own step, lock-step

:meth:`Run.state_at` reads into :func:`trajax.state.abstract_state` of the
config stored with that step (the optimizer layout of a fixed-batch side-trip
included), so nothing is initialised. :class:`Stepper` drives the step
function of :func:`trajax.loop.fit` (:func:`trajax.train.make_step`) from a
state in memory, with η'_t = f·η_t and its own position in the batch stream.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from trajax import loop, train
from trajax import state as state_lib

__all__ = ["Run", "Stepper", "device_pool", "open_run"]

_MODELS: dict = {}


def model_and_data(config) -> tuple[Any, Any]:
  """``(model, dataset)`` for a config, cached by the fields that define them."""
  from trajax import data as data_lib
  from trajax import models

  key = json.dumps(
    {k: config[k].to_dict() for k in ("dataset", "model")}
    | {k: config[k] for k in ("seed", "batch_size", "eval_batch_size")}
    | {"data_dir": config.get("data_dir")},
    sort_keys=True,
    default=str,
  )
  if key not in _MODELS:
    dataset = data_lib.get_dataset(config)
    model = models.create_model(config.model, num_classes=int(dataset.info.num_classes))
    _MODELS[key] = (model, dataset)
  return _MODELS[key]


class Run:
  """A run's workdir, read-only (see :func:`open_run`).

  directory: its checkpoints directory. ``config``, ``model``, ``dataset``
  belong to its latest committed step (a side-trip's ``sidetrip`` section is
  dropped from ``config``; :meth:`meta` keeps it).
  """

  def __init__(self, workdir: str, *, model=None, dataset=None):
    from trajax import checkpoint as ckpt_lib

    self.directory = ckpt_lib.resolve_directory(workdir)
    if not self.steps:
      raise FileNotFoundError(f"no committed checkpoint in {self.directory!r}")
    self.config = loop.stored_config(self.meta(self.steps[-1]))
    if model is None or dataset is None:
      m, d = model_and_data(self.config)
      model, dataset = model or m, dataset or d
    self.model, self.dataset = model, dataset

  @property
  def steps(self) -> list[int]:
    """Committed steps, re-read from disk (a live run keeps adding them)."""
    from trajax import checkpoint as ckpt_lib

    return ckpt_lib.committed_steps(self.directory)

  def _check(self, step) -> int:
    steps = self.steps
    step = steps[-1] if step is None else int(step)
    if step not in steps:
      raise FileNotFoundError(
        f"step {step} is not a committed checkpoint of {self.directory!r}: {steps}"
      )
    return step

  def meta(self, step: int | None = None) -> dict:
    """The stored metadata of ``step`` (default latest): config, lineage, versions, ..."""
    from trajax import checkpoint as ckpt_lib

    return ckpt_lib.read_metadata(self.directory, self._check(step))

  def config_at(self, step: int | None = None):
    """The training config stored with ``step``."""
    return loop.stored_config(self.meta(step))

  @property
  def lineage(self) -> dict:
    """A side-trip's lineage (parent, step, kind, ...); ``{}`` for a main run."""
    return self.meta().get("lineage") or {}

  def state_at(self, step: int | None = None, *, mesh=None) -> state_lib.TrainState:
    """The :class:`trajax.state.TrainState` at ``step`` (default latest), read-only.

    Laid out over ``mesh`` (default all devices, parameters replicated).
    """
    from trajax import checkpoint as ckpt_lib

    step = self._check(step)
    meta = self.meta(step)
    config = loop.stored_config(meta)
    if mesh is None:
      mesh = state_lib.make_mesh(config)
    gd = (meta.get("lineage") or {}).get("kind") == "fixed_batch"
    layout = "fixed_batch_gd" if gd else "config"
    with config.unlocked():
      config.mesh.shard_params = False
    target = state_lib.abstract_state(
      config, self.model, tuple(self.dataset.info.input_shape), mesh, optimizer=layout
    )
    try:
      state, _ = ckpt_lib.restore_readonly(self.directory, step=step, target=target)
    except Exception as e:  # Orbax reports a tree mismatch in several types
      if not gd:
        raise
      # A fixed-batch side-trip written before fixed-batch GD dropped weight
      # decay has another optimizer-state layout; its params and statistics
      # are all an experiment reads.
      logging.info("step %d: older fixed-batch layout (%s); restoring params only", step, e)
      tree, _ = ckpt_lib.restore_readonly(self.directory, step=step)
      state = state_lib.TrainState(
        step=np.int32(step),
        params=jax.tree.map(jnp.asarray, tree["params"]),
        batch_stats=jax.tree.map(jnp.asarray, tree.get("batch_stats", {})),
        opt_state=tree.get("opt_state"),
        rng=tree.get("rng"),
        bn_average=(),
        health=None,
      )
    return state


def open_run(workdir: str, *, model=None, dataset=None) -> Run:
  """A read-only view of the run in ``workdir`` (WORKDIR or WORKDIR/checkpoints).

  Raises:
    FileNotFoundError: no checkpoints directory or no committed checkpoint.
  """
  return Run(workdir, model=model, dataset=dataset)


_POOLS: dict = {}


def device_pool(dataset, mesh):
  """:func:`trajax.data.device.device_pool` of ``dataset`` on ``mesh``, made once per pair.

  None for a streamed or too-large source (the host pipeline is used, as
  :func:`trajax.loop.fit` does). Replays of one run share its pool.
  """
  from trajax.data import device as data_device

  key = (id(dataset), tuple(d.id for d in mesh.devices.flat))
  cached = _POOLS.get(key)
  if cached is None or cached[0] is not dataset:
    cached = _POOLS[key] = (dataset, data_device.device_pool(dataset, mesh))
  return cached[1]


class Stepper:
  """A copy of a state stepped in lock-step by the loop's own step function.

  As :func:`trajax.loop.fit` steps: an in-memory source's batches are gathered
  from its device pool inside the step (:mod:`trajax.data.device`; the same
  batches bit for bit), others come from the host; the health record is read
  at every ``log_every_steps`` step and at the end of each :meth:`advance_to`,
  and a frozen state (a non-finite step; ``nonfinite.*``) raises
  :class:`trajax.state.NonFiniteError` naming the quantity and the step.

  Args:
    config, model, dataset: the run's (``Run.config_at(step)``, ``.model``, ``.dataset``).
    state: the start (copied: the step donates its input).
    lr_factor: f in η'_t = f · η_t (the config's schedule of the absolute step
      t; f = 1 replays the run bit for bit).
    stream_offset: reads training batch ``t + stream_offset`` at step t; 0 is
      the run's own batch order, ``total_steps`` positions it never reached.
    origin: where the start came from, named by the error (:meth:`at` sets it).
  """

  def __init__(self, config, model, dataset, state, *, lr_factor=1.0, stream_offset=0, origin=None):
    if not float(lr_factor) > 0:
      raise ValueError(f"lr_factor must be > 0, got {lr_factor!r}")
    if int(stream_offset) < 0:
      raise ValueError(f"stream_offset must be >= 0, got {stream_offset!r}")
    self.state = jax.tree.map(jnp.copy, state)
    self.step = int(state.step)
    self.origin = origin
    self.log_every = int(config.log_every_steps)
    shardings = state_lib.shardings_of(self.state)
    mesh = jax.tree.leaves(shardings)[0].mesh
    self.pool = device_pool(dataset, mesh)
    start = self.step + int(stream_offset)
    if self.pool is not None:
      from trajax.data import device as data_device

      gather, self._batches = data_device.gather_step, self.pool.stream(start)
    else:
      sharding = state_lib.batch_sharding(mesh)
      gather, self._batches = None, _host_batches(dataset.train_batches(start), sharding)
    self._fn = train.make_step(
      config, model, mesh, shardings, rule=loop.ScaledRate(), gather=gather
    )
    self._hyper = {"scale": jnp.float32(lr_factor)}

  @classmethod
  def at(cls, run: Run, step: int, **kwargs) -> Stepper:
    """A stepper from ``run``'s committed ``step``."""
    kwargs.setdefault("origin", f"{run.directory} step {int(step)} (the replay's start)")
    return cls(run.config_at(step), run.model, run.dataset, run.state_at(step), **kwargs)

  @property
  def params(self):
    return self.state.params

  def advance_to(self, step: int) -> None:
    """Takes steps until the state is at absolute step ``step``.

    Raises:
      trajax.state.NonFiniteError: a step went non-finite (the state stays
        frozen at the last good one, as in :func:`trajax.loop.fit`).
    """
    if step < self.step:
      raise ValueError(f"cannot go back from step {self.step} to {step}")
    if self.step == step:
      return
    while self.step < step:
      _, batch = next(self._batches)
      self.state, _ = self._fn(self.state, batch, self._hyper)
      self.step += 1
      if self.step % self.log_every == 0 and self.step < step:
        loop.check_health(self.state.health, self.origin)
    loop.check_health(self.state.health, self.origin)


def _host_batches(stream, sharding):
  # (host batch, global batch) pairs, as the device pool's stream yields them.
  for host_batch in stream:
    batch = {k: v for k, v in host_batch.items() if k in ("image", "label")}
    yield host_batch, state_lib.global_batch(batch, sharding)
