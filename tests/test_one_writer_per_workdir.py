"""One process writes a workdir: every other launch is refused naming the holder (issue 11).

Every run is ``python -m trajax.main`` in a subprocess with the command of
``tests/main_cli.py`` (mnist1d at its runlocal size, 60 steps, a checkpoint
every 6 with ``max_to_keep=3``), and "bit-identical" means
``main_cli.compare_workdirs``: every shared checkpoint leaf by leaf, the batch
fingerprints, the logged losses, the evaluations, and ``trajax.verify``.

* Two launches at the same moment on one workdir: exactly one trains, the
  other is refused naming it (host, pid, start time), and so are a launch with
  another learning rate and a ``--force_takeover`` (the holder is alive on this
  host); the winner's workdir is bit-identical to a lone run.
* A holder killed with SIGKILL leaves no lock behind; the next one recognises
  the stale record.
* A two-process run on a busy workdir fails on every process without hanging.
"""

# ruff: noqa: F811 -- the fixtures imported from tests/main_cli.py are the tests' parameters

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.main_cli import (
  REPO,
  RUN_TIMEOUT_S,
  cli_env,
  command,
  compare_workdirs,
  data_dir,  # noqa: F401 -- a fixture
  reference,  # noqa: F401 -- a fixture
  run,
)
from tests.workdir_checks import tail as _tail
from trajax import workdir_lock


def _lock_record(workdir) -> dict | None:
  try:
    text = open(os.path.join(workdir, workdir_lock.LOCK_NAME)).read().strip()
    return json.loads(text) if text else None
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _wait_for_holder(workdir, procs, log_paths) -> subprocess.Popen:
  """The process among ``procs`` whose record appears in the lock file."""
  deadline = time.monotonic() + RUN_TIMEOUT_S
  while time.monotonic() < deadline:
    rec = _lock_record(workdir)
    for p in procs:
      if rec and rec.get("pid") == p.pid:
        return p
    if all(p.poll() is not None for p in procs):
      raise AssertionError("every launch ended before one held the lock:\n" + _tail(log_paths[0]))
    time.sleep(0.002)
  raise AssertionError("no launch took the lock")


@pytest.mark.slow
def test_concurrent_launches_one_trains_the_others_are_refused_naming_it(
  reference,  # noqa: F811
  data_dir,  # noqa: F811
  tmp_path,
):
  workdir = str(tmp_path / "run")
  cmd = command(workdir, data_dir)
  logs = [str(tmp_path / f"launch{i}.log") for i in range(2)]
  files = [open(x, "wb") for x in logs]
  procs = [
    subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=f, stderr=subprocess.STDOUT)
    for f in files
  ]
  try:
    holder = _wait_for_holder(workdir, procs, logs)
    # Stopped, it keeps its lock: the refusals below cannot depend on timing.
    holder.send_signal(signal.SIGSTOP)
    loser = next(p for p in procs if p is not holder)
    loser_log = logs[procs.index(loser)]
    assert loser.wait(timeout=RUN_TIMEOUT_S) != 0, _tail(loser_log)
    # A launch with another learning rate, and a forced takeover of a live holder.
    other_lr = str(tmp_path / "other_lr.log")
    rc_lr = run([*cmd, "--config.optimizer.lr=0.1"], other_lr)
    forced = str(tmp_path / "forced.log")
    rc_forced = run([*cmd, "--force_takeover"], forced)
    holder.send_signal(signal.SIGCONT)
    assert holder.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(logs[procs.index(holder)])
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGCONT)
        p.kill()
        p.wait()
    for f in files:
      f.close()
  host = socket.gethostname()
  for log in (loser_log, other_lr):
    out = _tail(log, 3000)
    (line,) = [x for x in out.splitlines() if "is in use by" in x]
    assert f"pid {holder.pid} on host {host}" in line and "started 20" in line, line
    assert line.startswith("error: workdir"), line  # one line, no traceback
    assert "Traceback" not in out
  assert rc_lr != 0
  assert rc_forced != 0 and "alive on this host" in _tail(forced, 3000)
  # The winner's run: untouched by the three refused launches.
  assert compare_workdirs(workdir, reference) == []
  assert not os.path.exists(os.path.join(workdir, "quarantined_checkpoints"))
  assert not [n for n in os.listdir(workdir) if n.endswith(".bak")]
  assert _lock_record(workdir) is None  # released cleanly at the end


def test_lock_of_a_process_killed_with_sigkill_is_released_and_recognised_stale(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  script = (
    "import sys, time\n"
    "from trajax import workdir_lock\n"
    f"workdir_lock.acquire({workdir!r})\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", script], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True
  )
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {proc.pid} on host"):
      workdir_lock.acquire(workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert _lock_record(workdir)["pid"] == proc.pid  # the dead holder's record is still there
  with caplog.at_level("WARNING"):
    lock = workdir_lock.acquire(workdir)
  try:
    (line,) = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert f"pid {proc.pid}" in line
    assert _lock_record(workdir)["pid"] == os.getpid()
  finally:
    lock.release()


def _hold_lock(workdir):
  """A process holding ``workdir``'s lock (kill it to release)."""
  script = (
    "import time\n"
    "from trajax import workdir_lock\n"
    f"workdir_lock.acquire({workdir!r})\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", script], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


@pytest.mark.slow
def test_two_process_run_on_a_busy_workdir_fails_on_every_process_without_hanging(
  data_dir,  # noqa: F811
  tmp_path,
):
  """Process 0 takes the lock for both; process 1 learns the refusal by broadcast."""
  from tests import multiprocess_cli as mp

  workdir = str(tmp_path / "run")
  holder = _hold_lock(workdir)
  try:
    port = mp.free_port()
    logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
      with open(log, "wb") as f:
        procs.append(
          subprocess.Popen(
            [*mp.command(workdir, data_dir, total=12), "--config.averaging.gap=4"],
            cwd=REPO,
            env=mp.env(process=i, num_processes=2, port=port),
            stdout=f,
            stderr=subprocess.STDOUT,
          )
        )
    try:
      rcs = [p.wait(timeout=RUN_TIMEOUT_S) for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
  finally:
    holder.kill()
    holder.wait()
  assert rcs[0] != 0 and rcs[1] != 0, rcs
  for log in logs:
    out = _tail(log, 3000)
    assert f"is in use by pid {holder.pid} on host" in out, out
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # nothing written
