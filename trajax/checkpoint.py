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
  versions, process/device counts, ``all_finite`` (checked before saving),
  ``digests``: a CRC-32 of every saved array (:func:`tree_digests`), and
  ``meta_digest``: a SHA-256 of all of the above (:func:`meta_digest`).

The metadata is verified before it is trusted (:func:`read_metadata`): a
damaged file, a changed config digit, data position or digest key makes the
step as damaged as a flipped array byte -- quarantined, and the run resumes
from the previous good step. A step written before digests existed resumes
with one warning (``python -m trajax.verify --write_digests`` adds them,
:func:`write_digests`).

Integrity (:mod:`trajax.checkpoint_digest`, whose public names this module
re-exports). The digests are computed from a device-side copy of the state in a
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
A train state written in an older layout (the averaging wrapper's complete
average, then the average without its newest point) is converted on every
restore (:mod:`trajax.checkpoint_layout`).

Why one module of over 500 lines: the writer and the read-only reader define one
on-disk format (step directories, the two items, the commit marker) and must
change together; integrity and old layouts live in their own modules.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from trajax import checkpoint_layout as layout

# Integrity lives in trajax.checkpoint_digest; its public names are this module's too.
from trajax.checkpoint_digest import (  # noqa: F401 -- re-exported
  DIGEST_ALGORITHM,
  META_DIGEST_KEY,
  CheckpointCorruptError,
  check_meta,
  check_state,
  leaf_digest,
  leaf_paths,
  magnitude_limit,
  meta_digest,
  meta_save_args,
  pending_meta,
  seal_meta,
  tree_digests,
  unverified,
)

_STEP_RE = re.compile(r"^\d+$")
_COMMIT_FILE = "commit_success.txt"
QUARANTINE_DIR = "quarantined_checkpoints"


class QuarantineError(CheckpointCorruptError):
  """A damaged checkpoint could not be moved aside (nothing was moved)."""


class _ItemMetadataFilter:
  """Drops Orbax's "Metadata file does not exist" warning for one item being read.

  A plain ``StandardCheckpointer`` looks for step metadata inside the item
  directory ``<step>/state``; the ``CheckpointManager`` that wrote it keeps
  that file one level up, in ``<step>``. Its absence there is expected and
  harmless, and one warning per read-only restore buries the run's own lines.
  """

  def __init__(self, item: str):
    self.item = os.path.abspath(item)

  def filter(self, record) -> bool:
    return not (
      record.msg == "Metadata file does not exist: %s"
      and bool(record.args)
      and os.path.abspath(str(record.args[0])).startswith(self.item)
    )


@contextlib.contextmanager
def _expected_missing_metadata(item: str):
  import logging as std_logging

  logger, quiet = std_logging.getLogger("absl"), _ItemMetadataFilter(item)
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _ocp():
  import orbax.checkpoint as ocp

  return ocp


def committed_steps(directory: str) -> list[int]:
  """Sorted steps with a finalised checkpoint in ``directory`` (plain file reads).

  Temporary directories of interrupted saves (``<step>.orbax-checkpoint-tmp-*``)
  and unfinalised step directories are left out.
  """
  from trajax import paths

  if not paths.isdir(directory):
    return []
  names = [n for n in paths.listdir(directory) if _STEP_RE.match(n)]
  return sorted(int(n) for n in names if _is_committed(paths.join(directory, n)))


def _is_committed(path: str) -> bool:
  # Orbax writes commit_success.txt as the last step of a save, before the
  # atomic rename (POSIX) or in place (object stores), so its presence in a
  # step-named directory is the commit.
  from trajax import paths

  if paths.is_remote(path):
    return (
      _STEP_RE.match(path.rstrip("/").rsplit("/", 1)[-1]) is not None
      and paths.isfile(paths.join(path, _COMMIT_FILE))
      and paths.isdir(paths.join(path, "state"))
      and paths.isdir(paths.join(path, "meta"))
    )
  return (
    _STEP_RE.match(os.path.basename(path)) is not None
    and not os.path.islink(path)
    and os.path.isfile(os.path.join(path, _COMMIT_FILE))
    and os.path.isdir(os.path.join(path, "state"))
    and os.path.isdir(os.path.join(path, "meta"))
  )


