"""Workdirs written by an earlier trajax still open, verify and resume bit-exactly (issue 19, item 6).

``tests/fixtures/stored_workdirs_2026_12/`` holds a main run and two equivalent
side-trips as ``python -m trajax.main`` and ``python -m trajax.sidetrip`` wrote
them in December 2026 (the commit is in its ``manifest.json``), each
preempted part-way by SIGTERM, and what that day's code reached by resuming
them (``tests/fixtures/make_stored_workdirs_fixture.py``). Today's code,
given the same command lines, must end on the same bits: every leaf of the
final state, the averaged params and profiles, the logged losses,
evaluations and batch fingerprints. The side-trips' lineage names the
parent's directory on the machine that wrote them, so they resume here with
``--parent_moved`` (the parent is recognised by its recorded config).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tests import workdir_checks as wc
from trajax import averaging, runs, verify
from trajax import checkpoint as ckpt_lib

FIXTURE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "fixtures", "stored_workdirs_2026_12"
)
TRIPS = ("trip_ema", "trip_multi")
CACHE_DIR = os.path.join(tempfile.gettempdir(), "trajax-stored-workdirs-jax-cache")
TIMEOUT_S = 300


def _json(name):
  with open(os.path.join(FIXTURE, name)) as f:
    return json.load(f)


MANIFEST = _json("manifest.json")
LOGS = _json("expected_metrics.json")


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURE, "expected.npz")) as z:
    return {k: z[k] for k in z.files}


def copy_fixture(dest) -> str:
  """The stored workdirs copied to ``dest`` (the fixture itself is never written)."""
  for name in ("run", *TRIPS):
    shutil.copytree(os.path.join(FIXTURE, name), os.path.join(dest, name))
  return str(dest)


def command(root, name, *extra) -> list[str]:
  """The stored command line of ``name`` with this machine's paths."""
  fill = lambda a: a.replace("{workdir}", os.path.join(root, name)).replace(  # noqa: E731
    "{parent}", os.path.join(root, "run")
  )
  return [sys.executable, *map(fill, MANIFEST["commands"][name]), *extra]


def resume(root, name, *extra):
  log = os.path.join(root, name + ".log")
  rc = wc.run_logged(
    command(root, name, *extra), log, env=wc.subprocess_env(CACHE_DIR), timeout=TIMEOUT_S
  )
  assert rc == 0, wc.tail(log)
  return wc.tail(log, 10**7)


def differences(expected, prefix, tree) -> list[str]:
  """Leaves of ``tree`` that are not bit for bit the stored ``<prefix><path>`` arrays."""
  want = {k[len(prefix) :]: v for k, v in expected.items() if k.startswith(prefix)}
  got = wc.leaves(tree)
  problems = (
    [f"{prefix}: leaves differ: {sorted(set(want) ^ set(got))}"] if set(want) != set(got) else []
  )
  for key in sorted(set(want) & set(got)):
    a, b = got[key], want[key]
    if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
      problems.append(
        f"{prefix}{key}: {a.dtype}{a.shape} differs from the stored {b.dtype}{b.shape}"
      )
  return problems


def dotted(tree) -> dict:
  """``{'a.b.0.c': bytes}`` of every leaf: dicts, lists and NamedTuples spelled alike."""
  out = {}
  for key, value in wc.leaves(tree).items():
    key = re.sub(
      r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)", lambda m: "." + next(g for g in m.groups() if g), key
    )
    out[key] = (value.dtype.str, value.shape, value.tobytes())
  return out


