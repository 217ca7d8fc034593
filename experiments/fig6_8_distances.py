"""Figures 6 and 8: how far apart trajectories end up in weight space (paper Sec. 5).

Figure 6 (two-point average vs the lambda/2 side-trip). From the branch point
S (paper: 75k of 100k steps) three runs leave the same state theta_S:

* theta^lambda_{S+j}: the main run, lr lambda, on the parent's batch stream
  (it replays the parent bit-for-bit; the JSON records the check);
* theta^{lambda/2}_{S+j}: the side-trip with every learning rate halved, same
  batches, same optimizer state (momentum trace included);
* theta''_{S+j}: lr lambda on a *different batch order*: the training stream read
  from position S + T + j instead of S + j (T = total_steps), batches the
  parent never saw in that order.

and, for j on a grid over the window k (default ``averaging.gap``: the span of
the paper's two-point average)::

    D_avg(j)    = || (theta^lambda_S + theta^lambda_{S+j})/2 - theta^{lambda/2}_{S+j} ||_2
    D_orders(j) = || theta^lambda_{S+j} - theta''_{S+j} ||_2
    D_travel(j) = || theta^lambda_{S+j} - theta^lambda_S ||_2     (the scale of the move)

By Lemma 2 / Table 1 the two-point average over j steps is the side-trip with
lambda/2 when fixed-batch gradients do not change; on a real network the two
land at distinct points (D_avg > 0) that are closer than two runs on
different batch orders (D_avg < D_orders), with matching losses. Losses and
accuracies of the average, the lambda/2 side-trip and the lambda run are
evaluated at j = 1, 10, 100, ... and k, all three with BatchNorm statistics
recomputed for their weights (as the engine does for averages): the running
statistics of a run lag its weights, and an average has none of its own, so
recomputing for every point makes each loss a function of the weights alone
and the three comparable (at tiny scale the lag alone moved the test loss by
more than the weights did).

Figure 8 (basins of attraction). From a burn-in point B a second run theta'
continues on a different batch order (stream position t + T) to T; then::

    d(t) = || theta_t - theta'_T ||_2,    t in [B, T],

along the main trajectory decreases and saturates at ||theta_T - theta'_T||,
the radius of the "sphere around a fixed minimum" the independent solutions
land on. Also recorded: ||theta'_t - theta_T|| (the symmetric curve),
||theta_t - theta'_t|| and ||theta_t - theta_T|| (-> 0, a replay check).

Usage (small scale, a few minutes on 2 CPU cores; the ImageNet/CIFAR configs
give the paper's scale, where k = 5000 and S = 75k)::

  python -m experiments.fig6_8_distances --config=configs/mnist1d.py --workdir=workdirs/fig6_8

Writes ``WORKDIR/fig6_distances.{json,png}`` and ``WORKDIR/fig8_basin.{json,png}``.

The lock-step driver (:func:`experiments.parents.stepper`: a copy of a
restored state stepped with the engine's own jitted ``trajax.train`` step,
with a learning-rate factor and a position in the training stream of its
own) lives in :mod:`experiments.parents`, shared with Figs. 7 and 14.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from experiments import cli, evaluation, parents, plotting

NAME = "fig6_8_distances"


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  # Fig. 6 branch point S = round(branch_fraction * total_steps) (paper 75k/100k).
  e.branch_fraction = 0.75
  # Fig. 6 window k; default averaging.gap (the two-point average's span).
  e.window = mlc.FieldReference(None, field_type=int)
  # Fig. 8 shared segment: the independent run leaves the main one at
  # B = round(burnin_fraction * total_steps).
  e.burnin_fraction = 0.5
  # Distance measurements per curve (plus j = 1, 10, 100, ... for Fig. 6).
  e.points = 20
  # Fixed training batches for the training loss (a full pass over ImageNet
  # at every evaluation point would dominate the cost).
  e.train_eval_batches = 10
  # Reuse an existing parent WORKDIR instead of training WORKDIR/parent.
  e.parent = ""
  return e


# ----------------------------------------------------------------------------
# Figure 6


def figure6(parent: str, S: int, k: int, points: int, n_train_eval: int) -> dict:
  """The Fig. 6 measurements from the parent's state at S over k steps."""
  from trajax import runs

  r = runs.open_run(parent)
  at_s = r.state_at(S)
  T = int(r.config.total_steps)
  theta_S = at_s.params
  lam = parents.stepper(r, at_s)
  half = parents.stepper(r, at_s, lr_factor=0.5)
  other = parents.stepper(r, at_s, stream_offset=T)
  tr_batches = evaluation.train_eval_batches(r, n_train_eval)
  evals_at = set(evaluation.eval_points(k))
  steps = evaluation.trajectory_grid(k, points)
  out: dict[str, Any] = {
    "j": [],
    "dist_avg_vs_half": [],
    "dist_batch_orders": [],
    "dist_travel_lambda": [],
    "dist_travel_half": [],
    "evals": {},
  }
  t0 = time.perf_counter()
  for j in steps:
    for run in (lam, half, other):
      run.advance_to(S + j)
    avg = evaluation.midpoint(theta_S, lam.params)
    out["j"].append(j)
    out["dist_avg_vs_half"].append(evaluation.l2(avg, half.params))
    out["dist_batch_orders"].append(evaluation.l2(lam.params, other.params))
    out["dist_travel_lambda"].append(evaluation.l2(lam.params, theta_S))
    out["dist_travel_half"].append(evaluation.l2(half.params, theta_S))
    if j in evals_at:
      out["evals"][str(j)] = {
        "average": evaluation.evaluate_point(
          r, avg, lam.state.batch_stats, tr_batches, recompute_bn=True
        ),
        "half": evaluation.evaluate_point(
          r, half.params, half.state.batch_stats, tr_batches, recompute_bn=True
        ),
        "lambda": evaluation.evaluate_point(
          r, lam.params, lam.state.batch_stats, tr_batches, recompute_bn=True
        ),
      }
      cli.log(
        f"fig6 j={j}: |avg - half| {out['dist_avg_vs_half'][-1]:.4g}, "
        f"|theta' - theta''| {out['dist_batch_orders'][-1]:.4g}, test loss avg "
        f"{out['evals'][str(j)]['average']['test_loss']:.4f} / half "
        f"{out['evals'][str(j)]['half']['test_loss']:.4f} / lambda "
        f"{out['evals'][str(j)]['lambda']['test_loss']:.4f}"
      )
  out["seconds"] = time.perf_counter() - t0
  # The lambda run must be the parent itself (same step, same batches).
  if S + k in parents.committed_steps(parent):
    ref = r.state_at(S + k).params
    out["replay_vs_parent_l2"] = evaluation.l2(lam.params, ref)
  out["norm_theta_S"] = evaluation.norm(theta_S)
  out["lr"] = float(r.config.optimizer.lr)
  return out