def quarantine_uncommitted(directory: str) -> list[str]:
  """Moves step directories without a commit marker to ``../quarantined_checkpoints``.

  A crash can leave a step-named directory that Orbax would list as a step
  (and then refuse to overwrite); it is moved aside, never deleted, and
  never restored from. So is a symbolic link among the checkpoints (the link
  itself): Orbax's keep policy would delete what it points to, outside the
  workdir. Returns the new paths. Orbax's own temporary directories are left
  to its ``cleanup_tmp_directories``.
  """
  from trajax import paths

  if paths.is_remote(directory):  # an object store has no links
    if not paths.isdir(directory):
      return []
    names = [n for n in paths.listdir(directory) if _STEP_RE.match(n)]
    full = [paths.join(directory, n) for n in names]
    return [move_aside(p) for p in full if paths.isdir(p) and not _is_committed(p)]
  if not os.path.isdir(directory):
    return []
  moved = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.islink(path) and name.split(".")[0].isdigit():
      moved.append(move_aside(path))
    elif _STEP_RE.match(name) and os.path.isdir(path) and not _is_committed(path):
      moved.append(move_aside(path))
  return moved


def read_metadata(directory: str, step: int, *, check: bool = True) -> dict:
  """The ``meta`` JSON of checkpoint ``step`` (a plain file read), verified.

  Raises:
    CheckpointCorruptError: the file is missing or not JSON, or (with
      ``check``) fails :func:`check_meta`: its digest, step or data position.
  """
  from trajax import paths

  return _read_meta_file(paths.join(directory, str(step)), int(step), check=check)


def newest_good_metadata(directory: str, steps) -> dict | None:
  """The verified ``meta`` of the newest of ``steps`` whose metadata verifies, else None.

  A damaged newer step is skipped here, not fatal: its writer quarantines it
  once the workdir's lock is held (as a damaged array is), and its stored
  config must not be mistaken for the user's change.
  """
  for step in sorted(steps, reverse=True):
    try:
      return read_metadata(directory, step)
    except CheckpointCorruptError:
      continue
  return None


