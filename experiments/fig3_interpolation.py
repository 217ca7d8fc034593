r"""Fixed-batch side-trips from two trajectory points and the loss between them (paper Fig. 3).

Paper Sec. 3, "multi-step side-trip": from two points θ_{t1}, θ_{t2} of the
main trajectory (75K and 85K on ImageNet) run k steps of plain gradient
descent on one fixed training batch b,

    a_{i+1} = a_i − η ∇L_b(a_i),  a_0 = θ_{t1};   c_{i+1} = c_i − η ∇L_b(c_i),  c_0 = θ_{t2},

and at every i measure the loss on the segment (1 − α) a_i + α c_i on b and on
a held-out batch (:func:`trajax.probes.run_sidetrip_interpolation`). No bump
along α (barrier max_α l_i(α) − [(1 − α) l_i(0) + α l_i(1)] ≈ 0) after the
side-trips means both land in the same basin of the batch's loss.

The batch b and the held-out batch are *training* batches with no example in
common (:func:`experiments.evaluation.probe_batches`; the paper's held-out batch
is another training batch, Sec. 3). The GD step η comes from the run itself:
the batch's second-order optimum ε_max = |g|²/gᵀH_b g at θ_{t1} (the step the
Fig. 2 probe's quadratic model predicts best), so a step is in the paper's
regime ("within just 3 steps it reaches nearly 0") by construction of the
run, not by a fixed multiple of the training rate. The held-out curve is
recorded at several multiples of η (``exp.step_factors``).

BatchNorm normalises with each batch's own statistics (train mode), as in the
gradient steps themselves, so no running statistics of either point enter.

    python -m experiments.fig3_interpolation --config=configs/mnist1d.py --workdir=DIR
"""

from __future__ import annotations

import os

import numpy as np

from experiments import cli, evaluation, parents, plotting

NAME = "fig3_interpolation"


def experiment_defaults():
  """``--exp.*`` knobs (None: derived from the training config)."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  # The two trajectory points, as fractions of total_steps (paper: 75K, 85K).
  e.point_fractions = (0.75, 0.85)
  e.num_steps = 9  # the paper's 9 gradient-descent steps
  # Gradient-descent step size; None: ε_max of the fixed batch at the first point.
  e.lr = mlc.FieldReference(None, field_type=float)
  # The held-out curve at these multiples of the step (1.0 is the main one).
  e.step_factors = (0.5, 1.0, 2.0)
  # Start of the fixed batch in the training split (the held-out batch follows it).
  e.batch_offset = 0
  # Fixed-batch size (None: batch_size); the held-out batch has the same size.
  e.batch_size = mlc.FieldReference(None, field_type=int)
  e.num_alphas = 21
  return e


def branch_steps(config, exp) -> list[int]:
  points = cli.scaled_points(config.total_steps, exp.point_fractions)
  if len(points) != 2:
    raise ValueError(
      f"exp.point_fractions = {tuple(exp.point_fractions)} must name two distinct steps of "
      f"total_steps = {config.total_steps}; got {points}"
    )
  return points


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Runs the two side-trips and the interpolation; writes JSON + PNG; returns the summary."""
  from trajax import probes, runs

  t1, t2 = branch_steps(config, exp)
  if int(exp.num_steps) < 1:
    raise ValueError(f"exp.num_steps must be >= 1, got {exp.num_steps}")
  if int(exp.num_alphas) < 3:
    raise ValueError(f"exp.num_alphas must be >= 3, got {exp.num_alphas}")
  factors = sorted({float(f) for f in exp.step_factors} | {1.0})
  if not all(f > 0 for f in factors):
    raise ValueError(f"exp.step_factors must all be > 0, got {tuple(exp.step_factors)}")
  if exp.lr is not None and not float(exp.lr) > 0:
    raise ValueError(f"exp.lr must be > 0 or None, got {exp.lr}")
  if parent is None:
    parent = parents.ensure_parent(config, workdir, [t1, t2])
  parent_run = runs.open_run(parent)
  a, c = parent_run.state_at(t1), parent_run.state_at(t2)
  b = int(exp.batch_size) if exp.batch_size is not None else int(config.batch_size)
  loss_fn = evaluation.make_loss_fn(parent_run.model, train=True)
  stats = a.batch_stats
  fixed_raw, held_raw, prov = evaluation.probe_batches(
    parent_run.dataset, b, 1, offset=int(exp.batch_offset)
  )
  fixed = evaluation.with_batch_stats(fixed_raw, stats)
  held = evaluation.with_batch_stats({k: v[0] for k, v in held_raw.items()}, stats)
  eps = float(probes.epsilon_max(loss_fn, a.params, fixed).eps_max)
  if exp.lr is not None:
    lr, lr_source = float(exp.lr), "exp.lr"
  elif np.isfinite(eps) and eps > 0:
    lr, lr_source = eps, "ε_max of the fixed batch at the first point"
  else:
    lr, lr_source = 5.0 * float(config.optimizer.lr), "5 x optimizer.lr (ε_max not positive)"
  cli.log(
    f"{NAME}: {exp.num_steps} GD steps (η={lr:.4g}, {lr_source}; factors {factors}) on a fixed "
    f"batch of {b} from steps {t1} and {t2}, loss along the interpolation"
  )
  alphas = np.linspace(0.0, 1.0, int(exp.num_alphas))
  by_factor = {}
  for f in factors:
    by_factor[f] = probes.run_sidetrip_interpolation(
      loss_fn, a.params, c.params, fixed, f * lr, int(exp.num_steps), alphas, held
    )
  res = by_factor[1.0]
  payload = {
    "experiment": NAME,
    "config": config.to_dict(),
    "exp": exp.to_dict(),
    "parent": parent,
    "points": [t1, t2],
    "batch_size": b,
    "gd_lr": lr,
    "gd_lr_source": lr_source,
    "eps_max_fixed_batch": eps,
    **prov,
    **res,
    "by_step_factor": {
      f"{f:g}": {
        "gd_lr": f * lr,
        "heldout_endpoints": [
          (row[0] + row[-1]) / 2 for row in np.asarray(r["heldout_loss"]).tolist()
        ],
        "train_endpoints": [(row[0] + row[-1]) / 2 for row in np.asarray(r["train_loss"]).tolist()],
        "heldout_barrier": r["heldout_barrier"],
      }
      for f, r in by_factor.items()
    },
  }
  payload["measured"] = measured(payload)
  json_path = cli.write_json(os.path.join(workdir, f"{NAME}.json"), payload)
  png_path = plot(
    payload,
    os.path.join(workdir, f"{NAME}.png"),
    plotting.run_label(config, f"fixed batch B={b}, GD η={lr:.3g}"),
  )
  return {"json": json_path, "png": png_path, "measured": payload["measured"]}


