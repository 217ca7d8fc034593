"""trajax.checkpoint + resume: bit-exact continuation, SIGTERM, plain Orbax, read-only, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from test_train import FakeDataset, small_config

from trajax import averaging, config_validation, train
from trajax import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  base = {
    "total_steps": 30,
    "checkpoint_every_steps": 10,
    "log_every_steps": 10,
    "eval_every_steps": 30,
    "averaging.method": "ema",
    "averaging.decay": 0.05,
    "averaging.batch_norm": "average",
    "checkpoint.max_to_keep": 10,
  }
  base.update(overrides)
  return small_config(**base)


def _host(state):
  return jax.device_get(state)


def _assert_identical(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: 30 steps in one go."""
  workdir = tmp_path_factory.mktemp("ref") / "run"
  result = train.train_and_evaluate(_config(), str(workdir), dataset=FakeDataset())
  return workdir, _host(result.state)


def test_stop_and_resume_is_bit_identical(uninterrupted, tmp_path):
  _, ref = uninterrupted
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(_config(total_steps=10), workdir, dataset=FakeDataset())
  assert first.step == 10
  # Same workdir, the full horizon (total_steps may change for a constant schedule).
  second = train.train_and_evaluate(_config(), workdir, dataset=FakeDataset())
  assert second.step == 30
  got = _host(second.state)
  _assert_identical(got, ref)  # params, batch_stats, optimizer + averaging state, step, rng
  _assert_identical(
    averaging.averaged_params(got.opt_state, got.params),
    averaging.averaged_params(ref.opt_state, ref.params),
  )
  _assert_identical(got.bn_average, ref.bn_average)
  records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [r["step"] for r in records if "train/loss" in r]
  assert logged == [10, 20, 30]  # the resumed run continued the log, no duplicates


def test_sigterm_saves_current_step_exits_cleanly_and_resumes_exactly(uninterrupted, tmp_path):
  _, ref = uninterrupted
  workdir = str(tmp_path / "run")

  def preempt(step):
    if step == 13:
      handler = signal.getsignal(signal.SIGTERM)
      # Only send it if the engine's handler is installed (else it would kill pytest).
      assert getattr(handler, "__self__", None).__class__.__name__ == "_StopFlag"
      os.kill(os.getpid(), signal.SIGTERM)

  result = train.train_and_evaluate(_config(), workdir, dataset=FakeDataset(), callbacks=[preempt])
  assert result.preempted and result.step == 13
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")) == [10, 13]
  assert signal.getsignal(signal.SIGTERM) is not getattr(result, "_handler", None)
  resumed = train.train_and_evaluate(_config(), workdir, resume="require", dataset=FakeDataset())
  assert resumed.step == 30 and not resumed.preempted
  _assert_identical(_host(resumed.state), ref)


