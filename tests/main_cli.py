"""The main run through its command line, in a subprocess: what the reliability tests share.

One command (:func:`command`: mnist1d at its runlocal size, :data:`TOTAL`
steps, a checkpoint every 6 with ``max_to_keep=3``, batch fingerprints on),
run to its end (:func:`run`) or signalled (:func:`run_and_kill`), and
"bit-identical" as :func:`compare_workdirs` means it: every shared
checkpoint leaf by leaf, the batch fingerprints, the logged losses, the
evaluations and ``trajax.verify``. The module-scoped fixtures ``data_dir``,
``reference`` and ``reference_ema`` are imported by the test files that use them.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import pytest

from tests import workdir_checks as wc
from trajax import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A cache of our own: a process killed with SIGKILL must not be able to leave
# a half-written entry in the cache the other test files share.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "trajax-reliability-jax-cache")
RUN_TIMEOUT_S = 420

TOTAL = 60
# The offline default at its runlocal size, shortened, with a checkpoint every
# 6 steps (max_to_keep=3, so saves, prunes and training overlap all the time),
# a metrics line every 2 steps (the tests watch it to see progress) and the
# batch fingerprints on.
RUN_ARGS = [
  "--config=configs/mnist1d.py:runlocal",
  f"--config.total_steps={TOTAL}",
  "--config.checkpoint_every_steps=6",
  "--config.log_every_steps=2",
  f"--config.eval_every_steps={TOTAL}",
  "--config.averaging.gap=20",
  "--config.log_batch_fingerprints=True",
]
# EMA with averaged BatchNorm statistics: a non-empty ``bn_average`` in the state.
EMA_ARGS = [
  "--config.averaging.method=ema",
  "--config.averaging.decay=0.05",
  "--config.averaging.batch_norm=average",
]


def cli_env(**extra):
  """The CLI's environment: CPU, quiet, this module's own compilation cache."""
  return wc.subprocess_env(CACHE_DIR, **extra)


def command(workdir, data_dir, extra=()):
  """``python -m trajax.main`` with :data:`RUN_ARGS` (the same command for a start and a restart)."""
  return [
    sys.executable,
    "-m",
    "trajax.main",
    *RUN_ARGS,
    f"--config.data_dir={data_dir}",
    f"--workdir={workdir}",
    *extra,
  ]


def run(cmd, log_path, *, env=None, timeout=RUN_TIMEOUT_S):
  """Runs ``cmd`` to its end, its output appended to ``log_path``; its exit code."""
  return wc.run_logged(cmd, log_path, env=env or cli_env(), timeout=timeout)


def run_and_kill(cmd, workdir, log_path, *, after_step, mid_save, sig=signal.SIGKILL):
  """Starts ``cmd`` and sends ``sig`` once ``after_step`` steps are logged (see run_and_signal)."""
  return wc.run_and_signal(
    cmd,
    workdir,
    log_path,
    after_step=after_step,
    sig=sig,
    env=cli_env(),
    timeout=RUN_TIMEOUT_S,
    mid_save=mid_save,
  )


def compare_workdirs(got, ref) -> list[str]:
  """Every difference between a resumed workdir and the uninterrupted one (empty: identical)."""
  problems = []
  ck_got, ck_ref = os.path.join(got, "checkpoints"), os.path.join(ref, "checkpoints")
  steps_got, steps_ref = ckpt_lib.committed_steps(ck_got), ckpt_lib.committed_steps(ck_ref)
  if steps_got != steps_ref:
    problems.append(f"committed steps {steps_got} != uninterrupted {steps_ref}")
  if TOTAL not in steps_got:
    problems.append(f"no final checkpoint at step {TOTAL}: {steps_got}")
  for step in sorted(set(steps_got) & set(steps_ref)):
    problems += wc.compare_states(ck_got, ck_ref, step)
  problems += wc.fingerprint_problems(got, ref, range(TOTAL))
  return problems + wc.compare_logs(got, ref)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _reference(tmp_path_factory, data_dir, extra=()):
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
  log = workdir + ".log"
  rc = run(command(workdir, data_dir, extra), log)
  assert rc == 0, wc.tail(log)
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints"))[-1] == TOTAL
  return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """The same command, never interrupted."""
  return _reference(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def reference_ema(tmp_path_factory, data_dir):
  return _reference(tmp_path_factory, data_dir, EMA_ARGS)