def _plot6(res: dict, path: str, label: str) -> None:
  fig, ax = plotting.new_figure(1, 3, width=4.6)
  j = np.asarray(res["j"])
  a = ax[0][0]
  a.plot(
    j,
    res["dist_avg_vs_half"],
    "C0-o",
    ms=3,
    label=r"$\|avg_2(\theta^\lambda_S,\theta^\lambda_{S+j}) - \theta^{\lambda/2}_{S+j}\|$",
  )
  a.plot(
    j,
    res["dist_batch_orders"],
    "C1-s",
    ms=3,
    label=r"$\|\theta'_{S+j} - \theta''_{S+j}\|$ (two batch orders, $\lambda$)",
  )
  a.plot(
    j,
    res["dist_travel_lambda"],
    "0.5",
    ls="--",
    label=r"$\|\theta^\lambda_{S+j} - \theta_S\|$ (distance travelled)",
  )
  a.set_xlabel(f"side-trip step j (steps after S = {res['branch_step']})")
  a.set_ylabel("L2 distance in weight space (all params)")
  a.set_title(f"Fig. 6: distances over k = {res['window']} steps")
  a.legend(fontsize=7)
  ev = res["evals"]
  js = sorted(int(x) for x in ev)
  for col, key, title in (
    (1, "test_loss", "test loss (nats)"),
    (2, "train_loss", "training loss on fixed batches (nats)"),
  ):
    a = ax[0][col]
    for name, style, lab in (
      ("average", "C0-o", r"two-point average ($\lambda$)"),
      ("half", "C3--^", r"side-trip $\lambda/2$"),
      ("lambda", "0.4", r"$\lambda$ run $\theta^\lambda_{S+j}$"),
    ):
      a.plot(js, [ev[str(x)][name][key] for x in js], style, ms=4, label=lab)
    a.set_xscale("symlog", linthresh=1)
    a.set_xlabel("side-trip step j (log)")
    a.set_ylabel(title)
    a.set_title(title.split(" (")[0])
    a.legend(fontsize=7)
  plotting.save_figure(fig, path, label)


