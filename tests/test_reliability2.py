"""Issue 11 through the real entry point: one writer per workdir, damaged checkpoints, live verify.

Every run is ``python -m trajax.main`` in a subprocess with the command of
``test_reliability.py`` (mnist1d at its runlocal size, 60 steps, a checkpoint
every 6 with ``max_to_keep=3``), and "bit-identical" means
``test_reliability.compare_workdirs``: every shared checkpoint leaf by leaf,
the batch fingerprints, the logged losses, the evaluations, and
``trajax.verify``.

* Two launches at the same moment on one workdir: exactly one trains, the
  other is refused naming it (host, pid, start time), and so are a launch with
  another learning rate and a ``--force_takeover`` (the holder is alive on this
  host); the winner's workdir is bit-identical to a lone run.
* A holder killed with SIGKILL leaves no lock behind; the next one recognises
  the stale record.
* A flipped byte in the latest checkpoint's array data, or its array files
  cut short: ``trajax.verify`` fails naming the step; the same command
  quarantines it, resumes from the previous step and ends bit-identical to a
  run resumed from that step.
* ``trajax.verify`` beside a live run whose keep policy prunes all the time
  never reports FAILED.
* A rerun into a workdir whose checkpoints were deleted archives the old
  ``metrics.jsonl`` beside it instead of truncating it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_checkpoint import damage_checkpoint
from test_reliability import (
  REPO,
  RUN_TIMEOUT_S,
  TOTAL,
  _command,
  _env,
  _run,
  compare_workdirs,
  data_dir,  # noqa: F401 -- a fixture
  reference,  # noqa: F401 -- a fixture
)

from tests.workdir_checks import tail as _tail
from trajax import checkpoint as ckpt_lib
from trajax import verify, workdir_lock


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
  cmd = _command(workdir, data_dir)
  logs = [str(tmp_path / f"launch{i}.log") for i in range(2)]
  files = [open(x, "wb") for x in logs]
  procs = [
    subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT) for f in files
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
    rc_lr = _run([*cmd, "--config.optimizer.lr=0.1"], other_lr)
    forced = str(tmp_path / "forced.log")
    rc_forced = _run([*cmd, "--force_takeover"], forced)
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
    [sys.executable, "-c", script], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True
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


@pytest.fixture(scope="module")
def resumed_from_previous(tmp_path_factory, reference, data_dir):  # noqa: F811
  """The same command resumed from step TOTAL - 6 (the reference's last checkpoint moved away)."""
  workdir = str(tmp_path_factory.mktemp("resumed") / "run")
  shutil.copytree(reference, workdir)
  shutil.move(os.path.join(workdir, "checkpoints", str(TOTAL)), str(tmp_path_factory.mktemp("x")))
  log = workdir + ".log"
  assert _run(_command(workdir, data_dir), log) == 0, _tail(log)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flipped_byte", "truncated_file"])
def test_damaged_latest_checkpoint_fails_verify_and_the_rerun_heals(
  reference,  # noqa: F811
  data_dir,  # noqa: F811
  resumed_from_previous,
  tmp_path,
  how,
):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  damage_checkpoint(pathlib.Path(workdir) / "checkpoints" / str(TOTAL), how)
  proc = subprocess.run(
    [sys.executable, "-m", "trajax.verify", workdir],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=RUN_TIMEOUT_S,
  )
  assert proc.returncode == 1, proc.stdout[-3000:]
  assert f"ERROR step {TOTAL}:" in proc.stdout
  assert ("digest mismatch" if how == "flipped_byte" else "cannot restore") in proc.stdout

  log = workdir + ".log"
  assert _run(_command(workdir, data_dir), log) == 0, _tail(log)
  out = open(log, errors="replace").read()
  (line,) = [x for x in out.splitlines() if "is damaged and was moved" in x]
  assert f"checkpoint step {TOTAL} is damaged" in line
  assert "Traceback" not in out
  assert compare_workdirs(workdir, resumed_from_previous) == []
  assert compare_workdirs(workdir, reference) == []
  (moved,) = os.listdir(os.path.join(workdir, "quarantined_checkpoints"))
  assert moved.startswith(f"{TOTAL}-")


@pytest.mark.slow
def test_verify_beside_a_live_pruning_run_never_fails(data_dir, tmp_path):  # noqa: F811
  """A checkpoint every 2 steps with max_to_keep=1: steps vanish while verify reads them."""
  workdir = str(tmp_path / "run")
  cmd = [
    *_command(workdir, data_dir),
    "--config.checkpoint_every_steps=2",
    "--config.checkpoint.max_to_keep=1",
  ]
  log = str(tmp_path / "run.log")
  results, stop = [], threading.Event()

  def watch():
    while not stop.is_set():
      if ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")):
        results.append(verify.verify(workdir))
      else:
        time.sleep(0.01)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  try:
    assert _run(cmd, log) == 0, _tail(log)
  finally:
    stop.set()
    thread.join(timeout=120)
  pruned = sum(any("pruned while reading" in x for x in lines) for _, lines in results)
  print(f"\nverify beside a live run: {len(results)} reads, {pruned} saw a step pruned")
  assert len(results) >= 3
  failed = [lines for ok, lines in results if not ok]
  assert not failed, failed[0]


@pytest.mark.slow
def test_rerun_after_checkpoints_were_deleted_archives_old_metrics(data_dir, tmp_path):  # noqa: F811
  workdir = str(tmp_path / "run")
  short = ["--config.total_steps=12", "--config.eval_every_steps=12", "--config.averaging.gap=4"]
  log = str(tmp_path / "run.log")
  assert _run([*_command(workdir, data_dir), *short], log) == 0, _tail(log)
  metrics = os.path.join(workdir, "metrics.jsonl")
  old = open(metrics).read()
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  log2 = str(tmp_path / "rerun.log")
  assert _run([*_command(workdir, data_dir), *short], log2) == 0, _tail(log2)
  archives = sorted(n for n in os.listdir(workdir) if n.startswith("metrics.jsonl."))
  assert len(archives) == 1 and archives[0].endswith(".bak"), archives
  assert open(os.path.join(workdir, archives[0])).read() == old  # nothing lost
  (line,) = [x for x in open(log2).read().splitlines() if f"archived it to {metrics}." in x]
  assert archives[0] in line
  # The batch fingerprints of the earlier run are kept the same way.
  assert len([n for n in os.listdir(workdir) if n.startswith("batch_fingerprints.jsonl.")]) == 1
  new = [json.loads(x) for x in open(metrics) if x.strip()]
  assert sum("hparams" in r for r in new) == 1
  assert [r["step"] for r in new if "train/loss" in r] == list(range(2, 13, 2))


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
    [sys.executable, "-c", script], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


@pytest.mark.slow
def test_two_process_run_on_a_busy_workdir_fails_on_every_process_without_hanging(
  data_dir,  # noqa: F811
  tmp_path,
):
  """Process 0 takes the lock for both; process 1 learns the refusal by broadcast."""
  import test_multiprocess as mp

  workdir = str(tmp_path / "run")
  holder = _hold_lock(workdir)
  try:
    port = mp._free_port()
    logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
      with open(log, "wb") as f:
        procs.append(
          subprocess.Popen(
            [*mp._command(workdir, data_dir, total=12), "--config.averaging.gap=4"],
            cwd=REPO,
            env=mp._env(process=i, num_processes=2, port=port),
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
