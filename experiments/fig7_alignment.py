"""Figure 7: fixed-batch gradients barely turn along side-trips (paper Sec. 5, Lemma 2).

Lemma 2 (averaging == a learning-rate schedule) assumes that the gradient of
a fixed batch b does not change along the trajectory. From the parent's state
theta_S (paper: 75k of 100k steps) two side-trips of k steps (default
``averaging.gap``; paper 1000) run on the parent's own batch stream
(:func:`trajax.sidetrip.run_sidetrip`, kind ``'schedule'``):

* constant:  eta_j = eta_S,
* linear:    eta'_j = eta_S (k - j)/k (the paper's lambda (1000 - i)/1000),

and with g_b(theta) = grad L_b(theta) (BatchNorm in training mode, the
gradient a step on b would take; b = ``dataset.fixed_train_batch(0)``), at
points j of a grid over [0, k]::

    cos_j   = <g_b(theta_j), g_b(theta_S)> / (|g_b(theta_j)| |g_b(theta_S)|)   (blue)
    ratio_j = |g_b(theta_j)| / |g_b(theta_S)|                                  (middle)
    par_j   = cos(g_b(theta_j), g_b(theta'_j))  constant vs linear trip        (green)
    ind_j   = cos(g_{b_t}(theta_j), g_{b'_t}(theta_j))  two independent training
              batches at the same point (b_t = batch S+j of the stream, b'_t =
              batch S+j+T), mean over ``exp.independent_pairs`` pairs       (orange)

plus the losses L_b(theta_j), L_b(theta'_j) and the training-batch loss
L_{b_t}(theta_j) (right panel). The paper sees cos > 0.5, |ratio - 1| < 5 %,
par above cos, and ind near 0 (orthogonal in high dimension).

Usage::

  python -m experiments.fig7_alignment --config=configs/mnist1d.py --workdir=workdirs/fig7

Writes ``WORKDIR/fig7_alignment.{json,png}``; the side-trips live in
``WORKDIR/trips/{constant,linear}_S``.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np

from experiments import cli, evaluation, parents, plotting

NAME = "fig7_alignment"


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  e.branch_fraction = 0.75  # S = round(branch_fraction * total_steps) (paper 75k/100k)
  e.window = mlc.FieldReference(None, field_type=int)  # k; default averaging.gap
  e.points = 20  # grid points over [0, k] (plus 1, 10, 100, ...)
  e.fixed_batch_index = 0  # b = dataset.fixed_train_batch(index)
  # Further fixed-batch sizes for the direction claim, as multiples of batch_size.
  e.extra_batch_factors = (4,)
  e.independent_pairs = 2  # pairs of independent training batches per point
  e.parent = ""  # reuse an existing parent WORKDIR
  return e


def _trip_config(config, kind_schedule: str, k: int, eval_at):
  from trajax import sidetrip

  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    # Every grid point is a checkpoint the probes restore: keep them all.
    cfg.checkpoint.max_to_keep = None
    cfg.checkpoint.async_save = False
  return sidetrip.with_sidetrip(
    cfg,
    kind="schedule",
    schedule=kind_schedule,
    steps=int(k),
    eval_at=tuple(int(j) for j in eval_at),
  )


def run_trip(parent: str, config, S: int, schedule: str, k: int, points, workdir: str) -> str:
  """The side-trip with ``schedule`` ('constant' | 'linear') from S; returns its workdir.

  ``config``: the parent's training config at S.
  """
  from trajax import sidetrip

  tdir = os.path.join(workdir, "trips", f"{schedule}_{S}")
  os.makedirs(os.path.dirname(tdir), exist_ok=True)
  have = parents.committed_steps(tdir)
  if not all((S + j) in have for j in points if j > 0):
    cfg = _trip_config(config, schedule, k, [j for j in points if j > 0])
    res = sidetrip.run_sidetrip(cfg, parent, S, tdir)
    cli.log(f"fig7: {schedule} side-trip {S} -> {res.step} done (timings {res.timings})")
  return tdir


def _stack(trees):
  import jax

  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _params_along(tdir: str, S: int, points, theta_S):
  import jax

  from trajax import runs

  trip = runs.open_run(tdir)
  out = []
  for j in points:
    out.append(jax.device_get(theta_S) if j == 0 else jax.device_get(trip.state_at(S + j).params))
  return out


def branch_steps(config, exp) -> list[int]:
  """The parent checkpoint Fig. 7 branches from."""
  return [cli.branch_step(config, float(exp.branch_fraction), "branch_fraction")]


def measured(res: dict) -> dict:
  """``{claim id: measured}`` for the Fig. 7 claims (experiments.claims)."""
  from experiments import claims

  s = res["summary"]
  return {
    "fig7.norm_changes_little": {
      "fixed_batch_size": res["fixed_batch_size"],
      "max_norm_change_vs_start": s["max_abs_norm_ratio_minus_1"],
      "max_norm_change_between": s["max_abs_norm_change_between_schedules"],
    },
    "fig7.fixed_batch_direction_stable": {
      # The caption's fixed batch (the config's size) first; larger ones reported.
      "fixed_batches": [
        {
          "batch_size": int(b),
          "min_cosine": v["min_cosine_constant"],
          "min_cosine_linear": v["min_cosine_linear"],
          "mean_abs_independent_cosine": s["mean_abs_independent_cosine"],
        }
        for b, v in sorted(
          res["by_batch_size"].items(),
          key=lambda kv: (int(kv[0]) != int(res["fixed_batch_size"]), int(kv[0])),
        )
      ],
      "min_cosine": res["by_batch_size"][str(res["fixed_batch_size"])]["min_cosine_constant"]
      if str(res["fixed_batch_size"]) in res["by_batch_size"]
      else min(v["min_cosine_constant"] for v in res["by_batch_size"].values()),
      # Two independent training batches at the same point (the orange curve):
      # if they also cleared the cosine bound, the criterion could not tell.
      "control": {
        "value": s["mean_abs_independent_cosine"],
        "holds": bool(s["mean_abs_independent_cosine"] > claims.MIN_COSINE),
      },
    },
    "fig7.parallel_closer_than_start": {
      "final_parallel_cosine": s["final_parallel_cosine"],
      "final_cosine_constant": s["final_cosine_constant"],
      "final_cosine_linear": s["final_cosine_linear"],
    },
  }


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Figure 7 for ``config``; writes JSON + PNG into ``workdir``; returns a summary."""
  import jax

  from trajax import config_validation, probes, runs

  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  T = int(config.total_steps)
  S = cli.branch_step(config, float(exp.branch_fraction), "branch_fraction")
  k = cli.window(config, exp)
  if int(exp.points) < 1:
    raise ValueError(f"exp.points must be >= 1, got {exp.points!r}")
  if int(exp.independent_pairs) < 1:
    raise ValueError(f"exp.independent_pairs must be >= 1, got {exp.independent_pairs!r}")
  if int(exp.fixed_batch_index) < 0:
    raise ValueError(f"exp.fixed_batch_index must be >= 0, got {exp.fixed_batch_index!r}")
  if parent is None:
    parent = parents.parent_dir(config, exp, workdir, [S])
  r = runs.open_run(parent)
  at_s = r.state_at(S)
  points = evaluation.trajectory_grid(k, int(exp.points))
  t0 = time.perf_counter()
  trips = {
    s: run_trip(parent, r.config_at(S), S, s, k, points, workdir) for s in ("constant", "linear")
  }
  trip_seconds = time.perf_counter() - t0

  theta_S = at_s.params
  loss_fn = evaluation.make_loss_fn(r.model, at_s.batch_stats, train=True)
  b = r.dataset.fixed_train_batch(int(exp.fixed_batch_index))
  b = {"image": np.asarray(b["image"]), "label": np.asarray(b["label"])}
  seqs = {s: _params_along(d, S, points, theta_S) for s, d in trips.items()}
  stacked = {s: _stack(v) for s, v in seqs.items()}
  tail = {s: jax.tree.map(lambda x: x[1:], v) for s, v in stacked.items()}

  t1 = time.perf_counter()
  align = {s: probes.gradient_alignment(loss_fn, theta_S, tail[s], b) for s in trips}
  parallel = probes.parallel_gradient_cosine(loss_fn, stacked["constant"], stacked["linear"], b)
  loss_jit = jax.jit(loss_fn)
  m = int(exp.independent_pairs)
  independent, train_batch_loss = [], []
  for j, params in zip(points, seqs["constant"], strict=True):
    a = evaluation.stack_batches([evaluation.train_batch(r.dataset, S + j + i) for i in range(m)])
    c = evaluation.stack_batches(
      [evaluation.train_batch(r.dataset, T + S + j + i) for i in range(m)]
    )
    independent.append(
      float(np.mean(np.asarray(probes.independent_batch_cosine(loss_fn, params, a, c))))
    )
    train_batch_loss.append(float(loss_jit(params, evaluation.train_batch(r.dataset, S + j))))
  fixed_loss = {s: [float(loss_jit(p, b)) for p in seqs[s]] for s in trips}
  # The direction claim at further fixed-batch sizes (same trips, bigger b).
  by_size = {}
  for f in exp.extra_batch_factors:
    size = int(f) * int(b["label"].shape[0])
    bb = r.dataset.fixed_train_batch(int(exp.fixed_batch_index), size)
    bb = {"image": np.asarray(bb["image"]), "label": np.asarray(bb["label"])}
    al = {s: probes.gradient_alignment(loss_fn, theta_S, tail[s], bb) for s in trips}
    by_size[str(size)] = {
      "min_cosine_constant": float(np.min(np.asarray(al["constant"].cosine))),
      "min_cosine_linear": float(np.min(np.asarray(al["linear"].cosine))),
    }
  probe_seconds = time.perf_counter() - t1

  # j = 0 is the reference itself: cos 1, ratio 1.
  res = {
    "j": points,
    "branch_step": S,
    "window": k,
    "total_steps": T,
    "lr_at_branch": float(r.config.optimizer.lr),
    "parent": parent,
    "seed": int(config.seed),
    "fixed_batch_index": int(exp.fixed_batch_index),
    "data": {
      "fixed_batch": f"dataset.fixed_train_batch({int(exp.fixed_batch_index)}, size) for the "
      "sizes in by_batch_size (training split, noisy labels)",
      "independent_batches": f"training stream batches S+j+i and S+j+i+{T}, i < "
      f"{int(exp.independent_pairs)}",
      "train_batch_loss": "training stream batch S+j (the batch the step at j uses)",
    },
    "fixed_batch_size": int(b["label"].shape[0]),
    "grad_norm_at_branch": float(align["constant"].grad_norm[0] / align["constant"].norm_ratio[0]),
    "cosine": {s: [1.0] + np.asarray(align[s].cosine).tolist() for s in trips},
    "norm_ratio": {s: [1.0] + np.asarray(align[s].norm_ratio).tolist() for s in trips},
    "parallel_cosine": np.asarray(parallel).tolist(),
    "independent_batch_cosine": independent,
    "fixed_batch_loss": fixed_loss,
    "train_batch_loss": train_batch_loss,
    "seconds": {"sidetrips": trip_seconds, "probes": probe_seconds},
  }
  cos_c, cos_l = np.asarray(res["cosine"]["constant"]), np.asarray(res["cosine"]["linear"])
  res["summary"] = {
    "min_cosine_constant": float(cos_c.min()),
    "min_cosine_linear": float(cos_l.min()),
    "final_cosine_constant": float(cos_c[-1]),
    "final_cosine_linear": float(cos_l[-1]),
    "max_abs_norm_ratio_minus_1": float(
      max(np.max(np.abs(np.asarray(res["norm_ratio"][s]) - 1)) for s in trips)
    ),
    # The middle panel's caption: "the change in gradient norm between different
    # schedules", |g_b(θ_j)| / |g_b(θ'_j)| − 1 at parallel points j.
    "max_abs_norm_change_between_schedules": float(
      np.max(
        np.abs(
          np.asarray(res["norm_ratio"]["constant"]) / np.asarray(res["norm_ratio"]["linear"]) - 1
        )
      )
    ),
    "final_parallel_cosine": res["parallel_cosine"][-1],
    "mean_abs_independent_cosine": float(np.mean(np.abs(independent))),
    "fixed_batch_loss_change_constant": fixed_loss["constant"][-1] - fixed_loss["constant"][0],
    "fixed_batch_loss_change_linear": fixed_loss["linear"][-1] - fixed_loss["linear"][0],
  }
  res["by_batch_size"] = {
    str(res["fixed_batch_size"]): {
      "min_cosine_constant": res["summary"]["min_cosine_constant"],
      "min_cosine_linear": res["summary"]["min_cosine_linear"],
    },
    **by_size,
  }
  for key, value in res["summary"].items():
    cli.log(f"fig7 {key}: {value:.4g}")
  cli.write_json(os.path.join(workdir, "fig7_alignment.json"), {"config": config.to_dict(), **res})
  _plot(
    res, os.path.join(workdir, "fig7_alignment.png"), plotting.run_label(config, f"S={S}, k={k}")
  )
  return {
    **res["summary"],
    "branch_step": S,
    "window": k,
    "files": ["fig7_alignment.json", "fig7_alignment.png"],
    "measured": measured(res),
    "png": os.path.join(workdir, "fig7_alignment.png"),
  }


