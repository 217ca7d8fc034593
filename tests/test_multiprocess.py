"""Two processes (``jax.distributed`` on localhost, CPU, gloo) vs one process.

Each process of the two-process run is the ordinary command
``python -m trajax.main`` with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID`` in its environment; it owns one CPU device and reads
its half of every global batch (rows ``[32 p, 32 (p + 1))`` of the 64), and
the gradients and BatchNorm moments are combined by cross-process all-reduces.

What must hold:

* The same global batches give the same maths, so the two-process run ends at
  the state of one process with two local devices bit for bit, every leaf and
  every evaluation (each all-reduce is a single ``a + b`` either way, and IEEE
  addition commutes). Against one process with one device only the summation
  order differs: the first 50 steps' mean training loss agrees to float32
  round-off; later, SGD's chaotic dynamics amplify round-off into a different
  sample of the same training process (a known effect, see
  ``test_multidevice.py`` for the short-horizon parameter check), so the
  final evaluations are compared within their noise.
* A checkpoint written by the two processes restores in one process: the
  one-process continuation (two local devices, so that it can be compared bit
  for bit) of a two-process run stopped half-way is identical to the
  two-process run that went the whole way, and ``python -m trajax.verify``
  reads every two-process checkpoint on a single device.

The run is the offline default at its ``runlocal`` size (300 steps of mnist1d,
checkpoints at 150 and 300, evaluation of the raw and two-point averaged model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from tests.multiprocess_cli import TOTAL, command, env, free_port
from trajax import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900
HALF = 150


def _tail(path, n=3000):
  """The log's end; for a crash, the interpreter's fatal-error report and its stack."""
  with open(path, errors="replace") as f:
    text = f.read()
  fatal = text.find("Fatal Python error")
  if fatal >= 0:  # the end of such a log is only the list of extension modules
    return text[max(0, fatal - n // 2) : fatal + n]
  return text[-n:]


def run_one(workdir, data_dir, *, devices=1, total=TOTAL):
  log = f"{workdir}.d{devices}.log"
  reruns = 2
  for attempt in range(reruns + 1):
    with open(log, "ab") as f:
      rc = subprocess.run(
        command(workdir, data_dir, total),
        cwd=REPO,
        env=env(devices=devices),
        stdout=f,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT_S,
      ).returncode
    # KNOWN OPEN BUG (closing notes of 2026-12-05): one process with two
    # simulated CPU devices on this 2-core machine intermittently aborts in
    # XLA's in-process all-reduce rendezvous (40 s: one device's replica never
    # arrives), seen at the first step after resuming a two-process checkpoint
    # and in the BatchNorm recompute before an evaluation; 3 of 22 repeated
    # resumes here, with or without async CPU dispatch or XLA's
    # concurrency-optimized scheduler. The same command is rerun (it resumes
    # from its own last committed step, bit-exactly), visibly, so the
    # bit-exact comparisons below still run; any other failure fails here.
    if rc == 0 or attempt == reruns or "rendezvous" not in _tail(log):
      break
    warnings.warn(f"{workdir}: rendezvous abort, rerunning (see the comment)", stacklevel=2)
  assert rc == 0, _tail(log)


def run_two(workdir, data_dir, *, total=TOTAL):
  """Both processes of a two-process run; fails with either's log."""
  port = free_port()
  logs = [f"{workdir}.p{i}.log" for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, "ab") as f:
      procs.append(
        subprocess.Popen(
          command(workdir, data_dir, total),
          cwd=REPO,
          env=env(process=i, num_processes=2, port=port),
          stdout=f,
          stderr=subprocess.STDOUT,
        )
      )
  try:
    rcs = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert rcs == [0, 0], "\n".join(
    f"--- process {i} rc {rc}\n{_tail(log)}"
    for i, (rc, log) in enumerate(zip(rcs, logs, strict=True))
  )


def _state(workdir, step):
  """``(leaf path -> array, meta)`` of a checkpoint, read in this one-device process."""
  tree, meta = ckpt_lib.restore_readonly(workdir, step=step)
  leaves = {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }
  return leaves, meta


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(x) for x in f if x.strip()]


