"""`make demo` at smoke size: the report exists, its numbers are finite, its verdicts follow them.

Every test that reads the whole tiny demo is ``slow`` (make test-slow); the
rendering and flag tests run on hand-made reports.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from experiments import batch_size_vs_decay, claims, curvature, demo


@pytest.fixture(scope="module")
def report(tiny_demo):
  """The session's tiny demo (conftest.py), shared with tests/test_experiments_real.py."""
  return tiny_demo


def _numbers(value):
  return value if isinstance(value, list) else [value]


@pytest.mark.slow
def test_report_json_follows_the_schema(report):
  """The report.json contract: seeds, parents (seed -> workdir), claim records."""
  workdir, out = report
  on_disk = json.load(open(os.path.join(workdir, "report.json")))
  assert on_disk["seeds"] == list(demo.TINY_SEEDS)
  assert set(on_disk["parents"]) == {str(s) for s in on_disk["seeds"]}
  for seed, parent in on_disk["parents"].items():
    assert parent == os.path.join(demo.seed_dir(workdir, int(seed)), "parent")
    assert os.path.isdir(os.path.join(parent, "checkpoints"))
    cos = on_disk["cosine_parents"][seed]
    assert cos == os.path.join(demo.seed_dir(workdir, int(seed)), "cosine", "parent")
    # Every parent and figure ran under its own seed.
    assert json.load(
      open(os.path.join(demo.seed_dir(workdir, int(seed)), "fig2_single_step.json"))
    )["config"]["seed"] == int(seed)
  ids = [c["id"] for c in on_disk["claims"]]
  assert len(ids) == len(set(ids))
  # Settings: the default noisy-label setting and the clean-label control, each labelled.
  assert set(on_disk["settings"]) >= {"noisy_labels", "clean_labels"}
  for v in on_disk["settings"].values():
    assert v["label"] and v["description"]
  assert "(label noise 0)" in on_disk["settings"]["clean_labels"]["label"]
  for c in on_disk["claims"]:
    assert set(c) >= {"id", "figure", "quote", "criterion", "per_seed", "verdict", "kind"}
    assert c["kind"] in claims.KINDS and c["setting"] in on_disk["settings"]
    assert isinstance(c["metric"], str)
    assert c["verdict"] in claims.VERDICTS
    if c["verdict"] == "not testable here":
      assert c["per_seed"] == [] and c["reason"]
      continue
    assert [r["seed"] for r in c["per_seed"]] == on_disk["seeds"]
    for r in c["per_seed"]:
      test = demo.catalog()[c["id"]].test(r["measured"])
      if c["kind"] == "judged":
        assert set(r) == {"seed", "measured", "holds", "estimate", "control"}, c["id"]
        assert (
          set(r["estimate"]) == {"value", "ci", "n_replicates"} and len(r["estimate"]["ci"]) == 2
        )
        assert set(r["control"]) == {"value", "holds"} and isinstance(r["control"]["holds"], bool)
        # The verdict follows the numbers: the criterion on what was written, the control failing.
        assert r["holds"] == (test and not r["control"]["holds"]), c["id"]
      else:
        assert set(r) == {"seed", "measured", "holds"}
        assert r["holds"] == test, c["id"]
    assert c["verdict"] == claims.verdict([r["holds"] for r in c["per_seed"]])
  # The tally counts judged records once each; derived ones are not counted.
  assert on_disk["tally"] == claims.tally(on_disk["claims"])
  assert list(on_disk["tally"]) == list(claims.TALLY_KEYS)
  judged = [c for c in on_disk["claims"] if c["kind"] == "judged"]
  assert sum(on_disk["tally"][k] for k in claims.VERDICTS) == len(judged)
  kinds = {c["id"]: c["kind"] for c in on_disk["claims"]}
  assert kinds["fig14.constant_row"] == "derived" and kinds["fig12.typical_along_trajectory"] == (
    "derived"
  )
  byid = {c["id"]: c for c in on_disk["claims"]}
  assert byid["fig1.sidetrip_matches_average"]["metric"] == "test_accuracy"
  assert byid["fig1.sidetrip_matches_average_clean_labels"]["setting"] == "clean_labels"
  assert byid["fig1.sidetrip_matches_average"]["per_seed"][0]["estimate"]["n_replicates"] >= 3
  # The demo judges the figures it runs, at every seed.
  for cid in (
    "fig1.sidetrip_matches_average",
    "fig1.sidetrip_matches_average_loss",
    "fig1.sidetrip_matches_average_train_loss",
    "fig1.sidetrip_matches_average_clean_labels",
    "fig1.sidetrip_matches_average_loss_clean_labels",
    "fig5.two_point_average_improves_clean_labels",
    "noise.lower_rate_fits_flipped_labels",
    "fig1.table1_rate_is_specific",
    "fig5.two_point_average_improves",
    "fig5.two_point_average_improves_loss",
    "fig2.heldout_improves_only_for_small_steps",
    "fig2.low_degree_polynomial",
    "fig12.typical_along_trajectory",
    "fig13.orders_of_magnitude",
    "fig13.gap_closes_with_batch_size",
    "fig3.heldout_rises",
    "fig3.same_basin",
    "fig5.swa_sidetrip_matches",
    "fig5.ema_sidetrip_matches",
    "fig6.much_closer_than_batch_orders",
    "fig6.train_loss_matches",
    "fig7.norm_changes_little",
    "fig7.fixed_batch_direction_stable",
    "fig7.parallel_closer_than_start",
    "fig8.distance_decreases_and_saturates",
    "fig14.constant_row",
    "fig14.cosine_row",
    *curvature.CLAIMS,
    *batch_size_vs_decay.CLAIMS,
  ):
    assert cid in ids, cid


