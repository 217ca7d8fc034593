"""Inspect a run's checkpoints: ``python -m trajax.verify WORKDIR``.

For every committed checkpoint it prints the step, the config hash, the
library versions and whether every array is finite, then exits 0 if all is
consistent and 1 otherwise. Checked per checkpoint:

* the ``meta`` JSON exists, its ``step`` and ``data_position`` equal the
  directory's step, and its ``config_hash`` matches the stored config;
* the state's ``step`` array equals the directory's step and its health record
  shows no non-finite step;
* every array's CRC-32 equals the digest stored in ``meta`` at save time (a
  flipped byte in the array data is caught), every float is finite and below
  ``sqrt(finfo.max)`` (``trajax.checkpoint.check_state``);
* across checkpoints, the configs differ only in fields that a resume may
  change (``trajax.config_validation.RESUME_ALLOWED``).

A checkpoint without digests (written before trajax stored them) fails unless
``--predates_digests``; ``--write_digests`` first adds them to every committed
checkpoint that lacks them (:func:`trajax.checkpoint.write_digests`, under the
workdir lock). ``WORKDIR`` may be a run's ``quarantined_checkpoints``: each
step moved there is checked, so a good one can be moved back.

Leftover temporary or uncommitted directories are listed as warnings (Orbax
ignores them; the run's writer cleans or quarantines them). Reading is
read-only (``trajax.checkpoint.restore_readonly``) and takes no lock, so it
may run beside a live run: a step that the run's keep policy prunes between
the listing and its read is reported as ``pruned while reading`` (not a
failure), and the steps read are the ones still committed afterwards.
"""

from __future__ import annotations

import os
import sys

import numpy as np


def _quarantined(path: str) -> list[tuple[int, str]] | None:
  """``[(step, step_dir)]`` of a ``quarantined_checkpoints`` directory; None if ``path`` is not one."""
  import re

  from trajax import checkpoint as ckpt_lib
  from trajax import paths

  if paths.is_remote(path):
    return None
  path = os.path.abspath(path)
  if os.path.basename(path) != ckpt_lib.QUARANTINE_DIR or not os.path.isdir(path):
    return None
  out = []
  for name in sorted(os.listdir(path)):
    m = re.match(r"^(\d+)-", name)
    full = os.path.join(path, name)
    if m and os.path.isdir(full) and not os.path.islink(full):
      out.append((int(m.group(1)), full))
  return sorted(out)


