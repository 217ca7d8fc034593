"""Batch-size side-trips (kind 'batch_size'): the flat stream, same examples as λ/k, resume, errors.

The stream is checked against an independent reference built from
``dataset.train_batch``; the engine against the parent (k = 1 reproduces it bit
for bit), against a λ/k side-trip (same examples, by batch fingerprints) and,
for a loss linear per batch under plain SGD, against the exact identity
"one step of λ on the mean of k batches = k steps of λ/k".
"""

from __future__ import annotations

import copy
import json
import os
import types

import jax
import numpy as np
import pytest
from flax import serialization

from tests.sidetrip_cases import (
  LinearData,
  LinearLoss,
  assert_identical,
  crash_after,
  edit_metadata,
  snapshot,
  tiny_config,
  train_parent,
)
from trajax import checkpoint as ckpt_lib
from trajax import config_validation, data, loop, sidetrip
from trajax.metrics import read_jsonl


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """The 40-step mnist1d parent (sidetrip_cases.train_parent)."""
  return train_parent(tmp_path_factory)


def _records(workdir, key):
  return {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if key in r}


def _fingerprints(workdir):
  with open(os.path.join(workdir, "batch_fingerprints.jsonl")) as f:
    return {r["step"]: r["fingerprint"] for r in map(json.loads, f)}


def _flat_reference(dataset, start, n_examples, batch):
  """Examples [start·B, start·B + n) of the parent's stream: its batches concatenated."""
  parts, have, t = [], 0, start
  while have < n_examples:
    parts.append(dataset.train_batch(t))
    have += batch
    t += 1
  return {k: np.concatenate([p[k] for p in parts])[:n_examples] for k in parts[0]}


# --------------------------------------------------------------------------- the stream


def test_batches_are_the_flat_stream_from_any_step():
  config = tiny_config()
  dataset = data.get_dataset(config)
  B, S = int(config.batch_size), 7
  # Growth k = 2: batch j is parent batches S + 2j and S + 2j + 1, concatenated.
  grow = sidetrip.flat_stream_batches(dataset, S, ((0, 2 * B),), B)
  it = grow(S)
  for j in range(4):
    got = next(it)
    want = [dataset.train_batch(S + 2 * j + i) for i in range(2)]
    for k in ("image", "label"):
      np.testing.assert_array_equal(got[k], np.concatenate([w[k] for w in want]))
  # A schedule whose phases cut parent batches: batch j = the next b_j examples.
  sizes = ((0, 48), (3, 16), (5, 96))
  bj = [sidetrip.batch_size_at(sizes, j) for j in range(9)]
  assert bj == [48, 48, 48, 16, 16, 96, 96, 96, 96]
  assert [sidetrip.examples_before(sizes, j) for j in (0, 1, 3, 5, 6, 9)] == [
    0,
    48,
    144,
    176,
    272,
    560,
  ]
  ref = _flat_reference(dataset, S, sum(bj), B)
  stream = sidetrip.flat_stream_batches(dataset, S, sizes, B)
  ends = np.cumsum([0] + bj)
  for start in range(9):  # a resume at step S + start sees what the uninterrupted trip saw
    it = stream(S + start)
    for j in range(start, 9):
      got = next(it)
      for k in ("image", "label"):
        np.testing.assert_array_equal(got[k], ref[k][ends[j] : ends[j + 1]], err_msg=f"{start} {j}")
  with pytest.raises(ValueError, match="no batch at step 6"):
    next(stream(6))


def test_batches_split_over_processes_cover_the_parent_batches():
  """Two processes: each reads its own share; the global batch holds the parent's examples."""
  config = tiny_config()
  B, S, k = int(config.batch_size), 5, 3
  shards = [
    data.get_dataset(config, process_index=p, process_count=2, local_device_count=1)
    for p in range(2)
  ]
  whole = data.get_dataset(config)
  streams = [sidetrip.flat_stream_batches(d, S, ((0, k * B),), B, 2)(S + 1) for d in shards]
  for j in range(1, 3):
    parts = [next(s) for s in streams]
    got = np.concatenate([p["image"] for p in parts])  # process-major, as every global batch
    want = np.concatenate([whole.train_batch(S + k * j + i)["image"] for i in range(k)])
    assert got.shape == want.shape
    key = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))  # noqa: E731
    assert key(got) == key(want)
  with pytest.raises(ValueError, match="divisible by the process count 2"):
    sidetrip.flat_stream_batches(whole, S, ((0, 33),), B, 2)


