"""`make demo` at smoke size: the report exists, its numbers are finite, its verdicts follow them."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from experiments import demo


def tiny_demo_dir(tmp_path_factory) -> str:
  """One tiny demo per test session, shared with tests/test_experiments_real.py (resumable)."""
  return str(tmp_path_factory.getbasetemp() / "tiny_demo")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  workdir = tiny_demo_dir(tmp_path_factory)
  out = demo.main(["--workdir", workdir, "--tiny"])
  return workdir, out


def _numbers(value):
  return value if isinstance(value, list) else [value]


def test_report_files_and_figures_exist(report):
  workdir, out = report
  md = open(os.path.join(workdir, "report.md")).read()
  for name, rel in out["figures"].items():
    assert not os.path.isabs(rel), rel
    path = os.path.join(workdir, rel)
    assert os.path.getsize(path) > 10_000, path
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"![{name}]({rel})" in md


def test_report_numbers_are_finite_and_in_markdown(report):
  workdir, out = report
  on_disk = json.load(open(os.path.join(workdir, "report.json")))
  assert on_disk["numbers"] == json.loads(json.dumps(out["numbers"]))
  assert len(out["numbers"]) >= 10
  md = open(os.path.join(workdir, "report.md")).read()
  for row in out["numbers"]:
    for v in _numbers(row["value"]):
      assert math.isfinite(float(v)), row
    assert demo._fmt(row["value"]) in md
  # Test losses of a 10-class problem lie between 0 and a few nats.
  losses = [r for r in out["numbers"] if "test loss" in r["name"]]
  assert losses
  for r in losses:
    for v in _numbers(r["value"]):
      assert 0.0 < v < 10.0


def test_verdicts_follow_the_measured_numbers(report):
  _, out = report
  claims = {c["id"]: c for c in out["claims"]}
  m = claims["main_run_average_beats_raw"]["measured"]
  assert claims["main_run_average_beats_raw"]["reproduced"] == (m["eval_avg/loss"] < m["eval/loss"])
  m = claims["one_step_train_vs_heldout"]["measured"]
  expect = m["train_drop"] > 0 and m["train_drop"] >= 5 * max(m["heldout_best_drop"], 0)
  assert claims["one_step_train_vs_heldout"]["reproduced"] == expect
  m = claims["sidetrip_close_to_average_in_weights"]["measured"]
  expect = all(v["avg_to_sidetrip"] < v["avg_to_raw"] for v in m.values())
  assert claims["sidetrip_close_to_average_in_weights"]["reproduced"] == expect
  for c in out["claims"]:
    assert isinstance(c["reproduced"], bool)
    assert c["criterion"] and c["text"]


def test_markdown_counts_and_lists_every_claim(report):
  workdir, out = report
  md = open(os.path.join(workdir, "report.md")).read()
  n_ok = sum(c["reproduced"] for c in out["claims"])
  assert f"**{n_ok} of {len(out['claims'])} claims reproduced**" in md
  assert md.count("**reproduced**") == n_ok
  assert md.count("**not reproduced**") == len(out["claims"]) - n_ok
  # Every table row of the claims table has exactly four cells (escaped pipes).
  rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "verdict" not in ln]
  for ln in rows:
    assert len(re.split(r"(?<!\\)\|", ln)) in (5, 6), ln


def test_render_escapes_pipes_and_reports_non_reproduced():
  report = {
    "label": "x",
    "parent": "p",
    "machine": {"cpus": 2, "platform": "linux"},
    "timings_s": {"total": 1.0, "parent": 0.5},
    "claims": [
      {"id": "a", "claim": "c |g|", "text": "t", "criterion": "|x| < 1", "reproduced": False}
    ],
    "numbers": [{"name": "n", "value": [1.0, 2.5], "unit": "nats"}],
    "figures": {"fig1": "fig1.png"},
  }
  md = demo.render(report)
  assert "**0 of 1 claims reproduced**" in md
  assert r"c \|g\|" in md and r"\|x\| < 1" in md
  assert "| n | 1 / 2.5 | nats |" in md
  assert "![fig1](fig1.png)" in md


def test_bad_measured_number_is_refused():
  main = {
    "eval/loss": float("nan"),
    "eval_avg/loss": 1.0,
    "eval/accuracy": 0.5,
    "eval_avg/accuracy": 0.5,
  }
  with pytest.raises(ValueError, match="main run: final test loss, raw"):
    demo.measured_numbers(main, {"fig1": {"rows": []}, "fig2": {"main": {}}, "fig3": {}})