def verify(workdir: str, *, predates_digests: bool = False) -> tuple[bool, list[str]]:
  """``(ok, report lines)`` for the checkpoints under ``workdir``.

  ``workdir`` may also be a run's ``quarantined_checkpoints`` directory: each
  step directory moved there is checked the same way (to find one to move
  back). A checkpoint without digests is an error unless ``predates_digests``
  (the run was written before trajax stored them): then a warning.
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation

  lines: list[str] = []
  problems: list[str] = []
  quarantined = _quarantined(workdir)
  if quarantined is not None:
    directory = os.path.abspath(workdir)
    entries = quarantined
    steps = [s for s, _ in entries]
    others = []
    lines.append(f"{directory}: {len(entries)} quarantined checkpoint(s)")
  else:
    try:
      directory = ckpt_lib.resolve_directory(workdir)
    except FileNotFoundError as e:
      return False, [f"ERROR {e}"]
    steps = ckpt_lib.committed_steps(directory)
    from trajax import paths

    entries = [(s, paths.join(directory, str(s))) for s in steps]
    others = sorted(
      n
      for n in paths.listdir(directory)
      if n.split(".")[0].isdigit() and not (n.isdigit() and int(n) in steps)
    )
    lines.append(f"{directory}: {len(steps)} committed checkpoint(s)")
  if not steps:
    problems.append(f"no committed checkpoint in {directory}")
  lines.append(f"{'step':>10}  {'config hash':16}  {'finite':6}  {'digests':7}  versions")
  first_config = None
  pruned = []

  def gone(step):  # pruned by a live run's keep policy since the listing
    return quarantined is None and step not in ckpt_lib.committed_steps(directory)

  for step, step_dir in entries:
    where = f"step {step}" if quarantined is None else f"step {step} ({step_dir})"
    try:
      tree, meta = ckpt_lib.restore_step_dir(step_dir, step, check=False)
    except Exception as e:  # report every unreadable checkpoint, keep going
      if gone(step):
        pruned.append(step)
        continue
      problems.append(f"{where}: cannot restore: {' '.join(str(e).split())[:500]}")
      continue
    if gone(step):  # read while it was being deleted: the values may be partial
      pruned.append(step)
      continue
    checks = ckpt_lib.check_meta(meta, step) + ckpt_lib.check_state(tree, meta)
    problems.extend(f"{where}: {p}" for p in checks)
    missing = ckpt_lib.unverified(meta) if isinstance(meta, dict) else []
    if missing:
      text = (
        f"{where}: no {' and no '.join(missing)} stored (written before trajax stored them); "
        "add them with `python -m trajax.verify --write_digests WORKDIR` once you trust the "
        "run, or pass --predates_digests"
      )
      if predates_digests:
        lines.append(f"WARNING {text.split('; add them')[0]}")
      else:
        problems.append(text)
    finite = not any(p.startswith("non-finite") for p in checks)
    state_step = int(np.asarray(tree.get("step", -1)))
    if state_step != step:
      problems.append(f"{where}: state step {state_step} != directory step")
    health = tree.get("health", {})
    if health and int(np.asarray(health.get("bad_step", -1))) >= 0:
      problems.append(f"{where}: health records a non-finite step {int(health['bad_step'])}")
    config = meta.get("config")
    digest = ckpt_lib.config_hash(config) if isinstance(config, dict) else None
    if isinstance(config, dict) and digest != meta.get("config_hash"):
      problems.append(f"{where}: config hash {meta.get('config_hash')!r} != recomputed {digest!r}")
    if isinstance(config, dict) and quarantined is None:
      if first_config is None:
        first_config = (step, config)
      else:
        try:
          config_validation.check_resume(first_config[1], config)
        except config_validation.ConfigError as e:
          problems.append(
            f"{where}: config differs from step {first_config[0]} beyond the resume "
            f"allow-list: {[p[0] for p in e.problems]}"
          )
    versions = meta.get("versions", {})
    vtext = " ".join(f"{k}={v}" for k, v in sorted(versions.items()))
    digests = "crc32" if meta.get("digests") else "none"
    lines.append(
      f"{step:>10}  {str(meta.get('config_hash')):16}  {str(finite):6}  {digests:7}  {vtext}"
    )
  for step in pruned:
    lines.append(f"{step:>10}  pruned while reading (the live run's keep policy removed it)")
  for name in others:
    lines.append(f"WARNING not committed (ignored for restore): {directory}/{name}")
  for p in problems:
    lines.append(f"ERROR {p}")
  lines.append("OK" if not problems else f"FAILED: {len(problems)} problem(s)")
  return not problems, lines


_USAGE = (
  "usage: python -m trajax.verify [--verbose_libs] [--predates_digests] [--write_digests] "
  "[--traceback] WORKDIR"
)
_FLAGS = ("--verbose_libs", "--predates_digests", "--write_digests", "--traceback")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  given = {a for a in argv if a in _FLAGS}
  argv = [a for a in argv if a not in _FLAGS]
  if len(argv) != 1 or argv[0].startswith("-"):
    print(_USAGE, file=sys.stderr)
    return 2
  from trajax import metrics, paths

  # --verbose_libs: also show Orbax's (and other libraries') INFO logging.
  metrics.configure_console(verbose_libs="--verbose_libs" in given)
  try:
    path = argv[0]
    path = paths.check_path(path, "WORKDIR")
    if "--write_digests" in given:
      from trajax import checkpoint as ckpt_lib

      lines = ckpt_lib.write_digests(path)
      print("\n".join(lines))
      if any(x.startswith("ERROR") for x in lines):
        return 1
    ok, lines = verify(path, predates_digests="--predates_digests" in given)
  except Exception as e:  # noqa: BLE001 -- one line, unless --traceback
    if "--traceback" in given:
      raise
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  print("\n".join(lines))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
