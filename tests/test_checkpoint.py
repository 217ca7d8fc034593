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

from tests.checkpoint_checks import assert_identical, damage_checkpoint
from tests.small_training import FakeDataset, small_config
from trajax import averaging, config_validation, loop, train
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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: 30 steps in one go."""
  workdir = tmp_path_factory.mktemp("ref") / "run"
  result = loop.train_and_evaluate(_config(), str(workdir), dataset=FakeDataset())
  return workdir, _host(result.state)


def test_stop_and_resume_is_bit_identical(uninterrupted, tmp_path):
  _, ref = uninterrupted
  workdir = str(tmp_path / "run")
  first = loop.train_and_evaluate(_config(total_steps=10), workdir, dataset=FakeDataset())
  assert first.step == 10
  # Same workdir, the full horizon (total_steps may change for a constant schedule).
  second = loop.train_and_evaluate(_config(), workdir, dataset=FakeDataset())
  assert second.step == 30
  got = _host(second.state)
  assert_identical(got, ref)  # params, batch_stats, optimizer + averaging state, step, rng
  assert_identical(
    averaging.averaged_params(got.opt_state, got.params),
    averaging.averaged_params(ref.opt_state, ref.params),
  )
  assert_identical(got.bn_average, ref.bn_average)
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
      assert getattr(handler, "__self__", None).__class__.__name__ == "StopFlag"
      os.kill(os.getpid(), signal.SIGTERM)

  result = loop.train_and_evaluate(_config(), workdir, dataset=FakeDataset(), callbacks=[preempt])
  assert result.preempted and result.step == 13
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")) == [10, 13]
  assert signal.getsignal(signal.SIGTERM) is not getattr(result, "_handler", None)
  resumed = loop.train_and_evaluate(_config(), workdir, resume="require", dataset=FakeDataset())
  assert resumed.step == 30 and not resumed.preempted
  assert_identical(_host(resumed.state), ref)


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
      assert "previous" in state["opt_state"]  # the averaging state travels with it
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
  assert_identical(_host(state), ref)
  assert snapshot() == before
  with pytest.raises(FileNotFoundError, match="step 7"):
    ckpt_lib.restore_readonly(str(workdir), step=7)
  with pytest.raises(FileNotFoundError, match="no checkpoints directory"):
    ckpt_lib.restore_readonly(str(workdir / "typo"))


def test_restore_readonly_drops_only_the_expected_orbax_metadata_warning(uninterrupted, caplog):
  import logging

  workdir, _ = uninterrupted
  with caplog.at_level(logging.WARNING, logger="absl"):
    ckpt_lib.restore_readonly(str(workdir), step=20)
  assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
  # The filter is scoped to that read: the same warning about another path still shows.
  with caplog.at_level(logging.WARNING, logger="absl"):
    logging.getLogger("absl").warning("Metadata file does not exist: %s", "/elsewhere/x")
  assert any("/elsewhere/x" in r.getMessage() for r in caplog.records)
  assert not logging.getLogger("absl").filters


def test_half_written_checkpoint_is_never_the_restore_point(tmp_path):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(_config(total_steps=10), str(workdir), dataset=FakeDataset())
  ckdir = workdir / "checkpoints"
  # A crash mid-save leaves a temporary directory, or a step directory that
  # was never finalised (no commit marker).
  (ckdir / "20.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
  (ckdir / "30" / "state").mkdir(parents=True)
  assert ckpt_lib.committed_steps(str(ckdir)) == [10]
  result = loop.train_and_evaluate(_config(), str(workdir), dataset=FakeDataset())
  assert result.step == 30
  assert ckpt_lib.committed_steps(str(ckdir)) == [10, 20, 30]  # neither blocked a save
  assert not (ckdir / "20.orbax-checkpoint-tmp-1234").exists()  # cleaned up by the writer
  moved = os.listdir(workdir / "quarantined_checkpoints")  # moved aside, not deleted
  assert len(moved) == 1 and moved[0].startswith("30-")


def test_resume_with_changed_config_is_refused_unless_allowed(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  listing = sorted(os.listdir(workdir / "checkpoints"))
  with pytest.raises(config_validation.ConfigError) as e:
    loop.train_and_evaluate(_config(**{"optimizer.lr": 0.1}), str(workdir), dataset=FakeDataset())
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
    loop.train_and_evaluate(_config(), str(tmp_path / "missing" / "run"), dataset=FakeDataset())
  with pytest.raises(train.ResumeError, match="no committed checkpoint"):
    loop.train_and_evaluate(
      _config(), str(tmp_path / "new"), resume="require", dataset=FakeDataset()
    )
  assert not (tmp_path / "new").exists() and not (tmp_path / "missing").exists()
  with pytest.raises(config_validation.ConfigError, match="optimizer.lr"):
    loop.train_and_evaluate(
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


# --------------------------------------------------------------------------- integrity (issue 11)


def test_crc32_leaf_digest_catches_every_single_flipped_byte():
  """The guarantee the digest is chosen for: any one damaged byte changes it."""
  arr = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
  ref = ckpt_lib.leaf_digest(arr)
  raw = arr.tobytes()
  for i in range(len(raw)):
    for flip in (0x01, 0x80, 0xFF):
      damaged = bytearray(raw)
      damaged[i] ^= flip
      got = ckpt_lib.leaf_digest(np.frombuffer(bytes(damaged), np.float32).reshape(7, 5))
      assert got != ref, (i, flip)
  assert ckpt_lib.leaf_digest(arr.copy()) == ref
  assert ckpt_lib.leaf_digest(np.float32(-0.0)) != ckpt_lib.leaf_digest(np.float32(0.0))
  assert ckpt_lib.leaf_digest(np.int32(3)).startswith("int32[]:")


def test_check_state_flags_values_whose_square_overflows():
  limit = float(np.sqrt(np.float64(np.finfo(np.float32).max)))  # independent of the library
  assert ckpt_lib.magnitude_limit(np.float32) == pytest.approx(limit, rel=1e-12)
  below = np.nextafter(np.float32(limit), np.float32(0))
  assert np.isfinite(np.float32(below) ** 2)
  ok = {"params": {"w": np.array([1.0, -below], np.float32)}, "step": np.int32(3)}
  meta = {"digests": ckpt_lib.tree_digests(ok)}
  assert ckpt_lib.check_state(ok, meta) == []
  huge = {"params": {"w": np.array([1.0, -3e38], np.float32)}, "step": np.int32(3)}
  (problem,) = ckpt_lib.check_state(huge, {"digests": ckpt_lib.tree_digests(huge)})
  assert "params/w" in problem and "overflows" in problem
  problems = ckpt_lib.check_state(huge, meta)  # against the digests of `ok`
  assert any("digest mismatch" in p and "params/w" in p for p in problems)
  nan = {"params": {"w": np.array([np.nan, 1.0], np.float32)}, "step": np.int32(3)}
  assert any("non-finite" in p for p in ckpt_lib.check_state(nan, None))


@pytest.mark.parametrize(
  "how",
  [
    "flipped_byte",
    "huge_value",
    pytest.param("truncated_file", marks=pytest.mark.slow),
    pytest.param("nan", marks=pytest.mark.slow),
  ],
)
def test_damaged_latest_checkpoint_is_quarantined_and_resume_falls_back(
  uninterrupted, tmp_path, how, caplog
):
  import shutil

  from trajax import verify

  src, ref = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(src, workdir)
  damage_checkpoint(workdir / "checkpoints" / "30", how)
  ok, lines = verify.verify(str(workdir))
  assert not ok and any(x.startswith("ERROR step 30") for x in lines), lines
  with caplog.at_level("WARNING"):
    result = loop.train_and_evaluate(_config(), str(workdir), dataset=FakeDataset())
  assert result.step == 30
  assert_identical(_host(result.state), ref)  # resumed from 20, bit-identical
  (line,) = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert "step 30" in line
  expected = {
    "flipped_byte": "digest mismatch",
    "truncated_file": "cannot be read",
    "huge_value": "overflows",
    "nan": "non-finite",
  }[how]
  assert expected in line, line
  (moved,) = os.listdir(workdir / "quarantined_checkpoints")  # moved, not deleted
  assert moved.startswith("30-")
  reason = (workdir / "quarantined_checkpoints" / moved / "quarantine_reason.txt").read_text()
  assert expected in reason
  assert ckpt_lib.committed_steps(str(workdir / "checkpoints")) == [10, 20, 30]
  assert verify.verify(str(workdir))[0]


def test_no_good_checkpoint_error_says_so_and_what_to_do(uninterrupted, tmp_path):
  import shutil

  src, _ = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(src, workdir)
  for step, how in ((10, "truncated_file"), (20, "huge_value"), (30, "truncated_file")):
    damage_checkpoint(workdir / "checkpoints" / str(step), how)
  with pytest.raises(ckpt_lib.CheckpointCorruptError) as e:
    loop.train_and_evaluate(_config(), str(workdir), dataset=FakeDataset())
  msg = str(e.value)
  assert "no good checkpoint" in msg and "[10, 20, 30]" in msg and "Nothing was deleted" in msg
  assert "trajax.verify" in msg and "start this run afresh" in msg
  assert sorted(n.split("-")[0] for n in os.listdir(workdir / "quarantined_checkpoints")) == [
    "10",
    "20",
    "30",
  ]
  assert ckpt_lib.committed_steps(str(workdir / "checkpoints")) == []


def test_fresh_start_archives_an_earlier_runs_metrics_instead_of_truncating(tmp_path, caplog):
  import shutil

  workdir = tmp_path / "run"
  loop.train_and_evaluate(_config(total_steps=10), str(workdir), dataset=FakeDataset())
  old = (workdir / "metrics.jsonl").read_text()
  assert old.count("\n") >= 2
  shutil.rmtree(workdir / "checkpoints")  # checkpoints gone: the rerun starts from step 0
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(_config(total_steps=10), str(workdir), dataset=FakeDataset())
  (archive,) = [n for n in os.listdir(workdir) if n.startswith("metrics.jsonl.")]
  assert archive.endswith(".bak")
  assert (workdir / archive).read_text() == old  # every old line kept, beside
  assert any("archived" in r.getMessage() and archive in r.getMessage() for r in caplog.records)
  new = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert sum("hparams" in r for r in new) == 1  # only the new run's lines


def test_rewind_jsonl_keeps_steps_up_to_the_resume_point(tmp_path):
  from trajax import metrics

  path = tmp_path / "m.jsonl"
  lines = [json.dumps({"step": s}) + "\n" for s in range(5)] + ['{"step": 5, "x": 1']
  path.write_text("".join(lines))
  assert metrics.rewind_jsonl(str(path), 2) is None
  assert path.read_text() == "".join(lines[:3])
  assert metrics.rewind_jsonl(str(path), 0) is None  # a resume at step 0 keeps step 0
  assert path.read_text() == lines[0]
  archive = metrics.rewind_jsonl(str(path), -1)
  assert not path.exists() and open(archive).read() == lines[0]


def test_verify_reports_steps_pruned_while_reading_not_failed(uninterrupted, tmp_path, monkeypatch):
  """A live run's keep policy deletes a step after the listing: before or after its read."""
  import shutil

  from trajax import verify

  src, _ = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(src, workdir)
  real = ckpt_lib.restore_step_dir

  def pruning(step_dir, step, **kw):
    if step == 10:  # pruned before its read
      shutil.rmtree(step_dir)
    out = real(step_dir, step, **kw)
    if step == 20:  # pruned right after its read
      shutil.rmtree(step_dir)
    return out

  monkeypatch.setattr(ckpt_lib, "restore_step_dir", pruning)
  ok, lines = verify.verify(str(workdir))
  assert ok, lines
  pruned = [x.split()[0] for x in lines if "pruned while reading" in x]
  assert pruned == ["10", "20"]
  assert not any("FAILED" in x or x.startswith("ERROR") for x in lines)
  assert [x.split()[0] for x in lines if x.split()[0].isdigit() and "crc32" in x] == ["30"]


