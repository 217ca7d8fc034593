"""Real-trajectory experiments at tiny size, checked against independent computations.

The figure modules run once (the tiny demo, shared with tests/test_demo.py and
resumable), then each result is recomputed from the checkpoints by hand:
NumPy cross-entropy for the probes' losses, the closed-form one-step identity
for the averaging/side-trip pair, plain parameter arithmetic for distances.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

from experiments import cli, demo, evaluation, parents
from experiments import fig1_averaging_vs_sidetrips as fig1
from experiments import fig2_single_step as fig2
from experiments import fig3_interpolation as fig3
from trajax import runs

# Every test here reads the whole tiny demo (conftest.tiny_demo): make test-slow.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tiny_demo):
  # The session's tiny demo (conftest.py), shared with tests/test_demo.py.
  root, _ = tiny_demo
  config, exps = demo.build(tiny=True)
  # Seed 0's parent and figures; its config is the demo's with seed 0.
  return demo.seed_dir(root, 0), cli.apply_overrides(config, {"seed": 0}), exps


def _load(workdir, name):
  return json.load(open(os.path.join(workdir, f"{name}.json")))


def _np_loss(restored, params, batch_stats, batch) -> float:
  """Mean cross-entropy from the model's logits, log-softmax in float64 NumPy."""
  logits = restored.model.apply(
    {"params": params, "batch_stats": batch_stats}, batch["image"], train=False
  )
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return float(-np.mean(logp[np.arange(len(batch["label"])), np.asarray(batch["label"])]))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# --------------------------------------------------------------------------- fig 1


def test_fig1_one_step_average_is_the_half_rate_step(tiny):
  """h = 1: (θ_S + θ_{S+1})/2 = θ_S − (λ/2)·m_{S+1}, exactly the λ/2 side-trip's step."""
  workdir, config, exps = tiny
  out = _load(workdir, fig1.NAME)
  ones = [r for r in out["rows"] if r["horizon"] == 1]
  assert len(ones) == len(out["branches"]) * out["replicates"]
  for r in ones:
    assert r["dist_avg_sidetrip"] <= 1e-5 * r["param_norm"]
    assert r["dist_avg_raw"] == pytest.approx(0.5 * r["dist_branch_raw"], rel=1e-4)


def test_fig1_replicates_are_distinct_orders_and_order_0_is_the_parent(tiny):
  workdir, config, exps = tiny
  out = _load(workdir, fig1.NAME)
  # The lock-step replay of the parent's own order equals its checkpoints bit for bit.
  checks = [r["replay_equals_parent"] for r in out["rows"] if "replay_equals_parent" in r]
  assert checks and all(checks)
  grid = {(r["branch"], r["replicate"], r["horizon"]): r for r in out["rows"]}
  s, h = out["branches"][0], max(r["horizon"] for r in out["rows"])
  a, b = grid[(s, 0, h)], grid[(s, 1, h)]
  assert a["stream_offset"] != b["stream_offset"]
  assert a["raw"]["test_loss"] != b["raw"]["test_loss"]
  # The pooled ratio the record reads, recomputed from the rows by hand (accuracy errors).
  err = lambda r, k: 1.0 - r[k]["test_accuracy"]  # noqa: E731
  num = den = 0.0
  for br in out["branches"]:
    rs = [r for r in out["rows"] if r["branch"] == br]
    num += np.mean([err(r, "raw") - err(r, "sidetrip") for r in rs])
    den += np.mean([err(r, "raw") - err(r, "average") for r in rs])
  est = out["measured"]["fig1.sidetrip_matches_average"]["estimate"]
  if den > 0:
    assert est["value"] == pytest.approx(num / den, rel=1e-9)
  else:
    assert est["value"] is None


