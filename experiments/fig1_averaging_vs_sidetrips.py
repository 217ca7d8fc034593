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
      # All three are evaluated with BatchNorm statistics recomputed for their
      # own weights: running statistics lag the weights differently on each
      # path, which at h = 1 alone (identical weights) moves the test loss.
      evals = {}
      for kind, p in (("raw", raw.state.params), ("average", avg), ("sidetrip", trip.state.params)):
        stats = common.recompute_batch_stats(at_s, p, raw.state.batch_stats)
        evals[kind] = common.evaluate(at_s, p, stats)
      rows.append(
        common.to_jsonable(
          {
            "branch": s,
            "horizon": h,
            **evals,
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
  }
  payload["claims"] = claims(payload)
  json_path = common.write_json(os.path.join(workdir, f"{NAME}.json"), payload)
  png_path = plot(
    payload, os.path.join(workdir, f"{NAME}.png"), common.run_label(config, f"{method} n={n}")
  )
  return {"json": json_path, "png": png_path, "claims": payload["claims"], "rows": rows}


def _longest(payload) -> list[dict]:
  """Per branch, the row with the longest horizon."""
  best = {}
  for r in payload["rows"]:
    if r["branch"] not in best or r["horizon"] > best[r["branch"]]["horizon"]:
      best[r["branch"]] = r
  return [best[s] for s in sorted(best)]


def claims(payload) -> list[dict]:
  """Sec. 5 claims, decided by stated criteria at each branch's longest horizon."""
  rows = _longest(payload)
  name = (
    "two-point average" if payload["method"] == "two_point" else f"{payload['n']}-point average"
  )
  trip = "λ/2 side-trip" if payload["method"] == "two_point" else "staircase side-trip"

  def fmt(r):
    return (
      f"S={r['branch']}, h={r['horizon']}: {name} vs {trip}: accuracy "
      f"{r['average']['accuracy']:.4f} vs {r['sidetrip']['accuracy']:.4f} (raw "
      f"{r['raw']['accuracy']:.4f}), test loss {r['average']['loss']:.4f} vs "
      f"{r['sidetrip']['loss']:.4f} (raw {r['raw']['loss']:.4f}), L2 distance "
      f"{r['dist_avg_sidetrip']:.4g} (average to raw endpoint: {r['dist_avg_raw']:.4g})"
    )

  loss_gap = lambda r: abs(r["sidetrip"]["loss"] - r["average"]["loss"])
  raw_gap = lambda r: abs(r["raw"]["loss"] - r["average"]["loss"])
  return [
    {
      "id": "averaging_lowers_test_loss",
      "claim": "the average has lower test loss than the raw endpoint it averages (Figs. 1, 5)",
      "measured": {str(r["branch"]): [r["average"]["loss"], r["raw"]["loss"]] for r in rows},
      "criterion": "test loss(average) < test loss(raw θ_{S+h}) at every branch point, longest h",
      "reproduced": all(r["average"]["loss"] < r["raw"]["loss"] for r in rows),
      "text": "; ".join(
        f"S={r['branch']}: {r['average']['loss']:.4f} vs raw {r['raw']['loss']:.4f}" for r in rows
      ),
    },
    {
      "id": "sidetrip_matches_average_loss",
      "claim": f"the equivalent-schedule side-trip reaches the {name}'s test loss (Fig. 1)",
      "measured": {
        str(r["branch"]): {"sidetrip_vs_average": loss_gap(r), "raw_vs_average": raw_gap(r)}
        for r in rows
      },
      "criterion": "|loss(side-trip) − loss(average)| < |loss(raw) − loss(average)| at every "
      "branch point, longest h",
      "reproduced": all(loss_gap(r) < raw_gap(r) for r in rows),
      "text": "; ".join(fmt(r) for r in rows),
    },
    {
      "id": "sidetrip_close_to_average_in_weights",
      "claim": f"the side-trip ends closer to the {name} in weight space than the raw "
      "trajectory does (Fig. 6)",
      "measured": {
        str(r["branch"]): {
          "avg_to_sidetrip": r["dist_avg_sidetrip"],
          "avg_to_raw": r["dist_avg_raw"],
        }
        for r in rows
      },
      "criterion": "‖θ̄ − θ_trip‖ < ‖θ̄ − θ_{S+h}‖ at every branch point, longest h",
      "reproduced": all(r["dist_avg_sidetrip"] < r["dist_avg_raw"] for r in rows),
      "text": "; ".join(
        f"S={r['branch']}: {r['dist_avg_sidetrip']:.4g} vs {r['dist_avg_raw']:.4g}" for r in rows
      ),
    },
  ]


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