# --------------------------------------------------------------------------- one writer (issue 11)


def test_second_writer_on_a_workdir_is_refused_naming_the_holder(tmp_path):
  import socket

  from trajax import workdir_lock

  first = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError) as e:
      ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"))
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "started" in msg
    record = json.loads((tmp_path / "run" / ".trajax.lock").read_text())
    assert record["pid"] == os.getpid()
  finally:
    first.close()
  assert (tmp_path / "run" / ".trajax.lock").read_text() == ""  # released cleanly
  ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints")).close()
  (tmp_path / "a_file").write_text("")
  with pytest.raises(workdir_lock.WorkdirLockError, match="cannot lock workdir .*a_file"):
    workdir_lock.acquire(str(tmp_path / "a_file"))


def test_force_takeover_overrides_only_a_holder_that_is_not_alive_here(tmp_path, caplog):
  from trajax import workdir_lock

  workdir = tmp_path / "run"
  os.makedirs(workdir)
  held = workdir_lock.acquire_local(str(workdir), False)  # the "other host"
  try:
    fd = held._fd  # noqa: SLF001
    fake = {"host": "node-that-died", "pid": 4242, "started": "2026-01-01T00:00:00", "argv": "x"}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(fake).encode(), 0)
    with pytest.raises(workdir_lock.WorkdirBusyError, match="node-that-died.*--force_takeover"):
      workdir_lock.acquire(str(workdir))
    workdir_lock.request_takeover(str(workdir))
    with caplog.at_level("WARNING"):
      lock = workdir_lock.acquire(str(workdir))
    assert lock.held
    (line,) = [r.getMessage() for r in caplog.records if "--force_takeover" in r.getMessage()]
    assert "node-that-died" in line and "corrupt each other" in line
    (aside,) = [n for n in os.listdir(workdir) if ".taken-over-" in n]
    assert "node-that-died" in (workdir / aside).read_text()
    lock.release()
    # A holder alive on this host is never taken over.
    mine = workdir_lock.acquire(str(workdir))
    try:
      with pytest.raises(workdir_lock.WorkdirBusyError, match="alive on this host"):
        workdir_lock.acquire(str(workdir), force_takeover=True)
    finally:
      mine.release()
  finally:
    held.release()