def end_problems(expected, root, name) -> list[str]:
  """How the resumed ``name`` differs from where the writing day's code ended."""
  workdir = os.path.join(root, name)
  end = MANIFEST["final_step"][name]
  steps = ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints"))
  if not steps or steps[-1] != end:
    return [f"{name}: last committed step {steps[-1:]}, expected {end}"]
  state = runs.open_run(workdir).state_at(end)
  # What the run computed (its trajectory and its averages), not how the
  # optimizer state is laid out: a later layout may restore the old one.
  problems = []
  for part in ("params", "batch_stats"):
    wanted = {k: v for k, v in expected.items() if k.startswith(f"{name}/state['{part}']")}
    problems += differences(wanted, f"{name}/state['{part}']", getattr(state, part))
  problems += differences(
    expected, f"{name}/averaged", averaging.averaged_params(state.opt_state, state.params)
  )
  profiles = averaging.profile_averages(state.opt_state, state.params)
  if len(profiles) != 2:
    problems.append(f"{name}: {len(profiles)} profiles, expected 2")
  for i, prof in enumerate(profiles):
    problems += differences(expected, f"{name}/profile{i}", prof)
  records = wc.records(workdir)
  log = LOGS[name]
  loss = {str(r["step"]): r["train/loss"] for r in records if "train/loss" in r}
  if loss != log["train_loss"]:
    problems.append(f"{name}: logged training losses differ from the stored ones")
  evals = {
    str(r["step"]): {k: v for k, v in r.items() if k.startswith("eval")}
    for r in records
    if any(k.startswith("eval") for k in r)
  }
  if evals != log["evals"]:
    problems.append(f"{name}: evaluations {evals} differ from the stored {log['evals']}")
  if [list(x) for x in wc.fingerprints(workdir)] != log["fingerprints"]:
    problems.append(f"{name}: batch fingerprints differ from the stored ones (other batches)")
  return problems


def test_the_fixture_holds_preempted_workdirs():
  """What the resume tests below rely on: each stored workdir stopped before its end."""
  for name in ("run", *TRIPS):
    steps = ckpt_lib.committed_steps(os.path.join(FIXTURE, name, "checkpoints"))
    assert steps == MANIFEST["preempted_steps"][name], (name, steps)
    assert steps[-1] < MANIFEST["final_step"][name], (name, steps)
  assert not [f for f in os.listdir(os.path.join(FIXTURE, "run")) if f.startswith("events.")]


def test_main_run_resumes_to_its_end_bit_exactly(expected, tmp_path):
  root = copy_fixture(tmp_path)
  out = resume(root, "run")
  assert f"starting at step {MANIFEST['preempted_steps']['run'][-1]}" in out, out[-3000:]
  problems = end_problems(expected, root, "run")
  assert not problems, problems


@pytest.mark.parametrize("name", [TRIPS[0], pytest.param(TRIPS[1], marks=pytest.mark.slow)])
def test_sidetrip_resumes_bit_exactly_from_its_moved_parent(expected, tmp_path, name):
  root = copy_fixture(tmp_path)
  out = resume(root, name, "--parent_moved")
  assert f"starting at step {MANIFEST['preempted_steps'][name][-1]} (own:" in out, out[-3000:]
  problems = end_problems(expected, root, name)
  assert not problems, problems


@pytest.mark.slow
def test_sidetrip_names_its_stored_parent_when_the_parent_moved(tmp_path):
  # The lineage names where the parent was written: the same command without
  # --parent_moved is refused in one line that says what to do.
  root = copy_fixture(tmp_path)
  refused = subprocess.run(
    command(root, TRIPS[0]),
    cwd=wc.REPO,
    env=wc.subprocess_env(CACHE_DIR),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert refused.returncode == 1 and "--parent_moved" in refused.stderr, refused.stderr[-3000:]
  assert "Traceback" not in refused.stderr
  assert MANIFEST["written_at"] in refused.stderr, refused.stderr[-3000:]


def test_stored_workdirs_open_and_verify(tmp_path):
  root = copy_fixture(tmp_path)
  for name in ("run", *TRIPS):
    workdir = os.path.join(root, name)
    run = runs.open_run(workdir)
    assert run.steps == MANIFEST["preempted_steps"][name]
    lineage = run.lineage
    if name == "run":
      assert lineage == {}
    else:
      step = int(
        next(a for a in MANIFEST["commands"][name] if a.startswith("--step=")).split("=")[1]
      )
      assert lineage["parent_step"] == step and lineage["kind"] == "equivalent", lineage
    for step in run.steps:
      # Restored against the layout today's code builds from the stored
      # config: the same arrays as the layout-free read.
      raw, _ = ckpt_lib.restore_readonly(workdir, step=step)
      state = run.state_at(step)
      assert int(state.step) == step
      assert dotted(raw) == dotted(state._asdict()), (name, step)
    if name != "run":
      ok, lines = verify.verify(workdir)
      assert ok, lines
      continue
    done = subprocess.run(
      [sys.executable, "-m", "trajax.verify", workdir],
      cwd=wc.REPO,
      env=wc.subprocess_env(CACHE_DIR),
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
    )
    assert done.returncode == 0 and done.stdout.rstrip().endswith("OK"), done.stdout + done.stderr
