"""The lock (requirements/lock.txt) is the tested environment, and it resolves unchanged.

`make install` installs pyproject.toml's extras under the lock as constraints,
so the suite runs on exactly the locked versions; the slow test resolves the
lock (without installing) on every supported interpreter this machine has.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "requirements"))
import check_lock  # noqa: E402


def test_pins_parse_names_canonically(tmp_path):
  lock = tmp_path / "lock.txt"
  lock.write_text("# header\nOrbax_Checkpoint==0.12.8\nml.dtypes==0.7.0  # why\n\n")
  assert check_lock.pins(str(lock)) == {"orbax-checkpoint": "0.12.8", "ml-dtypes": "0.7.0"}


def test_every_direct_dependency_is_locked():
  locked = check_lock.pins()
  for name in (
    "jax",
    "jaxlib",
    "optax",
    "numpy",
    "flax",
    "orbax-checkpoint",
    "tensorflow-cpu",
    "tensorflow-datasets",
    "ml-collections",
    "clu",
    "pytest",
    "ruff",
  ):
    assert name in locked, name


def test_this_environment_is_the_lock():
  """The suite runs on the locked versions (what `make install` installs)."""
  off = []
  for name, version in check_lock.pins().items():
    try:
      have = md.version(name)
    except md.PackageNotFoundError:
      off.append(f"{name} missing")
      continue
    if have != version:
      off.append(f"{name} {have} != {version}")
  assert not off, "environment differs from requirements/lock.txt (run make install): " + ", ".join(
    off
  )


PYTHONS = check_lock.find_pythons()


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_lock_resolves_unchanged(python):
  ok, msg = check_lock.check(python)
  assert ok, f"{python}: {msg}"
