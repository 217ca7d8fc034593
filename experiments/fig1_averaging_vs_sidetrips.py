r"""Averaging vs. its equivalent learning-rate side-trip on a real trajectory (paper Figs. 1, 5, 10).

Paper Sec. 5: averaging the weights of a trajectory is (to first order) the
same as continuing from the branch point with a lower, method-specific
learning-rate schedule (Table 1, Lemma 2; :mod:`trajax.schedules`). For the
two-point average of θ_S and θ_{S+h} the equivalent side-trip runs h steps
from θ_S at λ/2 on the same batches; for the n-point average of θ_{S+m·g}
(m < n, g = h/(n−1)) the rate is the staircase λ·(n − 1 − ⌊j/g⌋)/n.

For every branch point S and horizon h (1, 10, 100, 1000 steps, or the ones
that fit the config's run) this module runs, off the parent's checkpoint at S
and with :func:`trajax.sidetrip.run_sidetrip` (read-only on the parent):

* a replay side-trip (the parent's own schedule, bit-for-bit the parent's
  trajectory) that checkpoints θ_{S+h} -- the raw endpoint;
* the average θ̄ = mean of θ_{S+m·g} (BatchNorm statistics recomputed for the
  averaged weights, as the engine does);
* the equivalent side-trip (kind 'equivalent') of h steps;

and records (all three with BatchNorm statistics recomputed for their own
weights over ``averaging.bn_recompute_batches`` fixed training batches; the
side-trips' running-statistics evaluations are kept as ``*_running_bn``) the test loss/accuracy of the three and the L2 distances
‖θ̄ − θ_trip‖, ‖θ̄ − θ_{S+h}‖ (paper Fig. 6). The parent's own raw vs averaged
test curves (from ``metrics.jsonl``) are the Fig. 5/10 panel.

    python -m experiments.fig1_averaging_vs_sidetrips --config=configs/mnist1d.py --workdir=DIR
"""

from __future__ import annotations

import os

import numpy as np

from experiments import common

NAME = "fig1_averaging_vs_sidetrips"
METHODS = ("two_point", "multi_point")


def experiment_defaults():
  """``--exp.*`` knobs (None: derived from the training config)."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  e.branch_fractions = (0.25, 0.5, 0.75)
  # Side-trip lengths h; those with S + h > total_steps are dropped per branch.
  e.horizons = (1, 10, 100, 1000)
  # None: the config's averaging.method (must be two_point or multi_point).
  e.method = mlc.FieldReference(None, field_type=str)
  # Points of a multi_point average (None: averaging.n).
  e.n = mlc.FieldReference(None, field_type=int)
  # Table 1's specificity (two_point only): constant-rate side-trips f·λ at the
  # longest horizon of every branch, beside the predicted λ/2.
  e.control_factors = (0.1, 0.75)
  return e


def _method(config, exp) -> tuple[str, int]:
  method = exp.method if exp.method is not None else config.averaging.method
  if method not in METHODS:
    raise ValueError(
      f"exp.method = {method!r}: this experiment averages checkpoints of a replayed "
      f"trajectory, which needs one of {list(METHODS)} (set --exp.method or averaging.method)"
    )
  n = 2 if method == "two_point" else int(exp.n if exp.n is not None else config.averaging.n)
  if n < 2:
    raise ValueError(f"exp.n must be >= 2 for multi_point, got {n}")
  return method, n


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints this experiment branches from."""
  return common.scaled_points(config.total_steps, exp.branch_fractions)


def _horizons(config, exp, s: int, n: int) -> list[int]:
  hs = sorted({int(h) for h in exp.horizons})
  if not hs or hs[0] < 1:
    raise ValueError(f"exp.horizons must be integers >= 1, got {tuple(exp.horizons)}")
  # A multi-point average needs h divisible by n - 1 (the gap g = h/(n-1)).
  return [h for h in hs if s + h <= int(config.total_steps) and h % (n - 1) == 0]


def _eval_at(records, j: int) -> dict:
  for r in records:
    if r.get("sidetrip/step") == j and "eval/loss" in r:
      return {"loss": float(r["eval/loss"]), "accuracy": float(r["eval/accuracy"])}
  raise KeyError(f"no evaluation at side-trip step {j} in the side-trip's metrics")


