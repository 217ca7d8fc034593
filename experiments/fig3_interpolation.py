r"""Fixed-batch side-trips from two trajectory points and the loss between them (paper Fig. 3).

Paper Sec. 3, "multi-step side-trip": from two points θ_{t1}, θ_{t2} of the
main trajectory (75K and 85K on ImageNet) run k steps of plain gradient
descent on one fixed training batch b,

    a_{i+1} = a_i − η ∇L_b(a_i),  a_0 = θ_{t1};   c_{i+1} = c_i − η ∇L_b(c_i),  c_0 = θ_{t2},

and at every i measure the loss on the segment (1 − α) a_i + α c_i on b and on
a held-out batch (:func:`trajax.probes.run_sidetrip_interpolation`). No bump
along α (barrier max_α l_i(α) − [(1 − α) l_i(0) + α l_i(1)] ≈ 0) after the
side-trips means both land in the same basin of the batch's loss.

BatchNorm normalises with each batch's own statistics (train mode), as in the
gradient steps themselves, so no running statistics of either point enter.

    python -m experiments.fig3_interpolation --config=configs/mnist1d.py --workdir=DIR
"""

from __future__ import annotations

import os

import numpy as np

from experiments import common

NAME = "fig3_interpolation"


def experiment_defaults():
  """``--exp.*`` knobs (None: derived from the training config)."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  # The two trajectory points, as fractions of total_steps (paper: 75K, 85K).
  e.point_fractions = (0.75, 0.85)
  e.num_steps = 9  # the paper's 9 gradient-descent steps
  # Gradient-descent step size; None: 5 x optimizer.lr (plain GD, no momentum,
  # so about half the momentum run's effective rate lr/(1 − μ)).
  e.lr = mlc.FieldReference(None, field_type=float)
  e.fixed_batch_index = 0
  # Fixed-batch size (None: batch_size) and held-out batch size (None: same).
  e.batch_size = mlc.FieldReference(None, field_type=int)
  e.num_alphas = 21
  return e


def branch_steps(config, exp) -> list[int]:
  points = common.scaled_points(config.total_steps, exp.point_fractions)
  if len(points) != 2:
    raise ValueError(
      f"exp.point_fractions = {tuple(exp.point_fractions)} must name two distinct steps of "
      f"total_steps = {config.total_steps}; got {points}"
    )
  return points


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Runs the two side-trips and the interpolation; writes JSON + PNG; returns the summary."""
  from trajax import probes

  t1, t2 = branch_steps(config, exp)
  if int(exp.num_steps) < 1:
    raise ValueError(f"exp.num_steps must be >= 1, got {exp.num_steps}")
  if int(exp.num_alphas) < 3:
    raise ValueError(f"exp.num_alphas must be >= 3, got {exp.num_alphas}")
  lr = float(exp.lr) if exp.lr is not None else 5.0 * float(config.optimizer.lr)
  if not lr > 0:
    raise ValueError(f"exp.lr must be > 0, got {exp.lr}")
  if parent is None:
    parent = common.ensure_parent(config, workdir, [t1, t2])
  a, c = common.restore(parent, t1), common.restore(parent, t2)
  b = int(exp.batch_size) if exp.batch_size is not None else int(config.batch_size)
  common.log(
    f"{NAME}: {exp.num_steps} GD steps (η={lr:g}) on a fixed batch of {b} from "
    f"steps {t1} and {t2}, loss along the interpolation"
  )
  loss_fn = common.make_loss_fn(a.model, train=True)
  stats = a.state.batch_stats
  fixed = common.with_batch_stats(a.dataset.fixed_train_batch(int(exp.fixed_batch_index), b), stats)
  held = common.heldout_batches(a.dataset, 1, b)
  held = common.with_batch_stats({k: v[0] for k, v in held.items()}, stats)
  alphas = np.linspace(0.0, 1.0, int(exp.num_alphas))
  res = probes.run_sidetrip_interpolation(
    loss_fn, a.state.params, c.state.params, fixed, lr, int(exp.num_steps), alphas, held
  )
  payload = {
    "experiment": NAME,
    "config": config.to_dict(),
    "exp": exp.to_dict(),
    "parent": parent,
    "points": [t1, t2],
    "batch_size": b,
    "gd_lr": lr,
    **res,
  }
  payload["claims"] = claims(payload)
  json_path = common.write_json(os.path.join(workdir, f"{NAME}.json"), payload)
  png_path = plot(
    payload,
    os.path.join(workdir, f"{NAME}.png"),
    common.run_label(config, f"fixed batch B={b}, GD η={lr:g}"),
  )
  return {"json": json_path, "png": png_path, "claims": payload["claims"]}


