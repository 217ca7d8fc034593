"""Issue 5 through the real entry point: kill -9 and resume, SIGTERM, bad configs, bad paths.

Every run here is ``python -m trajax.main`` in a subprocess, the command a user
or a restart script types. What the in-process tests of ``test_checkpoint.py``
cannot show is shown here: a process killed with SIGKILL at an arbitrary
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

from tests import workdir_checks as wc
from trajax import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A cache of our own: a process killed with SIGKILL must not be able to leave
# a half-written entry in the cache the other test files share.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "trajax-reliability-jax-cache")
RUN_TIMEOUT_S = 420
# Base seed of the random kill points; vary it to explore other interleavings.
KILL_SEED = int(os.environ.get("TRAJAX_KILL_SEED", "0"))

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


def _env(**extra):
  return wc.subprocess_env(CACHE_DIR, **extra)


def _command(workdir, data_dir, extra=()):
  return [
    sys.executable,
    "-m",
    "trajax.main",
    *RUN_ARGS,
    f"--config.data_dir={data_dir}",
    f"--workdir={workdir}",
    *extra,
  ]


def _run(cmd, log_path, *, env=None, timeout=RUN_TIMEOUT_S):
  return wc.run_logged(cmd, log_path, env=env or _env(), timeout=timeout)


def _run_and_kill(cmd, workdir, log_path, *, after_step, mid_save, sig=signal.SIGKILL):
  """Starts ``cmd`` and sends ``sig`` once ``after_step`` steps are logged (see run_and_signal)."""
  return wc.run_and_signal(
    cmd,
    workdir,
    log_path,
    after_step=after_step,
    sig=sig,
    env=_env(),
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
  rc = _run(_command(workdir, data_dir, extra), log)
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


def kill_trial(ref, workdir, data_dir, kill_points, *, extra=(), sig=signal.SIGKILL):
  """Kills the command at each of ``kill_points`` in turn, then lets it finish.

  Returns ``(problems, landings)``: the differences from ``ref`` (empty when
  the trial passed) and where each kill landed.
  """
  cmd = _command(workdir, data_dir, extra)
  log = workdir + ".log"
  landings = []
  for after_step, mid_save in kill_points:
    landing = _run_and_kill(cmd, workdir, log, after_step=after_step, mid_save=mid_save, sig=sig)
    landings.append(landing)
  rc = _run(cmd, log)
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


# --------------------------------------------------------------------------- bad configuration


def _fake_run(workdir):
  """A workdir as a crashed run leaves it: one committed checkpoint, one cut write,
  one unfinalised step directory, logs past the checkpoint.

  Anything that got past the checks would change it: the checkpoint writer
  quarantines ``18/`` and removes the temporary directory, a resume truncates
  the logs to step 6.
  """
  ck = os.path.join(workdir, "checkpoints")
  for sub in ("6/state", "6/meta", "12.orbax-checkpoint-tmp-1795444000/state", "18/state"):
    os.makedirs(os.path.join(ck, sub))
  with open(os.path.join(ck, "6", "commit_success.txt"), "w") as f:
    f.write("Checkpoint commit was successful to 6")
  with open(os.path.join(ck, "6", "meta", "metadata"), "w") as f:
    json.dump({"step": 6, "data_position": 6, "config": {}, "config_hash": "0"}, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps({"step": s, "train/loss": 2.0}) + "\n" for s in (2, 4, 6, 8, 10))
  with open(os.path.join(workdir, "batch_fingerprints.jsonl"), "w") as f:
    f.writelines(json.dumps({"step": s, "fingerprint": f"{s:016x}"}) + "\n" for s in range(11))


def snapshot(root) -> dict:
  """Path -> (kind, size, mtime, bytes) of everything under ``root``."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      content = open(path, "rb").read() if name in filenames else None
      out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
  return out


