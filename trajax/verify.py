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


def verify(workdir: str) -> tuple[bool, list[str]]:
  """``(ok, report lines)`` for the checkpoints under ``workdir``."""
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation

  lines: list[str] = []
  problems: list[str] = []
  try:
    directory = ckpt_lib.resolve_directory(workdir)
  except FileNotFoundError as e:
    return False, [f"ERROR {e}"]
  steps = ckpt_lib.committed_steps(directory)
  others = sorted(
    n
    for n in os.listdir(directory)
    if n.split(".")[0].isdigit() and not (n.isdigit() and int(n) in steps)
  )
  if not steps:
    problems.append(f"no committed checkpoint in {directory}")
  lines.append(f"{directory}: {len(steps)} committed checkpoint(s)")
  lines.append(f"{'step':>10}  {'config hash':16}  {'finite':6}  {'digests':7}  versions")
  first_config = None
  pruned = []

  def gone(step):  # pruned by a live run's keep policy since the listing
    return step not in ckpt_lib.committed_steps(directory)

  for step in steps:
    where = f"step {step}"
    try:
      tree, meta = ckpt_lib.restore_readonly(directory, step=step, check=False)
    except Exception as e:  # report every unreadable checkpoint, keep going
      if gone(step):
        pruned.append(step)
        continue
      problems.append(f"{where}: cannot restore: {type(e).__name__}: {e}")
      continue
    if gone(step):  # read while it was being deleted: the values may be partial
      pruned.append(step)
      continue
    checks = ckpt_lib.check_state(tree, meta)
    problems.extend(f"{where}: {p}" for p in checks)
    if not meta.get("digests"):
      lines.append(f"WARNING {where}: no digests stored (written before checksums existed)")
    finite = not any(p.startswith("non-finite") for p in checks)
    if meta.get("step") != step:
      problems.append(f"{where}: meta step {meta.get('step')!r} != directory step")
    if meta.get("data_position") != step:
      problems.append(f"{where}: data position {meta.get('data_position')!r} != step")
    state_step = int(np.asarray(tree.get("step", -1)))
    if state_step != step:
      problems.append(f"{where}: state step {state_step} != directory step")
    health = tree.get("health", {})
    if health and int(np.asarray(health.get("bad_step", -1))) >= 0:
      problems.append(f"{where}: health records a non-finite step {int(health['bad_step'])}")
    config = meta.get("config")
    digest = ckpt_lib.config_hash(config) if config is not None else None
    if config is None:
      problems.append(f"{where}: meta holds no config")
    elif digest != meta.get("config_hash"):
      problems.append(f"{where}: config hash {meta.get('config_hash')!r} != recomputed {digest!r}")
    if config is not None:
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
    lines.append(f"WARNING not committed (ignored for restore): {os.path.join(directory, name)}")
  for p in problems:
    lines.append(f"ERROR {p}")
  lines.append("OK" if not problems else f"FAILED: {len(problems)} problem(s)")
  return not problems, lines


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  verbose_libs = "--verbose_libs" in argv
  argv = [a for a in argv if a != "--verbose_libs"]
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m trajax.verify [--verbose_libs] WORKDIR", file=sys.stderr)
    return 2
  from trajax import metrics

  # --verbose_libs: also show Orbax's (and other libraries') INFO logging.
  metrics.configure_console(verbose_libs=verbose_libs)
  ok, lines = verify(argv[0])
  print("\n".join(lines))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
