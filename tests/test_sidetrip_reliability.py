"""Side-trips as safe as main runs, through ``python -m trajax.sidetrip`` (issue 11).

Every side-trip here is the command a user types, in a subprocess, branching
off one mnist1d parent at step 20 and running 40 steps (checkpoints every 10,
the default ``max_to_keep=3``, batch fingerprints on). An interrupted
side-trip restarted with the same command must end exactly where the
uninterrupted one does: the final checkpoint bit-identical leaf by leaf, every
step's batch fingerprint listed once and equal, the same logged losses and
evaluations, and ``trajax.verify`` content with the workdir.

* SIGTERM saves the current step, waits for the commit and exits 0;
* kill -9 mid-run (slow suite) loses only what was not committed;
* a restart needs only the side-trip's own checkpoints: the parent's branch
  step may have been pruned since;
* the parent is identified by identity: a symlinked path to it is the same
  parent; a moved parent is refused unless ``--parent_moved`` is given, and
  then only if its config is the recorded parent's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from configs import mnist1d
from tests import workdir_checks as wc
from trajax import checkpoint as ckpt_lib
from trajax import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Own cache: a SIGKILLed process must not leave a half-written entry in a shared one.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "trajax-sidetrip-reliability-jax-cache")
RUN_TIMEOUT_S = 300
KILL_SEED = int(os.environ.get("TRAJAX_KILL_SEED", "0"))

S, K = 20, 40  # branch step and side-trip length
END = S + K
# The parent's config as configs/mnist1d.py:runlocal overrides (the CLI rebuilds it).
PARENT = {
  "total_steps": 60,
  "batch_size": 32,
  "log_every_steps": 1,  # one-step windows: the logged losses compare across a restart
  "eval_every_steps": 60,
  "checkpoint_every_steps": 10,
  "model.width": 8,
  "averaging.gap": 20,
  "log_batch_fingerprints": True,
}
TRIP = {
  "sidetrip.kind": "schedule",
  "sidetrip.schedule": "constant",
  "sidetrip.lr_factor": 0.5,
  "sidetrip.steps": K,
}


def parent_config():
  c = mnist1d.get_config("runlocal")
  for key, value in {**PARENT, "checkpoint.max_to_keep": None}.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _env():
  return wc.subprocess_env(CACHE_DIR)


def command(parent, workdir, *extra, trip=TRIP):
  return [
    sys.executable,
    "-m",
    "trajax.sidetrip",
    f"--parent={parent}",
    f"--step={S}",
    f"--workdir={workdir}",
    "--config=configs/mnist1d.py:runlocal",
    *[f"--config.{k}={v}" for k, v in {**PARENT, **trip}.items()],
    *extra,
  ]


def run(cmd, log_path):
  return wc.run_logged(cmd, log_path, env=_env(), timeout=RUN_TIMEOUT_S)


def run_capture(cmd):
  return subprocess.run(
    cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
  )


def run_and_signal(cmd, workdir, log_path, *, after_step, sig):
  """Starts ``cmd``, sends ``sig`` once ``after_step`` is logged; returns where it landed."""
  return wc.run_and_signal(
    cmd, workdir, log_path, after_step=after_step, sig=sig, env=_env(), timeout=RUN_TIMEOUT_S
  )


def compare(got, ref) -> list[str]:
  """Every difference between a restarted side-trip and the uninterrupted one."""
  steps = ckpt_lib.committed_steps(os.path.join(got, "checkpoints"))
  if END not in steps:
    return [f"no final checkpoint at {END}: {steps}"]
  problems = wc.compare_states(got, ref, END)
  problems += wc.fingerprint_problems(got, ref, range(S, END))
  return problems + wc.compare_logs(got, ref)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """A 60-step parent with every 10th step kept (trained in this process)."""
  workdir = str(tmp_path_factory.mktemp("parent") / "run")
  loop.train_and_evaluate(parent_config(), workdir)
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")) == [10, 20, 30, 40, 50, 60]
  return workdir


@pytest.fixture(scope="module")
def reference(parent, tmp_path_factory):
  """The side-trip, never interrupted."""
  workdir = str(tmp_path_factory.mktemp("reference") / "trip")
  rc = run(command(parent, workdir), workdir + ".log")
  assert rc == 0, wc.tail(workdir + ".log")
  return workdir


def copy_parent(parent, dest) -> str:
  shutil.copytree(parent, dest, symlinks=True)
  return str(dest)


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_saves_the_current_step_exits_zero_and_resumes_exactly(parent, reference, tmp_path):
  after = random.Random(KILL_SEED).randrange(S + 2, END - 12)
  workdir = str(tmp_path / "trip")
  cmd, log = command(parent, workdir), str(tmp_path / "trip.log")
  landing = run_and_signal(cmd, workdir, log, after_step=after, sig=signal.SIGTERM)
  # Saved where it was (not cut): exit 0 with the current step committed.
  assert landing["rc"] == 0, (landing, wc.tail(log))
  assert landing["committed"][-1] >= landing["logged_step"], landing
  assert landing["committed"][-1] < END, landing
  assert "preempted at step" in wc.tail(log)
  assert run(cmd, log) == 0, wc.tail(log)
  restarted = wc.tail(log, 10**7).split("preempted at step")[-1]
  assert f"starting at step {landing['committed'][-1]} (own:" in restarted
  assert not compare(workdir, reference), compare(workdir, reference)


@pytest.mark.slow
def test_kill9_of_a_sidetrip_then_restart_matches_the_uninterrupted_one(
  parent, reference, tmp_path
):
  rng = random.Random(KILL_SEED + 1)
  workdir = str(tmp_path / "trip")
  cmd, log = command(parent, workdir), str(tmp_path / "trip.log")
  for after in sorted(rng.sample(range(S + 2, END - 8), 2)):
    landing = run_and_signal(cmd, workdir, log, after_step=after, sig=signal.SIGKILL)
    assert landing["rc"] == -signal.SIGKILL, landing
  assert run(cmd, log) == 0, wc.tail(log)
  assert not compare(workdir, reference), compare(workdir, reference)


# --------------------------------------------------------------------------- the parent


def test_restart_needs_only_its_own_checkpoints_when_the_branch_step_was_pruned(
  parent, reference, tmp_path
):
  mine = copy_parent(parent, tmp_path / "parent")
  workdir = str(tmp_path / "trip")
  cmd, log = command(mine, workdir), str(tmp_path / "trip.log")
  landing = run_and_signal(cmd, workdir, log, after_step=S + 14, sig=signal.SIGTERM)
  assert landing["rc"] == 0 and landing["committed"], (landing, wc.tail(log))
  # The parent's retention prunes S (as max_to_keep would) while the side-trip is down.
  shutil.rmtree(os.path.join(mine, "checkpoints", str(S)))
  assert S not in ckpt_lib.committed_steps(os.path.join(mine, "checkpoints"))
  assert run(cmd, log) == 0, wc.tail(log)
  assert not compare(workdir, reference), compare(workdir, reference)
  # A *new* side-trip from the pruned step is refused, naming the steps there.
  out = run_capture(command(mine, str(tmp_path / "new")))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert f"side-trip error: step {S} is not a committed checkpoint" in out.stderr
  assert "[10, 30, 40, 50, 60]" in out.stderr


@pytest.mark.slow
def test_symlinked_and_moved_parent_are_recognised_by_identity(parent, reference, tmp_path):
  real = copy_parent(parent, tmp_path / "real")
  link = str(tmp_path / "link")
  os.symlink(real, link)
  workdir = str(tmp_path / "trip")
  log = str(tmp_path / "trip.log")
  # Started through the symlink: the lineage records the resolved path.
  landing = run_and_signal(
    command(link, workdir), workdir, log, after_step=S + 6, sig=signal.SIGTERM
  )
  assert landing["rc"] == 0, (landing, wc.tail(log))
  lineage = ckpt_lib.read_metadata(os.path.join(workdir, "checkpoints"), landing["committed"][-1])[
    "lineage"
  ]
  assert lineage["parent"] == os.path.join(os.path.realpath(real), "checkpoints")
  # Restarted through the real path (another string, the same directory): accepted.
  landing = run_and_signal(
    command(real, workdir), workdir, log, after_step=S + 16, sig=signal.SIGTERM
  )
  assert landing["rc"] == 0, (landing, wc.tail(log))
  # Moved: refused without --parent_moved, in one line that says what to do.
  moved = str(tmp_path / "moved")
  os.rename(real, moved)
  out = run_capture(command(moved, workdir))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "side-trip error:" in out.stderr and "--parent_moved" in out.stderr
  # A different run offered as the moved parent is refused too.
  other = copy_parent(moved, tmp_path / "other")
  for step in ckpt_lib.committed_steps(os.path.join(other, "checkpoints")):
    path = os.path.join(other, "checkpoints", str(step), "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    meta["config"]["optimizer"]["lr"] = 0.123
    meta["config_hash"] = ckpt_lib.config_hash(meta["config"])
    with open(path, "w") as f:
      json.dump(ckpt_lib.seal_meta(meta), f)  # a consistent (other) run, not damage
  out = run_capture(command(other, workdir, "--parent_moved"))
  assert out.returncode == 1 and "is a different run" in out.stderr, out.stderr[-3000:]
  # The moved parent with the flag: finishes exactly as the uninterrupted side-trip.
  assert run(command(moved, workdir, "--parent_moved"), log) == 0, wc.tail(log)
  assert not compare(workdir, reference), compare(workdir, reference)
  final = ckpt_lib.read_metadata(os.path.join(workdir, "checkpoints"), END)["lineage"]
  assert final["parent"] == os.path.join(os.path.realpath(moved), "checkpoints")
  assert final["moved_from"] == lineage["parent"]
