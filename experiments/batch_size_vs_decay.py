r"""Growing the batch vs decaying the learning rate (issue 13; Smith et al. 2018).

From branch points S of the parent (``exp.branch_fractions`` of T) two
side-trips leave the same state θ_S (optimizer state included) on the
parent's data stream, read as one flat stream of examples
(:mod:`trajax.sidetrip.stream`):

* small: λ/k at batch B for h steps -- kind 'schedule', ``schedule='constant'``,
  ``lr_factor=1/k`` (h = ``exp.horizon``, default ``averaging.gap``); with
  k = 2 this is Table 1's equivalent of the two-point average (θ_S + θ_{S+h})/2;
* large: λ at batch k·B for J = h/k steps -- kind 'batch_size',
  ``batch_growth=k``, ``schedule='constant'``;

both consume the same h·B examples in the same order, so "per example seen"
compares the two update rules on identical data. The parent's own θ_{S+h}
(λ at B, the same examples, no decay) is the undecayed control.

The quadratic model (:func:`trajax.theory.batch_vs_lr`, noise covariance ∝ 1/B)
predicts: per example the two agree (same stationary level to O(λκ), same
contraction rate along slow directions, λκ/(kB) per example); per step the
large batch is faster -- k× along slow directions for the mean (drift), √k×
for the noise-driven spread (variance per step λ²/(kB) vs λ²/(k²B)), so its
distance from θ_S after J steps is between √k and k times the small trip's.

Measured at every branch point, with BatchNorm statistics recomputed for every
weight vector over the same fixed training batches (one policy, as Figs. 1, 6,
14): test loss and accuracy of θ_S, of the large trip at J, of the small trip
at J (per step) and at h (per example), of θ_{S+h} and of the two-point
average; weight distances between them; and the trips' own evaluations
(running statistics) along the way, against steps and examples seen.

Claims (:data:`CLAIMS`; criteria fixed here, before any run):

* ``bs.same_per_example``: at equal examples seen, the large trip recovers
  between 50 % and 150 % of the small trip's test-loss gain over θ_S,
  r = (L_S − L_large(J))/(L_S − L_small(h)), |r − 1| <= :data:`SAME_TOLERANCE`
  (the reading of "match" of :data:`experiments.claims.MATCH_TOLERANCE`);
  control: the undecayed parent θ_{S+h} on the same examples must *not*
  (|r_ctrl − 1| > 0.5), else the criterion cannot tell decay from no decay.
* ``bs.faster_per_step``: per step, the large trip moves faster: after J steps
  its distance from θ_S is at least √k (:data:`per_step_threshold`) times the
  small trip's after J steps (the quadratic model's ratio along directions not
  yet at their stationary level: √k for the noise, k for the drift; directions
  at their level move alike, so √k is not a bound for the whole trajectory);
  control: the
  same ratio per example (small trip after h = kJ steps) must stay below √k,
  else the speed-up is not a per-step effect.

Usage (reuse a finished parent with ``--exp.parent``, e.g. ``make demo``'s
``seed_0/parent``; else the parent is trained in ``WORKDIR/parent``)::

  python -m experiments.batch_size_vs_decay --config=configs/mnist1d.py --workdir=workdirs/bs

Writes ``WORKDIR/batch_size_vs_decay.{json,png}``; side-trips live in
``WORKDIR/batch_size_trips/S<S>/{small,large}``.
"""

from __future__ import annotations

import copy
import math
import os
import time

import numpy as np

from experiments import cli, evaluation, parents, plotting
from experiments import estimators as est

NAME = "batch_size_vs_decay"

# "serve the same purpose": the same reading as a side-trip that "matches" an
# average (experiments.claims.MATCH_TOLERANCE): 50 % … 150 % of the other's gain.
SAME_TOLERANCE = 0.5


def per_step_threshold(k: float) -> float:
  """√k: the quadratic model's least per-step speed-up of λ at kB over λ/k at B (noise alone)."""
  return math.sqrt(float(k))


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  e.branch_fractions = (0.5, 0.75)  # S_i = round(f * total_steps)
  e.horizon = mlc.FieldReference(None, field_type=int)  # h; default averaging.gap
  e.k = 2  # batch growth = learning-rate decay factor (k = 2: Table 1's two-point link)
  e.train_eval_batches = 2  # fixed training batches for the training loss
  e.parent = ""  # reuse an existing parent WORKDIR
  return e