def test_no_fig1_verdict_hinges_on_float_rounding(tmp_path):
  """θ_S scaled by 1 + 1e-7 (one float32 ulp): every number moves, no verdict does."""
  from experiments import claims

  config, exps = demo.build(tiny=True)
  exp = cli.apply_overrides(exps["fig1"], {"noise_examples": 500})
  parent = parents.ensure_parent(config, str(tmp_path), fig1.branch_steps(config, exp), quiet=True)
  records = {}
  for eps in (0.0, 1e-7):
    res = fig1.run(
      config,
      cli.apply_overrides(exp, {"perturb": eps}),
      str(tmp_path / f"{eps:g}"),
      parent=parent,
    )
    records[eps] = {
      cid: claims.judge(claims.CLAIMS[cid], [(0, m)]) for cid, m in res["measured"].items()
    }
    rows = res["rows"]
    records[eps]["_loss"] = [r["raw"]["test_loss"] for r in rows]
  assert records[0.0]["_loss"] != records[1e-7]["_loss"]  # the perturbation took effect
  assert set(records[0.0]) == set(records[1e-7])
  for cid in records[0.0]:
    if cid == "_loss":
      continue
    a, b = records[0.0][cid], records[1e-7][cid]
    assert [r["holds"] for r in a["per_seed"]] == [r["holds"] for r in b["per_seed"]], cid
    assert a["verdict"] == b["verdict"], cid


def test_fig1_rejects_ema_naming_the_field(tiny):
  _, config, _ = tiny
  exp = fig1.experiment_defaults()
  exp.method = "ema"
  with pytest.raises(ValueError, match="exp.method = 'ema'"):
    fig1.averaging_method(config, exp)


# --------------------------------------------------------------------------- fig 2


def test_fig2_losses_at_zero_step_match_numpy(tiny):
  workdir, config, exps = tiny
  out = _load(workdir, fig2.NAME)
  e = [e for e in out["results"] if e["batch_size"] == out["main_batch_size"]][0]
  r = runs.open_run(os.path.join(workdir, "parent"))
  st = r.state_at(e["step"])
  # The probed batch and the held-out ones: consecutive stretches of the
  # training split (noisy labels), read here without the probe's helper.
  n = e["num_heldout"]
  x, y = [], []
  for b in r.dataset.eval_batches("train"):
    x.append(b["image"][b["mask"] > 0])
    y.append(b["label"][b["mask"] > 0])
  x, y = np.concatenate(x), np.concatenate(y)
  a, c = e["probed_examples"]
  fixed = {"image": x[a:c], "label": y[a:c]}
  assert e["heldout_split"] == "train" and e["heldout_disjoint"]
  assert e["train_loss0"] == pytest.approx(_np_loss(r, st.params, st.batch_stats, fixed), rel=1e-5)
  assert e["curve"]["train"][0] == pytest.approx(e["train_loss0"], rel=1e-6)
  per_batch = [
    _np_loss(r, st.params, st.batch_stats, {"image": x[lo:hi], "label": y[lo:hi]})
    for lo, hi in e["heldout_examples"]
  ]
  assert len(per_batch) == n
  assert e["heldout_loss0"] == pytest.approx(np.mean(per_batch), rel=1e-5)
  assert e["curve"]["heldout_std"][0] == pytest.approx(np.std(per_batch), abs=1e-5)


def test_fig2_one_step_loss_matches_a_hand_made_gd_step(tiny):
  """l_b(η_k) of the probe = loss after θ − η_k ∇L_b(θ) computed separately."""
  workdir, _, _ = tiny
  out = _load(workdir, fig2.NAME)
  e = out["results"][-1]
  r = runs.open_run(os.path.join(workdir, "parent"))
  st = r.state_at(e["step"])
  fixed, _, prov = evaluation.probe_batches(
    r.dataset, e["batch_size"], e["num_heldout"], offset=e["probed_examples"][0]
  )
  assert prov["heldout_examples"] == e["heldout_examples"]
  k = len(out["step_sizes"]) // 2
  eta = out["step_sizes"][k]
  loss_fn = evaluation.make_loss_fn(r.model, st.batch_stats)
  g = jax.grad(loss_fn)(st.params, fixed)
  stepped = jax.tree.map(lambda p, gi: p - eta * gi, st.params, g)
  assert e["curve"]["train"][k] == pytest.approx(
    _np_loss(r, stepped, st.batch_stats, fixed), rel=1e-4
  )
  assert e["train_largest_drop"] == pytest.approx(
    e["train_loss0"] - min(e["curve"]["train"]), abs=1e-6
  )


