"""What a trajax writer accepts as a directory, and what it finds inside one.

Every process that writes (``trajax.main``, ``trajax.sidetrip``,
``trajax.verify --write_digests``) writes only below the directory it was
given. Three things could send its writes elsewhere, and each is refused with
one line before anything is written:

* a backslash in a local path (:func:`check_local_path`): POSIX allows it in
  a file name, but TensorStore (which writes the arrays) treats it as a
  separator, so ``X\\run`` would put the metadata under ``X\\run/`` and the
  arrays under ``X/run/`` -- a run split over two directories;
* a symbolic link (or a file of the wrong kind) in place of one of the
  entries a run writes (:func:`check_entries`): ``metrics.jsonl`` linked to
  another file would be rewritten on the next resume, ``checkpoints`` linked
  elsewhere would be pruned there;
* ``..`` is harmless here: paths are made absolute (and normalised) first.

A symbolic link *as* the given directory is the user's choice and is followed.

Object stores (``gs://bucket/run``): :func:`check_path` accepts them (a URL
with a bucket and a name below it, no backslash, no ``..``); every read and
write of a run then goes through etils ``epath``, the path layer Orbax itself
uses (``tf.io.gfile``, or fsspec/``gcsfs`` with ``EPATH_USE_TF=false``). An
object store has no links, no appends and no renames: there are no links to
refuse, an appended log is the whole object rewritten (:class:`Appender`), and
a move is a copy then a delete (:func:`move_tree`).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import time

__all__ = [
  "PathError",
  "Appender",
  "absolute",
  "check_entries",
  "check_local_path",
  "check_path",
  "exists",
  "is_remote",
  "isdir",
  "isfile",
  "join",
  "listdir",
  "makedirs",
  "move_tree",
  "read_bytes",
  "remove",
  "write_bytes",
  "write_new",
]


class PathError(ValueError):
  """A path a trajax process would not write through (one line, names the path)."""


def is_remote(path) -> bool:
  """True for a URL-style path (``gs://``, ``s3://``, ...): an object store."""
  return "://" in os.fspath(path)


def check_local_path(path, what: str = "workdir") -> str:
  """The absolute, normalised ``path``; refuses a backslash, an empty path, a remote one.

  For writers that write only locally (``trajax.posthoc --out``); the others
  use :func:`check_path`.
  """
  path = os.fspath(path) if path is not None else ""
  if not path:
    raise PathError(f"{what} must be a directory path, got {path!r}")
  if is_remote(path):
    raise PathError(
      f"{what} {path!r}: this command writes only to a local or mounted directory (it reads "
      "runs in a bucket; trajax.main, trajax.sidetrip and trajax.verify also write there)"
    )
  if "\\" in path:
    raise PathError(
      f"{what} {path!r} contains a backslash: the array writer (TensorStore) reads it as a "
      "directory separator, so the run would be split across two directories; use '/'"
    )
  return os.path.abspath(path)


_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://([^/]+)/(.+)$")


def check_path(path, what: str = "workdir") -> str:
  """A local path as :func:`check_local_path`, or a normalised object-store URL.

  A URL must name a bucket and a directory in it (``gs://bucket/run``: a run
  does not own a whole bucket); ``..`` and backslashes are refused (an object
  store has no directories to resolve them against), repeated and trailing
  ``/`` dropped.
  """
  path = os.fspath(path) if path is not None else ""
  if not is_remote(path):
    return check_local_path(path, what)
  m = _URL.match(path)
  key = m.group(3).strip("/") if m else ""
  if not key:
    raise PathError(
      f"{what} {path!r}: an object-store directory must be SCHEME://BUCKET/NAME "
      "(e.g. gs://my-bucket/runs/run1)"
    )
  if "\\" in path:
    raise PathError(f"{what} {path!r} contains a backslash: use '/'")
  parts = [x for x in key.split("/") if x]
  if any(x in (".", "..") for x in parts):
    raise PathError(f"{what} {path!r}: '.' and '..' are not allowed in an object-store path")
  return f"{m.group(1)}://{m.group(2)}/{'/'.join(parts)}"


def absolute(path) -> str:
  """``os.path.abspath`` for a local path; an object-store URL as it is."""
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def dirname(path) -> str:
  path = os.fspath(path)
  return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path) -> str:
  path = os.fspath(path)
  return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