@pytest.mark.slow
def test_heldout_batches_are_disjoint_training_batches(report):
  workdir, out = report
  for c in out["claims"]:
    for r in c["per_seed"]:
      for p in r["measured"].get("positions", []) + [r["measured"]]:
        if "heldout_split" in p:
          assert p["heldout_split"] == "train", c["id"]
          assert p["heldout_disjoint"] is True, c["id"]
  for seed in out["seeds"]:
    f2 = json.load(open(os.path.join(demo.seed_dir(workdir, seed), "fig2_single_step.json")))
    for e in f2["results"]:
      a, b = e["probed_examples"]
      assert b - a == e["batch_size"]
      for lo, hi in e["heldout_examples"]:
        assert hi - lo == e["batch_size"] and (hi <= a or lo >= b)


@pytest.mark.slow
def test_report_files_and_figures_exist(report):
  workdir, out = report
  md = open(os.path.join(workdir, "report.md")).read()
  for seed, figs in out["figures"].items():
    for name, rel in figs.items():
      assert not os.path.isabs(rel), rel
      path = os.path.join(workdir, rel)
      assert os.path.getsize(path) > 10_000, path
      with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
      assert f"![{name} seed {seed}]({rel})" in md


@pytest.mark.slow
def test_report_numbers_are_finite_and_in_markdown(report):
  workdir, out = report
  on_disk = json.load(open(os.path.join(workdir, "report.json")))
  assert on_disk["numbers"] == json.loads(json.dumps(out["numbers"]))
  assert len(out["numbers"]) >= 10
  md = open(os.path.join(workdir, "report.md")).read()
  for row in out["numbers"]:
    for v in _numbers(row["value"]):
      assert math.isfinite(float(v)), row
    assert demo.fmt_number(row["value"]) in md
  losses = [r for r in out["numbers"] if "test loss" in r["name"]]
  assert losses
  for r in losses:
    for v in _numbers(r["value"]):
      assert 0.0 < v < 10.0


@pytest.mark.slow
def test_markdown_counts_and_lists_every_claim(report):
  workdir, out = report
  md = open(os.path.join(workdir, "report.md")).read()
  assert f"**Over {len(out['seeds'])} seeds, {demo.headline(out['claims'])}.**" in md
  for c in out["claims"]:
    assert f"| {c['id']} |" in md
  ids = tuple(f"| {c['id']} |" for c in out["claims"])
  for title, kind in (
    ("## Judged claims", "judged"),
    ("## Descriptive", "descriptive"),
    ("## Derived", "derived"),
  ):
    section = md.split(title, 1)[1].split("\n## ", 1)[0]
    claim_rows = [ln for ln in section.splitlines() if ln.startswith(ids)]
    assert len(claim_rows) == sum(c["kind"] == kind for c in out["claims"]), kind
    for ln in claim_rows:
      assert len(re.split(r"(?<!\\)\|", ln)) == 9, ln
  assert "## Settings side by side" in md
  assert "BatchNorm" in md and out["bn_policy"] in md
  # The row that evaluated the average with another vector's statistics is gone.
  policies = {r["policy"] for r in out["bn_sensitivity"]}
  assert policies == {"recomputed (policy)", "averaged statistics"}


def test_render_escapes_pipes():
  rec = {
    "id": "fig1.x",
    "figure": "Fig. 1",
    "quote": "q |g|",
    "criterion": "|x| < 1",
    "control": "",
    "kind": "judged",
    "metric": "test_accuracy",
    "setting": "noisy_labels",
    "per_seed": [
      {
        "seed": 0,
        "measured": {},
        "holds": False,
        "estimate": {"value": 0.4, "ci": [0.1, 0.7], "n_replicates": 9},
        "control": {"value": 0.02, "holds": False},
      }
    ],
    "verdict": "not reproduced",
  }
  report = {
    "label": "x",
    "seeds": [0],
    "parents": {"0": "p"},
    "machine": {"cpus": 2, "platform": "linux"},
    "timings_s": {"total": 1.0},
    "bn_policy": "recomputed",
    "bn_sensitivity": [],
    "claims": [rec],
    "numbers": [{"name": "n", "seed": 0, "value": [1.0, 2.5], "unit": "nats"}],
    "figures": {"0": {"fig1": "fig1.png"}},
  }
  md = demo.render(report)
  assert "1 claims: 0 reproduced, 0 mixed, 1 not reproduced, 0 not testable, 0 descriptive" in md
  assert "estimate 0.4 [0.1, 0.7] (n=9); control 0.02 fails" in md
  assert r"q \|g\|" in md and r"\|x\| < 1" in md
  assert "| n | 0 | 1 / 2.5 | nats |" in md
  assert "![fig1 seed 0](fig1.png)" in md


def test_seeds_flag_is_parsed_and_checked(tmp_path):
  assert demo.parse_seeds("0,1, 2") == (0, 1, 2)
  with pytest.raises(SystemExit):
    demo.main(["--workdir", str(tmp_path), "--seeds", "a,b"])
  config, exps = demo.build(tiny=True)
  with pytest.raises(ValueError, match="distinct non-negative"):
    demo.run(config, exps, str(tmp_path), seeds=[0, 0])