def test_fig2_noise_scale_is_consistent(tiny):
  workdir, _, _ = tiny
  main = fig2.main_entry(_load(workdir, fig2.NAME))
  ns = main["noise_scale"]
  assert ns["b_simple"] == pytest.approx(ns["trace_cov"] / ns["grad_sq_norm"], rel=1e-5)
  assert ns["eps_opt"] == pytest.approx(
    ns["eps_max_true_gradient"] / (1 + ns["b_simple"] / main["batch_size"]), rel=1e-5
  )


# --------------------------------------------------------------------------- fig 3


def test_fig3_endpoints_and_barrier(tiny):
  workdir, config, exps = tiny
  out = _load(workdir, fig3.NAME)
  t1, t2 = out["points"]
  pr = runs.open_run(os.path.join(workdir, "parent"))
  a = pr.state_at(t1)
  c = pr.state_at(t2)
  fixed, held, prov = evaluation.probe_batches(
    pr.dataset, config.batch_size, 1, offset=exps["fig3"].batch_offset
  )
  assert out["heldout_split"] == "train" and out["probed_examples"] == prov["probed_examples"]
  loss_fn = evaluation.make_loss_fn(pr.model, a.batch_stats, train=True)
  tr = np.asarray(out["train_loss"])
  assert tr[0, 0] == pytest.approx(float(loss_fn(a.params, fixed)), rel=1e-5)
  assert tr[0, -1] == pytest.approx(float(loss_fn(c.params, fixed)), rel=1e-5)
  alphas = np.asarray(out["alphas"])
  line = (1 - alphas) * tr[:, :1] + alphas * tr[:, -1:]
  np.testing.assert_allclose(out["train_barrier"], np.max(tr - line, axis=1), atol=1e-5)
  assert out["distance"][0] == pytest.approx(
    np.linalg.norm(_flat(a.params) - _flat(c.params)), rel=1e-5
  )
  # The held-out batch is the training batch right after the fixed one.
  ho = np.asarray(out["heldout_loss"])
  held0 = {k: v[0] for k, v in held.items()}
  assert ho[0, 0] == pytest.approx(float(loss_fn(a.params, held0)), rel=1e-5)
  # The GD step is ε_max = |g|²/gᵀHg of the fixed batch at t1 (Hessian-vector
  # product by forward-over-reverse differentiation, independent of the probe).
  grad = lambda p: jax.grad(loss_fn)(p, fixed)
  g = grad(a.params)
  _, hg = jax.jvp(grad, (a.params,), (g,))
  eps = float(np.sum(_flat(g) ** 2) / np.sum(_flat(g) * _flat(hg)))
  assert out["gd_lr_source"].startswith("ε_max")
  assert out["gd_lr"] == pytest.approx(eps, rel=1e-3)
  assert set(out["by_step_factor"]) == {"0.5", "1", "2"}
  assert out["by_step_factor"]["1"]["heldout_endpoints"][-1] == pytest.approx(
    (ho[-1, 0] + ho[-1, -1]) / 2, rel=1e-6
  )


# --------------------------------------------------------------------------- common


def test_finished_parent_is_reused_without_training(tiny):
  workdir, config, exps = tiny
  keep = sorted({s for n, m in demo.MODULES for s in m.branch_steps(config, exps[n])})
  pdir = os.path.join(workdir, "parent")
  before = os.path.getmtime(os.path.join(pdir, "metrics.jsonl"))
  assert parents.ensure_parent(config, workdir, keep, quiet=True) == pdir
  assert os.path.getmtime(os.path.join(pdir, "metrics.jsonl")) == before
  with pytest.raises(FileNotFoundError, match="lacks checkpoints"):
    parents.ensure_parent(config, workdir, [keep[0] + 1], quiet=True)