def test_a_target_that_does_not_fit_is_an_error_never_a_quarantine(uninterrupted, tmp_path):
  """A code or config change (wrong shapes) must not move good checkpoints aside."""
  import shutil

  src, ref = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(src, workdir)
  target = jax.tree.map(np.asarray, ref)
  kernel = target.params["head"]["kernel"]
  target.params["head"]["kernel"] = np.zeros((kernel.shape[0] + 1, kernel.shape[1]), kernel.dtype)
  writer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"))
  try:
    with pytest.raises(ValueError, match="not compatible with the stored shape"):
      writer.restore_latest_good(target)  # Orbax's own error, unchanged
  finally:
    writer.close()
  assert ckpt_lib.committed_steps(str(workdir / "checkpoints")) == [10, 20, 30]
  assert not (workdir / "quarantined_checkpoints").exists()


_WRAPPER_KEYS = {"inner_state", "count", "previous", "snapshots", "ring_position", "weights"}


def _to_old_averaging_layout(tree, params):
  """A state dict with each wrapper node in the layout before issue 10 (complete average).

  Built by hand: ``{"inner_state", "average": {"count", "average": a_t, "snapshots"}}`` with
  a_t = u·(previous + w_t·(θ_t − previous)), the average the old wrapper stored (EMA).
  """
  if isinstance(tree, dict) and set(tree) == _WRAPPER_KEYS:
    w, u = np.asarray(tree["weights"])

    def complete_leaf(p, x):
      p = np.asarray(p)
      return u * (p + w.astype(p.dtype) * (np.asarray(x, p.dtype) - p))

    complete = jax.tree.map(complete_leaf, tree["previous"], params)
    return {
      "inner_state": tree["inner_state"],
      "average": {"count": tree["count"], "average": complete, "snapshots": {}},
    }
  if isinstance(tree, dict):
    return {k: _to_old_averaging_layout(v, params) for k, v in tree.items()}
  return tree


