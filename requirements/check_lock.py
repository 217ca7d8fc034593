"""Checks that the lock resolves, unchanged, on a Python interpreter: ``make lock-check``.

  python requirements/check_lock.py [PYTHON ...]   # default: every supported one found

For each interpreter, pip resolves ``.[train,dev]`` under the lock as
constraints without installing anything (``--dry-run --ignore-installed
--report``); the check passes when the resolution succeeds and every package
it picks is pinned in the lock at that version -- so ``make install`` on that
Python installs exactly the tested set. One line per interpreter; exit status
1 when any fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements", "lock.txt")
EXTRAS = os.environ.get("TRAJAX_LOCK_EXTRAS", "train,dev")


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str = LOCK) -> dict[str, str]:
  """``{canonical name: version}`` of the lock's ``name==version`` lines."""
  out = {}
  for line in open(path):
    line = line.split("#")[0].strip()
    if line:
      name, _, version = line.partition("==")
      out[canonical(name)] = version.strip()
  return out


def check(python: str) -> tuple[bool, str]:
  """(ok, one-line summary) of resolving the project under the lock with ``python``."""
  with tempfile.TemporaryDirectory() as tmp:
    report = os.path.join(tmp, "report.json")
    proc = subprocess.run(
      [
        python,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        report,
        "-c",
        LOCK,
        f"{ROOT}[{EXTRAS}]",
      ],
      capture_output=True,
      text=True,
    )
    if proc.returncode:
      tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
      return False, f"does not resolve: {tail}"
    picked = {
      canonical(i["metadata"]["name"]): i["metadata"]["version"]
      for i in json.load(open(report))["install"]
    }
  locked = pins()
  picked.pop("trajax-sgd", None)
  off = sorted(
    f"{n}=={v} (lock: {locked.get(n, 'absent')})" for n, v in picked.items() if locked.get(n) != v
  )
  if off:
    return False, f"{len(off)} package(s) outside the lock: {', '.join(off)}"
  return True, f"{len(picked)} packages, all as locked"


def find_pythons(versions=("3.11", "3.12", "3.13")) -> list[str]:
  """Interpreters of the supported versions on this machine that actually run.

  A pyenv *shim* on PATH may name a version that is installed but not
  selected (it then fails): pyenv's own version folders are tried first, then
  PATH, and each candidate must report the version it is named for.
  """
  import glob
  import shutil

  found = []
  for v in versions:
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}*/bin/python{v}")))
    candidates += [p for p in [shutil.which(f"python{v}")] if p]
    for python in candidates:
      proc = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
      )
      if proc.returncode == 0 and proc.stdout.strip() == v:
        found.append(python)
        break
  return found


def main(argv: list[str]) -> int:
  argv = argv or find_pythons()
  if not argv:
    print("no Python 3.11-3.13 interpreter found", file=sys.stderr)
    return 2
  ok_all = True
  for python in argv:
    version = (
      subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True
      ).stdout.strip()
      or "?"
    )
    ok, msg = check(python)
    ok_all &= ok
    print(f"{'ok  ' if ok else 'FAIL'} Python {version} ({python}): {msg}")
  return 0 if ok_all else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