def _plan(config, exp) -> tuple[list[int], int, int, int]:
  """``(branch steps, h, k, J)``, validated (errors name the --exp field)."""
  k = exp.k
  if isinstance(k, bool) or not isinstance(k, int) or k < 2:
    raise ValueError(f"exp.k must be an integer >= 2 (batch k·B vs lr λ/k), got {k!r}")
  h = int(exp.horizon if exp.horizon is not None else config.averaging.gap)
  if h < k or h % k:
    raise ValueError(
      f"exp.horizon (default averaging.gap) must be a positive multiple of exp.k = {k}, got {h}"
    )
  fractions = tuple(exp.branch_fractions)
  if not fractions:
    raise ValueError("exp.branch_fractions must name at least one fraction of total_steps")
  T = int(config.total_steps)
  starts = []
  for f in fractions:
    if not 0 < float(f) < 1:
      raise ValueError(f"exp.branch_fractions entries must lie in (0, 1), got {f!r}")
    s = int(round(float(f) * T))
    if not 0 < s or s + h > T:
      raise ValueError(
        f"exp.branch_fractions entry {f} gives S={s}: need 0 < S and S + horizon ({h}) <= "
        f"total_steps={T}"
      )
    starts.append(s)
  return sorted(set(starts)), h, k, h // k


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints: every S and S + h (the undecayed control and the two-point average)."""
  starts, h, _, _ = _plan(config, exp)
  return sorted({*starts, *(s + h for s in starts)})


def eval_grid(n: int) -> list[int]:
  """n/8, n/4, n/2, n (the side-trip steps evaluated along the way), >= 1."""
  return sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n})


def _trip(parent: str, pconfig, S: int, tdir: str, **fields) -> str:
  """Runs (or reuses, when finished) one side-trip in ``tdir``."""
  from trajax import sidetrip

  steps = int(fields["steps"])
  if parents.final_step(tdir) != S + steps:
    os.makedirs(os.path.dirname(tdir), exist_ok=True)
    cfg = copy.deepcopy(pconfig)
    with cfg.unlocked():
      cfg.checkpoint.async_save = False
      # Saved at the eval points (and the end) only: the parent's cadence is the
      # gcd of every branch point, far too frequent for a side-trip.
      cfg.checkpoint_every_steps = steps
    res = sidetrip.run_sidetrip(sidetrip.with_sidetrip(cfg, **fields), parent, S, tdir)
    cli.log(f"{NAME}: {fields['kind']} side-trip {S} -> {res.step} ({res.timings})")
  return tdir


def _curve(tdir: str, S: int, start_params) -> dict:
  """The trip along the way: its own evaluations (running BatchNorm statistics) and ‖θ − θ_S‖."""
  from trajax import runs

  trip = runs.open_run(tdir)
  rows = sorted(
    (r for r in parents.read_metrics(tdir) if "eval/loss" in r and "sidetrip/step" in r),
    key=lambda r: r["sidetrip/step"],
  )
  steps = [int(r["sidetrip/step"]) for r in rows]
  return {
    "step": steps,
    "examples_seen": [int(r["sidetrip/examples_seen"]) for r in rows],
    "test_loss": [float(r["eval/loss"]) for r in rows],
    "test_accuracy": [float(r["eval/accuracy"]) for r in rows],
    "distance_from_start": [
      0.0 if j == 0 else evaluation.l2(trip.state_at(S + j).params, start_params) for j in steps
    ],
  }


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Both side-trips at every branch point; writes JSON + PNG; returns the summary."""
  from trajax import config_validation, runs

  config_validation.validate(config)
  starts, h, k, J = _plan(config, exp)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  keep = branch_steps(config, exp)
  if parent is None:
    parent = parents.parent_dir(config, exp, workdir, keep)
  pconfig = parents.parent_config(config, keep)
  B = int(config.batch_size)
  t0 = time.perf_counter()
  parent_run = runs.open_run(parent)
  branches = []
  for S in starts:
    at_s = parent_run.state_at(S)
    ctrl = parent_run.state_at(S + h)
    base = os.path.join(workdir, "batch_size_trips", f"S{S}")
    small_dir = _trip(
      parent,
      pconfig,
      S,
      os.path.join(base, "small"),
      kind="schedule",
      schedule="constant",
      lr_factor=1.0 / k,
      steps=h,
      eval_at=(0, *sorted(set(eval_grid(h)) | set(eval_grid(J)))),
    )
    large_dir = _trip(
      parent,
      pconfig,
      S,
      os.path.join(base, "large"),
      kind="batch_size",
      batch_growth=float(k),
      schedule="constant",
      steps=J,
      eval_at=(0, *eval_grid(J)),
    )
    large = runs.open_run(large_dir).state_at(S + J)
    small_run = runs.open_run(small_dir)
    small_h = small_run.state_at(S + h)
    small_j = small_run.state_at(S + J)
    avg = evaluation.midpoint(at_s.params, ctrl.params)
    tr = evaluation.train_eval_batches(parent_run, int(exp.train_eval_batches))
    stats = at_s.batch_stats
    weights = {
      "start": at_s.params,
      "large": large.params,
      "small_per_example": small_h.params,
      "small_per_step": small_j.params,
      "undecayed": ctrl.params,
      "two_point_average": avg,
    }
    ev = {
      n: evaluation.evaluate_point(parent_run, p, stats, tr, recompute_bn=True)
      for n, p in weights.items()
    }
    th_s = at_s.params
    dist = {
      "large_vs_small_per_example": evaluation.l2(large.params, small_h.params),
      "large_vs_small_per_step": evaluation.l2(large.params, small_j.params),
      "large_vs_average": evaluation.l2(large.params, avg),
      "small_vs_average": evaluation.l2(small_h.params, avg),
      "undecayed_vs_average": evaluation.l2(ctrl.params, avg),
      "large_from_start": evaluation.l2(large.params, th_s),
      "small_per_step_from_start": evaluation.l2(small_j.params, th_s),
      "small_per_example_from_start": evaluation.l2(small_h.params, th_s),
      "undecayed_from_start": evaluation.l2(ctrl.params, th_s),
    }
    b = {
      "branch_step": S,
      "examples": h * B,
      "evals": ev,
      "distances": dist,
      "curves": {
        "large": _curve(large_dir, S, at_s.params),
        "small": _curve(small_dir, S, at_s.params),
      },
    }
    cli.log(
      f"{NAME} S={S}: test loss start {ev['start']['test_loss']:.4f}, λ@{k}B×{J} "
      f"{ev['large']['test_loss']:.4f}, λ/{k}@B×{h} {ev['small_per_example']['test_loss']:.4f} "
      f"(×{J}: {ev['small_per_step']['test_loss']:.4f}), undecayed "
      f"{ev['undecayed']['test_loss']:.4f}, two-point {ev['two_point_average']['test_loss']:.4f}; "
      f"distance from θ_S large {dist['large_from_start']:.3f}, small per step "
      f"{dist['small_per_step_from_start']:.3f}, per example {dist['small_per_example_from_start']:.3f}"
    )
    branches.append(b)

  res = {
    "k": k,
    "horizon": h,
    "large_steps": J,
    "batch_size": B,
    "large_batch_size": k * B,
    "lr_at_branch": "the config's schedule at S (constant side-trips)",
    "bn_policy": "BatchNorm statistics recomputed for every weight vector over "
    "averaging.bn_recompute_batches fixed training batches",
    "data": {
      "test": "split 'test'",
      "train": f"dataset.fixed_train_batch(1000 + i), i < {int(exp.train_eval_batches)}",
      "stream": "both trips read the parent's stream from example S·B on: the same "
      f"{h * B} examples in the same order",
    },
    "parent": parent,
    "seed": int(config.seed),
    "total_steps": int(config.total_steps),
    "branches": branches,
    "seconds": time.perf_counter() - t0,
  }
  res["summary"] = summary(res)
  cli.write_json(os.path.join(workdir, f"{NAME}.json"), {"config": config.to_dict(), **res})
  png = os.path.join(workdir, f"{NAME}.png")
  _plot(res, png, plotting.run_label(config, f"k={k}, h={h}"))
  return {
    **res["summary"],
    "files": [f"{NAME}.json", f"{NAME}.png"],
    "measured": measured(res),
    "png": png,
  }