def test_checkpoint_of_the_old_averaging_layout_resumes(uninterrupted, tmp_path):
  """A checkpoint holding ``AveragingState(inner_state, average)`` (the complete average,
  before the wrapper kept the newest point apart) restores through ``loop.fit``: params and
  optimizer continue bit for bit, the average continues from the stored a_t."""
  import shutil

  import orbax.checkpoint as ocp

  src, ref = uninterrupted
  tree, meta = ckpt_lib.restore_readonly(str(src), step=10)
  old = _to_old_averaging_layout(jax.tree.map(np.asarray, tree), tree["params"])
  assert old["opt_state"] != tree["opt_state"] and "average" in str(old["opt_state"].keys())
  step_dir = tmp_path / "run" / "checkpoints" / "10"
  shutil.copytree(src / "checkpoints" / "10", step_dir)
  shutil.rmtree(step_dir / "state")
  with ocp.StandardCheckpointer() as writer:
    writer.save(str(step_dir / "state"), old)
  meta_path = step_dir / "meta" / "metadata"
  stored = json.loads(meta_path.read_text())
  del stored["digests"], stored[ckpt_lib.META_DIGEST_KEY]  # written before digests existed
  meta_path.write_text(json.dumps(stored))

  # The stored complete average reads back unchanged (weight 0 on the newest point).
  restored, _ = ckpt_lib.restore_readonly(str(tmp_path / "run"), step=10, target=_host(ref))
  np.testing.assert_array_equal(
    np.asarray(averaging.averaged_params(restored.opt_state, restored.params)["head"]["kernel"]),
    old["opt_state"]["average"]["average"]["head"]["kernel"],
  )

  result = loop.train_and_evaluate(
    _config(), str(tmp_path / "run"), resume="require", dataset=FakeDataset()
  )
  assert result.step == 30 and result.origin == "own:10"
  got = _host(result.state)
  assert_identical(got.params, ref.params)
  [(_, mine)] = averaging.find_states(got.opt_state)
  [(_, theirs)] = averaging.find_states(ref.opt_state)
  assert_identical(mine.inner_state, theirs.inner_state)
  assert int(mine.count) == int(theirs.count) == 30
  assert_identical(got.bn_average, ref.bn_average)
  for x, y in zip(
    jax.tree.leaves(averaging.averaged_params(got.opt_state, got.params)),
    jax.tree.leaves(averaging.averaged_params(ref.opt_state, ref.params)),
    strict=True,
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