# --------------------------------------------------------------------------- the engine


def test_growth_one_reproduces_the_parent_bit_for_bit(parent, tmp_path):  # noqa: F811
  """k = 1 through the host pipeline equals the parent's own device-gathered batches."""
  config = sidetrip.with_sidetrip(parent.config, kind="batch_size", batch_growth=1.0)
  workdir = str(tmp_path / "trip")
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, workdir)
  want, _ = ckpt_lib.restore_readonly(parent.workdir, step=40)
  assert_identical(serialization.to_state_dict(jax.device_get(result.state)), want)
  recs = _records(workdir, "train/loss")
  assert sorted(recs) == [30, 40]
  for s, r in recs.items():
    assert r["sidetrip/examples_seen"] == (s - 20) * 32
  lineage = ckpt_lib.read_metadata(os.path.join(workdir, "checkpoints"), 40)["lineage"]
  assert lineage["kind"] == "batch_size" and lineage["params"]["batch_sizes"] == [[0, 32]]
  assert snapshot(parent.workdir) == parent.snapshot


def test_double_batch_sees_the_examples_of_the_half_rate_trip(parent, tmp_path):  # noqa: F811
  """λ at 2B for J steps and λ/2 at B for 2J steps consume the same examples, in order."""
  S, J, B = 20, 4, 32
  base = copy.deepcopy(parent.config)
  base.log_batch_fingerprints = True
  big = sidetrip.with_sidetrip(
    base, kind="batch_size", batch_growth=2.0, schedule="constant", steps=J, eval_at=()
  )
  small = sidetrip.with_sidetrip(
    base, kind="schedule", schedule="constant", lr_factor=0.5, steps=2 * J, eval_at=()
  )
  big_dir, small_dir = str(tmp_path / "big"), str(tmp_path / "small")
  big_res = sidetrip.run_sidetrip(big, parent.workdir, S, big_dir)
  sidetrip.run_sidetrip(small, parent.workdir, S, small_dir)
  dataset = data.get_dataset(parent.config)
  flat = _flat_reference(dataset, S, 2 * J * B, B)
  chunk = lambda lo, hi: {k: v[lo:hi] for k, v in flat.items()}  # noqa: E731
  fp_big, fp_small = _fingerprints(big_dir), _fingerprints(small_dir)
  assert sorted(fp_big) == list(range(S, S + J))
  assert sorted(fp_small) == list(range(S, S + 2 * J))
  for j in range(J):
    assert fp_big[S + j] == data.batch_fingerprint(chunk(2 * B * j, 2 * B * (j + 1)))
  for j in range(2 * J):
    assert fp_small[S + j] == data.batch_fingerprint(chunk(B * j, B * (j + 1)))
  seen_big = _records(big_dir, "train/loss")[S + J]["sidetrip/examples_seen"]
  seen_small = _records(small_dir, "train/loss")[S + 2 * J]["sidetrip/examples_seen"]
  assert seen_big == seen_small == 2 * J * B
  # Same rate λ (constant, f = 1) as the parent's at S; the batch doubled.
  lrs = [r["train/lr"] for r in _records(big_dir, "train/lr").values()]
  assert lrs and all(v == pytest.approx(parent.config.optimizer.lr) for v in lrs)
  assert big_res.step == S + J


def test_kill_and_resume_is_bit_identical(parent, tmp_path):  # noqa: F811
  sizes = ((0, 64), (3, 32), (5, 96))
  config = sidetrip.with_sidetrip(
    parent.config, kind="batch_size", batch_sizes=sizes, steps=8, eval_at=(2, 5)
  )
  whole = sidetrip.run_sidetrip(config, parent.workdir, 20, str(tmp_path / "whole"))
  workdir = str(tmp_path / "trip")
  crash_after(config, parent.workdir, 20, workdir, at=27)
  assert ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints")) == [22, 25]
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, workdir)
  assert result.resumed_from == "own:25" and result.step == 28
  assert_identical(
    serialization.to_state_dict(jax.device_get(result.state)),
    serialization.to_state_dict(jax.device_get(whole.state)),
  )
  want = sidetrip.examples_before(sizes, 8)
  assert want == 3 * 64 + 2 * 32 + 3 * 96
  for d in (workdir, str(tmp_path / "whole")):
    assert _records(d, "eval/loss")[28]["sidetrip/examples_seen"] == want
  # Another batch schedule must not resume from these checkpoints.
  changed = sidetrip.with_sidetrip(
    parent.config, kind="batch_size", batch_sizes=((0, 64), (3, 64)), steps=8, eval_at=(2, 5)
  )
  with pytest.raises(config_validation.ConfigError, match="sidetrip.batch_sizes"):
    sidetrip.run_sidetrip(changed, parent.workdir, 20, workdir)