def _differing(a, b) -> list[str]:
  assert set(a) == set(b), sorted(set(a) ^ set(b))
  return [k for k in sorted(a) if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs: one process (1 and 2 devices), two processes, two then one."""
  root = tmp_path_factory.mktemp("multiprocess")
  data_dir = str(root / "data")
  os.makedirs(data_dir)
  out = {name: str(root / name) for name in ("one", "one_2dev", "two", "two_then_one")}
  run_one(out["one"], data_dir)  # also writes the mnist1d pool cache the others read
  run_one(out["one_2dev"], data_dir, devices=2)
  run_two(out["two"], data_dir)
  run_two(out["two_then_one"], data_dir, total=HALF)
  run_one(out["two_then_one"], data_dir, devices=2)  # same command, full horizon
  return out


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
  two, meta_two = _state(runs["two"], TOTAL)
  assert meta_two["process_count"] == 2 and meta_two["device_count"] == 2
  one2, meta_one2 = _state(runs["one_2dev"], TOTAL)
  assert meta_one2["process_count"] == 1 and meta_one2["device_count"] == 2
  assert int(two["['step']"]) == TOTAL
  # Same mesh shape, same per-device programs: identical, every leaf.
  assert _differing(two, one2) == []
  # The average is in the checkpoint: one tree (lerp form) or the ring of snapshots.
  average = ("['opt_state']['previous']", "['opt_state']['snapshots']")
  assert any(k.startswith(average) for k in two), sorted(two)
  assert any(k.startswith("['batch_stats']") for k in two), sorted(two)
  rec_two, rec_one2 = _records(runs["two"]), _records(runs["one_2dev"])
  assert [r for r in rec_two if "hparams" not in r and "eval/loss" in r] == [
    r for r in rec_one2 if "hparams" not in r and "eval/loss" in r
  ]

  # One device: the same sums in another order. Round-off differences are
  # amplified by SGD's chaotic dynamics (after ~100 steps the two runs are
  # different samples of the same training process), so the check is tight
  # early and statistical late: the mean training loss of steps 1..50 agrees
  # to float32 round-off, the final evaluations to well within their noise.
  rec_one = _records(runs["one"])
  loss = lambda recs, step: next(
    r["train/loss"] for r in recs if r["step"] == step and "train/loss" in r
  )
  first = 50  # log_every_steps of the runlocal config
  assert loss(rec_two, first) == pytest.approx(loss(rec_one, first), rel=1e-5)
  final = lambda recs: next(r for r in recs if r["step"] == TOTAL and "eval/loss" in r)
  for key in ("eval/loss", "eval_avg/loss"):
    assert abs(final(rec_two)[key] - final(rec_one)[key]) < 0.1, (
      key,
      final(rec_two),
      final(rec_one),
    )
  for key in ("eval/accuracy", "eval_avg/accuracy"):
    assert abs(final(rec_two)[key] - final(rec_one)[key]) < 0.05, (
      key,
      final(rec_two),
      final(rec_one),
    )
  # And it learnt: far above chance (10 classes, 30 % label noise in training).
  assert final(rec_two)["eval_avg/accuracy"] > 0.5, final(rec_two)


@pytest.mark.slow
def test_two_process_checkpoint_restores_in_one_process(runs):
  half, meta_half = _state(runs["two_then_one"], HALF)
  assert meta_half["process_count"] == 2
  # The half-way checkpoint is the two-process run's own state at that step.
  assert _differing(half, _state(runs["two"], HALF)[0]) == []
  final, meta_final = _state(runs["two_then_one"], TOTAL)
  assert meta_final["process_count"] == 1
  # Continued by one process from the two-process checkpoint: the same end point.
  assert _differing(final, _state(runs["two"], TOTAL)[0]) == []


@pytest.mark.slow
def test_verify_reads_two_process_checkpoints_in_one_process(runs):
  """``python -m trajax.verify`` (one process, one device) on the two-process workdir."""
  proc = subprocess.run(
    [sys.executable, "-m", "trajax.verify", runs["two"]],
    cwd=REPO,
    env=env(),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  rows = [x.split() for x in proc.stdout.splitlines() if x.split() and x.split()[0].isdigit()]
  assert [int(r[0]) for r in rows] == [HALF, TOTAL]
  assert all(r[2] == "True" for r in rows), rows  # every array finite