def _main(args, *, env_extra=None, timeout=RUN_TIMEOUT_S):
  return subprocess.run(
    [sys.executable, "-m", "trajax.main", *args],
    cwd=REPO,
    env=_env(**(env_extra or {})),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


MNIST = "--config=configs/mnist1d.py:runlocal"
CIFAR = "--config=configs/cifar10_resnet34.py:runlocal"
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

# (id, config + overrides, extra env, dotted field, value as printed, what is allowed)
# DATA in an override is replaced by an empty directory of the test; NODIR by a
# path that does not exist there.
_FAST, _SLOW = (), (pytest.mark.slow,)
BAD_CONFIGS = [
  # Rejected while the flags are parsed (ml_collections, locked config).
  (
    "unknown_field",
    [MNIST, "--config.optimizer.lrr=0.1"],
    None,
    "optimizer.lrr",
    "0.1",
    "did you mean",
    _FAST,
  ),
  (
    "type_float",
    [MNIST, "--config.optimizer.lr=fast"],
    None,
    "optimizer.lr",
    "fast",
    "float",
    _FAST,
  ),
  ("type_int", [MNIST, "--config.total_steps=1e3"], None, "total_steps", "1e3", "int", _FAST),
  (
    "type_bool",
    [MNIST, "--config.dataset.augment=maybe"],
    None,
    "dataset.augment",
    "maybe",
    "boolean",
    _FAST,
  ),
  # Rejected by trajax.config_validation before anything is allocated or written.
  (
    "lr_negative",
    [MNIST, "--config.optimizer.lr=-0.1"],
    None,
    "optimizer.lr",
    "-0.1",
    "must be a finite number > 0",
    _FAST,
  ),
  (
    "lr_zero",
    [MNIST, "--config.optimizer.lr=0"],
    None,
    "optimizer.lr",
    "0.0",
    "must be a finite number > 0",
    _FAST,
  ),
  (
    "lr_nan",
    [MNIST, "--config.optimizer.lr=nan"],
    None,
    "optimizer.lr",
    "nan",
    "must be a finite number > 0",
    _SLOW,
  ),
  (
    "batch_vs_devices",
    [MNIST, "--config.batch_size=63"],
    TWO_DEVICES,
    "batch_size",
    "63",
    "must be divisible by the 2 devices",
    _FAST,
  ),
  (
    "unknown_dataset",
    [MNIST, "--config.dataset.name=mnist2d"],
    None,
    "dataset.name",
    "'mnist2d'",
    "must be one of",
    _FAST,
  ),
  ("tfds_without_data_dir", [CIFAR], None, "data_dir", "None", "training never downloads", _FAST),
  (
    "tfds_missing_data_dir",
    [CIFAR, "--config.data_dir=NODIR"],
    None,
    "data_dir",
    "NODIR",
    "must be an existing directory",
    _SLOW,
  ),
  (
    "ema_decay",
    [MNIST, "--config.averaging.method=ema", "--config.averaging.decay=1.5"],
    None,
    "averaging.decay",
    "1.5",
    "must be a float in (0, 1]",
    _FAST,
  ),
  (
    "multi_point_n",
    [MNIST, "--config.averaging.method=multi_point", "--config.averaging.n=1"],
    None,
    "averaging.n",
    "1",
    "must be an integer >= 2",
    _SLOW,
  ),
  (
    "gap_beyond_run",
    [MNIST, "--config.averaging.gap=100000"],
    None,
    "averaging.gap",
    "100000",
    "must be <= total_steps=300",
    _SLOW,
  ),
  (
    "momentum_one",
    [MNIST, "--config.optimizer.momentum=1.0"],
    None,
    "optimizer.momentum",
    "1.0",
    "must be a number in [0, 1)",
    _SLOW,
  ),
]


@pytest.mark.parametrize(
  "args,env_extra,field,value,allowed,workdir_kind",
  [
    # Alternate an existing (crashed) run's workdir and a new one.
    pytest.param(*case[1:6], ("crashed_run", "new")[i % 2], id=case[0], marks=case[6])
    for i, case in enumerate(BAD_CONFIGS)
  ],
)
def test_bad_config_names_field_and_leaves_workdir_untouched(
  args, env_extra, field, value, allowed, workdir_kind, tmp_path
):
  """The CLI fails naming ``field = value`` and what is allowed; no file is written.

  ``crashed_run``: an existing workdir left exactly as it was (no quarantine,
  no cleanup, no log truncation). ``new``: the workdir is not created. In
  both, the (empty) data directory stays empty: no dataset cache was built.
  """
  data = tmp_path / "data"
  data.mkdir()
  workdir = tmp_path / "run"
  if workdir_kind == "crashed_run":
    _fake_run(str(workdir))
  nodir = str(tmp_path / "prepared_tfds")
  args = [a.replace("DATA", str(data)).replace("NODIR", nodir) for a in args]
  if not any(a.startswith("--config.data_dir") for a in args) and args[0] == MNIST:
    args.append(f"--config.data_dir={data}")
  value = value.replace("NODIR", nodir)
  before = snapshot(tmp_path)
  proc = _main([*args, f"--workdir={workdir}"], env_extra=env_extra)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out[-3000:]
  lines = [x for x in out.splitlines() if field in x and value in x]
  # One line names the dotted field, the value and what is allowed.
  assert any(allowed.lower() in x.lower() for x in lines), (field, value, allowed, out[-3000:])
  assert snapshot(tmp_path) == before  # nothing created, moved, truncated or touched


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


# --------------------------------------------------------------------------- workdir / restore paths


def _path_case(tmp_path, kind):
  """``(workdir argument, extra flags, text the error must contain)`` for a bad path."""
  run = tmp_path / "runs" / "mnist1d"
  _fake_run(str(run))
  if kind == "typo_resume_require":
    return str(tmp_path / "runs" / "mnsit1d"), ["--resume=require"], "no committed checkpoint"
  if kind == "missing_parent":
    # A fresh start creates a missing parent (issue 24); a restart script's
    # --resume=require never does.
    return str(tmp_path / "rnus" / "mnist1d"), ["--resume=require"], "parent directory"
  if kind == "workdir_is_a_file":
    path = tmp_path / "runs" / "notes.txt"
    path.write_text("not a run\n")
    return str(path), [], "not a directory"
  if kind == "checkpoints_dir_as_workdir":
    return str(run / "checkpoints"), [], str(run / "checkpoints")
  if kind == "step_dir_as_workdir":
    return str(run / "checkpoints" / "6"), [], str(run / "checkpoints" / "6")
  if kind == "only_uncommitted_resume_require":
    shutil.rmtree(run / "checkpoints" / "6")
    return str(run), ["--resume=require"], "no committed checkpoint"
  if kind == "resume_never_on_a_run":
    return str(run), ["--resume=never"], "holds checkpoints [6]"
  raise ValueError(kind)


@pytest.mark.slow
@pytest.mark.parametrize(
  "kind",
  [
    "typo_resume_require",
    "missing_parent",
    "workdir_is_a_file",
    "checkpoints_dir_as_workdir",
    "step_dir_as_workdir",
    "only_uncommitted_resume_require",
    "resume_never_on_a_run",
  ],
)
def test_bad_workdir_is_an_error_never_a_fresh_start(kind, tmp_path):
  """A mistyped or misdirected ``--workdir`` fails, names the path, and writes nothing.

  ``checkpoints_dir_as_workdir`` / ``step_dir_as_workdir``: pointing at a run's
  checkpoints (the path one means to *restore from*) must not start a fresh
  run nested inside them.
  """
  workdir, flags, expect = _path_case(tmp_path, kind)
  before = snapshot(tmp_path)
  # A short horizon, so that a wrongly accepted workdir costs seconds, not minutes.
  proc = _main(
    [
      MNIST,
      f"--workdir={workdir}",
      "--config.total_steps=2",
      "--config.checkpoint_every_steps=2",
      "--config.eval_every_steps=2",
      "--config.log_every_steps=1",
      "--config.averaging.gap=2",
      f"--config.data_dir={tmp_path / 'runs'}",
      *flags,
    ]
  )
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out[-3000:]
  assert expect in out, out[-3000:]
  assert snapshot(tmp_path) == before


def test_verify_cli_on_a_mistyped_path_fails_naming_it(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "trajax.verify", str(tmp_path / "mnsit1d")],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  assert str(tmp_path / "mnsit1d") in proc.stdout + proc.stderr
  assert not (tmp_path / "mnsit1d").exists()