def test_side_trip_written_before_the_batch_fields_resumes(parent, tmp_path):  # noqa: F811
  """A checkpoint whose stored sidetrip section lacks batch_growth/batch_sizes resumes exactly."""
  config = sidetrip.with_sidetrip(parent.config, kind="schedule", steps=8, eval_at=(3,))
  whole = sidetrip.run_sidetrip(config, parent.workdir, 20, str(tmp_path / "whole"))
  workdir = str(tmp_path / "trip")
  crash_after(config, parent.workdir, 20, workdir, at=25)

  def as_old(meta):
    for name in ("batch_growth", "batch_sizes", "gamma"):
      del meta["config"]["sidetrip"][name]

  edit_metadata(workdir, 23, as_old)
  grown = sidetrip.with_sidetrip(
    parent.config, kind="schedule", steps=8, eval_at=(3,), batch_growth=2.0
  )
  with pytest.raises(config_validation.ConfigError, match="sidetrip.batch_growth"):
    sidetrip.run_sidetrip(grown, parent.workdir, 20, workdir)
  shaped = sidetrip.with_sidetrip(parent.config, kind="schedule", steps=8, eval_at=(3,), gamma=2.0)
  with pytest.raises(config_validation.ConfigError, match="sidetrip.gamma"):
    sidetrip.run_sidetrip(shaped, parent.workdir, 20, workdir)
  result = sidetrip.run_sidetrip(config, parent.workdir, 20, workdir)
  assert result.resumed_from == "own:23"
  assert_identical(
    serialization.to_state_dict(jax.device_get(result.state)),
    serialization.to_state_dict(jax.device_get(whole.state)),
  )
  stored = ckpt_lib.read_metadata(os.path.join(workdir, "checkpoints"), 28)["config"]
  assert not {"batch_growth", "gamma"} & set(stored["sidetrip"])


def test_bad_fields_are_named(parent, tmp_path):  # noqa: F811
  def problems(**fields):
    with pytest.raises(config_validation.ConfigError) as e:
      sidetrip.resolve(sidetrip.with_sidetrip(parent.config, **fields), 20)
    return str(e.value)

  assert "exactly one of sidetrip.batch_growth" in problems(kind="batch_size")
  both = problems(kind="batch_size", batch_growth=2.0, batch_sizes=((0, 64),))
  assert "sidetrip.batch_growth = 2.0" in both
  assert "sidetrip.batch_growth = 0.3" in problems(kind="batch_size", batch_growth=0.3)
  assert "whole number" in problems(kind="batch_size", batch_growth=0.3)  # 9.6 examples
  assert "sidetrip.batch_growth = -2.0" in problems(kind="batch_size", batch_growth=-2.0)
  for sizes, says in (
    (((1, 64),), "starts are [1]"),
    (((0, 64), (5, 32), (3, 16)), "starts are [0, 5, 3]"),
    (((0, 0),), "bad entry (0, 0)"),
    (((0, 64, 1),), "bad entry"),
    ((), "non-empty"),
    (((0, 64), (30, 32)), "before the side-trip ends (steps = 20)"),
  ):
    msg = problems(kind="batch_size", batch_sizes=sizes)
    assert "sidetrip.batch_sizes" in msg and says in msg, msg
  assert "only for kind 'batch_size'" in problems(kind="schedule", batch_growth=2.0)
  assert "sidetrip.schedule = 'step'" in problems(
    kind="batch_size", batch_growth=2.0, schedule="step"
  )
  ok = sidetrip.resolve(
    sidetrip.with_sidetrip(parent.config, kind="batch_size", batch_growth=0.5), 20
  )
  assert ok.batch_sizes == ((0, 16),) and ok.steps == 20 and ok.schedule == "config"

  # The parent's B defines the stream: batch_size must be the parent's (a hint names the kind).
  for kind in ("schedule", "batch_size"):
    other = sidetrip.with_sidetrip(
      tiny_config(batch_size=64), kind=kind, batch_growth=2.0 if kind == "batch_size" else None
    )
    with pytest.raises(config_validation.ConfigError, match="batch_size = 64: must equal") as e:
      sidetrip.run_sidetrip(other, parent.workdir, 20, str(tmp_path / "a"))
    assert "kind='batch_size'" in str(e.value)
  # A batch that does not split over the data-parallel devices, named before anything is written.
  spec = sidetrip.resolve(
    sidetrip.with_sidetrip(parent.config, kind="batch_size", batch_growth=1.5), 20
  )
  cfg = sidetrip.with_sidetrip(parent.config, kind="batch_size", batch_growth=1.5)
  with pytest.raises(config_validation.ConfigError) as e:
    sidetrip.spec.check_batch_devices(cfg, spec, 5, "5 data-parallel devices")
  assert "sidetrip.batch_growth = 1.5" in str(e.value) and "multiple of 5" in str(e.value)
  sched = sidetrip.with_sidetrip(
    parent.config, kind="batch_size", batch_sizes=((0, 40), (2, 45)), steps=4
  )
  with pytest.raises(config_validation.ConfigError, match=r"sidetrip.batch_sizes .*\[45\]"):
    sidetrip.spec.check_batch_devices(sched, sidetrip.resolve(sched, 20), 8, "8 devices")
  sidetrip.spec.check_batch_devices(cfg, spec, 8, "8 devices")  # 48 = 6 x 8: fine
  assert not os.path.exists(tmp_path / "a")
  assert snapshot(parent.workdir) == parent.snapshot


