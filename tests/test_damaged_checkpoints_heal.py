"""A damaged or deleted checkpoint is found and healed, and nothing is lost (issue 11).

Every run is ``python -m trajax.main`` in a subprocess with the command of
``tests/main_cli.py`` (mnist1d at its runlocal size, 60 steps, a checkpoint
every 6 with ``max_to_keep=3``), and "bit-identical" means
``main_cli.compare_workdirs``: every shared checkpoint leaf by leaf, the batch
fingerprints, the logged losses, the evaluations, and ``trajax.verify``.

* A flipped byte in the latest checkpoint's array data, or its array files
  cut short: ``trajax.verify`` fails naming the step; the same command
  quarantines it, resumes from the previous step and ends bit-identical to a
  run resumed from that step.
* ``trajax.verify`` beside a live run whose keep policy prunes all the time
  never reports FAILED.
* A rerun into a workdir whose checkpoints were deleted archives the old
  ``metrics.jsonl`` beside it instead of truncating it.
"""

# ruff: noqa: F811 -- the fixtures imported from tests/main_cli.py are the tests' parameters

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.checkpoint_checks import damage_checkpoint
from tests.main_cli import (
  REPO,
  RUN_TIMEOUT_S,
  TOTAL,
  cli_env,
  command,
  compare_workdirs,
  data_dir,  # noqa: F401 -- a fixture
  reference,  # noqa: F401 -- a fixture
  run,
)
from tests.workdir_checks import tail as _tail
from trajax import checkpoint as ckpt_lib
from trajax import verify


@pytest.fixture(scope="module")
def resumed_from_previous(tmp_path_factory, reference, data_dir):  # noqa: F811
  """The same command resumed from step TOTAL - 6 (the reference's last checkpoint moved away)."""
  workdir = str(tmp_path_factory.mktemp("resumed") / "run")
  shutil.copytree(reference, workdir)
  shutil.move(os.path.join(workdir, "checkpoints", str(TOTAL)), str(tmp_path_factory.mktemp("x")))
  log = workdir + ".log"
  assert run(command(workdir, data_dir), log) == 0, _tail(log)
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
    env=cli_env(),
    capture_output=True,
    text=True,
    timeout=RUN_TIMEOUT_S,
  )
  assert proc.returncode == 1, proc.stdout[-3000:]
  assert f"ERROR step {TOTAL}:" in proc.stdout
  assert ("digest mismatch" if how == "flipped_byte" else "cannot restore") in proc.stdout

  log = workdir + ".log"
  assert run(command(workdir, data_dir), log) == 0, _tail(log)
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
    *command(workdir, data_dir),
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
    assert run(cmd, log) == 0, _tail(log)
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
  assert run([*command(workdir, data_dir), *short], log) == 0, _tail(log)
  metrics = os.path.join(workdir, "metrics.jsonl")
  old = open(metrics).read()
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  log2 = str(tmp_path / "rerun.log")
  assert run([*command(workdir, data_dir), *short], log2) == 0, _tail(log2)
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