def _gain_ratio(start: float, this: float, reference: float) -> float | None:
  """(L_S − L_this)/(L_S − L_reference); None when the reference gains nothing."""
  gain = float(start) - float(reference)
  return (float(start) - float(this)) / gain if gain > 0 else None


def summary(res: dict) -> dict:
  """Per-branch numbers the report states: what matched and what did not."""
  rows = []
  for b in res["branches"]:
    ev, d = b["evals"], b["distances"]
    L = {n: ev[n]["test_loss"] for n in ev}
    rows.append(
      {
        "branch_step": b["branch_step"],
        "test_loss": L,
        "test_accuracy": {n: ev[n]["test_accuracy"] for n in ev},
        "gain_ratio_per_example": _gain_ratio(L["start"], L["large"], L["small_per_example"]),
        "gain_ratio_per_step": _gain_ratio(L["start"], L["large"], L["small_per_step"]),
        "gain_ratio_undecayed": _gain_ratio(L["start"], L["undecayed"], L["small_per_example"]),
        "speed_ratio_per_step": d["large_from_start"] / d["small_per_step_from_start"],
        "speed_ratio_per_example": d["large_from_start"] / d["small_per_example_from_start"],
        "distances": d,
      }
    )
  return {"k": res["k"], "horizon": res["horizon"], "branches": rows}


