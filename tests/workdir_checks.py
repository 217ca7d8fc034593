"""What the kill/restart tests share: run a CLI in a subprocess, signal it, compare workdirs.

A restarted run is right when it ends where the uninterrupted one does:
:func:`compare_states` checks a committed step leaf by leaf (dtype, shape,
bits) and its config hash, :func:`compare_logs` the logged training losses,
the evaluations and ``trajax.verify``; :func:`fingerprint_problems` that
every step's batch was consumed exactly once and was the same batch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import jax
import numpy as np

from trajax import checkpoint as ckpt_lib
from trajax import verify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An Orbax write in flight: its temporary directory under checkpoints/.
_TMP_RE = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def subprocess_env(cache_dir: str, **extra) -> dict:
  """The environment of a CLI under test: CPU, quiet TF, unbuffered, its own XLA cache.

  A process killed with SIGKILL may leave a half-written cache entry: every
  test file that kills processes passes a cache directory of its own.
  """
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "JAX_COMPILATION_CACHE_DIR": cache_dir,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": REPO,
    **extra,
  }


def run_logged(cmd, log_path, *, env: dict, timeout: float) -> int:
  """Runs ``cmd`` from the repository root, appending its output to ``log_path``; its exit code."""
  with open(log_path, "ab") as log:
    proc = subprocess.run(
      cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
    )
  return proc.returncode


def tail(path, n: int = 4000) -> str:
  with open(path, errors="replace") as f:
    return f.read()[-n:]


def logged_step(workdir) -> int:
  """Largest step with a training-loss line in metrics.jsonl (-1: none yet)."""
  path = os.path.join(workdir, "metrics.jsonl")
  best = -1
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if '"train/loss"' in line:
          try:
            best = max(best, int(json.loads(line)["step"]))
          except (json.JSONDecodeError, KeyError):
            pass  # a line being written right now
  return best


def saves_in_flight(workdir) -> list[str]:
  try:
    return [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if _TMP_RE.match(n)]
  except FileNotFoundError:
    return []


def run_and_signal(
  cmd, workdir, log_path, *, after_step: int, sig, env: dict, timeout: float, mid_save=False
) -> dict:
  """Starts ``cmd`` and sends ``sig`` once ``after_step`` is logged by this process.

  With ``mid_save`` the signal also waits for an asynchronous checkpoint
  write to be in flight. Returns where it landed: ``rc``, ``logged_step``,
  ``cut_saves`` (temporary directories still there: the write really was
  cut) and ``committed``.
  """
  metrics = os.path.join(workdir, "metrics.jsonl")
  with open(log_path, "ab") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    started_ns, deadline = time.time_ns(), time.monotonic() + timeout
    try:
      while True:
        if proc.poll() is not None:
          raise AssertionError(
            f"ended (rc {proc.returncode}) before the signal point (step >= {after_step}, "
            f"mid_save={mid_save}):\n{tail(log_path)}"
          )
        if time.monotonic() > deadline:
          raise AssertionError(f"no progress to step {after_step}:\n{tail(log_path)}")
        # This process's own lines only (a restart first rewrites the file).
        fresh = os.path.exists(metrics) and os.stat(metrics).st_mtime_ns > started_ns
        if (
          fresh
          and logged_step(workdir) >= after_step
          and (not mid_save or saves_in_flight(workdir))
        ):
          proc.send_signal(sig)
          break
        time.sleep(0.002)
      rc = proc.wait(timeout=timeout)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return {
    "rc": rc,
    "logged_step": logged_step(workdir),
    "cut_saves": saves_in_flight(workdir),
    "committed": ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")),
  }


def leaves(tree) -> dict:
  return {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(x) for x in f if x.strip()]


def fingerprints(workdir) -> list[tuple[int, str]]:
  with open(os.path.join(workdir, "batch_fingerprints.jsonl")) as f:
    return [(r["step"], r["fingerprint"]) for r in map(json.loads, f) if r]


def compare_states(got, ref, step: int) -> list[str]:
  """Differences of committed ``step`` in two workdirs: every leaf bit for bit, the config hash."""
  a, meta_a = ckpt_lib.restore_readonly(got, step=step)
  b, meta_b = ckpt_lib.restore_readonly(ref, step=step)
  la, lb = leaves(a), leaves(b)
  problems = []
  if set(la) != set(lb):
    problems.append(f"step {step}: state leaves differ: {sorted(set(la) ^ set(lb))}")
  for name in sorted(set(la) & set(lb)):
    x, y = la[name], lb[name]
    if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
      diff = (
        float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        if x.shape == y.shape
        else "shape"
      )
      problems.append(f"step {step}: {name} differs (max |diff| {diff})")
  if int(a["step"]) != step:
    problems.append(f"step {step}: state step {int(a['step'])}")
  if meta_a["config_hash"] != meta_b["config_hash"]:
    problems.append(f"step {step}: config hash {meta_a['config_hash']} != {meta_b['config_hash']}")
  if meta_a.get("lr_hyper") != meta_b.get("lr_hyper"):
    problems.append(f"step {step}: lr scalars {meta_a.get('lr_hyper')} != {meta_b.get('lr_hyper')}")
  return problems


def fingerprint_problems(got, ref, steps: range) -> list[str]:
  """The uninterrupted run consumed ``steps`` in order; the restarted one the same, once each."""
  fp_got, fp_ref = fingerprints(got), fingerprints(ref)
  problems = []
  if [s for s, _ in fp_ref] != list(steps):
    problems.append(f"uninterrupted fingerprint steps are not {steps.start}..{steps.stop - 1}")
  if fp_got != fp_ref:
    seen = [s for s, _ in fp_got]
    dup = sorted({s for s in seen if seen.count(s) > 1})
    missing = sorted(set(steps) - set(seen))
    wrong = sorted(s for s, f in set(fp_got) - set(fp_ref) if s in dict(fp_ref))
    problems.append(
      f"batch fingerprints differ: {len(fp_got)} lines for {len(steps)} steps, "
      f"duplicated steps {dup}, missing steps {missing}, different batches at {wrong}"
    )
  return problems


def compare_logs(got, ref) -> list[str]:
  """Logged training losses and evaluations identical; ``trajax.verify`` content with ``got``."""
  problems = []
  loss = lambda w: {r["step"]: r["train/loss"] for r in records(w) if "train/loss" in r}  # noqa: E731
  if loss(got) != loss(ref):
    problems.append("logged training losses differ")
  evals = lambda w: {  # noqa: E731
    r["step"]: {k: v for k, v in r.items() if k.startswith("eval")}
    for r in records(w)
    if any(k.startswith("eval") for k in r)
  }
  if evals(got) != evals(ref):
    problems.append(f"evaluations differ: {evals(got)} vs {evals(ref)}")
  ok, lines = verify.verify(got)
  if not ok:
    problems.append("trajax.verify: " + " | ".join(x for x in lines if x.startswith("ERROR")))
  return problems


def snapshot(root) -> dict:
  """Path -> (mode, size, mtime, bytes) of everything under ``root``: equal snapshots,
  nothing was created, moved, truncated or touched."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      content = open(path, "rb").read() if name in filenames else None
      out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
  return out