def _sidetrip(pconfig, parent, s, trip_dir, model, dataset, **fields) -> list[dict]:
  """Runs (or reuses, when finished) one side-trip; returns its metrics records."""
  from trajax import sidetrip

  steps = int(fields["steps"])
  if common.final_step(trip_dir) == s + steps:
    return common.read_metrics(trip_dir)
  os.makedirs(os.path.dirname(trip_dir), exist_ok=True)
  cfg = sidetrip.with_sidetrip(pconfig, **fields)
  sidetrip.run_sidetrip(cfg, parent, s, trip_dir, dataset=dataset, model=model)
  return common.read_metrics(trip_dir)


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Runs every (branch point, horizon); writes JSON + PNG; returns the summary."""
  import jax

  from trajax import probes

  method, n = _method(config, exp)
  branches = branch_steps(config, exp)
  if parent is None:
    parent = common.ensure_parent(config, workdir, branches)
  pconfig = common.parent_config(config, branches)
  out_dir = os.path.join(os.path.abspath(workdir), "fig1_sidetrips")
  rows = []
  for s in branches:
    hs = _horizons(config, exp, s, n)
    if not hs:
      common.log(f"{NAME}: branch {s}: no horizon fits before total_steps; skipped")
      continue
    at_s = common.restore(parent, s)
    model, dataset = at_s.model, at_s.dataset
    # Replay: the parent's trajectory from S, checkpointed at every point an
    # average needs (S + m·h/(n−1)).
    points = sorted({m * h // (n - 1) for h in hs for m in range(1, n)})
    replay_dir = os.path.join(out_dir, f"S{s}", "replay")
    common.log(f"{NAME}: branch {s}: replaying the parent for {max(hs)} steps")
    replay = _sidetrip(
      pconfig,
      parent,
      s,
      replay_dir,
      model,
      dataset,
      kind="schedule",
      schedule="config",
      steps=max(hs),
      eval_at=tuple(points),
    )
    for h in hs:
      g = h // (n - 1)
      common.log(f"{NAME}: branch {s}: equivalent {method} side-trip of {h} steps")
      trip_dir = os.path.join(out_dir, f"S{s}", f"equivalent_h{h}")
      fields = dict(kind="equivalent", method=method, gap=g, window=h, steps=h, eval_at=(h,))
      if method == "multi_point":
        fields["n"] = n
      trip_records = _sidetrip(pconfig, parent, s, trip_dir, model, dataset, **fields)
      trip = common.restore(trip_dir, s + h)
      raw = common.restore(replay_dir, s + h)
      members = [at_s.state.params] + [
        common.restore(replay_dir, s + m * g).state.params for m in range(1, n)
      ]
      avg = jax.tree.map(lambda *xs: sum(xs) / len(xs), *members)
      # BatchNorm policy (one, applied symmetrically): statistics recomputed
      # for each weight vector over the same fixed training batches. The
      # sensitivity rows use the running statistics instead (the raw endpoint's
      # for the average) and the average of the members' running statistics.
      members_stats = [at_s.state.batch_stats] + [
        common.restore(replay_dir, s + m * g).state.batch_stats for m in range(1, n)
      ]
      avg_stats = jax.tree.map(lambda *xs: sum(xs) / len(xs), *members_stats)
      weights = {
        "raw": (raw.state.params, raw.state.batch_stats),
        "average": (avg, raw.state.batch_stats),
        "sidetrip": (trip.state.params, trip.state.batch_stats),
      }
      is_longest = h == max(hs)
      if is_longest and method == "two_point":
        for f in exp.control_factors:
          cdir = os.path.join(out_dir, f"S{s}", f"constant_{float(f):g}_h{h}")
          common.log(f"{NAME}: branch {s}: control side-trip at {float(f):g} x λ for {h} steps")
          _sidetrip(
            pconfig,
            parent,
            s,
            cdir,
            model,
            dataset,
            kind="schedule",
            schedule="config",
            lr_factor=float(f),
            steps=h,
            eval_at=(h,),
          )
          ctrl = common.restore(cdir, s + h)
          weights[f"factor_{float(f):g}"] = (ctrl.state.params, ctrl.state.batch_stats)
      evals, evals_running, evals_averaged = {}, {}, {}
      for kind, (p, own) in weights.items():
        stats = common.recompute_batch_stats(at_s, p, raw.state.batch_stats)
        evals[kind] = common.evaluate(at_s, p, stats)
        if kind in ("raw", "average", "sidetrip"):
          evals_running[kind] = common.evaluate(at_s, p, own)
          evals_averaged[kind] = (
            common.evaluate(at_s, p, avg_stats) if kind == "average" else evals_running[kind]
          )
      rows.append(
        common.to_jsonable(
          {
            "branch": s,
            "horizon": h,
            **evals,
            "bn_running": evals_running,
            "bn_averaged_stats": evals_averaged,
            "raw_running_bn": _eval_at(replay, h),
            "sidetrip_running_bn": _eval_at(trip_records, h),
            "dist_avg_sidetrip": probes.l2_distance(avg, trip.state.params),
            "dist_avg_raw": probes.l2_distance(avg, raw.state.params),
            "dist_sidetrip_raw": probes.l2_distance(trip.state.params, raw.state.params),
            "dist_branch_raw": probes.l2_distance(at_s.state.params, raw.state.params),
            "param_norm": probes.tree_norm(avg),
          }
        )
      )
  if not rows:
    raise ValueError(
      f"no (branch, horizon) pair fits: branches {branches}, horizons {tuple(exp.horizons)}, "
      f"total_steps {config.total_steps}"
    )
  records = common.read_metrics(parent)
  curves = {
    k: [a.tolist() for a in common.metric_series(records, k)]
    for k in ("eval/loss", "eval/accuracy", "eval_avg/loss", "eval_avg/accuracy")
  }
  payload = {
    "experiment": NAME,
    "config": config.to_dict(),
    "exp": exp.to_dict(),
    "method": method,
    "n": n,
    "parent": parent,
    "branches": branches,
    "rows": rows,
    "parent_curves": curves,
    "bn_policy": BN_POLICY,
    "data": {
      "evaluation_split": "test (the paper's Figs. 1/5 report validation accuracy)",
      "bn_recompute_batches": "dataset.fixed_train_batch(i), i = 0 .. "
      f"{int(config.averaging.bn_recompute_batches) - 1} (training split, noisy labels)",
      "sidetrip_batches": "the parent's own training stream, batches S+1 .. S+h",
    },
  }
  payload["measured"] = measured(payload)
  payload["bn_sensitivity"] = {
    name: measured(payload, evals_key=key) for name, key in BN_SENSITIVITY.items()
  }
  json_path = common.write_json(os.path.join(workdir, f"{NAME}.json"), payload)
  png_path = plot(
    payload, os.path.join(workdir, f"{NAME}.png"), common.run_label(config, f"{method} n={n}")
  )
  return {
    "json": json_path,
    "png": png_path,
    "measured": payload["measured"],
    "bn_sensitivity": payload["bn_sensitivity"],
    "rows": rows,
  }


def _longest(payload) -> list[dict]:
  """Per branch, the row with the longest horizon."""
  best = {}
  for r in payload["rows"]:
    if r["branch"] not in best or r["horizon"] > best[r["branch"]]["horizon"]:
      best[r["branch"]] = r
  return [best[s] for s in sorted(best)]


BN_POLICY = (
  "every weight vector that is compared with another (raw θ_{S+h}, the average, every "
  "side-trip; Figs. 1, 5, 6, 14) is evaluated with BatchNorm statistics recomputed for its own "
  "weights over the same averaging.bn_recompute_batches fixed training batches (an average has "
  "no running statistics of its own, and running statistics lag the weights differently on "
  "each path). Single-point probes keep one rule each: Fig. 2 evaluates θ − ηg with θ's "
  "running statistics (the loss is a function of the step alone), Figs. 3 and 7 normalise with "
  "each batch's own statistics, as the gradient steps themselves do"
)
# Sensitivity rows: which evaluation of each row the headline claims read.
BN_SENSITIVITY = {
  "recomputed (policy)": None,
  "running statistics": "bn_running",
  "averaged statistics": "bn_averaged_stats",
}


def measured(payload, evals_key: str | None = None) -> dict:
  """``{claim id: measured}`` for the Figs. 1/5 and Table 1 claims, at each branch's longest h.

  ``evals_key``: read the evaluations of that BatchNorm sensitivity row
  (``'bn_running'``, ``'bn_averaged_stats'``) instead of the policy's.
  """
  from experiments import claims

  rows = _longest(payload)
  ev = (lambda r: r) if evals_key is None else (lambda r: r[evals_key])
  match, improve, spec = [], [], []
  for r in rows:
    e = ev(r)
    raw, avg, trip = e["raw"]["loss"], e["average"]["loss"], e["sidetrip"]["loss"]
    match.append(
      {
        "branch": r["branch"],
        "horizon": r["horizon"],
        "raw": raw,
        "average": avg,
        "sidetrip": trip,
        "recovered_fraction": claims.recovered_fraction(raw, avg, trip),
      }
    )
    improve.append(
      {
        "branch": r["branch"],
        "horizon": r["horizon"],
        "raw": raw,
        "average": avg,
        "raw_accuracy": e["raw"]["accuracy"],
        "average_accuracy": e["average"]["accuracy"],
        "accuracy_gain": e["average"]["accuracy"] - e["raw"]["accuracy"],
      }
    )
    factors = {0.5: trip} | {
      float(k.split("_", 1)[1]): r[k]["loss"] for k in r if k.startswith("factor_")
    }
    if evals_key is None and len(factors) > 1:
      gaps = {f: abs(v - avg) for f, v in factors.items()}
      spec.append(
        {
          "branch": r["branch"],
          "horizon": r["horizon"],
          "predicted_factor": 0.5,
          "best_factor": min(gaps, key=gaps.get),
          "loss_by_factor": {f"{f:g}": v for f, v in sorted(factors.items())},
          "recovered_by_factor": {
            f"{f:g}": claims.recovered_fraction(raw, avg, v) for f, v in sorted(factors.items())
          },
          "average": avg,
          "raw": raw,
        }
      )
  fracs = [b["recovered_fraction"] for b in match if b["recovered_fraction"] is not None]
  out = {
    "fig1.sidetrip_matches_average": {
      "method": payload["method"],
      "branches": match,
      "min_recovered_fraction": min(fracs) if fracs else None,
    },
    "fig5.two_point_average_improves": {
      "method": payload["method"],
      "branches": improve,
      "mean_accuracy_gain": float(np.mean([b["accuracy_gain"] for b in improve])),
    },
  }
  if spec:
    out["fig1.table1_rate_is_specific"] = {
      "branches": spec,
      "share_predicted_best": float(np.mean([b["best_factor"] == 0.5 for b in spec])),
      "note": "best-matching factor (predicted 0.5): "
      + ", ".join(f"S={b['branch']}: {b['best_factor']:g}" for b in spec),
    }
  if payload["method"] != "two_point":
    # Fig. 5's two-point claim is about the two-point average only.
    del out["fig5.two_point_average_improves"]
  return out


def plot(payload, path: str, label: str) -> str:
  fig, axes = common.new_figure(1, 4, width=4.6, height=3.8)
  branches = sorted({r["branch"] for r in payload["rows"]})
  styles = {"raw": ("o", ":"), "average": ("s", "-"), "sidetrip": ("^", "--")}
  names = {"raw": "raw θ_{S+h}", "average": "average", "sidetrip": "equivalent side-trip"}
  for col, metric in enumerate(("loss", "accuracy")):
    ax = axes[0][col]
    for k, s in enumerate(branches):
      rs = sorted((r for r in payload["rows"] if r["branch"] == s), key=lambda r: r["horizon"])
      hs = [r["horizon"] for r in rs]
      for kind, (marker, ls) in styles.items():
        ax.plot(
          hs,
          [r[kind][metric] for r in rs],
          color=f"C{k}",
          marker=marker,
          ls=ls,
          label=f"S={s} {names[kind]}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("horizon h (steps after the branch point S)")
    ax.set_ylabel("test cross-entropy (nats)" if metric == "loss" else "test accuracy (fraction)")
    ax.set_title(f"Fig. 1: test {metric}")
    ax.legend(fontsize=5.5)
  ax = axes[0][2]
  for k, s in enumerate(branches):
    rs = sorted((r for r in payload["rows"] if r["branch"] == s), key=lambda r: r["horizon"])
    hs = [r["horizon"] for r in rs]
    ax.plot(hs, [r["dist_avg_sidetrip"] for r in rs], f"C{k}^-", label=f"S={s} ‖avg − trip‖")
    ax.plot(hs, [r["dist_avg_raw"] for r in rs], f"C{k}o:", label=f"S={s} ‖avg − raw‖")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("horizon h (steps)")
  ax.set_ylabel("L2 distance (parameter units)")
  ax.set_title("Fig. 6: distances to the average")
  ax.legend(fontsize=6)
  ax = axes[0][3]
  c = payload["parent_curves"]
  ax.plot(c["eval/accuracy"][0], c["eval/accuracy"][1], "k-", label="raw θ_t")
  if c["eval_avg/accuracy"][0]:
    ax.plot(c["eval_avg/accuracy"][0], c["eval_avg/accuracy"][1], "C3-", label="average θ̄_t")
  for k, s in enumerate(branches):
    r = max((r for r in payload["rows"] if r["branch"] == s), key=lambda r: r["horizon"])
    ax.plot(
      [s + r["horizon"]],
      [r["sidetrip"]["accuracy"]],
      f"C{k}^",
      ms=8,
      label=f"side-trip S={s}, h={r['horizon']}",
    )
  ax.set_xlabel("training step")
  ax.set_ylabel("test accuracy (fraction)")
  ax.set_title("Figs. 5/10: main run, raw vs averaged")
  ax.legend(fontsize=6)
  return common.save_figure(fig, path, label)


def main(argv=None):
  return common.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