# ----------------------------------------------------------------------------
# Figure 8


def figure8(parent: str, B: int, points: int) -> dict:
  """The Fig. 8 measurements: main run vs an independent one from B to T."""
  import jax

  from trajax import runs

  rB = runs.open_run(parent)
  at_b = rB.state_at(B)
  T = int(rB.config.total_steps)
  theta_T = rB.state_at(T).params
  main = parents.stepper(rB, at_b)
  alt = parents.stepper(rB, at_b, stream_offset=T)
  ts = [B + j for j in evaluation.trajectory_grid(T - B, points, log_points=False)]
  snapshots = {}
  out: dict[str, Any] = {
    "t": ts,
    "dist_alt_to_main_final": [],
    "dist_parallel": [],
    "dist_main_to_main_final": [],
  }
  t0 = time.perf_counter()
  for t in ts:
    main.advance_to(t)
    alt.advance_to(t)
    snapshots[t] = jax.device_get(main.params)
    out["dist_alt_to_main_final"].append(evaluation.l2(alt.params, theta_T))
    out["dist_parallel"].append(evaluation.l2(main.params, alt.params))
    out["dist_main_to_main_final"].append(evaluation.l2(main.params, theta_T))
  theta_alt_T = alt.params
  out["dist_main_to_alt_final"] = [
    evaluation.l2(jax.device_put(snapshots[t]), theta_alt_T) for t in ts
  ]
  out["seconds"] = time.perf_counter() - t0
  out["replay_vs_parent_l2"] = out["dist_main_to_main_final"][-1]
  ev = evaluation.evaluator(rB)
  out["final_test"] = {
    "main": ev.evaluate(main.params, main.state.batch_stats, rB.dataset.eval_batches("test")),
    "independent": ev.evaluate(alt.params, alt.state.batch_stats, rB.dataset.eval_batches("test")),
  }
  out["norm_theta_T"] = evaluation.norm(theta_T)
  return out


def saturation_summary(t, d) -> dict:
  """How a decreasing curve saturates: total drop, share of it in the last quarter, monotonicity."""
  t, d = np.asarray(t, float), np.asarray(d, float)
  drop = d[0] - d[-1]
  last_q = t >= t[0] + 0.75 * (t[-1] - t[0])
  tail = d[last_q]
  return {
    "start": float(d[0]),
    "end": float(d[-1]),
    "min": float(d.min()),
    "total_drop": float(drop),
    "drop_in_last_quarter_fraction": float((tail[0] - tail[-1]) / drop)
    if drop > 0
    else float("nan"),
    "fraction_of_decreasing_steps": float(np.mean(np.diff(d) < 0)) if len(d) > 1 else float("nan"),
  }