# What a run writes in its workdir: name -> the kind it must be when present.
RUN_ENTRIES = {
  ".trajax.lock": "file",
  "metrics.jsonl": "file",
  "batch_fingerprints.jsonl": "file",
  "checkpoints": "dir",
  "quarantined_checkpoints": "dir",
}


def check_entries(workdir: str, entries: dict[str, str] | None = None) -> None:
  """Refuses a symlink, or a file of the wrong kind, in place of an entry a run writes.

  Args:
    workdir: an existing or future local directory (absent: nothing to check).
    entries: ``{name: "file" | "dir"}`` (default :data:`RUN_ENTRIES`).

  Raises:
    PathError: naming the entry, what it is and what to do.
  """
  if is_remote(workdir) or not os.path.isdir(workdir):
    return  # an object store has no links (and no kinds of entry)
  for name, kind in (RUN_ENTRIES if entries is None else entries).items():
    path = os.path.join(workdir, name)
    try:
      st = os.lstat(path)
    except FileNotFoundError:
      continue
    if stat.S_ISLNK(st.st_mode):
      raise PathError(
        f"{path} is a symbolic link (to {os.readlink(path)!r}): a run writes only inside its "
        "workdir and does not follow links there; remove the link (or copy what it points to)"
      )
    ok = stat.S_ISDIR(st.st_mode) if kind == "dir" else stat.S_ISREG(st.st_mode)
    if not ok:
      raise PathError(
        f"{path} is in the way: a run writes a {'directory' if kind == 'dir' else 'file'} "
        "there; move it out of the workdir"
      )


# ----------------------------------------------------------------------------- one path layer
# Reads that work on a local directory and on an object store alike: local
# paths through ``os`` (whose link and file-kind checks above need it), remote
# ones through etils ``epath``, the path layer Orbax itself uses (gs:// via
# tf.io.gfile or, with ``EPATH_USE_TF=false``, fsspec/gcsfs).


def _epath(path):
  from etils import epath

  return epath.Path(path)


def join(path, *names) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return "/".join([path.rstrip("/"), *names])
  return os.path.join(path, *names)


