"""Where ``python -m trajax.posthoc`` writes, and what: checked paths, new files, the run's config.

Only into ``--out`` (a local directory or ``gs://BUCKET/NAME``, every file
through :mod:`trajax.paths`), a new or empty directory outside every run's
directory (:func:`check_paths`), never through a symlink, never over an
existing file (:func:`write_new`). The run's config is data (``run_config.json``); the
side-trip's ``--config`` is the fixed text :data:`RUN_CONFIG_PY` that loads
it: no path or value is ever put into generated code.
"""

from __future__ import annotations

import json
import os

__all__ = ["RUN_CONFIG_PY", "check_paths", "is_run", "write_new", "write_run_config"]


def check_paths(workdir: str, out: str, run_directory: str | None = None) -> str:
  """The absolute --out (a local path or a normalised gs:// URL), refused unless posthoc
  may write there; nothing is created.

  Refused, before anything is read or written: a path the writers refuse
  (:func:`trajax.paths.check_path`: a backslash, a bucket without a name
  below it, '..' in a URL), a local --workdir or --out that reaches its
  target through a symlink (so the directory written is the one named), an
  --out inside the run's directory or inside any run's (a directory holding
  a ``.trajax.lock`` -- in a bucket the run's lease --, or another run's
  workdir), an existing --out that is not an empty directory (the user's
  files, or an earlier output, are never overwritten), and a local --out
  holding ':' (the side-trip's ``--config=OUT/run_config.py:SECTION`` could
  not name it; an --out in a bucket is named by ``--sidetrip_section``).
  """
  from trajax import paths

  given_out = out
  out = paths.check_path(out, "--out")
  if not paths.is_remote(out) and ":" in given_out:
    raise ValueError(
      f"--out = {given_out!r} holds ':', which the side-trip's --config=FILE:SECTION cannot carry; "
      "give a directory without one"
    )
  for name, value in (("workdir", workdir), ("out", given_out)):
    if paths.is_remote(value):
      continue  # an object store has no links
    given = os.path.abspath(value)
    real = os.path.realpath(given)
    if real != given:
      raise ValueError(
        f"--{name} = {value!r} reaches {real!r} through a symlink; give the real "
        "path (posthoc writes only where it is told)"
      )
  if run_directory is not None:
    run_dir = paths.absolute(run_directory)
    for root in (paths.dirname(run_dir), run_dir):
      if out == root or out.startswith(root.rstrip("/") + "/"):
        raise ValueError(
          f"--out = {given_out!r} lies inside the run directory {paths.dirname(run_dir)!r}"
        )
  here = out
  while True:
    if is_run(here):
      raise ValueError(
        f"--out = {given_out!r} lies inside the run directory {here!r}; give a new directory "
        "outside every run"
      )
    parent = paths.dirname(here)
    if parent == here or (paths.is_remote(here) and "/" not in parent.split("://", 1)[1]):
      break  # the filesystem's root, or the bucket (a run is never a whole bucket)
    here = parent
  if paths.is_remote(out):
    held = paths.listdir(out) if paths.isdir(out) else []
    if paths.isfile(out):
      raise ValueError(f"--out = {given_out!r} exists and is not a directory")
  else:
    if not os.path.lexists(out):
      return out
    if not os.path.isdir(out):
      raise ValueError(f"--out = {given_out!r} exists and is not a directory")
    held = sorted(os.listdir(out))
  if held:
    shown = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
    raise ValueError(
      f"--out = {given_out!r} already holds {len(held)} entries ({shown}); posthoc writes "
      "only into a new or empty directory (give another --out, or remove it)"
    )
  return out


def is_run(path: str) -> bool:
  """A run's directory: it holds the workdir lock, or checkpoints/ with a step directory."""
  from trajax import paths, workdir_lock

  if paths.is_remote(path):
    try:
      if paths.exists(paths.join(path, workdir_lock.LOCK_NAME)):
        return True
      ckpts = paths.join(path, "checkpoints")
      return paths.isdir(ckpts) and any(name.isdigit() for name in paths.listdir(ckpts))
    except OSError:
      return True  # unreadable: not ours to write into
  if os.path.lexists(os.path.join(path, workdir_lock.LOCK_NAME)):
    return True
  ckpts = os.path.join(path, "checkpoints")
  try:
    return os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts))
  except OSError:
    return True  # unreadable: not ours to write into


def write_new(path: str, data: str | bytes) -> None:
  """Creates ``path`` (local or in a bucket; never an existing file, never through a symlink)."""
  from trajax import paths

  paths.write_new(path, data.encode() if isinstance(data, str) else data)


# The config file handed to the side-trip (--config): fixed text, no path or
# value in it; it reads the run's config from the JSON data file beside it, and
# with an argument (--config=run_config.py:NAME) the side-trip section from the
# JSON file NAME beside it (posthoc's kernel, as data).
RUN_CONFIG_PY = '''"""The config of the run post-hoc averaged here (written by python -m trajax.posthoc).

Pass it as --config to python -m trajax.sidetrip, which needs the parent's own
config; --config=run_config.py:NAME adds the side-trip section stored in the
JSON file NAME beside it. The config itself is data: run_config.json.
"""

import json
import os

from trajax import config as config_lib


def get_config(section=None):
  here = os.path.dirname(os.path.abspath(__file__))
  with open(os.path.join(here, "run_config.json")) as f:
    config = config_lib.from_dict(json.load(f))
  if section is None:
    return config
  if os.path.basename(section) != section or section.startswith("."):
    raise ValueError(f"run_config.py:{section!r}: must name a JSON file beside run_config.py")
  with open(os.path.join(here, section)) as f:
    fields = json.load(f)
  from trajax.sidetrip import spec

  return spec.with_sidetrip(config, **fields)
'''


def write_run_config(run, out: str) -> str:
  """OUT/run_config.json (the run's stored config, data) and OUT/run_config.py (fixed code)."""
  from trajax import paths

  write_new(
    paths.join(out, "run_config.json"),
    json.dumps(run.config.to_dict(), sort_keys=True, indent=1, default=list),
  )
  path = paths.join(out, "run_config.py")
  write_new(path, RUN_CONFIG_PY)
  return path
