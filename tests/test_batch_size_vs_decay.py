"""experiments.batch_size_vs_decay: claim criteria against constructed counterexamples, the plan.

No training: each criterion is a pure function of measured numbers, fed one
measurement its wording rules out and one it allows. The experiment itself
runs in the tiny demo (tests/test_demo.py).
"""

from __future__ import annotations

import math

import pytest

from experiments import batch_size_vs_decay as bs
from experiments import claims, cli, demo


def _same(start, large, small, undecayed, n=4):
  """bs.measured on ``n`` branch points whose losses jitter by ±1 mnat around the given ones."""
  rows = []
  for i in range(n):
    j = 0.001 * ((-1) ** i) * (1 + i % 2)
    loss = {
      "start": start + j,
      "large": large + 0.5 * j,
      "small_per_example": small - 0.5 * j,
      "small_per_step": small,
      "undecayed": undecayed + j,
    }
    rows.append(
      {
        "branch_step": 3000 + 300 * i,
        "test_loss": loss,
        "gain_ratio_per_example": None,
        "gain_ratio_undecayed": None,
        "gain_ratio_per_step": None,
        "speed_ratio_per_step": 1.8,
        "speed_ratio_per_example": 1.0,
      }
    )
  return bs.measured({"k": 2, "summary": {"branches": rows}})["bs.same_per_example"]


def _holds(m) -> bool:
  return claims.judge(bs.CLAIMS["bs.same_per_example"], [(0, m)])["per_seed"][0]["holds"]


def test_same_per_example_reads_the_pooled_ratio_and_its_control():
  test = bs.CLAIMS["bs.same_per_example"].test
  # The λ/2 trip gains 0.05 nats; the large batch 0.045 (90 %); the undecayed parent nothing.
  m = _same(0.46, 0.415, 0.41, 0.462)
  assert (
    m["estimate"]["value"] == pytest.approx(0.9, abs=0.02) and m["estimate"]["n_replicates"] == 4
  )
  assert test(m) and m["control"]["holds"] is False and _holds(m)
  # A large-batch trip recovering 13 % of the gain does not serve the same purpose.
  assert not test(_same(0.46, 0.4535, 0.41, 0.462))
  # Nor one overshooting to 160 %.
  assert not test(_same(0.46, 0.38, 0.41, 0.462))
  # Control: if the undecayed parent also "matches", the criterion cannot tell decay apart.
  both = _same(0.46, 0.415, 0.41, 0.42)
  assert test(both) and both["control"]["holds"] and not _holds(both)
  # No gain from decay at all: nothing to match.
  assert not test(_same(0.40, 0.41, 0.41, 0.40))
  # One branch point: a point estimate without an interval cannot hold.
  assert not test(_same(0.46, 0.415, 0.41, 0.462, n=1))


def _speed(per_step, per_example, k=2):
  return {
    "k": k,
    "threshold": math.sqrt(k),
    "branches": [{"branch": 3000, "per_step": per_step, "per_example": per_example}],
  }


def test_faster_per_step_fails_on_counterexamples():
  test = bs.CLAIMS["bs.faster_per_step"].test
  assert bs.per_step_threshold(2) == pytest.approx(math.sqrt(2))
  assert test(_speed(1.8, 1.02))  # between √2 and 2 per step, equal per example
  assert not test(_speed(1.2, 1.0))  # faster, but less than the noise-only √k
  assert not test(_speed(1.8, 1.6))  # control: per example it is faster too -> not per step
  assert test(_speed(2.5, 1.1, k=4)) and not test(_speed(1.9, 1.1, k=4))  # √4 = 2


def test_claims_are_in_the_demo_catalog():
  cat = demo.catalog()
  for cid, c in bs.CLAIMS.items():
    assert cat[cid] is c and c.source == "notes"
    assert c.control and c.criterion and callable(c.test)
  assert bs.SAME_TOLERANCE == claims.MATCH_TOLERANCE  # one reading of "match"


def test_claims_quote_the_notes_verbatim(source_text):
  text = source_text("notes")
  for c in bs.CLAIMS.values():
    assert claims.quote_in_paper(c.quote, text), c.quote


def test_plan_and_branch_steps():
  config = cli.load_config("configs/mnist1d.py")
  exp = bs.experiment_defaults()
  assert bs.branch_steps(config, exp) == [3000, 4000, 4500, 5500]
  exp.horizon = 1200
  assert bs.branch_steps(config, exp) == [3000, 4200, 4500, 5700]
  assert bs.eval_grid(600) == [75, 150, 300, 600]
  for field, value, says in (
    ("k", 1, "exp.k must be an integer >= 2"),
    ("horizon", 1201, "multiple of exp.k = 2"),
    ("branch_fractions", (0.9,), r"S \+ horizon \(1000\)"),
    ("branch_fractions", (), "at least one"),
  ):
    bad = bs.experiment_defaults()
    bad[field] = value
    with pytest.raises(ValueError, match=says):
      bs.branch_steps(config, bad)
