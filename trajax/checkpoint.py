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
  versions, process/device counts, ``all_finite`` (checked before saving) and
  ``digests``: a CRC-32 of every saved array (:func:`tree_digests`).

Integrity. The digests are computed from a device-side copy of the state in a
background thread while Orbax writes the arrays, and the ``meta`` item (which
holds them) is written by a JSON handler that waits for them, so they are on
disk before Orbax's commit marker: no committed checkpoint lacks them. Every
restore (:meth:`Checkpointer.restore`, :func:`restore_readonly`) recomputes
them and checks that every float is finite and below ``sqrt(finfo.max)``
(:func:`check_state`), raising :class:`CheckpointCorruptError` otherwise;
:meth:`Checkpointer.restore_latest_good` quarantines a damaged latest
checkpoint and falls back to the newest good one.

Why CRC-32 (``zlib.crc32``): a checkpoint is protected against accidental
damage (a flipped bit or byte, a torn or zeroed block), not against forgery.
CRC-32 detects every burst error of at most 32 bits -- so every flipped byte,
with certainty -- and any other random damage with probability 1 − 2⁻³²; it
runs at ~7 GB/s on one core against ~2 GB/s for SHA-256 with SHA-NI, ~1.3 GB/s
for BLAKE2b (``bench/bench_checkpoint.py``), and releases the GIL, so the
background thread does not slow the training thread.

One writer: constructing a :class:`Checkpointer` first takes the workdir lock
(:mod:`trajax.workdir_lock`), before anything is moved, cleaned or written.

:class:`Checkpointer` is the run's own writer (async saves, keep policy, temp
directories of crashed saves cleaned up). :func:`restore_readonly` is for
everyone else (side-trips, probes, ``trajax.verify``): it never opens a
``CheckpointManager`` able to write or prune in another run's directory.
A step directory counts only once Orbax has finalised it
(:func:`committed_steps`); half-written temporary directories are ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import math
import os
import platform
import re
import time
import zlib
from typing import Any

import jax
import numpy as np
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
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if _STEP_RE.match(name) and os.path.isdir(path) and not _is_committed(path):
      moved.append(_move_aside(path))
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


# ----------------------------------------------------------------------------
# integrity: digests, finiteness, magnitude

DIGEST_ALGORITHM = "crc32"


class CheckpointCorruptError(RuntimeError):
  """A checkpoint failed its digest, finiteness or magnitude check, or cannot be read."""