def test_checkpoint_restores_with_plain_orbax_without_trajax(uninterrupted, tmp_path):
  workdir, ref = uninterrupted
  np.save(tmp_path / "kernel.npy", np.asarray(ref.params["head"]["kernel"]))
  script = textwrap.dedent(f"""
      import sys, json, numpy as np
      import orbax.checkpoint as ocp
      mngr = ocp.CheckpointManager({str(workdir / "checkpoints")!r},
                                   options=ocp.CheckpointManagerOptions(read_only=True))
      step = mngr.latest_step()
      out = mngr.restore(step)
      state = out.state
      np.testing.assert_array_equal(np.asarray(state["params"]["head"]["kernel"]),
                                    np.load({str(tmp_path / "kernel.npy")!r}))
      assert int(state["step"]) == 30, state["step"]
      assert "partial" in state["opt_state"]  # the averaging state travels with it
      assert out.meta["config"]["total_steps"] == 30
      assert not any(m == "trajax" or m.startswith("trajax.") for m in sys.modules)
      print("OK", step)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", script],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK 30" in proc.stdout


def test_restore_readonly_writes_nothing_and_honours_target(uninterrupted):
  workdir, ref = uninterrupted
  ckdir = workdir / "checkpoints"

  def snapshot():
    return sorted((str(p.relative_to(ckdir)), p.stat().st_mtime_ns) for p in ckdir.rglob("*"))

  before = snapshot()
  tree, meta = ckpt_lib.restore_readonly(str(workdir), step=20)
  assert int(tree["step"]) == 20 and meta["step"] == 20
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ref)
  state, _ = ckpt_lib.restore_readonly(str(workdir), target=target)
  assert isinstance(state, train.TrainState)
  _assert_identical(_host(state), ref)
  assert snapshot() == before
  with pytest.raises(FileNotFoundError, match="step 7"):
    ckpt_lib.restore_readonly(str(workdir), step=7)
  with pytest.raises(FileNotFoundError, match="no checkpoints directory"):
    ckpt_lib.restore_readonly(str(workdir / "typo"))


def test_half_written_checkpoint_is_never_the_restore_point(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_config(total_steps=10), str(workdir), dataset=FakeDataset())
  ckdir = workdir / "checkpoints"
  # A crash mid-save leaves a temporary directory, or a step directory that
  # was never finalised (no commit marker).
  (ckdir / "20.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
  (ckdir / "30" / "state").mkdir(parents=True)
  assert ckpt_lib.committed_steps(str(ckdir)) == [10]
  result = train.train_and_evaluate(_config(), str(workdir), dataset=FakeDataset())
  assert result.step == 30
  assert ckpt_lib.committed_steps(str(ckdir)) == [10, 20, 30]  # neither blocked a save
  assert not (ckdir / "20.orbax-checkpoint-tmp-1234").exists()  # cleaned up by the writer
  moved = os.listdir(workdir / "quarantined_checkpoints")  # moved aside, not deleted
  assert len(moved) == 1 and moved[0].startswith("30-")


def test_resume_with_changed_config_is_refused_unless_allowed(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  listing = sorted(os.listdir(workdir / "checkpoints"))
  with pytest.raises(config_validation.ConfigError) as e:
    train.train_and_evaluate(_config(**{"optimizer.lr": 0.1}), str(workdir), dataset=FakeDataset())
  assert "optimizer.lr = 0.1" in str(e.value) and "0.05" in str(e.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == listing
  cosine = _config(**{"optimizer.schedule": "cosine"})
  stored = ckpt_lib.read_metadata(str(workdir / "checkpoints"), 30)["config"]
  with pytest.raises(config_validation.ConfigError, match="total_steps"):
    config_validation.check_resume(
      {**stored, "optimizer": {**stored["optimizer"], "schedule": "cosine"}},
      dict(cosine.to_dict(), total_steps=60),
    )
  allowed = config_validation.check_resume(stored, _config(log_every_steps=5, total_steps=60))
  assert {f for f, _, _ in allowed} == {"log_every_steps", "total_steps"}


def test_workdir_errors_never_start_fresh(tmp_path):
  with pytest.raises(train.ResumeError, match="parent directory"):
    train.train_and_evaluate(_config(), str(tmp_path / "missing" / "run"), dataset=FakeDataset())
  with pytest.raises(train.ResumeError, match="no committed checkpoint"):
    train.train_and_evaluate(
      _config(), str(tmp_path / "new"), resume="require", dataset=FakeDataset()
    )
  assert not (tmp_path / "new").exists() and not (tmp_path / "missing").exists()
  with pytest.raises(config_validation.ConfigError, match="optimizer.lr"):
    train.train_and_evaluate(
      _config(**{"optimizer.lr": -1.0}), str(tmp_path / "bad"), dataset=FakeDataset()
    )
  assert not (tmp_path / "bad").exists()  # validation precedes every write


def test_verify_lists_checkpoints_and_flags_inconsistencies(uninterrupted, tmp_path):
  from trajax import verify

  workdir, _ = uninterrupted
  ok, lines = verify.verify(str(workdir))
  assert ok, lines
  steps = [int(x.split()[0]) for x in lines if x.strip() and x.split()[0].isdigit()]
  assert steps == [10, 20, 30]
  assert all("True" in x and "jax=" in x for x in lines if x.split()[0].isdigit())
  assert verify.main([str(workdir)]) == 0

  # A tampered config (hash mismatch) is an inconsistency.
  import shutil

  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  meta_path = copy / "checkpoints" / "20" / "meta" / "metadata"
  meta = json.loads(meta_path.read_text())
  meta["config"]["optimizer"]["lr"] = 0.5
  meta_path.write_text(json.dumps(meta))
  ok, lines = verify.verify(str(copy))
  assert not ok
  assert any("step 20" in x and "config hash" in x for x in lines)
  assert any("step 20" in x and "optimizer.lr" in x for x in lines)  # beyond the allow-list
  assert verify.main([str(copy)]) == 1

  # A checkpoint holding a NaN (written behind the engine's back) is flagged by name.
  bad = tmp_path / "bad" / "checkpoints"
  writer = ckpt_lib.Checkpointer(str(bad), async_save=False)
  state = {"step": np.int32(5), "params": {"w": np.array([1.0, np.nan], np.float32)}}
  writer.save(5, state, ckpt_lib.make_metadata(_config(), step=5))
  writer.close()
  ok, lines = verify.verify(str(tmp_path / "bad"))
  assert not ok and any("non-finite" in x and "params/w" in x for x in lines)
  assert verify.main([str(tmp_path / "missing")]) == 1