def measured(res: dict) -> dict:
  """``{claim id: measured}`` for :data:`CLAIMS` from one seed's result."""
  rows = res["summary"]["branches"] if "summary" in res else summary(res)["branches"]
  k = res["k"]
  same = [
    {
      "branch": r["branch_step"],
      "start": r["test_loss"]["start"],
      "large": r["test_loss"]["large"],
      "small": r["test_loss"]["small_per_example"],
      "undecayed": r["test_loss"]["undecayed"],
      "ratio": r["gain_ratio_per_example"],
      "control_ratio": r["gain_ratio_undecayed"],
      "ratio_per_step": r["gain_ratio_per_step"],
    }
    for r in rows
  ]
  speed = [
    {
      "branch": r["branch_step"],
      "per_step": r["speed_ratio_per_step"],
      "per_example": r["speed_ratio_per_example"],
    }
    for r in rows
  ]
  worst = lambda xs: max(xs, key=lambda x: -1 if x is None else abs(x - 1.0))  # noqa: E731
  # Pooled over the branch points (the replicates): r = Σ(L_S − L_large)/Σ(L_S − L_small),
  # with a bootstrap interval over branch points; control: θ_{S+h} in place of the large trip.
  col = lambda key: np.array([b[key] for b in same])  # noqa: E731
  r = est.ratio(col("start"), col("small"), col("large"))
  g = est.gain(col("start"), col("small"))
  rc = est.ratio(col("start"), col("small"), col("undecayed"))
  return {
    "bs.same_per_example": {
      "k": k,
      "branches": same,
      "worst_ratio": worst([b["ratio"] for b in same]),
      "metric": "test_loss",
      "estimate": r.as_dict(),
      "gain": g.as_dict(),
      "pooled_ratio": r.value,
      "control": {
        "value": rc.value,
        "holds": est.match_holds(rc, g, SAME_TOLERANCE),
        "what": "the undecayed parent θ_{S+h} in place of the large-batch trip",
      },
    },
    "bs.faster_per_step": {
      "k": k,
      "threshold": per_step_threshold(k),
      "branches": speed,
      "min_per_step": min(b["per_step"] for b in speed),
    },
  }


# ----------------------------------------------------------------------------
# claims


def _within(ratio) -> bool:
  return ratio is not None and abs(float(ratio) - 1.0) <= SAME_TOLERANCE


def _same_per_example(m: dict) -> bool:
  # The pooled ratio (experiments.estimators); the control is judged by claims.judge.
  return est.match_holds(m["estimate"], m["gain"], SAME_TOLERANCE)


def _faster_per_step(m: dict) -> bool:
  t = per_step_threshold(m["k"])
  bs = m["branches"]
  return bool(bs) and all(b["per_step"] >= t and b["per_example"] < t for b in bs)


