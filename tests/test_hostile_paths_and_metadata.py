"""Issue 20 through the real entry points: paths, metadata and outputs as hostile input.

Every case runs the CLI (``python -m trajax.main`` / ``trajax.sidetrip`` /
``trajax.verify``) in a subprocess on real files. The runs are the issue's
``RUN``: mnist1d at its runlocal size, 60 steps, a checkpoint every 20.

* A symlink planted as the lock file (or as any entry a run writes) is refused;
  its target is untouched.
* Damage to the latest checkpoint's *metadata* -- a flipped byte, the file
  deleted, a digit of the stored config, the data position, the key that holds
  the array digests (with a flipped array byte) -- quarantines that step and
  the run resumes from step 40, ending bit-identical to the undamaged run.
* A checkpoint without digests resumes with one warning naming the step and
  ``trajax.verify --write_digests``; ``verify`` fails on it unless
  ``--predates_digests``; ``--write_digests`` adds them.
* A backslash in a path, ``total_steps >= 2^31``: refused before anything is written.
* A busy workdir is said before a config diff; a resume ``ConfigError`` is one
  line; a quarantine that cannot move says what and why and moves nothing; the
  all-damaged advice runs as printed; a damaged mnist1d cache is named and rebuilt.
* A fresh start creates a missing parent of ``--workdir``; ``--resume=require``
  and a side-trip refuse one, in one line.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from tests import workdir_checks as wc
from tests.checkpoint_checks import array_files
from tests.workdir_checks import snapshot
from trajax import checkpoint as ckpt_lib
from trajax import workdir_lock

REPO = wc.REPO
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "trajax-reliability3-jax-cache")
TIMEOUT = 420
RUN = [
  "--config=configs/mnist1d.py:runlocal",
  "--config.total_steps=60",
  "--config.checkpoint_every_steps=20",
  "--config.averaging.gap=20",
]


def _env(**extra):
  return wc.subprocess_env(CACHE_DIR, **extra)


def _cli(module, args, timeout=TIMEOUT):
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _main(workdir, data_dir, *extra):
  return _cli(
    "trajax.main", [*RUN, f"--config.data_dir={data_dir}", f"--workdir={workdir}", *extra]
  )


def _one_line_error(proc, *needles):
  """Non-zero exit, no traceback, and one stderr line naming every needle."""
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  lines = [x for x in proc.stderr.splitlines() if all(n in x for n in needles)]
  assert len(lines) == 1, (needles, out[-3000:])
  return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, data_dir):
  """The issue's RUN, uninterrupted: checkpoints 20, 40, 60."""
  workdir = str(tmp_path_factory.mktemp("base") / "run")
  proc = _main(workdir, data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")) == [20, 40, 60]
  return workdir


def _copy(base, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(base, workdir, symlinks=True)
  return workdir


def _meta_path(workdir, step) -> pathlib.Path:
  return pathlib.Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata"


def _flip_in_meta(workdir, step, old: str, new: str):
  path = _meta_path(workdir, step)
  text = path.read_text()
  assert text.count(old) == 1, (old, text[:300])
  path.write_text(text.replace(old, new))


# ----------------------------------------------------------------------------- 1: the lock


def test_lock_symlink_is_refused_and_its_target_untouched(tmp_path, data_dir):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lock.LOCK_NAME).symlink_to(victim)
  before = snapshot(tmp_path)
  proc = _main(str(workdir), data_dir)
  _one_line_error(proc, workdir_lock.LOCK_NAME, "symbolic link")
  assert victim.read_text() == "precious\n"
  assert snapshot(tmp_path) == before
  # The lock itself never opens through a link, whoever calls it.
  with pytest.raises(workdir_lock.WorkdirLockError, match="symbolic link"):
    workdir_lock.acquire(str(workdir))
  assert victim.read_text() == "precious\n"


def test_lock_on_a_fifo_is_refused_without_hanging(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.mkfifo(workdir / workdir_lock.LOCK_NAME)
  with pytest.raises(workdir_lock.WorkdirLockError, match="not a regular file"):
    workdir_lock.acquire(str(workdir))


# ----------------------------------------------------------------------------- 2: metadata


def _damage_meta(workdir, how):
  path = _meta_path(workdir, 60)
  if how == "flipped_byte":
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
  elif how == "deleted":
    path.unlink()
  elif how == "config_digit":  # lr 0.05 -> 0.07: still valid JSON and a valid config
    _flip_in_meta(workdir, 60, '"lr": 0.05', '"lr": 0.07')
  elif how == "data_position":
    _flip_in_meta(workdir, 60, '"data_position": 60', '"data_position": 61')
  elif how == "digests_key":
    # One bit of the key that holds the array digests, plus a silently
    # readable byte flip in the arrays: without a digest of the metadata the
    # checkpoint would look like one written before digests existed.
    _flip_in_meta(workdir, 60, '"digests":', '"eigests":')
    damage_checkpoint_unchecked(pathlib.Path(workdir) / "checkpoints" / "60")
  else:
    raise ValueError(how)


def damage_checkpoint_unchecked(step_dir):
  """A byte flip in the arrays that the format reads without complaint (values change)."""
  directory, step = step_dir.parent, int(step_dir.name)
  ref, _ = ckpt_lib.restore_step_dir(str(step_dir), step, check=False)
  ref = wc.leaves(ref)
  for path in array_files(step_dir):
    original = path.read_bytes()
    for at in range(0, len(original), max(1, len(original) // 50)):
      data = bytearray(original)
      data[at] ^= 0xFF
      path.write_bytes(bytes(data))
      try:
        got, _ = ckpt_lib.restore_step_dir(str(step_dir), step, check=False)
      except Exception:  # noqa: BLE001 -- the format noticed; try another byte
        continue
      got = wc.leaves(got)
      if any(not (got[k] == ref[k]).all() for k in ref):
        return
    path.write_bytes(original)
  raise AssertionError(f"no silently readable byte flip in {directory}")


@pytest.mark.parametrize(
  "how",
  [
    "flipped_byte",
    "data_position",
    pytest.param("deleted", marks=pytest.mark.slow),
    pytest.param("config_digit", marks=pytest.mark.slow),
    pytest.param("digests_key", marks=pytest.mark.slow),
  ],
)
def test_damaged_latest_metadata_is_quarantined_and_the_resume_is_bit_exact(
  base, data_dir, tmp_path, how
):
  workdir = _copy(base, tmp_path)
  _damage_meta(workdir, how)
  proc = _cli("trajax.verify", [workdir])
  assert proc.returncode == 1 and "ERROR step 60:" in proc.stdout, proc.stdout[-2000:]

  proc = _main(workdir, data_dir)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert "Traceback" not in out
  (line,) = [x for x in out.splitlines() if "is damaged and was moved" in x]
  assert "checkpoint step 60 is damaged" in line
  assert "resuming from step 40" in out
  (moved,) = os.listdir(os.path.join(workdir, "quarantined_checkpoints"))
  assert moved.startswith("60-")
  ck, ref = os.path.join(workdir, "checkpoints"), os.path.join(base, "checkpoints")
  assert ckpt_lib.committed_steps(ck) == [20, 40, 60]
  assert wc.compare_states(ck, ref, 60) == []
  assert _cli("trajax.verify", [workdir]).returncode == 0


# ----------------------------------------------------------------------------- 3: no digests


def _strip_digests(workdir, step):
  path = _meta_path(workdir, step)
  meta = json.loads(path.read_text())
  del meta["digests"], meta[ckpt_lib.META_DIGEST_KEY]
  path.write_text(json.dumps(meta))


def test_checkpoint_without_digests_warns_fails_verify_and_can_be_sealed(base, data_dir, tmp_path):
  workdir = _copy(base, tmp_path)
  _strip_digests(workdir, 60)
  proc = _cli("trajax.verify", [workdir])
  assert proc.returncode == 1, proc.stdout[-2000:]
  assert "ERROR step 60: no array digests and no metadata digest" in proc.stdout
  assert "--write_digests" in proc.stdout
  proc = _cli("trajax.verify", ["--predates_digests", workdir])
  assert proc.returncode == 0, proc.stdout[-2000:]
  assert "WARNING step 60: no array digests" in proc.stdout

  # The resume (to step 80) says so once, naming the step and the fix.
  proc = _main(workdir, data_dir, "--config.total_steps=80")
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  (line,) = [x for x in out.splitlines() if "carries no" in x]
  assert "checkpoint step 60" in line and f"trajax.verify --write_digests {workdir}" in line

  # Sealing a stripped copy makes verify pass without --predates_digests.
  other = str(tmp_path / "other")
  shutil.copytree(base, other)
  _strip_digests(other, 40)
  proc = _cli("trajax.verify", ["--write_digests", other])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "step 40: added array digests and metadata digest" in proc.stdout
  assert _meta_path(other, 40).read_text() != ""
  assert _cli("trajax.verify", [other]).returncode == 0


# ----------------------------------------------------------------------------- 6 + 8: refused early


@pytest.mark.parametrize("module", ["trajax.main", "trajax.sidetrip", "trajax.verify"])
def test_backslash_in_a_path_is_refused_and_nothing_is_written(base, data_dir, tmp_path, module):
  (tmp_path / "X").mkdir()
  workdir = str(tmp_path / "X") + "\\run"
  before = snapshot(tmp_path)
  if module == "trajax.main":
    proc = _main(workdir, data_dir)
  elif module == "trajax.sidetrip":
    args = [*RUN, f"--config.data_dir={data_dir}", f"--parent={base}", "--step=40"]
    proc = _cli(module, [*args, f"--workdir={workdir}"])
  else:
    proc = _cli(module, ["--write_digests", workdir])
  _one_line_error(proc, "backslash")
  assert snapshot(tmp_path) == before


def test_total_steps_beyond_int32_is_refused_before_anything_is_written(tmp_path, data_dir):
  before = snapshot(tmp_path)
  proc = _main(str(tmp_path / "run"), data_dir, "--config.total_steps=2147483648")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "total_steps = 2147483648" in proc.stderr and "2^31" in proc.stderr
  assert snapshot(tmp_path) == before


def test_busy_lock_is_said_before_a_config_diff_and_config_errors_are_one_line(base, tmp_path):
  workdir = _copy(base, tmp_path)
  other_lr = ["--config.optimizer.lr=0.07", f"--config.data_dir={tmp_path}"]
  proc = _cli("trajax.main", [*RUN, *other_lr, f"--workdir={workdir}"])
  line = _one_line_error(proc, "optimizer.lr = 0.07", "differs from the checkpoint")
  assert line.startswith("config error:")
  script = (
    f"import time\nfrom trajax import workdir_lock\nworkdir_lock.acquire({workdir!r})\n"
    "print('locked', flush=True)\ntime.sleep(600)\n"
  )
  holder = subprocess.Popen(
    [sys.executable, "-c", script], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    proc = _cli("trajax.main", [*RUN, *other_lr, f"--workdir={workdir}"])
    _one_line_error(proc, "is in use by", f"pid {holder.pid}")
    assert "optimizer.lr" not in proc.stderr
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("obstacle", ["file", "symlink"])
def test_quarantine_obstacle_is_named_and_nothing_moves(base, data_dir, tmp_path, obstacle):
  workdir = _copy(base, tmp_path)
  _damage_meta(workdir, "deleted")
  qdir = pathlib.Path(workdir) / ckpt_lib.QUARANTINE_DIR
  outside = tmp_path / "outside"
  outside.mkdir()
  if obstacle == "file":
    qdir.write_text("a file in the way\n")
  else:
    qdir.symlink_to(outside)
  before = snapshot(tmp_path)
  proc = _main(workdir, data_dir)
  _one_line_error(proc, str(qdir), "symbolic link" if obstacle == "symlink" else "in the way")
  assert snapshot(tmp_path) == before
  assert os.listdir(outside) == []


@pytest.mark.parametrize("errno_", [errno.EXDEV, errno.EROFS])
def test_failed_quarantine_move_says_what_and_why_and_moves_nothing(tmp_path, monkeypatch, errno_):
  """The rename itself fails (another filesystem, read-only): the step stays, intact."""
  step_dir = tmp_path / "run" / "checkpoints" / "60"
  (step_dir / "state").mkdir(parents=True)
  (step_dir / "state" / "x").write_text("data")
  before = snapshot(step_dir.parent)

  def rename(src, dst):
    raise OSError(errno_, os.strerror(errno_), src, dst)

  monkeypatch.setattr(os, "rename", rename)
  with pytest.raises(ckpt_lib.QuarantineError) as e:
    ckpt_lib.move_aside(str(step_dir))
  text = str(e.value)
  assert str(step_dir) in text and "nothing was moved" in text and "\n" not in text
  assert os.strerror(errno_) in text
  if errno_ == errno.EXDEV:
    assert "another filesystem" in text
  assert snapshot(step_dir.parent) == before


def test_all_damaged_advice_runs_as_printed(base, data_dir, tmp_path):
  workdir = _copy(base, tmp_path)
  for step in (20, 40, 60):
    _meta_path(workdir, step).unlink()
  proc = _main(workdir, data_dir)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0 and "Traceback" not in out
  (cmd,) = re.findall(r"`python -m (trajax\.verify [^`]+)`", out)
  module, path = cmd.split(" ", 1)
  proc = _cli(module, [path])
  assert proc.returncode == 1, proc.stdout
  assert "3 quarantined checkpoint(s)" in proc.stdout
  for step in (20, 40, 60):
    assert re.search(rf"ERROR step {step} \(.*metadata cannot be read", proc.stdout)


def test_damaged_mnist1d_cache_is_named_and_rebuilt(tmp_path, data_dir, base):
  (cache,) = pathlib.Path(data_dir, "mnist1d").glob("*.npz")
  own = tmp_path / "data" / "mnist1d"
  own.mkdir(parents=True)
  target = own / cache.name
  target.write_bytes(cache.read_bytes()[:1000])  # a torn copy
  proc = _cli(
    "trajax.main",
    [
      *RUN,
      "--config.total_steps=2",
      "--config.checkpoint_every_steps=2",
      "--config.averaging.gap=2",
      f"--config.data_dir={tmp_path / 'data'}",
      f"--workdir={tmp_path / 'run'}",
    ],
  )
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert "Traceback" not in out
  (line,) = [x for x in out.splitlines() if "mnist1d cache" in x]
  assert str(target) in line and "rebuilding" in line
  assert target.read_bytes() == cache.read_bytes()


# ----------------------------------------------------------------------------- issue 24, item 5


def test_fresh_start_creates_a_missing_parent_and_a_restart_refuses_one(tmp_path, data_dir, base):
  before = snapshot(tmp_path)
  for cmd in (
    [
      "trajax.main",
      [
        *RUN,
        f"--config.data_dir={data_dir}",
        "--resume=require",
        f"--workdir={tmp_path / 'typo' / 'run'}",
      ],
    ],
    [
      "trajax.sidetrip",
      [
        *RUN,
        f"--config.data_dir={data_dir}",
        f"--parent={base}",
        "--step=40",
        f"--workdir={tmp_path / 'typo' / 'trip'}",
      ],
    ],
  ):
    proc = _cli(*cmd)
    _one_line_error(proc, "parent directory", str(tmp_path / "typo"))
  assert snapshot(tmp_path) == before
  proc = _cli(
    "trajax.main",
    [
      *RUN,
      "--config.total_steps=2",
      "--config.checkpoint_every_steps=2",
      "--config.averaging.gap=2",
      f"--config.data_dir={data_dir}",
      f"--workdir={tmp_path / 'new' / 'runs' / 'run'}",
    ],
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ckpt_lib.committed_steps(str(tmp_path / "new" / "runs" / "run" / "checkpoints")) == [2]


# ----------------------------------------------------------------------------- no writes outside


def _outside(outside) -> None:
  """Files outside the workdir that a link in it could lead a writer to."""
  outside.mkdir(exist_ok=True)
  for name in ("metrics.jsonl", "batch_fingerprints.jsonl"):
    (outside / name).write_text('{"step": 999}\n')
  (outside / "checkpoints").mkdir(exist_ok=True)
  (outside / "checkpoints" / "keep.txt").write_text("keep\n")


@pytest.mark.parametrize("entry", ["metrics.jsonl", "checkpoints", "quarantined_checkpoints"])
@pytest.mark.parametrize("writer", ["main", "sidetrip"])
def test_writers_never_write_through_links_in_their_workdir(
  base, data_dir, tmp_path, entry, writer
):
  outside = tmp_path / "outside"
  _outside(outside)
  workdir = tmp_path / "run"
  if writer == "main":
    shutil.copytree(base, workdir)
  else:
    workdir.mkdir()
  target = outside / ("metrics.jsonl" if entry == "metrics.jsonl" else "checkpoints")
  link = workdir / entry
  if link.exists():
    shutil.rmtree(link) if link.is_dir() else link.unlink()
  link.symlink_to(target)
  before = snapshot(tmp_path)
  if writer == "main":
    proc = _main(str(workdir), data_dir, "--config.total_steps=80")
  else:
    args = [*RUN, f"--config.data_dir={data_dir}", f"--parent={base}", "--step=40"]
    proc = _cli("trajax.sidetrip", [*args, f"--workdir={workdir}"])
  _one_line_error(proc, str(link), "symbolic link")
  assert snapshot(tmp_path) == before


def test_write_digests_never_writes_through_a_linked_metadata_file(base, tmp_path):
  workdir = _copy(base, tmp_path)
  _strip_digests(workdir, 40)
  outside = tmp_path / "outside.json"
  meta = _meta_path(workdir, 40)
  shutil.move(meta, outside)
  meta.symlink_to(outside)
  before = outside.read_bytes()
  proc = _cli("trajax.verify", ["--write_digests", workdir])
  assert proc.returncode == 1
  assert outside.read_bytes() == before
  assert meta.is_symlink()


# ----------------------------------------------------------------------------- 8: SIGTERM log window


@pytest.mark.slow
def test_after_sigterm_between_log_points_the_next_record_says_how_many_steps_it_averages(
  tmp_path, data_dir
):
  import signal

  workdir = str(tmp_path / "run")
  cmd = [
    sys.executable,
    "-m",
    "trajax.main",
    "--config=configs/mnist1d.py:runlocal",  # logs every 50 steps
    "--config.total_steps=100",
    "--config.checkpoint_every_steps=100",
    f"--config.data_dir={data_dir}",
    f"--workdir={workdir}",
  ]
  log = str(tmp_path / "log")
  landing = wc.run_and_signal(
    cmd, workdir, log, after_step=50, sig=signal.SIGTERM, env=_env(), timeout=TIMEOUT
  )
  assert landing["rc"] == 0, landing
  (stop,) = landing["committed"]
  assert 50 <= stop < 100, landing  # between the log points 50 and 100
  assert wc.run_logged(cmd, log, env=_env(), timeout=TIMEOUT) == 0, wc.tail(log)
  got = {r["step"]: r for r in wc.records(workdir) if "train/loss" in r}
  assert sorted(got) == [50, 100]
  assert got[50]["train/steps_averaged"] == 50
  assert got[100]["train/steps_averaged"] == 100 - stop
  if stop != 50:
    assert "step 100/100" in wc.tail(log) and f"(mean of {100 - stop} steps)" in wc.tail(log)


# ----------------------------------------------------------------------------- side-trip metadata


def _sidetrip(base, workdir, data_dir):
  trip = [
    "--config.sidetrip.kind=schedule",
    "--config.sidetrip.schedule=constant",
    "--config.sidetrip.lr_factor=0.5",
    "--config.sidetrip.steps=40",
  ]
  args = [*RUN, *trip, f"--config.data_dir={data_dir}", f"--parent={base}", "--step=40"]
  return _cli("trajax.sidetrip", [*args, f"--workdir={workdir}"])


@pytest.mark.slow
def test_side_trip_with_damaged_latest_metadata_heals_bit_exact(base, data_dir, tmp_path):
  ref = str(tmp_path / "ref")
  proc = _sidetrip(base, ref, data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = ckpt_lib.committed_steps(os.path.join(ref, "checkpoints"))
  assert steps[-1] == 80 and len(steps) >= 2, steps
  workdir = str(tmp_path / "trip")
  shutil.copytree(ref, workdir)
  _flip_in_meta(workdir, 80, '"data_position": 80', '"data_position": 81')
  proc = _sidetrip(base, workdir, data_dir)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
  assert "checkpoint step 80 is damaged" in out
  ck = os.path.join(workdir, "checkpoints")
  assert wc.compare_states(ck, os.path.join(ref, "checkpoints"), 80) == []