def test_metric_series_and_restore_errors(tiny):
  workdir, config, _ = tiny
  recs = parents.read_metrics(os.path.join(workdir, "parent"))
  steps, vals = parents.metric_series(recs, "eval/loss")
  assert list(steps) == sorted(steps) and steps[-1] == config.total_steps
  assert all(math.isfinite(v) for v in vals)
  with pytest.raises(FileNotFoundError, match="not a committed checkpoint"):
    runs.open_run(os.path.join(workdir, "parent")).state_at(7)


def test_parent_config_cadence_and_errors(tiny):
  _, config, _ = tiny
  p = parents.parent_config(config, [30, 45])
  assert p.checkpoint_every_steps == 15 and p.checkpoint.max_to_keep is None
  assert parents.parent_config(config, []).checkpoint_every_steps == config.checkpoint_every_steps
  with pytest.raises(ValueError, match="keep_steps: step 999"):
    parents.parent_config(config, [999])


def test_write_json_refuses_nan_naming_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"payload\.a\[1\]"):
    cli.write_json(str(tmp_path / "x.json"), {"a": [1.0, float("nan")]})
  path = cli.write_json(str(tmp_path / "y.json"), {"a": np.float32(2.5), "b": np.arange(2)})
  assert json.load(open(path)) == {"a": 2.5, "b": [0, 1]}


def test_scaled_points_and_heldout_errors(tiny):
  assert cli.scaled_points(6000, (0.25, 0.5, 1.0)) == [1500, 3000, 6000]
  assert cli.scaled_points(10, (0.0, 0.01)) == [1]
  with pytest.raises(ValueError, match="fractions must lie in"):
    cli.scaled_points(10, (1.5,))
  workdir, _, _ = tiny
  r = runs.open_run(os.path.join(workdir, "parent"))
  with pytest.raises(ValueError, match="too few for n=1000"):
    evaluation.heldout_batches(r.dataset, 1000, 64)
  with pytest.raises(ValueError, match="offset=-1"):
    evaluation.heldout_batches(r.dataset, 1, 64, offset=-1)
  # Default: the training split (noisy labels), consecutive and disjoint.
  h = evaluation.heldout_batches(r.dataset, 3, 8, offset=5)
  train = next(r.dataset.eval_batches("train"))
  np.testing.assert_array_equal(h["label"].reshape(-1), train["label"][5:29])
  p, held, prov = evaluation.probe_batches(r.dataset, 8, 2, offset=5)
  np.testing.assert_array_equal(p["label"], train["label"][5:13])
  assert prov["probed_examples"] == [5, 13]
  assert prov["heldout_examples"] == [[13, 21], [21, 29]] and prov["heldout_disjoint"]


def test_restore_reads_a_fixed_batch_sidetrip(tiny, tmp_path):
  """runs.open_run on a plain-GD side-trip: params = two hand-made GD steps on the batch."""
  from trajax import sidetrip

  workdir, config, _ = tiny
  parent = os.path.join(workdir, "parent")
  s = 30
  cfg = sidetrip.with_sidetrip(
    parents.parent_config(config, [s]),
    kind="fixed_batch",
    steps=2,
    fixed_batch_index=3,
    eval_at=(2,),
  )
  trip_dir = str(tmp_path / "fixed")
  sidetrip.run_sidetrip(cfg, parent, s, trip_dir)
  trip = runs.open_run(trip_dir)
  got = trip.state_at(s + 2)
  pr = runs.open_run(parent)
  start = pr.state_at(s)
  batch = pr.dataset.fixed_train_batch(3)
  loss_fn = evaluation.make_loss_fn(pr.model, start.batch_stats, train=True)
  params = start.params
  for _ in range(2):
    g = jax.grad(loss_fn)(params, batch)
    params = jax.tree.map(lambda p, gi: p - config.optimizer.lr * gi, params, g)
  np.testing.assert_allclose(_flat(got.params), _flat(params), rtol=1e-5, atol=1e-6)
  assert trip.meta(s + 2)["lineage"]["kind"] == "fixed_batch"