def _read_meta_file(step_dir: str, step: int, *, check: bool = True) -> dict:
  from trajax import paths

  path = paths.join(step_dir, "meta", "metadata")
  try:
    meta = json.loads(paths.read_bytes(path).decode("utf-8"))
  except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 decoding
    raise CheckpointCorruptError(
      f"checkpoint {step_dir}: metadata cannot be read: {_first_line(e)}"
    ) from None
  problems = check_meta(meta, step) if check else []
  if not isinstance(meta, dict):
    problems = problems or [f"metadata is a {type(meta).__name__}, not a JSON object"]
  if problems:
    raise CheckpointCorruptError(f"checkpoint {step_dir}: {'; '.join(problems)}")
  return meta


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
    from trajax import paths, workdir_lock

    ocp = _ocp()
    self.directory = paths.absolute(directory)
    self._lock = workdir_lock.acquire(paths.dirname(self.directory), force_takeover=force_takeover)
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
      meta = pending_meta(meta, tree, self._digester.submit)
    return self.manager.save(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=meta_save_args(meta)),
      force=True,
    )

  def restore(self, step: int, target, *, check: bool = True) -> tuple[Any, dict]:
    """``(state, meta)`` of ``step``, laid out like ``target`` (shapes, dtypes, shardings).

    Raises:
      CheckpointCorruptError: with ``check``, the state fails :func:`check_state`
        (on any process of a multi-host run).
    """
    ocp = _ocp()
    # The metadata first, verified (its digest, step, data position): it says
    # what the arrays must be, so it is trusted only once it checks out.
    try:
      meta = read_metadata(self.directory, step, check=check)
      bad_meta = False
    except CheckpointCorruptError:
      bad_meta = True
    if _any_process(bad_meta):
      meta = read_metadata(self.directory, step, check=check)  # this process's reason
      raise CheckpointCorruptError(f"checkpoint {self.path(step)}: metadata failed on a process")
    abstract = _abstract(_to_tree(target))
    item = os.path.join(self.path(step), "state")
    with _expected_missing_metadata(item):
      old = layout.stored_in_old_layout(item)  # its tree metadata, or None
    out = self.manager.restore(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(
          layout.old_averaging_target(abstract, old) if old else abstract
        ),
      ),
    )
    if check:
      problems = check_state(out.state, meta)
      if _any_process(bool(problems)):
        where = "; ".join(problems) or "failed its checks on another process"
        raise CheckpointCorruptError(f"checkpoint {self.path(step)}: {where}")
    tree = layout.upgrade_averaging(out.state, abstract) if old else out.state
    return _from_tree(target, tree), meta

  def quarantine(self, step: int, reason: str) -> str:
    """Moves committed checkpoint ``step`` to ``../quarantined_checkpoints`` (never deletes).

    ``reason`` is written beside it (``quarantine_reason.txt``). Returns the
    new path (process 0's; every process calls this).
    """
    dest, error = "", None
    if jax.process_index() == 0:
      try:
        dest = move_aside(self.path(step))
      except QuarantineError as e:
        error = str(e)
      else:
        try:
          from trajax import paths

          reason_path = paths.join(dest, "quarantine_reason.txt")
          if paths.is_remote(dest):
            paths.write_bytes(reason_path, (reason + "\n").encode())
          else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(reason_path, flags, 0o644), "w") as f:
              f.write(reason + "\n")
        except Exception as e:  # noqa: BLE001 -- the move is what matters; the reason is also logged
          logging.warning("could not write the quarantine reason into %s: %s", dest, e)
    _sync("trajax.checkpoint.quarantine_step")
    if jax.process_count() > 1:
      from trajax import workdir_lock

      error = workdir_lock.broadcast_error(error)
    if error is not None:
      raise QuarantineError(f"{error} (checkpoint step {step}: {reason})")
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
    from trajax import paths

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
        missing = unverified(meta)
        if missing:
          logging.warning(
            "checkpoint step %d carries no %s (written before trajax stored them): resuming "
            "from it unverified; once you trust this run, add them with `python -m "
            "trajax.verify --write_digests %s`",
            step,
            " and no ".join(missing),
            paths.dirname(self.directory),
          )
        return step, state, meta
      dest = self.quarantine(step, reason)
      moved.append(dest)
      logging.warning("checkpoint step %d is damaged and was moved to %s: %s", step, dest, reason)
    if not steps:
      return None
    from trajax import paths

    qdir = paths.join(paths.dirname(self.directory), QUARANTINE_DIR)
    raise CheckpointCorruptError(
      f"no good checkpoint in {self.directory}: all {len(steps)} committed checkpoint(s) "
      f"(steps {steps}) failed their checks and were moved to {qdir} (each with a "
      "quarantine_reason.txt). Nothing was deleted. To start this run afresh, run the same "
      "command again (--resume=auto starts from step 0 now that no checkpoint is left); to "
      f"recover, inspect them with `python -m trajax.verify {qdir}` and move a step it "
      f"reports good back as {self.directory}/<step>"
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
  Likewise asyncio's "Task exception was never retrieved" for Orbax's other
  TensorStore reads of the same damaged step (their errors carry a
  ``tensorstore_spec``), logged whenever the garbage collector meets them: the
  quarantine line already gave the reason.
  """
  global _QUIET_INSTALLED
  if _QUIET_INSTALLED:
    return
  import logging as py_logging
  import sys

  class _OrphanedReads(py_logging.Filter):
    def filter(self, record):
      text = record.getMessage()
      return not (
        text.startswith("Task exception was never retrieved") and "tensorstore_spec" in text
      )

  py_logging.getLogger("asyncio").addFilter(_OrphanedReads())

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


def move_aside(path: str) -> str:
  """``path`` -> ``../../quarantined_checkpoints/<name>-<time>-<pid>`` (one rename).

  One ``rename``: it moves the whole directory or nothing (a cross-device or
  read-only target fails before anything moves). The quarantine directory must
  be a real directory of the workdir, not a link out of it.

  On an object store (no rename) it is a copy of every object, then the
  deletion of the originals, commit marker first (:func:`trajax.paths.move_tree`):
  a failed copy is undone and nothing moves; a failed deletion leaves the
  quarantined copy complete and the original no longer committed, and says
  what is left to delete.

  Raises:
    QuarantineError: naming what could not be moved, where, and why.
  """
  from trajax import paths

  if paths.is_remote(path):
    parent = paths.dirname(path)
    target_dir = paths.join(paths.dirname(parent), QUARANTINE_DIR)
    dest = paths.join(
      target_dir, f"{paths.basename(path)}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    )
    try:
      if paths.exists(dest):
        raise paths.PathError(f"{dest} already exists; nothing was moved")
      paths.move_tree(path, dest, first_removed=_COMMIT_FILE)
    except paths.PathError as e:
      raise QuarantineError(f"could not move {path} aside to {target_dir}: {e}") from None
    return dest
  parent = os.path.dirname(os.path.abspath(path))
  target_dir = os.path.join(os.path.dirname(parent), QUARANTINE_DIR)
  name = os.path.basename(path)
  dest = os.path.join(target_dir, f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
  why = None
  try:
    if os.path.islink(target_dir):
      why = f"{target_dir} is a symbolic link (a quarantine stays inside the workdir)"
    elif os.path.lexists(target_dir) and not os.path.isdir(target_dir):
      why = f"{target_dir} exists and is not a directory"
    else:
      os.makedirs(target_dir, exist_ok=True)
      if os.path.lexists(dest):
        why = f"{dest} already exists"
      else:
        os.rename(path, dest)
  except OSError as e:
    why = f"{e.strerror or e}" + (
      " (the quarantine directory is on another filesystem)" if e.errno == errno.EXDEV else ""
    )
  if why is not None:
    raise QuarantineError(
      f"could not move {path} aside to {target_dir}: {why}; nothing was moved. Make "
      f"{target_dir} a writable directory on the checkpoints' filesystem (or move {path} "
      "out of the checkpoints directory yourself), then run the command again"
    )
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
  from trajax import paths

  if paths.is_remote(path):
    path = os.fspath(path).rstrip("/")
    sub = paths.join(path, "checkpoints")
    if paths.isdir(sub):
      return sub
    if path.endswith("/checkpoints") or committed_steps(path):
      return path
    raise FileNotFoundError(
      f"no checkpoints directory at {path!r} (expected WORKDIR or WORKDIR/checkpoints)"
    )
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
  directory = resolve_directory(path)
  steps = committed_steps(directory)
  if not steps:
    raise FileNotFoundError(f"no committed checkpoint in {directory!r}")
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"step {step} is not a committed checkpoint in {directory!r}: {steps}")
  from trajax import paths

  return restore_step_dir(paths.join(directory, str(step)), step, target=target, check=check)


def restore_step_dir(step_dir: str, step: int, *, target=None, check: bool = True):
  """``(state, meta)`` of one step directory wherever it lies (e.g. a quarantined one).

  As :func:`restore_readonly`; the metadata is read (and with ``check``
  verified, :func:`check_meta`) before any array.
  """
  from trajax import paths

  ocp = _ocp()
  meta = _read_meta_file(step_dir, int(step), check=check)
  item = paths.join(step_dir, "state")
  with _expected_missing_metadata(item), ocp.StandardCheckpointer() as ckptr:
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
      abstract = _abstract(_to_tree(target))
      old = layout.stored_in_old_layout(item)
      tree = ckptr.restore(item, layout.old_averaging_target(abstract, old) if old else abstract)
  if check:
    problems = check_state(tree, meta)
    if problems:
      raise CheckpointCorruptError(f"checkpoint {step_dir}: {'; '.join(problems)}")
  if target is not None:
    state = _from_tree(target, layout.upgrade_averaging(tree, abstract) if old else tree)
  return state, meta


def write_digests(workdir: str) -> list[str]:
  """Adds the array digests and the metadata digest to checkpoints written without them.

  ``python -m trajax.verify --write_digests WORKDIR``. Takes the workdir lock
  (no run may write there meanwhile). For each committed step lacking either
  digest: the metadata fields are checked (:func:`check_meta`), the arrays
  read and their values checked (finite, below ``sqrt(finfo.max)``); then the
  digests of what is on disk *now* are recorded, so run it on a run you trust
  (``trajax.verify`` first). The metadata file is replaced atomically (a new
  file renamed over it), never written through a link. A step whose metadata
  digest exists but fails is left alone and reported: that is damage, not age.

  Returns:
    One line per step: what was done or why not.
  """
  from trajax import paths, workdir_lock

  directory = resolve_directory(workdir)
  lines = []
  with workdir_lock.acquire(paths.dirname(directory)):
    for step in committed_steps(directory):
      step_dir = paths.join(directory, str(step))
      try:
        meta = _read_meta_file(step_dir, step, check=True)
      except CheckpointCorruptError as e:
        lines.append(f"ERROR step {step}: not sealed: {e}")
        continue
      missing = unverified(meta)
      if not missing:
        lines.append(f"step {step}: digests present, nothing to do")
        continue
      try:
        tree, _ = restore_step_dir(step_dir, step, check=False)
      except Exception as e:  # noqa: BLE001 -- unreadable: report, keep going
        lines.append(f"ERROR step {step}: not sealed: arrays cannot be read: {_first_line(e)}")
        continue
      problems = check_state(tree, meta)
      if problems:
        lines.append(f"ERROR step {step}: not sealed: {'; '.join(problems)}")
        continue
      if not meta.get("digests"):
        meta["digests"] = tree_digests(tree)
      _replace_file(paths.join(step_dir, "meta", "metadata"), json.dumps(seal_meta(meta)))
      lines.append(f"step {step}: added {' and '.join(missing)}")
  return lines


def _replace_file(path: str, text: str):
  """Writes ``text`` to a new file beside ``path`` and renames it over ``path``.

  (:func:`trajax.paths.write_bytes`; on an object store one upload replaces it.)
  """
  from trajax import paths

  if not paths.is_remote(path) and os.path.islink(path):
    raise CheckpointCorruptError(f"{path} is a symbolic link: not writing through it")
  paths.write_bytes(path, text.encode())
