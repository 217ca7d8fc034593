"""A bad config or a bad ``--workdir`` given to ``python -m trajax.main`` is refused in one line
naming it, and nothing is written (issue 5).

Every case is the CLI in a subprocess (``tests/main_cli.py``): a config field
with a bad value names the dotted field, the value and what is allowed, and
leaves an existing (crashed) run's workdir exactly as it was, or creates no
new one; a mistyped or misdirected workdir (a file, a run's checkpoints, a
step directory, ``--resume=require`` with nothing there, ``--resume=never``
on a run) is an error naming the path, never a fresh start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.main_cli import REPO, RUN_TIMEOUT_S, cli_env
from tests.workdir_checks import snapshot

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


def _main(args, *, env_extra=None, timeout=RUN_TIMEOUT_S):
  return subprocess.run(
    [sys.executable, "-m", "trajax.main", *args],
    cwd=REPO,
    env=cli_env(**(env_extra or {})),
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
    env=cli_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  assert str(tmp_path / "mnsit1d") in proc.stdout + proc.stderr
  assert not (tmp_path / "mnsit1d").exists()