def claims(payload) -> list[dict]:
  """Fig. 3 claims at the last side-trip step k, with stated criteria."""
  tr = np.asarray(payload["train_loss"])
  ho = np.asarray(payload["heldout_loss"])
  k = tr.shape[0] - 1
  end0, endk = (tr[0, 0] + tr[0, -1]) / 2, (tr[k, 0] + tr[k, -1]) / 2
  hend0, hendk = (ho[0, 0] + ho[0, -1]) / 2, (ho[k, 0] + ho[k, -1]) / 2
  tb, hb = float(payload["train_barrier"][k]), float(payload["heldout_barrier"][k])
  t1, t2 = payload["points"]
  return [
    {
      "id": "fixed_batch_loss_collapses",
      "claim": "a few gradient-descent steps on one fixed batch drive its loss far down (Fig. 3)",
      "measured": {"start": float(end0), "after_k": float(endk), "k": int(k)},
      "criterion": "fixed-batch loss after k steps <= 0.5 x its loss at the trajectory points "
      "(mean of both side-trips)",
      "reproduced": bool(endk <= 0.5 * end0),
      "text": f"{k} GD steps take the fixed batch's loss from {end0:.3f} to {endk:.3f} nats",
    },
    {
      "id": "same_basin_for_fixed_batch",
      "claim": f"fixed-batch side-trips from steps {t1} and {t2} land in the same basin: no "
      "barrier on the interpolation (Fig. 3)",
      "measured": {
        "train_barrier_k": tb,
        "train_barrier_0": float(payload["train_barrier"][0]),
        "loss_at_k": float(endk),
      },
      "criterion": "fixed-batch barrier after k steps <= 0.1 x the fixed-batch loss at the "
      "trajectory points",
      "reproduced": bool(tb <= 0.1 * end0),
      "text": f"barrier on the fixed batch after {k} steps: {tb:.4f} nats (start loss {end0:.3f})",
    },
    {
      "id": "heldout_rises",
      "claim": "held-out loss rises along the fixed-batch side-trips (Fig. 3)",
      "measured": {"heldout_start": float(hend0), "heldout_after_k": float(hendk)},
      "criterion": "held-out loss after k steps > held-out loss at the trajectory points "
      "(mean of both side-trips)",
      "reproduced": bool(hendk > hend0),
      "text": f"held-out loss {hend0:.3f} -> {hendk:.3f} nats after {k} fixed-batch steps",
    },
    {
      "id": "heldout_same_basin",
      "claim": "on the held-out batch, too, the two side-trips stay in one basin (Fig. 3)",
      "measured": {"heldout_barrier_k": hb, "heldout_start": float(hend0)},
      "criterion": "held-out barrier after k steps <= 0.1 x the held-out loss at the points",
      "reproduced": bool(hb <= 0.1 * hend0),
      "text": f"held-out barrier after {k} steps: {hb:.4f} nats (held-out loss {hend0:.3f})",
    },
  ]


def plot(payload, path: str, label: str) -> str:
  alphas = np.asarray(payload["alphas"])
  tr = np.asarray(payload["train_loss"])
  ho = np.asarray(payload["heldout_loss"])
  k = tr.shape[0] - 1
  show = sorted({0, 1, min(3, k), k // 2, k})
  fig, axes = common.new_figure(1, 3, width=4.6, height=3.8)
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
  return common.save_figure(fig, path, label)


def main(argv=None):
  return common.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