def _plot(res: dict, path: str, label: str) -> None:
  fig, ax = plotting.new_figure(1, 3, width=4.6)
  j = np.asarray(res["j"])
  a = ax[0][0]
  a.plot(
    j,
    res["cosine"]["constant"],
    "C0-o",
    ms=3,
    label=r"$\cos(g_b(\theta_j), g_b(\theta_S))$ constant lr",
  )
  a.plot(j, res["cosine"]["linear"], "C0--", label=r"same, linearly decaying lr")
  a.plot(
    j, res["parallel_cosine"], "C2-", label=r"$\cos(g_b(\theta_j), g_b(\theta'_j))$ parallel points"
  )
  a.plot(
    j,
    res["independent_batch_cosine"],
    "C1-",
    label=r"$\cos(g_{b_t}, g_{b'_t})$ independent batches",
  )
  a.axhline(0, color="0.7", lw=0.5)
  a.set_ylim(-0.2, 1.05)
  a.set_xlabel(f"side-trip step j (steps after S = {res['branch_step']})")
  a.set_ylabel("cosine similarity (dimensionless)")
  a.set_title(f"gradient alignment, fixed batch b (|b| = {res['fixed_batch_size']})")
  a.legend(fontsize=7)
  a = ax[0][1]
  a.plot(j, res["norm_ratio"]["constant"], "C0-o", ms=3, label="constant lr")
  a.plot(j, res["norm_ratio"]["linear"], "C0--", label="linearly decaying lr")
  between = np.asarray(res["norm_ratio"]["constant"]) / np.asarray(res["norm_ratio"]["linear"])
  a.plot(j, between, "C3-s", ms=3, label=r"between schedules $|g_b(\theta_j)|/|g_b(\theta'_j)|$")
  a.axhline(1, color="0.7", lw=0.5)
  a.set_xlabel("side-trip step j")
  a.set_ylabel("gradient norm ratio (dimensionless)")
  a.set_title(f"gradient norm ratio (|g_b(theta_S)| = {res['grad_norm_at_branch']:.3g})")
  a.legend(fontsize=7)
  a = ax[0][2]
  a.plot(j, res["train_batch_loss"], "C1-", label=r"training batch $L_{b_t}(\theta_j)$")
  a.plot(
    j, res["fixed_batch_loss"]["constant"], "C2-o", ms=3, label=r"fixed batch $L_b$, constant lr"
  )
  a.plot(j, res["fixed_batch_loss"]["linear"], "C0--", label=r"fixed batch $L_b$, linear decay")
  a.set_xlabel("side-trip step j")
  a.set_ylabel("cross-entropy (nats, BN in training mode)")
  a.set_title("losses along the side-trips")
  a.legend(fontsize=7)
  plotting.save_figure(fig, path, label)


def main(argv=None):
  return cli.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