def _plot8(res: dict, path: str, label: str) -> None:
  fig, ax = plotting.new_figure(1, 1, width=6.5, height=4.2)
  a = ax[0][0]
  t = np.asarray(res["t"])
  a.plot(
    t, res["dist_main_to_alt_final"], "C0-o", ms=3, label=r"$\|\theta_t - \theta'_T\|$ (Fig. 8)"
  )
  a.plot(t, res["dist_alt_to_main_final"], "C2--", label=r"$\|\theta'_t - \theta_T\|$ (symmetric)")
  a.plot(t, res["dist_parallel"], "C1:", label=r"$\|\theta_t - \theta'_t\|$ (same step)")
  a.plot(
    t,
    res["dist_main_to_main_final"],
    "0.6",
    ls="-.",
    label=r"$\|\theta_t - \theta_T\|$ (own end point)",
  )
  a.set_xlabel(
    f"training step t (shared burn-in to B = {res['burnin_step']}, T = {res['total_steps']})"
  )
  a.set_ylabel("L2 distance in weight space (all params)")
  a.set_title("Fig. 8: distance to an independently trained solution")
  a.legend(fontsize=8)
  plotting.save_figure(fig, path, label)


# ----------------------------------------------------------------------------
# driver


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints Figs. 6 and 8 read: S, the burn-in B and T."""
  S = cli.branch_step(config, float(exp.branch_fraction), "branch_fraction")
  B = cli.branch_step(config, float(exp.burnin_fraction), "burnin_fraction")
  return sorted({S, B, int(config.total_steps)})


def measured(f6: dict, f8: dict) -> dict:
  """``{claim id: measured}`` for the Figs. 6 and 8 claims (experiments.claims), at j = k."""
  from experiments import claims

  k = str(f6["window"])
  ev = f6["evals"][k]
  d_half, d_orders = f6["dist_avg_vs_half"][-1], f6["dist_batch_orders"][-1]
  # ‖(θ_S + θ_{S+k})/2 − θ_S‖ = ‖θ_{S+k} − θ_S‖/2: the side-trip that never moves.
  d_still = 0.5 * f6["dist_travel_lambda"][-1]
  tr = {n: ev[n]["train_loss"] for n in ("lambda", "average", "half")}
  s8 = f8["summary"]
  return {
    "fig6.much_closer_than_batch_orders": {
      "branch_step": f6["branch_step"],
      "window": f6["window"],
      "dist_avg_vs_half": d_half,
      "dist_batch_orders": d_orders,
      "dist_avg_vs_never_moved": d_still,
      "ratio": d_half / d_orders if d_orders > 0 else None,
      "control_ratio": d_still / d_orders if d_orders > 0 else None,
      "estimate": {
        "value": d_half / d_orders if d_orders > 0 else None,
        "ci": [None, None],
        "n_replicates": 1,
      },
      # The never-moving side-trip against the same fixed bound (must fail it).
      "control": {
        "value": d_still / d_orders if d_orders > 0 else None,
        "holds": bool(d_still <= claims.MUCH_CLOSER * d_orders),
      },
    },
    "fig6.train_loss_matches": {
      "dist_avg_vs_half": d_half,
      "train_raw": tr["lambda"],
      "train_average": tr["average"],
      "train_half": tr["half"],
      "recovered_fraction": claims.recovered_fraction(tr["lambda"], tr["average"], tr["half"]),
      "test_raw": ev["lambda"]["test_loss"],
      "test_average": ev["average"]["test_loss"],
      "test_half": ev["half"]["test_loss"],
    },
    "fig8.distance_decreases_and_saturates": {
      "burnin_step": f8["burnin_step"],
      "fraction_decreasing": s8["fraction_of_decreasing_steps"],
      "start": s8["start"],
      "end": s8["end"],
      "end_over_start": s8["end"] / s8["start"] if s8["start"] > 0 else None,
      "drop_in_last_quarter_fraction": s8["drop_in_last_quarter_fraction"],
    },
  }


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Figures 6 and 8 for ``config``; writes JSON + PNG into ``workdir``; returns a summary.

  ``parent``: an already trained parent run holding S, B and T (the demo's);
  otherwise ``exp.parent`` or ``WORKDIR/parent`` (trained when missing).
  """
  from trajax import config_validation

  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  T = int(config.total_steps)
  S = cli.branch_step(config, float(exp.branch_fraction), "branch_fraction")
  B = cli.branch_step(config, float(exp.burnin_fraction), "burnin_fraction")
  k = cli.window(config, exp)
  if int(exp.points) < 1:
    raise ValueError(f"exp.points must be >= 1, got {exp.points!r}")
  if parent is None:
    parent = parents.parent_dir(config, exp, workdir, sorted({S, B, T}))
  label = plotting.run_label(config, f"workdir {os.path.basename(workdir)}")

  cli.log(f"fig6: branch at S={S}, window k={k}: lambda, lambda/2 and a second batch order")
  f6 = figure6(parent, S, k, int(exp.points), int(exp.train_eval_batches))
  f6.update(branch_step=S, window=k, total_steps=T, parent=parent, seed=int(config.seed))
  f6["data"] = {
    "test_loss": "split 'test'",
    "train_loss": f"dataset.fixed_train_batch(1000 + i), i < {int(exp.train_eval_batches)} "
    "(training split, noisy labels)",
    "bn_recompute_batches": "dataset.fixed_train_batch(i), i < averaging.bn_recompute_batches",
    "batch_orders": f"θ' reads training batches S+j, θ'' batches S+j+{T} (= + total_steps)",
  }
  last = f6["evals"][str(k)]
  f6["summary"] = {
    "dist_avg_vs_half": f6["dist_avg_vs_half"][-1],
    "dist_batch_orders": f6["dist_batch_orders"][-1],
    "ratio_avg_half_over_orders": f6["dist_avg_vs_half"][-1] / f6["dist_batch_orders"][-1],
    "relative_dist_avg_vs_half": f6["dist_avg_vs_half"][-1] / f6["norm_theta_S"],
    "test_loss_average": last["average"]["test_loss"],
    "test_loss_half": last["half"]["test_loss"],
    "test_loss_lambda": last["lambda"]["test_loss"],
    "test_accuracy_average": last["average"]["test_accuracy"],
    "test_accuracy_half": last["half"]["test_accuracy"],
    "test_accuracy_lambda": last["lambda"]["test_accuracy"],
    "train_loss_average": last["average"]["train_loss"],
    "train_loss_half": last["half"]["train_loss"],
  }
  cli.write_json(os.path.join(workdir, "fig6_distances.json"), {"config": config.to_dict(), **f6})
  _plot6(f6, os.path.join(workdir, "fig6_distances.png"), label + f" | S={S}, k={k}")

  cli.log(f"fig8: independent batch order from B={B} to T={T}")
  f8 = figure8(parent, B, int(exp.points))
  f8.update(burnin_step=B, total_steps=T, parent=parent, seed=int(config.seed))
  f8["data"] = {
    "main": "training stream batches t (the parent's order)",
    "independent": f"training stream batches t + {T} (the same data, another order)",
    "final_test": "split 'test'",
  }
  f8["summary"] = saturation_summary(f8["t"], f8["dist_main_to_alt_final"])
  cli.write_json(
    os.path.join(workdir, "fig8_basin.json"), {"config": config.to_dict(), **f8}, allow_nan=True
  )
  _plot8(f8, os.path.join(workdir, "fig8_basin.png"), label + f" | B={B}")

  summary = {
    "fig6": {
      "branch_step": S,
      "window": k,
      **f6["summary"],
      "replay_vs_parent_l2": f6.get("replay_vs_parent_l2"),
    },
    "fig8": {"burnin_step": B, **f8["summary"], "replay_vs_parent_l2": f8["replay_vs_parent_l2"]},
    "files": ["fig6_distances.json", "fig6_distances.png", "fig8_basin.json", "fig8_basin.png"],
    "measured": measured(f6, f8),
    "png": os.path.join(workdir, "fig6_distances.png"),
    "extra_pngs": {"fig8": os.path.join(workdir, "fig8_basin.png")},
  }
  return summary


def main(argv=None):
  return cli.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
