"""Orbax checkpoints of a run: ``WORKDIR/checkpoints/<step>/{state,meta}``.

On disk, each step holds two Orbax items:

* ``state``: the :class:`trajax.train.TrainState` as a *plain nested dict* of
  arrays (``flax.serialization.to_state_dict``: NamedTuple fields become keys,
  tuple entries ``'0'``, ``'1'``, ...), so plain Orbax restores it without
  importing trajax::

      import orbax.checkpoint as ocp
      mngr = ocp.CheckpointManager("WORKDIR/checkpoints", options=ocp.CheckpointManagerOptions(read_only=True))
      tree = mngr.restore(step).state     # {'params': ..., 'opt_state': ..., 'step': ...}

* ``meta``: JSON -- step, data position, the config, its hash, library
  versions, process/device counts, and ``all_finite`` (checked before saving).

:class:`Checkpointer` is the run's own writer (async saves, keep policy, temp
directories of crashed saves cleaned up). :func:`restore_readonly` is for
everyone else (side-trips, probes, ``trajax.verify``): it never opens a
``CheckpointManager`` able to write or prune in another run's directory.
A step directory counts only once Orbax has finalised it
(:func:`committed_steps`); half-written temporary directories are ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from typing import Any

import jax
from absl import logging

_STEP_RE = re.compile(r"^\d+$")
_COMMIT_FILE = "commit_success.txt"


def _ocp():
  import orbax.checkpoint as ocp

  return ocp


def committed_steps(directory: str) -> list[int]:
  """Sorted steps with a finalised checkpoint in ``directory`` (plain file reads).

  Temporary directories of interrupted saves (``<step>.orbax-checkpoint-tmp-*``)
  and unfinalised step directories are left out.
  """
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if _is_committed(os.path.join(directory, n)))


def _is_committed(path: str) -> bool:
  # Orbax writes commit_success.txt as the last step of a save, before the
  # atomic rename (POSIX) or in place (object stores), so its presence in a
  # step-named directory is the commit.
  return (
    _STEP_RE.match(os.path.basename(path)) is not None
    and os.path.isfile(os.path.join(path, _COMMIT_FILE))
    and os.path.isdir(os.path.join(path, "state"))
    and os.path.isdir(os.path.join(path, "meta"))
  )


def quarantine_uncommitted(directory: str) -> list[str]:
  """Moves step directories without a commit marker to ``../quarantined_checkpoints``.

  A crash can leave a step-named directory that Orbax would list as a step
  (and then refuse to overwrite); it is moved aside, never deleted, and
  never restored from. Returns the new paths. Orbax's own temporary
  directories are left to its ``cleanup_tmp_directories``.
  """
  if not os.path.isdir(directory):
    return []
  moved = []
  target_dir = os.path.join(os.path.dirname(os.path.abspath(directory)), "quarantined_checkpoints")
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if _STEP_RE.match(name) and os.path.isdir(path) and not _is_committed(path):
      os.makedirs(target_dir, exist_ok=True)
      dest = os.path.join(target_dir, f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
      os.replace(path, dest)
      moved.append(dest)
  return moved


def read_metadata(directory: str, step: int) -> dict:
  """The ``meta`` JSON of checkpoint ``step`` (a plain file read)."""
  path = os.path.join(directory, str(step), "meta", "metadata")
  with open(path) as f:
    return json.load(f)


def config_hash(config) -> str:
  """sha256 (16 hex digits) of the config's canonical JSON."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  text = json.dumps(d, sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
  """Versions of the libraries that determine the numerics and the format."""
  import importlib.metadata as md

  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = "missing"
  import trajax

  out["trajax"] = trajax.__version__
  return out


