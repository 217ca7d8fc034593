"""The console of ``python -m trajax.main``: progress lines, no third-party INFO unless asked.

A short run (mnist1d ``runlocal``, 100 steps, a checkpoint every 50) in a
subprocess, as a user launches it: by default its stdout/stderr hold one
progress line per log step and none of Orbax's per-save INFO lines, clu's
per-write scalar logging or TensorFlow's oneDNN notice; with
``--verbose_libs`` Orbax's lines are back. ``metrics.jsonl`` is the same
either way (modulo timing scalars). ``python -m trajax.verify`` is quiet too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(
  r"step (\d+)/100  loss \d+\.\d{4}  acc \d\.\d{3}  lr 0\.05  \|g\| \S+  \d+\.\d steps/s  "
  r"ETA \d+m\d\ds  input wait \d+\.\d%"
)
ORBAX_INFO = re.compile(r"^I\d{4} .*(orbax|checkpoint_manager|async_checkpointer)", re.M)
TIMING = ("steps_per_sec", "uptime", "train/input_wait_fraction")


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the default must quieten TensorFlow itself
  return env


def _train(workdir, data_dir, *extra):
  cmd = [
    sys.executable,
    "-m",
    "trajax.main",
    "--config=configs/mnist1d.py:runlocal",
    f"--config.data_dir={data_dir}",
    "--config.total_steps=100",
    "--config.checkpoint_every_steps=50",
    "--config.eval_every_steps=50",
    f"--workdir={workdir}",
    *extra,
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout + proc.stderr


def _metrics(workdir):
  out = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out.append({k: v for k, v in record.items() if k not in TIMING})
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("console")
  data_dir = root / "data"
  data_dir.mkdir()
  quiet = _train(root / "quiet", data_dir)
  verbose = _train(root / "verbose", data_dir, "--verbose_libs")
  return root, quiet, verbose


def test_default_console_has_progress_lines_and_no_library_info(runs):
  root, quiet, _ = runs
  steps = [int(m.group(1)) for m in PROGRESS.finditer(quiet)]
  assert steps == [50, 100], quiet[-3000:]
  assert not ORBAX_INFO.search(quiet), ORBAX_INFO.search(quiet).group(0)
  assert "oneDNN" not in quiet
  # clu's LoggingWriter would print every scalar of every write: "[50] train/loss=...".
  assert not re.search(r"\[\d+\] train/loss=", quiet)
  # trajax's own INFO lines still show.
  assert "starting at step 0 (fresh)" in quiet


def test_verbose_libs_brings_library_info_back_and_metrics_are_unchanged(runs):
  root, _, verbose = runs
  assert ORBAX_INFO.search(verbose), verbose[-3000:]
  assert [int(m.group(1)) for m in PROGRESS.finditer(verbose)] == [50, 100]
  quiet_metrics, verbose_metrics = _metrics(root / "quiet"), _metrics(root / "verbose")
  assert quiet_metrics == verbose_metrics
  logged = [r["step"] for r in quiet_metrics if "train/loss" in r]
  assert logged == [50, 100]


def test_warnings_still_show_when_quiet():
  import logging

  from absl import logging as absl_logging

  from trajax import metrics

  metrics.configure_console(verbose_libs=False)
  try:
    keep = metrics.quiet_filter
    site = os.path.join(os.sep, "x", "site-packages", "orbax", "y.py")
    own = os.path.join(os.path.dirname(metrics.__file__), "loop.py")

    def record(level, path):
      return logging.LogRecord("absl", level, path, 1, "m", None, None)

    assert not keep(record(logging.INFO, site))
    assert keep(record(logging.WARNING, site))
    assert keep(record(logging.ERROR, site))
    assert keep(record(logging.INFO, own))
    assert keep_in(absl_logging.get_absl_handler(), keep)
  finally:
    metrics.configure_console(verbose_libs=True)
  assert not keep_in(absl_logging.get_absl_handler(), keep)


def keep_in(handler, f):
  return f in handler.filters


def test_verify_is_quiet_by_default(runs):
  root, _, _ = runs
  env = _env()
  cmd = [sys.executable, "-m", "trajax.verify", str(root / "quiet")]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout + proc.stderr
  assert proc.stdout.rstrip().endswith("OK")
  assert not ORBAX_INFO.search(out)
  loud = subprocess.run(
    cmd[:-1] + ["--verbose_libs", cmd[-1]], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert loud.returncode == 0 and loud.stdout.rstrip().endswith("OK")


def test_sidetrip_cli_is_quiet_and_shows_its_progress(runs):
  root, _, _ = runs
  cmd = [
    sys.executable,
    "-m",
    "trajax.sidetrip",
    f"--parent={root / 'quiet'}",
    "--step=50",
    f"--workdir={root / 'trip'}",
    "--config=configs/mnist1d.py:runlocal",
    f"--config.data_dir={root / 'data'}",
    "--config.total_steps=100",
    "--config.checkpoint_every_steps=50",
    "--config.eval_every_steps=50",
    "--config.sidetrip.kind=schedule",
    "--config.sidetrip.lr_factor=0.5",
    "--config.sidetrip.steps=50",
    "--config.sidetrip.eval_at=()",
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  assert not ORBAX_INFO.search(out), ORBAX_INFO.search(out).group(0)
  assert "oneDNN" not in out
  assert re.search(r"step 100/100  loss \d+\.\d{4} .* steps/s  ETA \S+  input wait", out), out