def exists(path) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def read_bytes(path) -> bytes:
  if is_remote(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def makedirs(path) -> None:
  """``os.makedirs(exist_ok=True)``; on an object store (no directories) the bucket must exist."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
    return
  bucket = "/".join(os.fspath(path).split("/")[:3])
  if not _epath(bucket).exists():
    raise PathError(f"{path}: bucket {bucket} does not exist (or is not readable)")


def write_bytes(path, data: bytes) -> None:
  """Writes ``data`` as the whole of ``path``: readers see the old file or the new one.

  Local: a new file beside it (never through a link) renamed over it. Object
  store: one upload, which replaces the object atomically.
  """
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
  fd = os.open(tmp, flags, 0o644)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def write_new(path, data: bytes) -> None:
  """Creates ``path`` holding ``data``; never over an existing file, never through a link.

  Local: ``O_EXCL | O_NOFOLLOW``. Object store: an upload with the
  precondition "no such object yet" (``ifGenerationMatch=0``) where the
  filesystem is ``gcsfs``; elsewhere a check, then the upload.

  Raises:
    FileExistsError: ``path`` exists (nothing written).
  """
  if not is_remote(path):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return
  try:
    import fsspec
    import gcsfs
  except ImportError:
    fs = None
  else:
    fs, _ = fsspec.core.url_to_fs(os.fspath(path))
    fs = fs if isinstance(fs, gcsfs.GCSFileSystem) else None
  if fs is None:
    if exists(path):
      raise FileExistsError(f"{path} exists")
    write_bytes(path, data)
    return
  fs.pipe_file(os.fspath(path), data, mode="create")  # FileExistsError when it exists


def remove(path, *, missing_ok: bool = True) -> None:
  """Deletes one file (or object)."""
  if is_remote(path):
    _epath(path).unlink(missing_ok=missing_ok)
    return
  try:
    os.unlink(path)
  except FileNotFoundError:
    if not missing_ok:
      raise


def files_below(path) -> list[str]:
  """The files (objects) under directory ``path``, as paths relative to it, sorted."""
  if not is_remote(path):
    out = []
    for root, _, names in os.walk(path):
      out += [os.path.relpath(os.path.join(root, n), path) for n in names]
    return sorted(out)
  # walk, not rglob: gcsfs refuses a recursive glob. A walk's roots may come
  # back without the scheme (fsspec) or with it (tf.io.gfile).
  top = os.fspath(path).rstrip("/")
  bare = top.split("://", 1)[1]
  out = []

  def fail(e):
    raise e

  for root, _, names in _epath(top).walk(on_error=fail):
    rel = os.fspath(root).split("://", 1)[-1].rstrip("/")[len(bare) :].strip("/")
    out += [f"{rel}/{n}" if rel else n for n in names]
  return sorted(out)


def move_tree(src: str, dst: str, *, first_removed: str | None = None) -> None:
  """Moves directory ``src`` to ``dst`` (which must not exist) on an object store.

  An object store cannot rename: every object is copied, and only once all
  are copied are the originals deleted -- ``first_removed`` (e.g. a commit
  marker, so a half-deleted source no longer counts as what it was) first.
  A failed copy deletes what it copied and leaves ``src`` whole. A failed
  delete leaves both copies (``dst`` complete).

  Raises:
    PathError: what could not be moved or deleted, and what state that leaves.
  """
  names = files_below(src)
  copied = []
  try:
    for name in names:
      _epath(join(src, name)).copy(join(dst, name))
      copied.append(name)
  except Exception as e:  # noqa: BLE001 -- reported in one line
    for name in copied:
      try:
        remove(join(dst, name))
      except Exception:  # noqa: BLE001
        pass
    raise PathError(
      f"could not copy {src} to {dst} ({type(e).__name__}: {e}); nothing was moved "
      f"({len(copied)} of {len(names)} object(s) had been copied and were deleted again)"
    ) from None
  order = sorted(names, key=lambda n: n != first_removed)
  done = 0
  try:
    for name in order:
      remove(join(src, name))
      done += 1
  except Exception as e:  # noqa: BLE001
    raise PathError(
      f"copied {src} to {dst}, but deleting the original failed after {done} of "
      f"{len(names)} object(s) ({type(e).__name__}: {e}); {dst} is complete"
      + (f" and {first_removed} was deleted first" if done and first_removed else "")
      + f": delete what is left of {src} by hand"
    ) from None


class Appender:
  """A text file opened for appending, on a local disk or an object store.

  Local: ``open(path, "a")``, every line flushed at once. An object store
  cannot append: the object is rewritten whole (what it held when opened plus
  every line written since), at most every ``every_s`` seconds on
  :meth:`write`, and always on :meth:`flush` and :meth:`close`. So after a
  crash the object lacks at most the last ``every_s`` seconds of lines
  (a resumed run rewrites them, :func:`trajax.metrics.rewind_jsonl`).
  """

  def __init__(self, path: str, *, every_s: float = 30.0, binary: bool = False):
    self.path = path
    self._remote = is_remote(path)
    self._every_s = every_s
    self._binary = binary
    self.closed = False
    if self._remote:
      self._data = bytearray(read_bytes(path) if exists(path) else b"")
      self._dirty = False
      self._last = time.monotonic()
    else:
      self._file = open(path, "ab" if binary else "a")

  def write(self, text) -> None:
    if not self._remote:
      self._file.write(text)
      self._file.flush()
      return
    self._data += text if self._binary else text.encode()
    self._dirty = True
    if time.monotonic() - self._last >= self._every_s:
      self._upload()

  def _upload(self):
    _epath(self.path).write_bytes(bytes(self._data))
    self._dirty, self._last = False, time.monotonic()

  def flush(self) -> None:
    if not self._remote:
      self._file.flush()
    elif self._dirty:
      self._upload()

  def close(self) -> None:
    if self.closed:
      return
    self.closed = True
    if self._remote:
      if self._dirty:
        self._upload()
    else:
      self._file.close()
