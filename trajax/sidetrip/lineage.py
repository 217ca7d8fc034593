"""A side-trip's parent: identity, lineage checks and the workdir rule.

A side-trip names its parent by identity, not by path string: the parent's
checkpoints directory with symlinks resolved, the branch step, the parent's
config hash and the hash of its trajectory-defining fields
(:func:`trajectory_hash`), all stored in the lineage of every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import logging

from trajax import state as state_lib
from trajax.config import is_int

# Version 2: fixed-batch GD without weight decay; lr scalars in meta['lr_hyper'].
LINEAGE_VERSION = 2


class SidetripError(ValueError):
  """A side-trip that cannot start or restart as asked (bad step, parent or lineage)."""


# ----------------------------------------------------------------------------
# the parent: identity, lineage, checks


def trajectory_hash(config) -> str:
  """sha256 (16 hex) of the fields that define a run's trajectory.

  The config without its ``sidetrip`` section and without the fields a resume
  may change (cadences, retention, paths): a parent resumed with another
  checkpoint cadence keeps its identity.
  """
  from trajax import config_validation as cv

  flat = {
    k: v
    for k, v in cv.flatten(config).items()
    if k not in cv.RESUME_ALLOWED and not k.startswith("sidetrip.")
  }
  text = json.dumps(flat, sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _realdir(path: str) -> str:
  from trajax import paths

  if paths.is_remote(path):  # an object store has no links to resolve
    return paths.absolute(path)
  return os.path.realpath(os.path.abspath(os.fspath(path)))


def workdir_checks(workdir, parent_dir: str) -> str:
  from trajax import host, paths

  workdir = host.check_workdir(paths.check_path(workdir, "--workdir"))
  paths.check_entries(workdir)
  real = _realdir(workdir)
  for root in (os.path.dirname(parent_dir), parent_dir):
    if real == root or real.startswith(root + os.sep):
      raise state_lib.ResumeError(
        f"workdir {workdir!r} lies inside the parent's directory {root!r}: a side-trip "
        "writes only into a directory of its own"
      )
  return workdir


def check_step(step) -> int:
  if not is_int(step) or step < 0:
    raise SidetripError(
      f"step must be an integer >= 0 (a committed step of the parent), got {step!r}"
    )
  return int(step)


def _parent_dir(parent) -> str:
  """The parent's checkpoints directory, symlinks resolved (must exist)."""
  from trajax import checkpoint as ckpt_lib
  from trajax import paths

  path = paths.check_path(parent, "--parent")
  if not paths.exists(path):
    raise FileNotFoundError(f"parent {path!r} does not exist (expected a run's WORKDIR)")
  try:
    return _realdir(ckpt_lib.resolve_directory(path))
  except FileNotFoundError as e:
    raise FileNotFoundError(f"parent {path!r}: {e}") from None


def fresh_parent(parent, step: int) -> tuple[str, dict]:
  """``(directory, metadata at S)`` of a parent to branch off (S must be committed)."""
  from trajax import checkpoint as ckpt_lib

  directory = _parent_dir(parent)
  steps = ckpt_lib.committed_steps(directory)
  if step not in steps:
    raise FileNotFoundError(
      f"step {step} is not a committed checkpoint of parent {directory!r}; "
      f"committed steps: {steps if steps else 'none'}"
    )
  meta = ckpt_lib.read_metadata(directory, step)
  if (meta.get("lineage") or {}).get("kind") == "fixed_batch":
    # Its state has a plain-GD optimizer state, not the config's optimizer's.
    raise SidetripError(
      f"parent {directory!r} is a fixed-batch side-trip: branch off its own parent instead"
    )
  return directory, meta


def recorded_parent(lineage: dict, parent, step: int, workdir: str, moved: bool) -> str:
  """The parent of a side-trip that restarts from its own checkpoints, checked by identity.

  The branch step need not be committed there any more (the side-trip's own
  checkpoints hold everything); the parent itself is only compared.
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import paths

  if not lineage:
    raise state_lib.ResumeError(
      f"workdir {workdir!r} holds checkpoints of a run that is not a side-trip (no lineage): "
      "use a new workdir"
    )
  recorded = lineage.get("parent")
  recorded_step = lineage.get("parent_step")
  what = f"workdir {workdir!r} holds a side-trip of {recorded!r} at step {recorded_step}"
  if recorded_step != step:
    raise state_lib.ResumeError(f"{what}, not of step {step}: use a new workdir")
  given = paths.absolute(parent)
  if paths.exists(given):
    here = _parent_dir(given)
  else:
    here = _realdir(given)
  if recorded is not None and here in (_realdir(recorded), recorded):
    if not paths.exists(given):
      logging.warning(
        "parent %s no longer exists; resuming from the side-trip's own checkpoints", given
      )
    return here
  if not moved:
    raise state_lib.ResumeError(
      f"{what}, not of {here!r}: use a new workdir, or if the parent was moved to {given!r}, "
      "pass --parent_moved (parent_moved=True)"
    )
  steps = ckpt_lib.committed_steps(here) if paths.isdir(here) else []
  if not steps:
    raise FileNotFoundError(f"moved parent {given!r} holds no committed checkpoint")
  want = lineage.get("parent_identity") or trajectory_hash(lineage["parent_config"])
  if step in steps:
    got_hash = ckpt_lib.read_metadata(here, step).get("config_hash")
    same = got_hash == lineage.get("parent_config_hash")
  else:
    same = trajectory_hash(ckpt_lib.read_metadata(here, steps[-1])["config"]) == want
  if not same:
    raise state_lib.ResumeError(
      f"{what}; {given!r} is a different run (its config does not match the recorded "
      "parent's): point --parent to the moved parent"
    )
  logging.warning("parent moved: %s -> %s (identity checked)", recorded, here)
  return here
