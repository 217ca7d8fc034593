"""``python -m experiments.demo`` writes only below its ``--workdir`` (issue 20, "a test per writer").

The demo runs as a user runs it, in a fresh process whose working directory,
home, cache, matplotlib and temporary directories are empty directories of
this test; afterwards every file outside the workdir is accounted for. What
may appear besides the workdir, each a cache or setting of a library the
user's environment chooses, never the demo's results:

* ``$HOME/.cache/trajax/mnist1d/*.npz``: the generated mnist1d pool, cached
  where ``config.data_dir`` unset puts it (``trajax.data.offline``, documented);
* ``$HOME/.keras/keras.json``: written by ``import tensorflow`` itself (Keras's
  default settings, ``KERAS_HOME``);
* ``$MPLCONFIGDIR/fontlist-*.json``: matplotlib's font cache;
* the JAX compilation cache directory the tests name (``JAX_COMPILATION_CACHE_DIR``).

Nothing in the working directory, nothing beside the workdir, nothing left in
``$TMPDIR`` or ``$XDG_CACHE_HOME``, and a ``..`` in ``--workdir`` resolved
before anything is written (the directory it passes through stays empty).
Slow (``make test-slow``): the tiny demo with one seed, about two minutes.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys

import pytest

from tests import workdir_checks as wc

REPO = wc.REPO
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "trajax-demo-writes-jax-cache")

# Files a library may leave outside the workdir (see the module docstring).
ALLOWED = {
  "home": [".cache/trajax/mnist1d/mnist1d-*.npz", ".keras/keras.json"],
  "mpl": ["fontlist-*.json"],
}


def _files(root) -> list[str]:
  """Every file and directory below ``root``, relative, sorted (directories end in '/')."""
  out = []
  for here, dirs, names in os.walk(root):
    rel = os.path.relpath(here, root)
    out += [os.path.normpath(os.path.join(rel, d)) + "/" for d in dirs]
    out += [os.path.normpath(os.path.join(rel, n)) for n in names]
  return sorted(out)


@pytest.mark.slow  # the tiny demo, one seed: about two minutes on two cores
def test_demo_writes_only_below_its_workdir(tmp_path):
  dirs = {name: tmp_path / name for name in ("cwd", "home", "xdg", "mpl", "tmp", "runs")}
  for d in dirs.values():
    d.mkdir()
  (dirs["runs"] / "via").mkdir()
  workdir = dirs["runs"] / "demo"
  env = wc.subprocess_env(
    CACHE_DIR,
    HOME=str(dirs["home"]),
    XDG_CACHE_HOME=str(dirs["xdg"]),
    MPLCONFIGDIR=str(dirs["mpl"]),
    TMPDIR=str(dirs["tmp"]),
  )
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.demo", f"--workdir={dirs['runs']}/via/../demo"]
    + [f"--config={os.path.join(REPO, 'configs', 'mnist1d.py')}", "--tiny", "--seeds=0"],
    cwd=dirs["cwd"],
    env=env,
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / "report.json").is_file() and (workdir / "seed_0").is_dir()
  # Beside the workdir: only the directory the '..' passed through, still empty.
  assert [p for p in _files(dirs["runs"]) if not p.startswith("demo/")] == ["via/"]
  for name in ("cwd", "xdg", "tmp"):
    assert _files(dirs[name]) == [], (name, _files(dirs[name]))
  for name, patterns in ALLOWED.items():
    files = [p for p in _files(dirs[name]) if not p.endswith("/")]
    stray = [p for p in files if not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    assert stray == [], (name, stray)
