r"""Loss after one step against step size, on the step's batch and held out (paper Figs. 2, 12, 13).

From a checkpoint θ of the main trajectory (paper Sec. 3) take the gradient of
one training batch b, g = ∇L_b(θ), and measure over a grid of step sizes η

    l_b(η) = L_b(θ − η g)      (the batch that gave the direction),
    l_h(η) = L_h(θ − η g)      (N held-out batches h of the same size),

where b and the h are *training* batches (noisy labels, as trained) with no
example in common (:func:`experiments.evaluation.probe_batches`: the paper's
held-out batch is "a *fixed* batch different from the training mini-batch",
Sec. 3); the JSON records the split and the example ranges of every batch.

with :func:`trajax.probes.run_step_size_probe` (one vmap over η). The grid
is fixed by the optimizer's rate λ alone: a fine linear part [0, 2λ] that
resolves where held-out loss improves (Fig. 2's right panel) and a geometric
part up to 100λ that brackets the training batch's best step. Fig. 2 is one
pair of curves (at 75 % of training, as the paper); Fig. 12 repeats it at
several positions along the trajectory; Fig. 13 plots the largest one-step drop Δ_b = l_b(0) − min l_b and
Δ_h (the same for the held-out mean) against the batch size. The companion
notes' second-order prediction ε_max = |g|²/(gᵀH_b g) of the same batch is
set against the probe's best step, and the gradient noise scale
B_simple = tr(Σ)/|G|² (McCandlish et al.) is estimated from per-batch
gradient norms at batch sizes B and 4B, giving ε_opt(B) = ε_max(G)/(1 + B_simple/B).

Losses use BatchNorm in inference mode with the checkpoint's running
statistics, so l(η) depends on the parameters only.

    python -m experiments.fig2_single_step --config=configs/mnist1d.py --workdir=workdirs/fig2

writes ``WORKDIR/fig2_single_step.json`` and ``.png`` (Fig. 2 + 12 + 13 panels).
"""

from __future__ import annotations

import os

import numpy as np

from experiments import cli, evaluation, parents, plotting

NAME = "fig2_single_step"


def experiment_defaults():
  """``--exp.*`` knobs; ``None`` fields are derived from the training config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  # Positions along the trajectory, as fractions of total_steps (Fig. 12);
  # Fig. 2 itself is the one at main_fraction (the paper: 75K of 100K).
  e.position_fractions = (0.25, 0.5, 0.75, 1.0)
  e.main_fraction = 0.75
  # Fig. 13's batch-size sweep, at sweep_fractions of training; None:
  # (B/4, B, 4B, 16B, 64B) of the config's B, those the training pool can
  # hold together with two disjoint held-out batches (the widest range).
  e.batch_sizes = mlc.FieldReference(None, field_type=tuple)
  e.sweep_fractions = (0.5, 0.75)
  # Held-out batches per probe at the config's batch size; larger batches use
  # fewer (at least 2) so that every probe sees about as many examples.
  e.num_heldout = 8
  # The step grid, in units of optimizer.lr: num_fine points on [0, fine_max]
  # and num_coarse geometric points on (fine_max, max_step].
  e.fine_max = 2.0
  e.num_fine = 21
  e.max_step = 100.0
  e.num_coarse = 20
  e.poly_degree = 4
  # Batches per size for the noise-scale estimate (sizes B and 4B).
  e.noise_batches = 16
  # Chunked vmap over the grid: faster for conv nets on CPU (probes docstring).
  e.chunk_size = 8
  return e


def step_grid(config, exp) -> np.ndarray:
  """The η grid: fine linear [0, fine_max·λ] then geometric up to max_step·λ (λ = optimizer.lr)."""
  lr = float(config.optimizer.lr)
  fine_max, top = float(exp.fine_max) * lr, float(exp.max_step) * lr
  fine = np.linspace(0.0, fine_max, int(exp.num_fine))
  coarse = np.geomspace(fine_max, top, int(exp.num_coarse) + 1)[1:]
  return np.concatenate([fine, coarse]).astype(np.float32)


def batch_size_sweep(config, exp, num_train: int) -> list[int]:
  if exp.batch_sizes:
    sizes = [int(b) for b in exp.batch_sizes]
  else:
    b = int(config.batch_size)
    sizes = [max(b // 4, 2), b, 4 * b, 16 * b, 64 * b]
    sizes = [s for s in sizes if 3 * s <= num_train]
  if any(s < 2 for s in sizes):
    raise ValueError(f"exp.batch_sizes must all be >= 2, got {sizes}")
  too_big = [s for s in sizes if 3 * s > num_train]
  if too_big:
    raise ValueError(
      f"exp.batch_sizes {too_big}: a probe needs the batch and two disjoint held-out batches "
      f"of that size from the {num_train} training examples"
    )
  return sorted(set(sizes))


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints this experiment reads."""
  fr = (*exp.position_fractions, exp.main_fraction, *exp.sweep_fractions)
  return cli.scaled_points(config.total_steps, fr)


