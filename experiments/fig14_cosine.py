"""Figures 14 and 5: a run, its weight average, and equivalent side-trips (App. B.2, Sec. 5).

Fig. 14 has two rows: a constant-rate run (top) and a cosine-schedule run
eta_t = lr (1 + cos(pi t/T))/2 (bottom, the config's ``:cosine`` variant); the
row is the config's ``optimizer.schedule`` ('constant' or 'cosine'). On a
constant-rate run the same measurement is Fig. 5's SWA panel, and with
``exp.method='ema'`` its EMA panel: there the average is the EMA of the
*whole* trajectory (the replay starts ``exp.ema_history`` steps before S + k,
default 5/δ, so every point that still weighs more than e^-5 is in it, not an
EMA pinned at S) and the side-trips are ``exp.ema_window`` = 3000 steps as in
the paper. At branch points S_i (``exp.branch_fractions``
of T) three things are compared k steps later (k = ``exp.window``, default
``averaging.gap``):

* raw:      theta_{S+k}, the main trajectory itself (replayed from S with the
            engine's train step; the JSON records the bit-exact check against
            the parent's checkpoint when one exists at S + k);
* average:  the average over the window [S, S + k] of that replay, with the
            method ``exp.method`` (default SWA: (1/k) sum_{j=1..k} theta_{S+j};
            ``trajax.averaging`` started at S) -- BatchNorm statistics
            recomputed for the averaged weights;
* side-trip: :func:`trajax.sidetrip.run_sidetrip` of kind ``'equivalent'``
            from S, on the parent's batch stream, with the schedule of
            paper Table 1 / eq. 29 times the cosine rate:
            eta'_{S+j} = eta_{S+j} w_j (SWA: w_j = (k - j)/k), evaluated at
            j = 1, 10, 100, ... and k (the red points of the figure; these
            come from the side-trip's own evaluations, with its running
            BatchNorm statistics, like the parent's curves).

At S + k all three are evaluated with BatchNorm statistics recomputed for
their weights (so each loss depends on the weights alone), on the test split
and on ``exp.train_eval_batches`` fixed training batches.

By Lemma 2 the side-trip reaches the average's loss; the figure shows this
along the whole cosine trajectory, together with the parent's own curves
(test loss/accuracy from its ``metrics.jsonl``: raw, and its running average
``eval_avg/*`` if the config averages).

Usage::

  python -m experiments.fig14_cosine --config=configs/mnist1d.py:cosine --workdir=workdirs/fig14

Writes ``WORKDIR/fig14_cosine.{json,png}``; side-trips live in
``WORKDIR/trips/equivalent_<S>``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments import cli, evaluation, parents, plotting

NAME = "fig14_cosine"
METHODS = ("swa", "ema", "two_point", "multi_point")
ROWS = ("constant", "cosine")


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  e.branch_fractions = (0.25, 0.5, 0.75)  # S_i = round(f * total_steps)
  e.window = mlc.FieldReference(None, field_type=int)  # k; default averaging.gap
  e.method = "swa"  # averaging compared with its equivalent side-trip
  # EMA only: the side-trip length (paper: 3000 steps) and how far back the
  # replayed EMA starts before S + window (None: 5/δ, the whole trajectory
  # up to a weight e^-5).
  e.ema_window = 3000
  e.ema_history = mlc.FieldReference(None, field_type=int)
  e.train_eval_batches = 10  # fixed training batches for the training loss
  e.parent = ""  # reuse an existing parent WORKDIR
  return e


def window_average(config, method: str, k: int):
  """``method``'s average over a window of k steps (:func:`experiments.parents.window_average`)."""
  if method not in METHODS:
    raise ValueError(f"exp.method must be one of {list(METHODS)}, got {method!r}")
  return parents.window_average(config, method, k)


def branch_points(config, fractions, k: int) -> list[int]:
  T = int(config.total_steps)
  if not fractions:
    raise ValueError("exp.branch_fractions must name at least one fraction of total_steps")
  out = []
  for f in fractions:
    if not 0 <= float(f) < 1:
      raise ValueError(f"exp.branch_fractions entries must lie in [0, 1), got {f!r}")
    s = int(round(float(f) * T))
    if s + k > T:
      raise ValueError(
        f"exp.branch_fractions entry {f} gives S={s}: S + window ({k}) exceeds "
        f"total_steps={T}; use a smaller fraction or window"
      )
    out.append(s)
  return sorted(set(out))