def measured(payload) -> dict:
  """``{claim id: measured numbers}`` for the Fig. 3 claims (experiments.claims)."""
  tr = np.asarray(payload["train_loss"])
  ho = np.asarray(payload["heldout_loss"])
  k = tr.shape[0] - 1
  ends = lambda x, i: float((x[i, 0] + x[i, -1]) / 2)
  split = {
    "heldout_split": payload["heldout_split"],
    "heldout_disjoint": payload["heldout_disjoint"],
  }
  start, hstart = ends(tr, 0), ends(ho, 0)
  i3 = min(3, k)
  rises = {
    f: (v["heldout_endpoints"][-1] / v["heldout_endpoints"][0] - 1.0)
    for f, v in payload["by_step_factor"].items()
  }
  return {
    "fig3.fixed_batch_loss_nearly_zero": {
      "gd_lr": payload["gd_lr"],
      "steps": i3,
      "train_loss_start": start,
      "train_loss_after_3": ends(tr, i3),
      "ratio_after_3": ends(tr, i3) / start,
      "train_loss_after_k": ends(tr, k),
    },
    "fig3.same_basin": {
      "k": k,
      "train_loss_start": start,
      "train_barrier_k": float(payload["train_barrier"][k]),
      "train_loss_after_k": ends(tr, k),
      "control_train_barrier_before_gd": float(payload["train_barrier"][0]),
    },
    "fig3.heldout_rises": {
      **split,
      "k": k,
      "heldout_start": hstart,
      "heldout_after_k": ends(ho, k),
      "heldout_rise": ends(ho, k) / hstart - 1.0,
      "heldout_rise_by_step_factor": rises,
    },
    "fig3.heldout_same_basin": {
      **split,
      "k": k,
      "heldout_start": hstart,
      "heldout_barrier_k": float(payload["heldout_barrier"][k]),
      "control_heldout_barrier_before_gd": float(payload["heldout_barrier"][0]),
    },
  }


def plot(payload, path: str, label: str) -> str:
  alphas = np.asarray(payload["alphas"])
  tr = np.asarray(payload["train_loss"])
  ho = np.asarray(payload["heldout_loss"])
  k = tr.shape[0] - 1
  show = sorted({0, 1, min(3, k), k // 2, k})
  fig, axes = plotting.new_figure(1, 4, width=4.6, height=3.8)
  t1, t2 = payload["points"]
  for col, (data, what) in enumerate(((tr, "fixed training batch"), (ho, "held-out batch"))):
    ax = axes[0][col]
    for j, i in enumerate(show):
      ax.plot(alphas, data[i], color=f"C{j}", label=f"after {i} GD steps")
    ax.set_xlabel(f"interpolation α (0: from step {t1}, 1: from step {t2})")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(f"Fig. 3: {what}")
    ax.legend(fontsize=6)
  ax = axes[0][2]
  steps = np.arange(k + 1)
  ax.plot(steps, payload["train_barrier"], "C0o-", label="barrier, fixed batch (nats)")
  ax.plot(steps, payload["heldout_barrier"], "C1s-", label="barrier, held-out (nats)")
  ax.set_xlabel("gradient-descent step i on the fixed batch")
  ax.set_ylabel("barrier (nats)")
  ax2 = ax.twinx()
  ax2.plot(steps, payload["distance"], "k:", label="‖a_i − c_i‖ (L2)")
  ax2.set_ylabel("L2 distance between side-trips (parameter units)")
  ax.set_title("barrier and distance along the side-trips")
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = ax2.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, fontsize=6)
  ax = axes[0][3]
  for j, (_, v) in enumerate(sorted(payload["by_step_factor"].items(), key=lambda x: float(x[0]))):
    steps = np.arange(len(v["heldout_endpoints"]))
    ax.plot(steps, v["heldout_endpoints"], f"C{j}o-", ms=3, label=f"held-out, η = {v['gd_lr']:.3g}")
    ax.plot(steps, v["train_endpoints"], f"C{j}:", label=f"fixed batch, η = {v['gd_lr']:.3g}")
  ax.set_xlabel("gradient-descent step i on the fixed batch")
  ax.set_ylabel("loss at the side-trips' ends, mean of both (nats)")
  ax.set_title("held-out loss at several GD step sizes")
  ax.legend(fontsize=6)
  return plotting.save_figure(fig, path, label)


def main(argv=None):
  return cli.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
