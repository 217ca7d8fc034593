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
"""

from __future__ import annotations

import os
import stat

__all__ = [
  "PathError",
  "check_entries",
  "check_local_path",
  "exists",
  "is_remote",
  "isdir",
  "isfile",
  "join",
  "listdir",
  "read_bytes",
]


class PathError(ValueError):
  """A path a trajax process would not write through (one line, names the path)."""


def is_remote(path) -> bool:
  """True for a URL-style path (``gs://``, ``s3://``, ...): an object store."""
  return "://" in os.fspath(path)


def check_local_path(path, what: str = "workdir") -> str:
  """The absolute, normalised ``path``; refuses a backslash, an empty path, a remote one."""
  path = os.fspath(path) if path is not None else ""
  if not path:
    raise PathError(f"{what} must be a directory path, got {path!r}")
  if is_remote(path):
    raise PathError(
      f"{what} {path!r}: this command cannot write to an object store yet (reading a run "
      "there works: `python -m trajax.verify`); train in a local or network-filesystem "
      "directory and copy the run to the bucket"
    )
  if "\\" in path:
    raise PathError(
      f"{what} {path!r} contains a backslash: the array writer (TensorStore) reads it as a "
      "directory separator, so the run would be split across two directories; use '/'"
    )
  return os.path.abspath(path)


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
  if not os.path.isdir(workdir):
    return
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