def average_start(config, exp, S: int, k: int) -> int:
  """Where the replayed average starts: S (SWA, two-point, multi-point), S + k − history (EMA)."""
  if str(exp.method) != "ema":
    return S
  h = exp.ema_history
  if h is None:
    h = int(round(5.0 / float(config.averaging.decay)))
  start = S + k - int(h)
  if start < 1:
    # Step 0 is never a checkpoint; a shorter history is the user's call.
    raise ValueError(
      f"exp.ema_history = {h} reaches back to step {start} from S + k = {S + k}: the EMA replay "
      "must start at a checkpoint >= 1; use a later branch point or set exp.ema_history"
    )
  return start


def window_for(config, exp) -> int:
  """k: ``exp.ema_window`` for EMA (the paper's 3000-step side-trips), else ``exp.window``."""
  if str(exp.method) == "ema":
    return int(exp.ema_window)
  return cli.window(config, exp)


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints: every S, where each average starts, and T.

  (S + k is not required: where the parent has it, the replay is checked
  against it bit for bit.)
  """
  k = window_for(config, exp)
  starts = branch_points(config, tuple(exp.branch_fractions), k)
  keep = {*starts, int(config.total_steps)}
  keep |= {average_start(config, exp, s, k) for s in starts}
  return sorted(x for x in keep if x > 0)


def measured(res: dict) -> dict:
  """``{claim id: measured}``: the Fig. 14 row of the run's schedule, and Fig. 5's panel.

  The branch points are the replicates: r = Σ_S (L_raw − L_trip)/Σ_S (L_raw −
  L_avg) on the test loss with a bootstrap interval over branch points
  (:mod:`experiments.estimators`); the control puts the never-moving side-trip
  θ_S in place of the side-trip.
  """
  from experiments import claims
  from experiments import estimators as est

  rows = []
  for b in res["branches"]:
    raw, avg, trip = (b[w]["test_loss"] for w in ("raw", "average", "sidetrip"))
    rows.append(
      {
        "branch": b["branch_step"],
        "horizon": res["window"],
        "average_from": b["average_from"],
        "raw": raw,
        "average": avg,
        "sidetrip": trip,
        "never_moved": b.get("never_moved", {}).get("test_loss"),
        "recovered_fraction": claims.recovered_fraction(raw, avg, trip),
      }
    )
  fr = [r["recovered_fraction"] for r in rows if r["recovered_fraction"] is not None]
  m = {
    "method": res["method"],
    "schedule": res["schedule"],
    "branches": rows,
    "min_recovered_fraction": min(fr) if fr else None,
  }
  if len(rows) >= 2 and all(r["never_moved"] is not None for r in rows):
    col = lambda k: np.array([r[k] for r in rows])  # noqa: E731
    r = est.ratio(col("raw"), col("average"), col("sidetrip"))
    g = est.gain(col("raw"), col("average"))
    rc = est.ratio(col("raw"), col("average"), col("never_moved"))
    m |= {
      "metric": "test_loss",
      "estimate": r.as_dict(),
      "gain": g.as_dict(),
      "recovered_fraction": r.value,
      "control": {
        "value": rc.value,
        "holds": est.match_holds(rc, g),
        "what": "the never-moving side-trip θ_S in place of the side-trip",
      },
    }
  out = {}
  if res["method"] == "swa":
    out[f"fig14.{res['schedule']}_row"] = m
    if res["schedule"] == "constant":
      out["fig5.swa_sidetrip_matches"] = m
  elif res["method"] == "ema" and res["schedule"] == "constant":
    out["fig5.ema_sidetrip_matches"] = m
  return out


def output_name(config, exp) -> str:
  """``fig14_<schedule>`` (SWA) or ``fig14_<schedule>_<method>``: one file per row and method."""
  method = str(exp.method)
  base = f"fig14_{config.optimizer.schedule}"
  return base if method == "swa" else f"{base}_{method}"


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Figure 14 (the config's row) for ``config``; writes JSON + PNG; returns a summary."""
  from trajax import config_validation, runs

  config_validation.validate(config)
  if config.optimizer.schedule not in ROWS:
    raise ValueError(
      f"optimizer.schedule must be one of {list(ROWS)} (Fig. 14's rows), got "
      f"{config.optimizer.schedule!r}"
    )
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  T = int(config.total_steps)
  k = window_for(config, exp)
  method = str(exp.method)
  average = window_average(config, method, k)
  starts = branch_points(config, tuple(exp.branch_fractions), k)
  if parent is None:
    parent = parents.parent_dir(config, exp, workdir, branch_steps(config, exp))
  name = output_name(config, exp)

  r = runs.open_run(parent)
  branches = []
  t0 = time.perf_counter()
  for S in starts:
    at_s = r.state_at(S)
    tr_batches = evaluation.train_eval_batches(r, int(exp.train_eval_batches))
    start = average_start(config, exp, S, k)
    at_start = at_s if start == S else r.state_at(start)
    raw_run, avg = parents.replay_averages(r, at_start, S + k, {method: average})
    avg_params = avg[method]
    tdir = parents.equivalent_sidetrip(
      parent,
      r.config_at(S),
      S,
      os.path.join(workdir, "trips", f"equivalent_{method}_{S}"),
      average=average,
      window=k,
      eval_at=evaluation.eval_points(k),
    )
    trip = runs.open_run(tdir).state_at(S + k)
    records = parents.read_metrics(tdir)
    js, trip_loss = parents.metric_series(records, "eval/loss")
    _, trip_acc = parents.metric_series(records, "eval/accuracy")
    b = {
      "branch_step": S,
      "average_from": start,
      "trip_steps": (js - S).tolist(),
      "trip_test_loss": trip_loss.tolist(),
      "trip_test_accuracy": trip_acc.tolist(),
      "raw": evaluation.evaluate_point(
        r, raw_run.params, raw_run.state.batch_stats, tr_batches, recompute_bn=True
      ),
      "average": evaluation.evaluate_point(
        r, avg_params, raw_run.state.batch_stats, tr_batches, recompute_bn=True
      ),
      "sidetrip": evaluation.evaluate_point(
        r, trip.params, trip.batch_stats, tr_batches, recompute_bn=True
      ),
      # The negative control: a side-trip that never moves (θ_S itself).
      "never_moved": evaluation.evaluate_point(
        r, at_s.params, at_s.batch_stats, tr_batches, recompute_bn=True
      ),
      "dist_sidetrip_vs_average": evaluation.l2(trip.params, avg_params),
      "dist_raw_vs_average": evaluation.l2(raw_run.params, avg_params),
    }
    if S + k in parents.committed_steps(parent):
      b["replay_vs_parent_l2"] = evaluation.l2(raw_run.params, r.state_at(S + k).params)
    cli.log(
      f"fig14 S={S}: test loss raw {b['raw']['test_loss']:.4f}, {method} {b['average']['test_loss']:.4f}, "
      f"side-trip {b['sidetrip']['test_loss']:.4f}; test acc raw {b['raw']['test_accuracy']:.4f}, "
      f"{method} {b['average']['test_accuracy']:.4f}, side-trip {b['sidetrip']['test_accuracy']:.4f}"
    )
    branches.append(b)

  prec = parents.read_metrics(parent)
  curves = {}
  for key in (
    "eval/loss",
    "eval/accuracy",
    "eval_avg/loss",
    "eval_avg/accuracy",
    "train/loss",
    "train/lr",
  ):
    s, v = parents.metric_series(prec, key)
    if len(s):
      curves[key] = {"step": s.tolist(), "value": v.tolist()}

  res = {
    "schedule": str(config.optimizer.schedule),
    "method": method,
    "data": {
      "test_loss": "split 'test' (the paper's validation split)",
      "train_loss": f"dataset.fixed_train_batch(1000 + i), i < {int(exp.train_eval_batches)}",
      "bn_recompute_batches": "dataset.fixed_train_batch(i), i < averaging.bn_recompute_batches",
    },
    "method_params": average.values,
    "average": str(average),
    "window": k,
    "total_steps": T,
    "parent": parent,
    "parent_averaging": config.averaging.method,
    "seed": int(config.seed),
    "branches": branches,
    "parent_curves": curves,
    "seconds": time.perf_counter() - t0,
  }
  gap = [abs(b["sidetrip"]["test_loss"] - b["average"]["test_loss"]) for b in branches]
  gain = [b["raw"]["test_loss"] - b["average"]["test_loss"] for b in branches]
  res["summary"] = {
    "branch_steps": starts,
    "max_abs_test_loss_gap_sidetrip_vs_average": float(max(gap)),
    "mean_test_loss_gain_average_over_raw": float(np.mean(gain)),
    "test_loss_raw": [b["raw"]["test_loss"] for b in branches],
    "test_loss_average": [b["average"]["test_loss"] for b in branches],
    "test_loss_sidetrip": [b["sidetrip"]["test_loss"] for b in branches],
    "test_accuracy_raw": [b["raw"]["test_accuracy"] for b in branches],
    "test_accuracy_average": [b["average"]["test_accuracy"] for b in branches],
    "test_accuracy_sidetrip": [b["sidetrip"]["test_accuracy"] for b in branches],
  }
  cli.write_json(os.path.join(workdir, f"{name}.json"), {"config": config.to_dict(), **res})
  png = os.path.join(workdir, f"{name}.png")
  _plot(res, png, plotting.run_label(config, f"{method}, k={k}"))
  return {
    **res["summary"],
    "files": [f"{name}.json", f"{name}.png"],
    "measured": measured(res),
    "png": png,
  }


