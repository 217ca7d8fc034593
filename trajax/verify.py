"""Inspect a run's checkpoints: ``python -m trajax.verify WORKDIR``.

For every committed checkpoint it prints the step, the config hash, the
library versions and whether every array is finite, then exits 0 if all is
consistent and 1 otherwise. Checked per checkpoint:

* the ``meta`` JSON exists, its ``step`` and ``data_position`` equal the
  directory's step, and its ``config_hash`` matches the stored config;
* the state's ``step`` array equals the directory's step and its health record
  shows no non-finite step;
* every array is finite;
* across checkpoints, the configs differ only in fields that a resume may
  change (``trajax.config_validation.RESUME_ALLOWED``).

Leftover temporary or uncommitted directories are listed as warnings (Orbax
ignores them; the run's writer cleans or quarantines them). Reading is
read-only (``trajax.checkpoint.restore_readonly``).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def _leaves_with_paths(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves_with_paths(v, f"{prefix}/{k}" if prefix else str(k))
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from _leaves_with_paths(v, f"{prefix}/{i}")
  else:
    yield prefix, tree


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
  lines.append(f"{'step':>10}  {'config hash':16}  {'finite':6}  versions")
  first_config = None
  for step in steps:
    where = f"step {step}"
    try:
      tree, meta = ckpt_lib.restore_readonly(directory, step=step)
    except Exception as e:  # report every unreadable checkpoint, keep going
      problems.append(f"{where}: cannot restore: {type(e).__name__}: {e}")
      continue
    bad = []
    for path, leaf in _leaves_with_paths(tree):
      arr = np.asarray(leaf)
      if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad.append(path)
    finite = not bad
    if bad:
      problems.append(f"{where}: non-finite arrays: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
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
    lines.append(f"{step:>10}  {str(meta.get('config_hash')):16}  {str(finite):6}  {vtext}")
  for name in others:
    lines.append(f"WARNING not committed (ignored for restore): {os.path.join(directory, name)}")
  for p in problems:
    lines.append(f"ERROR {p}")
  lines.append("OK" if not problems else f"FAILED: {len(problems)} problem(s)")
  return not problems, lines


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m trajax.verify WORKDIR", file=sys.stderr)
    return 2
  ok, lines = verify(argv[0])
  print("\n".join(lines))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
