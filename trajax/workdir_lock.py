"""One writer per workdir: an OS lock on ``WORKDIR/.trajax.lock``.

Every process that writes into a workdir -- a main run or a side-trip --
constructs a :class:`trajax.checkpoint.Checkpointer`, which takes this lock
before it writes, moves or deletes anything there. A second writer is refused
at once with a :class:`WorkdirBusyError` naming the holder.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file, held for the
writer's life. The kernel drops it when the holder's file descriptor closes,
which includes every way a process can end (exit, exception, SIGKILL, OOM
kill), so a lock can never outlive its holder on the same host: a later run
finds the old holder's record with the lock free, logs that the stale lock was
recognised, and takes it. The file is never deleted (deleting it would let two
processes lock two different files of the same name).

The file is opened with ``O_NOFOLLOW`` and must be a regular file: a symlink
planted as ``.trajax.lock`` is refused, never followed (its target would be
truncated). :func:`probe` tells a resume that the workdir is busy before
anything else is said about it.

The file holds the holder's record, ``{"host", "pid", "started", "argv"}``,
written after the lock is taken and cleared on a clean release, so a record
found with the lock free is the trace of a holder that died.

Network filesystems: on NFS, Linux maps ``flock`` to NFS locks, which the
server keeps for a dead client until its lease expires (or forever if lockd
is broken), so a crashed host can block its workdir. ``--force_takeover``
(``trajax.main``; :func:`request_takeover`) is the deliberate override: the
busy lock file is renamed aside and a new one is locked; the old holder, if it
is alive after all, keeps writing, which is why it is refused when the holder
runs on this host and is alive.

Object stores (``gs://bucket/run``): an object cannot be ``flock``-ed, and no
kernel drops a lock when its holder dies. There the lock is a *lease object*
``WORKDIR/.trajax.lock`` holding the holder's record plus ``renewed`` (epoch
seconds), which the holder rewrites every :data:`RENEW_S` seconds from a
background thread and deletes on a clean release. A launch that finds the
object refuses, naming the holder, unless the lease is stale: not renewed for
:data:`LEASE_S` seconds (the holder's host died or lost the network), or its
holder ran on this host and its pid is gone (kill -9, OOM): then it logs that
the stale lease was recognised and takes it. ``--force_takeover`` overrides a
fresh lease (refused, as locally, when the holder is alive on this host).

What this guarantees, and what not: a single writer per run as long as
launches are not simultaneous. A new lease is created with a generation
precondition (``ifGenerationMatch=0`` through ``gcsfs``, when that is the
filesystem: of two launches racing on an absent lease exactly one creates
it on GCS); replacing a stale lease is read-check-write, so two launches
taking over the same stale lease within about a second of each other can both
win -- this race window is the documented limit, and why a run in a bucket
is started by one script, not by several at once. A holder whose lease was
taken over (it stalled for longer than :data:`LEASE_S`) logs an error at its
next renewal. The lease's age is judged by the reader's clock against the
holder's: clocks may differ by much less than :data:`LEASE_S`. (The GCS
emulator the tests use ignores preconditions, so the create race is not
tested on this machine; the refusal, the stale-lease takeover and the
release are.)

Multi-host runs: process 0 takes the lock, then broadcasts whether it got it
(and the refusal message), so every process fails together with the same
error instead of waiting at the next barrier.

Why one module of over 500 lines: the local ``flock`` and the object-store
lease are one contract (take, name the holder, take over, release, broadcast
to every process), and the tests check both against the same promises.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import threading
import time
import uuid

from absl import logging

LOCK_NAME = ".trajax.lock"
# The refusal message travels to the other processes in a fixed-size buffer.
_MESSAGE_BYTES = 2048

_takeover_requested: set[str] = set()

# Object-store leases: renewed every RENEW_S seconds, stale after LEASE_S without renewal.
RENEW_S = 60.0
LEASE_S = 600.0


class WorkdirLockError(RuntimeError):
  """The workdir cannot be locked for this run."""


class WorkdirBusyError(WorkdirLockError):
  """Another live process holds the workdir's lock."""


def lock_path(workdir: str) -> str:
  from trajax import paths

  return paths.join(paths.absolute(workdir), LOCK_NAME)


def request_takeover(workdir: str):
  """Lets the next :func:`acquire` on ``workdir`` override a busy lock (``--force_takeover``)."""
  from trajax import paths

  _takeover_requested.add(paths.absolute(workdir))