def _plot(res: dict, path: str, label: str) -> None:
  fig, ax = plotting.new_figure(1, 3, width=4.6)
  c, k, method = res["parent_curves"], res["window"], res["method"]
  panels = (
    ("test_loss", "eval/loss", "eval_avg/loss", "test loss (nats)"),
    ("test_accuracy", "eval/accuracy", "eval_avg/accuracy", "test accuracy (fraction)"),
    ("train_loss", "train/loss", None, "training loss (nats)"),
  )
  for col, (key, raw_key, avg_key, ylabel) in enumerate(panels):
    a = ax[0][col]
    if raw_key in c:
      lab = (
        "main run (raw)"
        if raw_key.startswith("eval")
        else "main run, mean minibatch loss per log window"
      )
      a.plot(c[raw_key]["step"], c[raw_key]["value"], "k-", lw=1, label=lab)
    if avg_key and avg_key in c:
      a.plot(
        c[avg_key]["step"],
        c[avg_key]["value"],
        "k-.",
        lw=1,
        label=f"main run's own average ({res['parent_averaging']})",
      )
    for i, b in enumerate(res["branches"]):
      S = b["branch_step"]
      first = i == 0
      if key != "train_loss":
        trip_vals = b["trip_test_loss"] if key == "test_loss" else b["trip_test_accuracy"]
        a.plot(
          [S + j for j in b["trip_steps"]],
          trip_vals,
          "r-o",
          ms=3,
          lw=0.8,
          label="equivalent side-trip (j = 1, 10, 100, ..., k)" if first else None,
        )
      a.plot(
        [S + k],
        [b["sidetrip"][key]],
        "rs",
        ms=6,
        label="side-trip at S + k (BN recomputed)" if first else None,
      )
      a.plot(
        [S + k],
        [b["average"][key]],
        "bx",
        ms=8,
        mew=2,
        label=f"{method} over [S, S+k] (BN recomputed)" if first else None,
      )
      a.plot(
        [S + k],
        [b["raw"][key]],
        "k^",
        ms=5,
        label=r"raw $\theta_{S+k}$ (BN recomputed)" if first else None,
      )
      a.axvline(S, color="r", ls=":", lw=0.6)
    a.set_xlabel("training step (dotted: branch points S)")
    a.set_ylabel(ylabel)
    a.set_title(ylabel.split(" (")[0] + (" (fixed batches at S+k)" if key == "train_loss" else ""))
    a.legend(fontsize=6)
  plotting.save_figure(fig, path, label)


def main(argv=None):
  return cli.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
