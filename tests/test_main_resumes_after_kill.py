"""A main run killed (SIGKILL) or preempted (SIGTERM) and restarted ends bit-identical (issue 5).

Every run here is ``python -m trajax.main`` in a subprocess, the command a user
or a restart script types (``tests/main_cli.py``; bad configs and paths given
to it: ``tests/test_main_cli_refusals.py``). What the in-process tests of
``test_checkpoint.py`` cannot show is shown here: a process killed with SIGKILL at an arbitrary
moment (mid-step, mid-log, in the middle of an asynchronous Orbax write; with
``max_to_keep=3`` old checkpoints are pruned all along) and restarted with *the same command* ends in
exactly the state of a run that was never interrupted:

* every committed checkpoint the two runs share (the final one included) is
  bit-identical leaf by leaf: step, params, BatchNorm statistics, the whole
  optimizer state (momentum and the averaging state that holds θ̄), the
  BatchNorm average, the step key and the health record;
* the per-step batch fingerprints (``log_batch_fingerprints``) list each
  step ``0 .. T-1`` exactly once with the uninterrupted run's fingerprint, so
  no batch was skipped or replayed;
* the logged training losses and the final evaluation are identical;
* ``trajax.verify`` finds the workdir consistent.

Trials: ``test_kill9_during_async_save_after_random_step`` (fast suite) and
``test_kill9_trials`` (slow suite) print ``kill -9 trials: P/N passed`` with
one line per trial (run pytest with ``-s`` to see it).
"""

# ruff: noqa: F811 -- the fixtures imported from tests/main_cli.py are the tests' parameters

from __future__ import annotations

import os
import random
import signal

import pytest

from tests import workdir_checks as wc
from tests.main_cli import (
  EMA_ARGS,
  TOTAL,
  command,
  compare_workdirs,
  data_dir,  # noqa: F401 -- a fixture
  reference,  # noqa: F401 -- a fixture
  reference_ema,  # noqa: F401 -- a fixture
  run,
  run_and_kill,
)

# Base seed of the random kill points; vary it to explore other interleavings.
KILL_SEED = int(os.environ.get("TRAJAX_KILL_SEED", "0"))


def kill_trial(ref, workdir, data_dir, kill_points, *, extra=(), sig=signal.SIGKILL):
  """Kills the command at each of ``kill_points`` in turn, then lets it finish.

  Returns ``(problems, landings)``: the differences from ``ref`` (empty when
  the trial passed) and where each kill landed.
  """
  cmd = command(workdir, data_dir, extra)
  log = workdir + ".log"
  landings = []
  for after_step, mid_save in kill_points:
    landing = run_and_kill(cmd, workdir, log, after_step=after_step, mid_save=mid_save, sig=sig)
    landings.append(landing)
  rc = run(cmd, log)
  if rc != 0:
    return [f"restart exited {rc}:\n{wc.tail(log)}"], landings
  return compare_workdirs(workdir, ref), landings


def _report(results):
  passed = sum(not problems for _, problems, _ in results)
  print(f"\nkill -9 trials: {passed}/{len(results)} passed")
  for name, problems, landings in results:
    where = "; ".join(
      f"killed at logged step {x['logged_step']}, committed {x['committed']}, "
      f"cut writes {x['cut_saves']}"
      for x in landings
    )
    print(f"  {name}: {'PASS' if not problems else 'FAIL ' + str(problems)} ({where})")
  return passed


def test_kill9_during_async_save_after_random_step(reference, data_dir, tmp_path):
  """One trial (fast suite): SIGKILL while an async checkpoint write is in flight."""
  after = random.Random(KILL_SEED).randrange(4, TOTAL - 16)
  workdir = str(tmp_path / "run")
  problems, landings = kill_trial(reference, workdir, data_dir, [(after, True)])
  _report([(f"mid-save after step {after}", problems, landings)])
  assert landings[0]["rc"] == -signal.SIGKILL
  assert landings[0]["logged_step"] < TOTAL
  assert not problems, problems


@pytest.mark.slow
def test_kill9_trials(reference, reference_ema, data_dir, tmp_path):
  """Several kill points: random steps, mid-write, repeated kills, EMA + BN average."""
  rng = random.Random(KILL_SEED + 1)
  trials = []
  for _ in range(3):
    after = rng.randrange(1, TOTAL - 4)
    trials.append((f"random step {after}", [(after, False)], (), reference))
  for _ in range(2):
    after = rng.randrange(2, TOTAL - 16)
    trials.append((f"mid-save after step {after}", [(after, True)], (), reference))
  points = sorted(rng.sample(range(2, TOTAL - 10), 3))
  trials.append(
    (
      f"three kills after steps {points}",
      [(p, i % 2 == 1) for i, p in enumerate(points)],
      (),
      reference,
    )
  )
  after = rng.randrange(2, TOTAL - 16)
  trials.append(
    (f"EMA + BN average, mid-save after step {after}", [(after, True)], EMA_ARGS, reference_ema)
  )
  results = []
  for n, (name, points, extra, ref) in enumerate(trials):
    workdir = str(tmp_path / f"trial{n}")
    problems, landings = kill_trial(ref, workdir, data_dir, points, extra=extra)
    results.append((name, problems, landings))
  passed = _report(results)
  # At least one kill must really have cut a write (else the mid-save claim is empty).
  assert any(x["cut_saves"] for _, _, landings in results for x in landings), results
  assert passed == len(results), [r for r in results if r[1]]


# --------------------------------------------------------------------------- SIGTERM through the CLI


@pytest.mark.slow
@pytest.mark.parametrize("mid_save", [False, True], ids=["random_step", "mid_save"])
def test_sigterm_exits_zero_with_current_step_committed_and_resumes_exactly(
  reference, data_dir, tmp_path, mid_save
):
  """Preemption: the process saves the step it is at, waits for the commit, exits 0."""
  rng = random.Random(KILL_SEED + 2 + mid_save)
  # <= 40: the extra checkpoint is pruned (max_to_keep=3) before the end, so the
  # final listing matches the uninterrupted run's.
  after = rng.randrange(2, 40)
  workdir = str(tmp_path / "run")
  problems, landings = kill_trial(
    reference, workdir, data_dir, [(after, mid_save)], sig=signal.SIGTERM
  )
  landing = landings[0]
  assert landing["rc"] == 0, landing
  # The current step was committed (the last one the process logged or later).
  assert landing["committed"][-1] >= landing["logged_step"], landing
  assert landing["committed"][-1] < TOTAL and not landing["cut_saves"], landing
  assert not problems, problems