def _record() -> dict:
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "argv": " ".join(sys.argv)[:500],
  }


def _read_record(fd: int) -> dict | None:
  try:
    text = os.pread(fd, 65536, 0).decode(errors="replace").strip()
  except OSError:
    return None
  return _parse_record(text)


def _parse_record(text: str) -> dict | None:
  """The holder record a lock file or lease object holds (None: empty or not a record).

  Text that is not JSON (a lock written by hand, a truncated write) is still
  shown, as the record's ``argv``, so the refusal names what is there.
  """
  if not text:
    return None
  try:
    rec = json.loads(text)
  except json.JSONDecodeError:
    return {"host": "?", "pid": "?", "started": "?", "argv": text[:200]}
  return rec if isinstance(rec, dict) else None


def _describe(rec: dict | None) -> str:
  if not rec:
    return "an unknown process (it has not written its record yet)"
  return (
    f"pid {rec.get('pid')} on host {rec.get('host')} (started {rec.get('started')}; "
    f"command: {rec.get('argv', '?')})"
  )


def _alive_here(rec: dict | None) -> bool | None:
  """True/False if the holder runs on this host and is/is not alive; None if elsewhere."""
  if not rec or rec.get("host") != socket.gethostname():
    return None
  try:
    os.kill(int(rec["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError, KeyError):
    return True
  return True


class WorkdirLock:
  """The held lock (release with :meth:`release`; the OS releases it on any exit)."""

  def __init__(self, path: str, fd: int | None):
    self.path = path
    self._fd = fd

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self):
    """Clears the record and drops the lock (idempotent)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)  # an empty record: released cleanly, not a crash
    except OSError:
      pass
    finally:
      os.close(fd)  # closing the descriptor drops the flock

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _try_flock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return False
    raise


def _open(path: str) -> int:
  """The lock file, opened for the record; never through a link, never anything but a file.

  No O_TRUNC: the holder's record must survive a refused attempt. O_NOFOLLOW:
  a symlink planted as ``.trajax.lock`` would otherwise make the record (and
  its truncation on release) land in whatever file it points to; O_NONBLOCK:
  a FIFO there must not hang the open. Anything but a regular file is refused.
  """
  flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
  try:
    fd = os.open(path, flags, 0o644)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise WorkdirLockError(
        f"{path} is a symbolic link (to {os.readlink(path)!r}): refusing to lock or write "
        "through it; remove the link"
      ) from None
    raise
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise WorkdirLockError(f"{path} is not a regular file: move it out of the workdir")
  return fd


def probe(workdir: str) -> None:
  """Raises :class:`WorkdirBusyError` now if a live process holds ``workdir``'s lock.

  Writes nothing (an absent lock file is not created): a resume says that the
  workdir is busy before anything else about it, e.g. a config that differs
  from the running one. Every process calls it; process 0 looks.
  """
  import jax

  from trajax import paths

  error = None
  if jax.process_index() == 0 and paths.is_remote(workdir):
    holder = _read_remote(lock_path(workdir))
    if holder is not None and _stale(holder) is None:
      error = f"workdir {paths.absolute(workdir)} is in use by {_describe(holder)}"
      error += "; wait for it to finish or stop it, or use another --workdir"
  elif jax.process_index() == 0:
    path = lock_path(workdir)
    try:
      fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
      fd = None  # absent, a link, unreadable: acquire() says what is wrong
    if fd is not None:
      try:
        if stat.S_ISREG(os.fstat(fd).st_mode) and not _try_flock(fd):
          holder = _read_record(fd)
          error = f"workdir {os.path.dirname(path)} is in use by {_describe(holder)}"
          error += "; wait for it to finish or stop it, or use another --workdir"
      finally:
        os.close(fd)  # also drops a lock this probe took
  if jax.process_count() > 1:
    error = broadcast_error(error)
  if error is not None:
    raise WorkdirBusyError(error)


def _write_record(fd: int):
  data = (json.dumps(_record()) + "\n").encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data, 0)
  os.fsync(fd)


def acquire_local(workdir: str, force_takeover: bool) -> WorkdirLock:
  """The lock of a local ``workdir`` taken on this process alone (no broadcast to other hosts)."""
  path = lock_path(workdir)
  fd = _open(path)
  try:
    if _try_flock(fd):
      previous = _read_record(fd)
      if previous:
        logging.warning(
          "workdir lock %s: stale lock of %s recognised (that process ended without "
          "releasing it); taking it",
          path,
          _describe(previous),
        )
      if force_takeover:
        logging.warning("--force_takeover: the workdir lock %s was free; nothing overridden", path)
      _write_record(fd)
      return WorkdirLock(path, fd)
    holder = _read_record(fd)
    for _ in range(20):  # a holder that has just locked writes its record within ms
      if holder:
        break
      time.sleep(0.05)
      holder = _read_record(fd)
  except BaseException:
    os.close(fd)
    raise
  os.close(fd)
  alive = _alive_here(holder)
  if not force_takeover:
    hint = (
      "wait for it to finish or stop it, or use another --workdir"
      if alive is not False
      else "its pid is gone, so a process it started still holds the lock "
      f"(`fuser {path}` names it); stop that process"
    )
    if alive is None:
      hint += (
        "; if that host is down for good (a lock on a network filesystem can outlive it), "
        "rerun with --force_takeover"
      )
    raise WorkdirBusyError(
      f"workdir {os.path.dirname(path)} is in use by {_describe(holder)}; {hint}"
    )
  if alive:
    raise WorkdirBusyError(
      f"--force_takeover refused: workdir {os.path.dirname(path)} is held by "
      f"{_describe(holder)}, which is alive on this host; stop it first"
    )
  # The busy file is kept (renamed) as the record of what was overridden; a
  # new file of the same name is locked, so later writers see this process.
  aside = f"{path}.taken-over-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
  os.replace(path, aside)
  logging.warning(
    "--force_takeover: overriding the workdir lock of %s without its release (old lock "
    "file kept as %s); if that process is still alive it will keep writing here and the "
    "two runs will corrupt each other's checkpoints and logs",
    _describe(holder),
    aside,
  )
  fd = _open(path)
  if not _try_flock(fd):
    os.close(fd)
    raise WorkdirBusyError(f"--force_takeover: {path} was locked again by another process")
  _write_record(fd)
  return WorkdirLock(path, fd)


class LeaseLock(WorkdirLock):
  """A held object-store lease (see the module docstring); :meth:`release` deletes it."""

  def __init__(self, path: str, record: dict):
    super().__init__(path, None)
    self.record = record
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._renew, name="trajax-lease", daemon=True)
    self._thread.start()

  @property
  def held(self) -> bool:
    return not self._stop.is_set()

  def _ours(self, rec: dict | None) -> bool:
    return bool(rec) and rec.get("token") == self.record["token"]

  def _renew(self):
    from trajax import paths

    while not self._stop.wait(RENEW_S):
      try:
        if not self._ours(_read_remote(self.path)):
          logging.error(
            "workdir lease %s was taken over by another launch (this run did not renew it "
            "for %.0f s): two writers now share the run; stop one of them",
            self.path,
            LEASE_S,
          )
          return
        self.record["renewed"] = time.time()
        paths.write_bytes(self.path, (json.dumps(self.record) + "\n").encode())
      except Exception as e:  # noqa: BLE001 -- a missed renewal is retried; the lease is long
        logging.warning("could not renew the workdir lease %s: %s", self.path, e)

  def release(self):
    """Stops renewing and deletes the lease object if it is still this run's (idempotent)."""
    from trajax import paths

    if self._stop.is_set():
      return
    self._stop.set()
    try:
      if self._ours(_read_remote(self.path)):
        paths.remove(self.path)
    except Exception as e:  # noqa: BLE001 -- the lease then goes stale after LEASE_S
      logging.warning("could not delete the workdir lease %s: %s", self.path, e)


def _read_remote(path: str) -> dict | None:
  from trajax import paths

  if not paths.exists(path):
    return None
  text = paths.read_bytes(path).decode(errors="replace").strip()
  return _parse_record(text)


def _stale(rec: dict | None) -> str | None:
  """Why a lease record no longer holds the run (None: it holds it)."""
  if not rec:
    return "empty"
  if _alive_here(rec) is False:
    return "its process is gone"
  try:
    age = time.time() - float(rec["renewed"])
  except (KeyError, TypeError, ValueError):
    return "it has no renewal time"
  if age > LEASE_S:
    return f"not renewed for {age:.0f} s (a lease lasts {LEASE_S:.0f} s)"
  return None


def _create_remote(path: str, data: bytes) -> bool:
  """Writes a new object; False if it exists (a precondition where the filesystem has one)."""
  from trajax import paths

  try:
    paths.write_new(path, data)
  except FileExistsError:
    return False
  return True


def _acquire_remote(workdir: str, force_takeover: bool) -> LeaseLock:
  from trajax import paths

  path = lock_path(workdir)
  record = {**_record(), "renewed": time.time(), "token": uuid.uuid4().hex}
  data = (json.dumps(record) + "\n").encode()
  holder = _read_remote(path)
  if holder is None and _create_remote(path, data):
    return LeaseLock(path, record)
  holder = holder or _read_remote(path)
  why = _stale(holder)
  if why is None:
    alive = _alive_here(holder)
    if not force_takeover:
      raise WorkdirBusyError(
        f"workdir {workdir} is in use by {_describe(holder)} (its lease {path} was renewed "
        f"{time.time() - float(holder['renewed']):.0f} s ago); wait for it to finish or stop "
        f"it, or use another --workdir; if its host is down for good, rerun with "
        f"--force_takeover (or wait {LEASE_S:.0f} s for the lease to go stale)"
      )
    if alive:
      raise WorkdirBusyError(
        f"--force_takeover refused: workdir {workdir} is held by {_describe(holder)}, which "
        "is alive on this host; stop it first"
      )
    logging.warning(
      "--force_takeover: overriding the workdir lease of %s; if that process is still "
      "alive it will keep writing here and the two runs will corrupt each other's "
      "checkpoints and logs",
      _describe(holder),
    )
  elif holder is not None:
    logging.warning(
      "workdir lease %s: stale lease of %s recognised (%s); taking it",
      path,
      _describe(holder),
      why,
    )
  paths.write_bytes(path, data)
  if _read_remote(path) != record:  # another launch wrote in between: it holds the run
    raise WorkdirBusyError(
      f"workdir {workdir} was taken by {_describe(_read_remote(path))} while this launch "
      "took it over; use another --workdir or stop that run"
    )
  return LeaseLock(path, record)


def acquire(workdir: str, *, force_takeover: bool | None = None) -> WorkdirLock:
  """Locks ``workdir`` for this run (every process calls it; process 0 locks).

  Args:
    workdir: the run directory (created if missing; its parent must exist).
    force_takeover: override a busy lock whose holder cannot be seen to be
      alive; None: as requested by :func:`request_takeover` for this workdir.

  Returns:
    A :class:`WorkdirLock`; on processes other than 0 one that holds nothing.

  Raises:
    WorkdirBusyError: another live writer holds the lock (on every process of
      a multi-host run).
    WorkdirLockError: the lock file cannot be created (read-only workdir...).
  """
  import jax

  from trajax import paths

  workdir = paths.absolute(workdir)
  if force_takeover is None:
    force_takeover = workdir in _takeover_requested
  _takeover_requested.discard(workdir)
  error, busy, lock = None, True, WorkdirLock(lock_path(workdir), None)
  if jax.process_index() == 0:
    try:
      if paths.is_remote(workdir):
        lock = _acquire_remote(workdir, force_takeover)
      else:
        os.makedirs(workdir, exist_ok=True)
        lock = acquire_local(workdir, force_takeover)
    except WorkdirLockError as e:
      error, busy = str(e), isinstance(e, WorkdirBusyError)
    except OSError as e:  # a read-only or full filesystem, a permission
      error = (
        f"cannot lock workdir {workdir}: {e.strerror or e} on {e.filename or lock_path(workdir)} "
        "(a run needs a writable workdir)"
      )
      busy = False
    except Exception as e:  # noqa: BLE001 -- an object store's client errors (HTTP, auth)
      if not paths.is_remote(workdir):
        raise
      error, busy = f"cannot lock workdir {workdir}: {type(e).__name__}: {e}", False
  if jax.process_count() > 1:
    error = broadcast_error(error)
  if error is not None:
    lock.release()
    raise (WorkdirBusyError if busy else WorkdirLockError)(error)
  return lock


def broadcast_error(error: str | None) -> str | None:
  """Process 0's refusal (or None) on every process."""
  import numpy as np
  from jax.experimental import multihost_utils

  buf = np.zeros(_MESSAGE_BYTES, np.uint8)
  if error is not None:
    data = error.encode()[: _MESSAGE_BYTES - 1]
    buf[0] = 1
    buf[1 : 1 + len(data)] = np.frombuffer(data, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  if not buf[0]:
    return None
  return bytes(buf[1:]).rstrip(b"\0").decode(errors="replace")