# --------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def sgd_linear_parent(tmp_path_factory):
  """Plain SGD (no momentum) on a loss linear per batch: every step is −η·mean_b(∇)."""
  config = tiny_config(
    **{
      "total_steps": 16,
      "checkpoint_every_steps": 4,
      "log_every_steps": 4,
      "eval_every_steps": 16,
      "averaging.gap": 4,
      "batch_size": 16,
      "eval_batch_size": 32,
      "optimizer.lr": 0.1,
      "optimizer.momentum": 0.0,
      "nonfinite.skip": True,
    }
  )
  workdir = tmp_path_factory.mktemp("sgd_linear") / "run"
  loop.train_and_evaluate(config, str(workdir), dataset=LinearData(), model=LinearLoss())
  return types.SimpleNamespace(config=config, workdir=str(workdir))


@pytest.mark.parametrize("k", [2, 3])
def test_k_batch_step_equals_k_steps_at_lr_over_k_for_a_linear_loss(sgd_linear_parent, tmp_path, k):
  """θ − λ·mean_{kB}(g) = θ − (λ/k)·Σ_i mean_{B,i}(g): λ at kB for J steps = λ/k at B for kJ."""
  S, J = 4, 3
  p = sgd_linear_parent
  run = lambda name, **fields: sidetrip.run_sidetrip(  # noqa: E731
    sidetrip.with_sidetrip(p.config, schedule="constant", eval_at=(), **fields),
    p.workdir,
    S,
    str(tmp_path / name),
    dataset=LinearData(),
    model=LinearLoss(),
  )
  big = run("big", kind="batch_size", batch_growth=float(k), steps=J)
  small = run("small", kind="schedule", lr_factor=1.0 / k, steps=k * J)
  per_step = run("per_step", kind="schedule", lr_factor=1.0 / k, steps=J)
  w = lambda r: np.asarray(jax.device_get(r.state.params["w"]), np.float64)  # noqa: E731
  start = np.asarray(ckpt_lib.restore_readonly(p.workdir, step=S)[0]["params"]["w"], np.float64)
  np.testing.assert_allclose(w(big), w(small), rtol=1e-6, atol=1e-6)
  # Independent reference: the mean input over the flat stream, −∇ of the loss 10⁴ − θ·x.
  ds = LinearData()
  xs = np.concatenate([b["image"] for b, _ in zip(ds.train_batches(S), range(k * J), strict=False)])
  want = start + 0.1 * J * xs.reshape(len(xs), -1).mean(0)
  np.testing.assert_allclose(w(big), want, rtol=1e-5, atol=1e-5)
  # Per STEP they differ: after J steps the λ/k trip has moved about 1/k as far.
  moved_big, moved_step = np.linalg.norm(w(big) - start), np.linalg.norm(w(per_step) - start)
  assert moved_step == pytest.approx(moved_big / k, rel=0.2)
  assert np.linalg.norm(w(big) - w(per_step)) > 1e3 * np.linalg.norm(w(big) - w(small))