def _claims():
  from experiments import claims

  return {
    c.id: c
    for c in (
      claims.Claim(
        "bs.same_per_example",
        "companion notes (Smith and Le; Smith et al. 2018)",
        "So essentially a small batch size and a high learning rate serve the same purpose",
        "from θ_S, λ at batch k·B for J steps and λ/k at batch B for k·J steps (the same "
        "examples, in order) lower the test loss alike: the large batch recovers between "
        f"{1 - SAME_TOLERANCE:.0%} and {1 + SAME_TOLERANCE:.0%} of the λ/k trip's gain, "
        "r = Σ_S(L_S − L_large)/Σ_S(L_S − L_small) pooled over the branch points with "
        "|r − 1| <= 0.5, r's bootstrap interval (over branch points) excluding 0 and the λ/k "
        "trip's gain lying above 0",
        _same_per_example,
        control="the undecayed parent θ_{S+h} (λ at B on the same examples) must fall outside "
        "that band at every branch point (tests/test_batch_size_vs_decay.py: a large trip "
        "recovering 13 % fails)",
        effect="pooled_ratio",
        source="notes",
        kind="judged",
        metric="test_loss",
        rationale="a single-point ratio over a noisy L_S per branch was replaced by the pooled "
        "ratio with an interval over branch points",
      ),
      claims.Claim(
        "bs.faster_per_step",
        "companion notes (Smith et al. 2018)",
        "In another paper [Smith et al.][] suggest to increase the batch size instead of "
        "annealing learning rate",
        "per step the large batch moves faster: after J steps the λ-at-k·B trip is at least √k "
        "times as far from θ_S as the λ/k-at-B trip after J steps, at every branch point (the "
        "quadratic model: √k per step for the noise-driven spread and k for the drift, along "
        "directions not yet at their stationary level; directions already there move alike, so "
        "a trajectory dominated by them fails)",
        _faster_per_step,
        control="per example (the λ/k trip after k·J steps) the same ratio must stay below √k: "
        "the speed-up is per step, not per example",
        effect="min_per_step",
        source="notes",
        metric="weight_distance",
      ),
    )
  }


CLAIMS = _claims()


# ----------------------------------------------------------------------------
# the figure


def _plot(res: dict, path: str, label: str) -> None:
  """Rows: per example seen, per step. Columns: test loss, test accuracy, ‖θ − θ_S‖."""
  fig, ax = plotting.new_figure(2, 3, width=4.8)
  k, B, h = res["k"], res["batch_size"], res["horizon"]
  colors = ["C0", "C1", "C2", "C3"]
  panels = (
    ("test_loss", "test loss (nats)", "undecayed", "two_point_average"),
    ("test_accuracy", "test accuracy (fraction)", "undecayed", "two_point_average"),
    ("distance_from_start", "‖θ − θ_S‖ (L2, all params)", None, None),
  )
  for i, b in enumerate(res["branches"]):
    S, c = b["branch_step"], colors[i % len(colors)]
    d = b["distances"]
    for row, x_key in ((0, "examples_seen"), (1, "step")):
      x_end = b["examples"] if x_key == "examples_seen" else h
      for col, (key, ylabel, ctrl, avg) in enumerate(panels):
        a = ax[row][col]
        for trip, style, lab in (
          ("large", "-o", f"λ at {k}B, {h // k} steps (S={S})"),
          ("small", "--s", f"λ/{k} at B, {h} steps (S={S})"),
        ):
          cv = b["curves"][trip]
          a.plot(cv[x_key], cv[key], style, color=c, ms=3, lw=1, label=lab)
        if ctrl:
          a.plot(
            [x_end],
            [b["evals"][ctrl][key]],
            "k^",
            ms=6,
            label="undecayed parent θ_{S+h} (BN recomputed)" if i == 0 else None,
          )
          a.plot(
            [x_end],
            [b["evals"][avg][key]],
            "bx",
            ms=7,
            mew=2,
            label="(θ_S + θ_{S+h})/2 (BN recomputed)" if i == 0 else None,
          )
        else:
          a.plot(
            [x_end],
            [d["undecayed_from_start"]],
            "k^",
            ms=6,
            label="undecayed parent θ_{S+h}" if i == 0 else None,
          )
        a.set_xlabel(
          f"training examples seen since S (B = {B})" if row == 0 else "side-trip steps j"
        )
        a.set_ylabel(ylabel)
        per = "per example seen" if row == 0 else "per step"
        a.set_title(f"{ylabel.split(' (')[0]}, {per}" + (" (running BN)" if ctrl else ""))
        a.legend(fontsize=6)
  plotting.save_figure(fig, path, label)


def main(argv=None):
  return cli.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