def _check(exp):
  if int(exp.num_heldout) < 2:
    raise ValueError(f"exp.num_heldout must be >= 2, got {exp.num_heldout}")
  if int(exp.num_fine) < 3 or int(exp.num_coarse) < 1:
    raise ValueError(
      f"exp.num_fine must be >= 3 and exp.num_coarse >= 1, got {exp.num_fine}, {exp.num_coarse}"
    )
  if int(exp.num_fine) + int(exp.num_coarse) <= int(exp.poly_degree) + 1:
    raise ValueError(
      f"exp.num_fine + exp.num_coarse = {exp.num_fine + exp.num_coarse} must exceed "
      f"exp.poly_degree + 1 = {exp.poly_degree + 1}"
    )
  if not 0 < float(exp.fine_max) < float(exp.max_step):
    raise ValueError(
      f"need 0 < exp.fine_max < exp.max_step, got fine_max={exp.fine_max}, max_step={exp.max_step}"
    )


def fit_near_minimum(grid, losses, best_step: float, degree: int) -> float:
  """rmse / range of a degree-d fit over [0, 2·best step] (Fig. 2's plotted window)."""
  from trajax import probes

  grid, losses = np.asarray(grid, np.float64), np.asarray(losses, np.float64)
  keep = grid <= 2.0 * best_step if best_step > 0 else grid <= grid[degree + 1]
  if keep.sum() <= degree + 1:
    keep = np.zeros_like(keep)
    keep[: degree + 2] = True
  x, y = grid[keep], losses[keep]
  fit = probes.fit_polynomial(x, y, degree)
  span = float(np.max(y) - np.min(y))
  return float(fit.rmse) / span if span > 0 else 0.0