def make_metadata(config, *, step: int) -> dict:
  """The JSON stored beside the state of checkpoint ``step``."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {
    "step": int(step),
    # Batch i is a pure function of (seed, i): the stream position is the step.
    "data_position": int(step),
    "config": json.loads(json.dumps(d, default=list)),
    "config_hash": config_hash(config),
    "versions": versions(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "all_finite": True,
    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def _to_tree(state):
  from flax import serialization

  return serialization.to_state_dict(state)


def _abstract(tree):
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(leaf, tree)


def _from_tree(target, tree):
  from flax import serialization

  return serialization.from_state_dict(target, tree)


class Checkpointer:
  """The run's own ``CheckpointManager`` (the only writer in its directory).

  Args:
    directory: ``WORKDIR/checkpoints``.
    max_to_keep: newest checkpoints kept (None: all).
    keep_period: also keep every step divisible by this (side-trip branch points).
    async_save: write in the background; :meth:`wait` blocks until committed.
  """

  def __init__(self, directory: str, *, max_to_keep=None, keep_period=None, async_save=True):
    ocp = _ocp()
    self.directory = os.path.abspath(directory)
    if jax.process_index() == 0:
      for path in quarantine_uncommitted(self.directory):
        logging.warning("moved an uncommitted checkpoint directory aside to %s", path)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("trajax.checkpoint.quarantine")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      keep_period=keep_period,
      enable_async_checkpointing=bool(async_save),
      cleanup_tmp_directories=True,
      create=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "meta")
    )

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> bool:
    """Starts saving ``state`` at ``step`` (returns False if that step exists)."""
    ocp = _ocp()
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(meta)
      ),
      force=True,
    )

  def restore(self, step: int, target) -> tuple[Any, dict]:
    """``(state, meta)`` of ``step``, laid out like ``target`` (shapes, dtypes, shardings)."""
    ocp = _ocp()
    abstract = _abstract(_to_tree(target))
    out = self.manager.restore(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return _from_tree(target, out.state), dict(out.meta)

  def wait(self):
    """Blocks until every started save is committed."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def resolve_directory(path: str) -> str:
  """``WORKDIR`` or ``WORKDIR/checkpoints`` -> the checkpoints directory (must exist)."""
  path = os.path.abspath(os.fspath(path))
  sub = os.path.join(path, "checkpoints")
  if os.path.isdir(sub):
    return sub
  if os.path.isdir(path) and (committed_steps(path) or os.path.basename(path) == "checkpoints"):
    return path
  raise FileNotFoundError(
    f"no checkpoints directory at {path!r} (expected WORKDIR or WORKDIR/checkpoints)"
  )


def restore_readonly(path: str, *, step: int | None = None, target=None) -> tuple[Any, dict]:
  """``(state, meta)`` from another run's checkpoint, without writing anything.

  Uses a plain ``StandardCheckpointer`` on ``<dir>/<step>/state`` (no
  ``CheckpointManager``: nothing is created, pruned or cleaned up there).

  Args:
    path: ``WORKDIR`` or ``WORKDIR/checkpoints``.
    step: a committed step; default the latest.
    target: a :class:`trajax.train.TrainState` (arrays or ShapeDtypeStructs,
      shardings honoured) to restore into; None gives the plain nested dict.

  Raises:
    FileNotFoundError: no such directory or no committed checkpoint / step.
  """
  ocp = _ocp()
  directory = resolve_directory(path)
  steps = committed_steps(directory)
  if not steps:
    raise FileNotFoundError(f"no committed checkpoint in {directory!r}")
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"step {step} is not a committed checkpoint in {directory!r}: {steps}")
  item = os.path.join(directory, str(step), "state")
  with ocp.StandardCheckpointer() as ckptr:
    if target is None:
      # Onto this process's first device whatever topology wrote it (the
      # stored shardings may name devices this process does not have).
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      stored = ckptr.metadata(item).item_metadata
      abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored
      )
      state = ckptr.restore(item, abstract)
    else:
      tree = ckptr.restore(item, _abstract(_to_tree(target)))
      state = _from_tree(target, tree)
  return state, read_metadata(directory, step)