def _key_name(k) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def leaf_paths(tree) -> list[tuple[str, Any]]:
  """``[("params/head/kernel", leaf), ...]`` of a state dict (the names verify prints)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


def _host_array(x) -> np.ndarray | None:
  """The full value of a leaf on this host, or None when other processes hold parts of it."""
  if isinstance(x, jax.Array):
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return None
  return np.asarray(x)


def leaf_digest(arr: np.ndarray) -> str:
  """``"<dtype>[<shape>]:<crc32 of the C-order bytes, 8 hex digits>"``."""
  shape = ",".join(map(str, np.shape(arr)))
  flat = np.ascontiguousarray(arr).reshape(-1)
  crc = zlib.crc32(flat.view(np.uint8)) if flat.size else 0
  return f"{flat.dtype.name}[{shape}]:{crc:08x}"


def tree_digests(tree) -> dict:
  """``{"algorithm": "crc32", "leaves": {path: digest}, "skipped": [paths]}``.

  ``skipped``: leaves sharded across processes (no process holds them whole).
  """
  leaves, skipped = {}, []
  for path, leaf in leaf_paths(tree):
    arr = _host_array(leaf)
    if arr is None:
      skipped.append(path)
    else:
      leaves[path] = leaf_digest(arr)
  return {"algorithm": DIGEST_ALGORITHM, "leaves": leaves, "skipped": skipped}


def magnitude_limit(dtype) -> float:
  """``sqrt(finfo(dtype).max)``: the largest |x| whose square is finite.

  A trained network never holds such values, and its first squared use (a
  BatchNorm variance, ‖g‖², weight decay's ‖θ‖²) would overflow to inf: a
  finite but larger value can only be damage.
  """
  return math.sqrt(float(jax.numpy.finfo(dtype).max))


def check_state(tree, meta: dict | None) -> list[str]:
  """Problems of a restored state dict against its ``meta`` (empty: good).

  Checks every leaf held whole on this host: its digest equals the stored one
  (leaves missing from either side count), every float is finite and
  ``|x| < sqrt(finfo.max)`` (:func:`magnitude_limit`). A checkpoint written
  before digests existed (no ``digests`` in ``meta``) gets the value checks only.
  """
  problems, nonfinite, huge, mismatch = [], [], [], []
  stored = (meta or {}).get("digests")
  expected = dict(stored.get("leaves", {})) if stored else None
  seen = set()
  for path, leaf in leaf_paths(tree):
    arr = _host_array(leaf)
    if arr is None:
      continue
    seen.add(path)
    if expected is not None and path in expected and leaf_digest(arr) != expected[path]:
      mismatch.append(path)
    if arr.dtype.kind in "fc" and arr.size:
      if not np.isfinite(arr).all():
        nonfinite.append(path)
      elif float(np.max(np.abs(arr))) >= magnitude_limit(arr.dtype):
        huge.append(f"{path} (max |x| {float(np.max(np.abs(arr))):.3g})")

  def some(names):
    return f"{names[:4]}{f' and {len(names) - 4} more' if len(names) > 4 else ''}"

  if expected is not None:
    if stored.get("algorithm") != DIGEST_ALGORITHM:
      problems.append(f"unknown digest algorithm {stored.get('algorithm')!r}")
    missing = sorted(set(expected) - seen - set(stored.get("skipped", [])))
    extra = sorted(p for p in seen - set(expected) if p not in stored.get("skipped", []))
    if mismatch:
      problems.append(f"digest mismatch (data changed after saving) in {some(mismatch)}")
    if missing or extra:
      problems.append(f"leaves differ from the digest list: missing {missing}, unlisted {extra}")
  if nonfinite:
    problems.append(f"non-finite values in {some(nonfinite)}")
  if huge:
    problems.append(f"values beyond sqrt(finfo.max) (their square overflows) in {some(huge)}")
  return problems


class _PendingMeta(dict):
  """The ``meta`` JSON whose ``digests`` a background future is still computing."""

  def __init__(self, meta: dict, digests: concurrent.futures.Future):
    super().__init__(meta)
    self.digests = digests


_META_ARGS = None


def _meta_args():
  """``(save_args_cls, restore_args_cls)`` of the ``meta`` item's JSON handler.

  The handler waits for the digests before writing ``meta``: Orbax runs
  every item's write, then writes the commit marker, so the digests are on
  disk before the commit. On disk it is a plain ``JsonCheckpointHandler`` item
  (same typestr), so plain Orbax restores it without trajax.
  """
  global _META_ARGS
  if _META_ARGS is None:
    import dataclasses

    ocp = _ocp()

    class _DigestingJsonHandler(ocp.JsonCheckpointHandler):
      async def _save_fn(self, x, directory):
        if isinstance(x, _PendingMeta):
          digests = await asyncio.wrap_future(x.digests)
          x = dict(x, digests=digests)
        await super()._save_fn(x, directory)

    @ocp.args.register_with_handler(_DigestingJsonHandler, for_save=True)
    @dataclasses.dataclass
    class _MetaSave(ocp.args.JsonSave):
      pass

    @ocp.args.register_with_handler(_DigestingJsonHandler, for_restore=True)
    @dataclasses.dataclass
    class _MetaRestore(ocp.args.JsonRestore):
      pass

    # Recorded in the step's metadata as the plain JSON handler (set after the
    # registration above, which keys the registry by the class's own name).
    _DigestingJsonHandler.typestr = classmethod(lambda cls: ocp.JsonCheckpointHandler.typestr())
    _META_ARGS = (_MetaSave, _MetaRestore)
  return _META_ARGS


@jax.jit
def _copy_tree(tree):
  # A jitted function never returns its (undonated) inputs' buffers: fresh copies.
  return jax.tree.map(jax.numpy.copy, tree)


def _snapshot(tree):
  """A copy of ``tree`` that the next (donating) train step cannot delete.

  Copied on device in one asynchronous dispatch, so the training thread does
  not wait for a device-to-host transfer; the digest thread reads the copy.
  Cost: one extra state in device memory from the save until its digests are
  computed (``bench/bench_checkpoint.py``: +0.01-0.03 s on the training thread
  for a 174 MB ResNet-34 state on CPU).
  Leaves sharded across processes are not copied (:func:`tree_digests` skips
  them); whole ones held by another device set are copied leaf by leaf.
  """
  leaves, treedef = jax.tree.flatten(tree)
  local = [isinstance(x, jax.Array) and x.is_fully_addressable for x in leaves]
  copies = iter(_copy_tree([x for x, ok in zip(leaves, local, strict=True) if ok]))
  out = []
  for x, ok in zip(leaves, local, strict=True):
    if ok:
      out.append(next(copies))
    elif isinstance(x, jax.Array):
      out.append(jax.numpy.array(x.addressable_data(0), copy=True) if x.is_fully_replicated else x)
    else:
      out.append(np.array(x, copy=True))
  return jax.tree.unflatten(treedef, out)


class Checkpointer:
  """The run's own ``CheckpointManager`` (the only writer in its workdir).

  Constructing it takes the workdir lock (:mod:`trajax.workdir_lock`, on the
  directory that holds ``directory``) before anything there is moved or
  written; :meth:`close` releases it.

  Args:
    directory: ``WORKDIR/checkpoints``.
    max_to_keep: newest checkpoints kept (None: all).
    keep_period: also keep every step divisible by this (side-trip branch points).
    async_save: write in the background; :meth:`wait` blocks until committed.
    force_takeover: override a busy workdir lock (``--force_takeover``); None:
      as requested with :func:`trajax.workdir_lock.request_takeover`.

  Raises:
    trajax.workdir_lock.WorkdirBusyError: another live process writes there.
  """

  def __init__(
    self,
    directory: str,
    *,
    max_to_keep=None,
    keep_period=None,
    async_save=True,
    force_takeover: bool | None = None,
  ):
    from trajax import workdir_lock

    ocp = _ocp()
    self.directory = os.path.abspath(directory)
    self._lock = workdir_lock.acquire(
      os.path.dirname(self.directory), force_takeover=force_takeover
    )
    self._digester = None
    try:
      if jax.process_index() == 0:
        for path in quarantine_uncommitted(self.directory):
          logging.warning("moved an uncommitted checkpoint directory aside to %s", path)
      _sync("trajax.checkpoint.quarantine")
      options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        keep_period=keep_period,
        enable_async_checkpointing=bool(async_save),
        cleanup_tmp_directories=True,
        create=True,
      )
      self.manager = ocp.CheckpointManager(
        self.directory,
        options=options,
        item_names=("state", "meta"),
      )
      self._digester = concurrent.futures.ThreadPoolExecutor(1, "trajax-digest")
    except BaseException:
      self._lock.release()
      raise

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> bool:
    """Starts saving ``state`` at ``step`` (returns False if that step exists).

    The per-leaf digests are computed in a background thread from a device
    copy of the state and land in ``meta`` before the commit.
    """
    ocp = _ocp()
    if step in self.manager.all_steps():
      return False
    tree = _to_tree(state)
    if jax.process_index() == 0:  # only the primary host writes ``meta``
      snapshot = _snapshot(tree)
      meta = _PendingMeta(meta, self._digester.submit(tree_digests, snapshot))
    return self.manager.save(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=_meta_args()[0](meta)),
      force=True,
    )

  def restore(self, step: int, target, *, check: bool = True) -> tuple[Any, dict]:
    """``(state, meta)`` of ``step``, laid out like ``target`` (shapes, dtypes, shardings).

    Raises:
      CheckpointCorruptError: with ``check``, the state fails :func:`check_state`
        (on any process of a multi-host run).
    """
    ocp = _ocp()
    abstract = _abstract(_to_tree(target))
    out = self.manager.restore(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=_meta_args()[1]()),
    )
    meta = dict(out.meta)
    if check:
      problems = check_state(out.state, meta)
      if _any_process(bool(problems)):
        where = "; ".join(problems) or "failed its checks on another process"
        raise CheckpointCorruptError(f"checkpoint {self.path(step)}: {where}")
    return _from_tree(target, out.state), meta

  def quarantine(self, step: int, reason: str) -> str:
    """Moves committed checkpoint ``step`` to ``../quarantined_checkpoints`` (never deletes).

    ``reason`` is written beside it (``quarantine_reason.txt``). Returns the
    new path (process 0's; every process calls this).
    """
    dest = ""
    if jax.process_index() == 0:
      dest = _move_aside(self.path(step))
      with open(os.path.join(dest, "quarantine_reason.txt"), "w") as f:
        f.write(reason + "\n")
    _sync("trajax.checkpoint.quarantine_step")
    self.manager.reload()
    return dest

  def restore_latest_good(self, target) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the newest committed checkpoint that passes its checks.

    Walks the committed steps newest first. A checkpoint that cannot be read
    (a truncated or missing array file), fails its digests, or holds
    non-finite or overflowing values (:func:`check_state`) is quarantined
    (:meth:`quarantine`) with one warning naming the step and the reason, and
    the next older one is tried. A restore error counts as damage only if a
    target-free read of the same checkpoint fails too; otherwise the target
    does not fit (a code or config change) and the error is raised unchanged,
    so a good checkpoint is never moved because of it.

    Returns:
      None when there is no committed checkpoint.

    Raises:
      CheckpointCorruptError: checkpoints exist but none is good (all moved).
    """
    steps = committed_steps(self.directory)
    moved = []
    _quiet_closed_loop_callbacks()
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, target)
      except CheckpointCorruptError as e:
        reason = str(e)
      except Exception as e:  # noqa: BLE001 -- damage, or a target that does not fit
        if not self._unreadable(step):
          raise
        reason = f"checkpoint {self.path(step)}: cannot be read: {_first_line(e)}"
      else:
        if moved:
          logging.warning(
            "resuming from step %d, the newest good checkpoint (%d newer one(s) quarantined)",
            step,
            len(moved),
          )
        return step, state, meta
      dest = self.quarantine(step, reason)
      moved.append(dest)
      logging.warning("checkpoint step %d is damaged and was moved to %s: %s", step, dest, reason)
    if not steps:
      return None
    raise CheckpointCorruptError(
      f"no good checkpoint in {self.directory}: all {len(steps)} committed checkpoint(s) "
      f"(steps {steps}) failed their checks and were moved to "
      f"{os.path.dirname(moved[0]) if moved and moved[0] else 'quarantined_checkpoints'} "
      "(each with a quarantine_reason.txt). Nothing was deleted. To start this run afresh, "
      "run the same command again (--resume=auto starts from step 0 now that no checkpoint "
      "is left); to recover, inspect them with `python -m trajax.verify` and move a good "
      "step directory back into checkpoints/"
    )

  def _unreadable(self, step: int) -> bool:
    """True if ``step`` cannot be read even without a target (damage, not a mismatch)."""
    try:
      restore_readonly(self.directory, step=step, check=False)
    except Exception:  # noqa: BLE001
      return _any_process(True)
    return _any_process(False)

  def wait(self):
    """Blocks until every started save is committed."""
    self.manager.wait_until_finished()

  def close(self):
    """Waits for the saves, closes the manager, releases the workdir lock."""
    try:
      self.manager.wait_until_finished()
      self.manager.close()
    finally:
      if self._digester is not None:
        self._digester.shutdown(wait=True)
      self._lock.release()


_QUIET_INSTALLED = False


def _quiet_closed_loop_callbacks():
  """Drops the "Event loop is closed" noise of a failed TensorStore read.

  When one array of a damaged checkpoint fails to read, Orbax closes its event
  loop while the other reads are in flight; each of their completion
  callbacks then reports ``RuntimeError('Event loop is closed')`` through
  ``sys.unraisablehook`` -- dozens of tracebacks after the one-line reason.
  Only that exact error is dropped; everything else reaches the previous hook.
  """
  global _QUIET_INSTALLED
  if _QUIET_INSTALLED:
    return
  import sys

  previous = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  sys.unraisablehook = hook
  _QUIET_INSTALLED = True


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _move_aside(path: str) -> str:
  """``path`` -> ``../../quarantined_checkpoints/<name>-<time>-<pid>`` (a rename)."""
  parent = os.path.dirname(os.path.abspath(path))
  target_dir = os.path.join(os.path.dirname(parent), "quarantined_checkpoints")
  os.makedirs(target_dir, exist_ok=True)
  name = os.path.basename(path)
  dest = os.path.join(target_dir, f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
  os.replace(path, dest)
  return dest


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


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


def restore_readonly(
  path: str, *, step: int | None = None, target=None, check: bool = True
) -> tuple[Any, dict]:
  """``(state, meta)`` from another run's checkpoint, without writing anything.

  Uses a plain ``StandardCheckpointer`` on ``<dir>/<step>/state`` (no
  ``CheckpointManager``: nothing is created, pruned or cleaned up there).

  Args:
    path: ``WORKDIR`` or ``WORKDIR/checkpoints``.
    step: a committed step; default the latest.
    target: a :class:`trajax.train.TrainState` (arrays or ShapeDtypeStructs,
      shardings honoured) to restore into; None gives the plain nested dict.
    check: verify digests, finiteness and magnitude (:func:`check_state`).

  Raises:
    FileNotFoundError: no such directory or no committed checkpoint / step.
    CheckpointCorruptError: ``check`` failed.
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
      tree = state = ckptr.restore(item, abstract)
    else:
      tree = ckptr.restore(item, _abstract(_to_tree(target)))
      state = _from_tree(target, tree)
  meta = read_metadata(directory, step)
  if check:
    problems = check_state(tree, meta)
    if problems:
      where = os.path.join(directory, str(step))
      raise CheckpointCorruptError(f"checkpoint {where}: {'; '.join(problems)}")
  return state, meta