def _probe(r, dataset, loss_fn, final, grid, s: int, b: int, n_held: int, offset: int, exp) -> dict:
  from trajax import probes

  stats = r.batch_stats
  fixed, held_raw, prov = evaluation.probe_batches(dataset, b, n_held, offset=offset)
  batch = evaluation.with_batch_stats(fixed, stats)
  held = evaluation.with_batch_stats(held_raw, stats, stacked=n_held)
  rep = probes.run_step_size_probe(
    loss_fn,
    r.params,
    batch,
    grid,
    held,
    degree=int(exp.poly_degree),
    chunk_size=int(exp.chunk_size) or None,
    with_eps_max=True,
  )
  i_best = int(np.argmin(rep.curve.train_loss))
  held0 = float(np.mean(rep.curve.heldout_loss0))
  hmean = np.asarray(rep.heldout.mean, np.float64)
  improving = np.asarray(grid)[1:][hmean[1:] < held0]
  # "The average loss of a fully trained model": the final checkpoint on the same held-out batches.
  final_loss = float(
    np.mean(
      [
        loss_fn(
          final.params,
          evaluation.with_batch_stats({k: v[i] for k, v in held_raw.items()}, final.batch_stats),
        )
        for i in range(n_held)
      ]
    )
  )
  best_step = float(rep.train.best_step_size)
  return {
    "step": s,
    "batch_size": b,
    "num_heldout": n_held,
    **prov,
    "train_loss0": float(rep.train.loss0),
    "train_best_loss": float(rep.train.best_loss),
    "train_best_step": best_step,
    "train_best_interior": bool(0 < i_best < len(grid) - 1),
    "train_largest_drop": float(rep.train.largest_drop),
    "heldout_loss0": held0,
    "heldout_best_loss": float(rep.heldout_mean.best_loss),
    "heldout_best_step": float(rep.heldout_mean.best_step_size),
    "heldout_largest_drop": float(rep.heldout_mean.largest_drop),
    "heldout_change_at_train_best": float(hmean[i_best]) - held0,
    "heldout_improves_at_first_step": bool(hmean[1] < held0),
    "largest_improving_step": float(improving.max()) if improving.size else 0.0,
    "train_rel_rmse": fit_near_minimum(grid, rep.curve.train_loss, best_step, int(exp.poly_degree)),
    "heldout_rel_rmse": fit_near_minimum(grid, hmean, best_step, int(exp.poly_degree)),
    "eps_max": float(rep.eps_max.eps_max),
    "final_model_heldout_loss": final_loss,
    "final_model_loss_on_batch": float(
      loss_fn(final.params, evaluation.with_batch_stats(fixed, final.batch_stats))
    ),
    "curve": {
      "train": rep.curve.train_loss,
      "heldout_mean": rep.heldout.mean,
      "heldout_std": rep.heldout.std,
      "heldout_min": rep.heldout.min,
      "heldout_max": rep.heldout.max,
      "train_fit_coeffs": rep.train.fit.coeffs,
      "heldout_fit_coeffs": rep.heldout_mean.fit.coeffs,
    },
  }


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Runs the probe at every (position, batch size); writes JSON + PNG; returns the summary."""
  from trajax import runs

  _check(exp)
  positions = cli.scaled_points(config.total_steps, exp.position_fractions)
  (main_step,) = cli.scaled_points(config.total_steps, (exp.main_fraction,))
  sweep = cli.scaled_points(config.total_steps, exp.sweep_fractions)
  positions = sorted({*positions, main_step})
  if parent is None:
    parent = parents.ensure_parent(config, workdir, branch_steps(config, exp))
  parent_run = runs.open_run(parent)
  final = parent_run.state_at()
  dataset = parent_run.dataset
  main_b = int(config.batch_size)
  sizes = batch_size_sweep(config, exp, int(dataset.info.num_train))
  if main_b not in sizes:
    sizes = sorted({*sizes, main_b})
  # One loss function object for every checkpoint: the statistics ride in the batch.
  loss_fn = evaluation.make_loss_fn(parent_run.model)
  grid = step_grid(config, exp)
  n_main = int(exp.num_heldout)
  pairs = sorted({(s, main_b) for s in positions} | {(s, b) for s in sweep for b in sizes})

  results = []
  for k, (s, b) in enumerate(pairs):
    r = parent_run.state_at(s)
    n_held = max(2, min(n_main, (n_main * main_b) // b))
    # A different stretch of the training split for every probe (wrapping round the pool).
    span = (1 + n_held) * b
    room = int(dataset.info.num_train) - span
    offset = (k * span) % (room + 1)
    cli.log(f"{NAME}: step {s}, batch size {b}: single-step probe over {len(grid)} step sizes")
    entry = _probe(r, dataset, loss_fn, final, grid, s, b, n_held, offset, exp)
    if b == main_b and s == main_step:
      entry["noise_scale"] = _noise_scale(r, dataset, loss_fn, b, int(exp.noise_batches), s)
    results.append(cli.to_jsonable(entry))

  payload = {
    "experiment": NAME,
    "config": config.to_dict(),
    "exp": exp.to_dict(),
    "parent": parent,
    "step_sizes": grid,
    "batch_sizes": sizes,
    "positions": positions,
    "sweep_positions": sweep,
    "main_step": main_step,
    "main_batch_size": main_b,
    "final_step": int(final.step),
    "heldout": "training batches disjoint from the probed batch (evaluation.probe_batches); "
    "every result records probed_examples / heldout_examples",
    "results": results,
  }
  payload["measured"] = measured(payload)
  os.makedirs(workdir, exist_ok=True)
  json_path = cli.write_json(os.path.join(workdir, f"{NAME}.json"), payload)
  png_path = plot(payload, os.path.join(workdir, f"{NAME}.png"), plotting.run_label(config))
  return {
    "json": json_path,
    "png": png_path,
    "measured": payload["measured"],
    "main": main_entry(payload),
  }


def _noise_scale(r, dataset, loss_fn, b: int, m: int, s: int) -> dict:
  """B_simple from m batches of size b and max(m // 4, 2) of size 4b, and ε_opt(b)."""
  from trajax import probes

  def draw(size, count, offset):
    bs = [dataset.fixed_train_batch(offset + i, size) for i in range(count)]
    return evaluation.with_batch_stats(evaluation.stack_batches(bs), r.batch_stats, stacked=count)

  base = 1_000_000 + 10_000 * (s % 97)
  small = draw(b, m, base)
  big = draw(4 * b, max(m // 4, 2), base + 5_000)
  # estimate_noise_scale reads B from axis 1 of every leaf, which the
  # broadcast BatchNorm statistics do not have: pass the sizes explicitly.
  ns = probes.noise_scale_from_sq_norms(
    probes.batch_grad_sq_norms(loss_fn, r.params, small),
    b,
    probes.batch_grad_sq_norms(loss_fn, r.params, big),
    4 * b,
  )
  # ε_max of the (approximately) true gradient: the concatenated big batches.
  full = {
    k: np.asarray(big[k]).reshape(-1, *np.asarray(big[k]).shape[2:]) for k in ("image", "label")
  }
  full = evaluation.with_batch_stats(full, r.batch_stats)
  eps_true = probes.epsilon_max(loss_fn, r.params, full)
  b_simple = float(ns.b_simple)
  eps_opt = float(probes.optimal_step_size(eps_true.eps_max, ns.b_simple, b))
  return {
    "b_simple": b_simple,
    "grad_sq_norm": float(ns.grad_sq_norm),
    "trace_cov": float(ns.trace_cov),
    "eps_max_true_gradient": float(eps_true.eps_max),
    "eps_opt": eps_opt,
  }


def main_entry(payload) -> dict:
  """The Fig. 2 point: the main position (75 % of training) at the config's batch size."""
  for e in payload["results"]:
    if e["step"] == payload["main_step"] and e["batch_size"] == payload["main_batch_size"]:
      return e
  raise KeyError("no result at the main point")


# Held-out drops below this (nats) are below float32 resolution of a loss ~ 1.
DROP_FLOOR = 1e-7


def log10_drop_ratio(train_drop: float, heldout_drop: float) -> float:
  """log10(Δ_train/Δ_held), both floored at :data:`DROP_FLOOR` (no drop = the floor)."""
  return float(np.log10(max(train_drop, DROP_FLOOR) / max(heldout_drop, DROP_FLOOR)))


def _split_fields(e) -> dict:
  return {"heldout_split": e["heldout_split"], "heldout_disjoint": e["heldout_disjoint"]}


def measured(payload) -> dict:
  """``{claim id: measured numbers}`` for the Sec. 3 / Figs. 2, 12, 13 claims (experiments.claims)."""
  b0 = payload["main_batch_size"]
  main = sorted((e for e in payload["results"] if e["batch_size"] == b0), key=lambda e: e["step"])
  ratio = lambda e: log10_drop_ratio(e["train_largest_drop"], e["heldout_largest_drop"])
  small = [
    {
      "step": e["step"],
      **_split_fields(e),
      "heldout_improves_at_first_step": e["heldout_improves_at_first_step"],
      "first_step_size": payload["step_sizes"][1],
      "largest_improving_step": e["largest_improving_step"],
      "train_best_step": e["train_best_step"],
      "heldout_change_at_train_best": e["heldout_change_at_train_best"],
      "heldout_examples": e["heldout_examples"],
      "probed_examples": e["probed_examples"],
    }
    for e in main
  ]
  orders = [
    {
      "step": e["step"],
      **_split_fields(e),
      "train_drop": e["train_largest_drop"],
      "heldout_drop": e["heldout_largest_drop"],
      "log10_ratio": ratio(e),
      "train_best_interior": e["train_best_interior"],
    }
    for e in main
  ]
  below = [
    {
      "step": e["step"],
      "one_step_loss": e["train_best_loss"],
      "final_model_loss": e["final_model_heldout_loss"],
      "margin": e["final_model_heldout_loss"] - e["train_best_loss"],
    }
    for e in main
    if e["step"] < payload["final_step"]
  ]
  poly = [
    {
      "step": e["step"],
      "train_rel_rmse": e["train_rel_rmse"],
      "heldout_rel_rmse": e["heldout_rel_rmse"],
    }
    for e in main
  ]
  sweep = []
  for s in payload["sweep_positions"]:
    es = sorted((e for e in payload["results"] if e["step"] == s), key=lambda e: e["batch_size"])
    rs = {str(e["batch_size"]): ratio(e) for e in es}
    sweep.append(
      {
        "step": s,
        "heldout_split": "train" if all(e["heldout_split"] == "train" for e in es) else "mixed",
        "heldout_disjoint": all(e["heldout_disjoint"] for e in es),
        "log10_ratio_by_batch": rs,
        "decrease": rs[str(es[0]["batch_size"])] - rs[str(es[-1]["batch_size"])],
      }
    )
  improving = [
    p["largest_improving_step"] / p["train_best_step"] for p in small if p["train_best_step"] > 0
  ]
  return {
    "fig2.one_step_below_final_model": {
      "positions": below,
      "min_margin": min((p["margin"] for p in below), default=None),
    },
    "fig2.heldout_improves_only_for_small_steps": {
      "positions": small,
      "max_improving_over_best_step": max(improving, default=None),
    },
    "fig2.low_degree_polynomial": {
      "positions": poly,
      "max_rel_rmse": max(max(p["train_rel_rmse"], p["heldout_rel_rmse"]) for p in poly),
    },
    "fig12.typical_along_trajectory": {
      "positions": [a | b for a, b in zip(small, orders, strict=True)],
      "min_log10_ratio": min(p["log10_ratio"] for p in orders),
    },
    "fig13.orders_of_magnitude": {
      "positions": orders,
      "min_log10_ratio": min(p["log10_ratio"] for p in orders),
    },
    "fig13.gap_closes_with_batch_size": {
      "positions": sweep,
      "batch_sizes": payload["batch_sizes"],
      "min_decrease": min((p["decrease"] for p in sweep), default=None),
    },
  }


def plot(payload, path: str, label: str) -> str:
  grid = np.asarray(payload["step_sizes"])
  main = main_entry(payload)
  fig, axes = plotting.new_figure(1, 3, width=5.2, height=3.9)
  ax = axes[0][0]
  c = main["curve"]
  ax.plot(grid, c["train"], "C0-", label="training batch l_b(η)")
  ax.plot(
    grid,
    np.polyval(c["train_fit_coeffs"], grid),
    "C0:",
    lw=1,
    label=f"deg-{payload['exp']['poly_degree']} fit (rmse/range near min "
    f"{main['train_rel_rmse']:.2g})",
  )
  ax.plot(grid, c["heldout_mean"], "C1-", label=f"held-out mean of {payload['exp']['num_heldout']}")
  m, sd = np.asarray(c["heldout_mean"]), np.asarray(c["heldout_std"])
  ax.fill_between(grid, m - sd, m + sd, color="C1", alpha=0.25, label="held-out ±1 std")
  ax.fill_between(
    grid, c["heldout_min"], c["heldout_max"], color="C1", alpha=0.1, label="held-out min..max"
  )
  ax.axvline(main["eps_max"], color="C2", ls="--", lw=1, label=f"ε_max = {main['eps_max']:.3g}")
  ax.axhline(
    main["final_model_loss_on_batch"], color="0.5", ls=":", lw=1, label="final model on this batch"
  )
  ax.set_xscale("symlog", linthresh=max(float(grid[1]) * 5, 1e-8))
  ax.set_xlim(left=0)
  ax.axhline(
    main["final_model_heldout_loss"],
    color="k",
    ls="-.",
    lw=1,
    label="final model, held-out mean (Sec. 3's bar)",
  )
  ax.set_xlabel("step size η (plain GD, one step; linear up to the fine grid, then log)")
  ax.set_ylabel("cross-entropy loss (nats)")
  ax.set_title(f"Fig. 2: step {main['step']}, B={main['batch_size']}")
  lo = min(np.min(c["train"]), np.min(c["heldout_min"]))
  hi = max(c["train"][0], c["heldout_mean"][0]) * 1.6
  ax.set_ylim(max(lo - 0.1, 0), hi)
  ax.legend(fontsize=6)

  ax = axes[0][1]
  for k, s in enumerate(payload["positions"]):
    e = [
      e
      for e in payload["results"]
      if e["step"] == s and e["batch_size"] == payload["main_batch_size"]
    ][0]
    ax.plot(
      grid,
      np.asarray(e["curve"]["train"]) - e["train_loss0"],
      f"C{k}-",
      label=f"step {s} train batch",
    )
    ax.plot(
      grid,
      np.asarray(e["curve"]["heldout_mean"]) - e["heldout_loss0"],
      f"C{k}--",
      label=f"step {s} held-out mean",
    )
  ax.axhline(0, color="0.5", lw=0.5)
  ax.set_ylim(-1.2 * max(e["train_largest_drop"] for e in payload["results"]), 0.8)
  ax.set_xscale("symlog", linthresh=max(float(grid[1]) * 5, 1e-8))
  ax.set_xlim(left=0)
  ax.set_xlabel("step size η (symlog)")
  ax.set_ylabel("loss change after one step (nats)")
  ax.set_title(f"Fig. 12: along the trajectory (B={payload['main_batch_size']})")
  ax.legend(fontsize=6)

  ax = axes[0][2]
  for k, s in enumerate(payload["positions"]):
    es = sorted((e for e in payload["results"] if e["step"] == s), key=lambda e: e["batch_size"])
    bs = [e["batch_size"] for e in es]
    ax.plot(
      bs, [max(e["train_largest_drop"], 1e-6) for e in es], f"C{k}o-", label=f"step {s} train batch"
    )
    ax.plot(
      bs, [max(e["heldout_largest_drop"], 1e-6) for e in es], f"C{k}s--", label=f"step {s} held-out"
    )
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("batch size (examples)")
  ax.set_ylabel("largest one-step drop (nats, log)")
  ax.set_title("Fig. 13: largest drop vs batch size")
  ax.legend(fontsize=6)
  return plotting.save_figure(fig, path, label)


def main(argv=None):
  return cli.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
