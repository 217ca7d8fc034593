r"""Loss after one step against step size, on the step's batch and held out (paper Figs. 2, 12, 13).

From a checkpoint θ of the main trajectory (paper Sec. 3) take the gradient of
one training batch b, g = ∇L_b(θ), and measure over a grid of step sizes η

    l_b(η) = L_b(θ − η g)      (the batch that gave the direction),
    l_h(η) = L_h(θ − η g)      (N held-out batches h of the same size),

with :func:`trajax.probes.run_step_size_probe` (one vmap over η). Fig. 2 is
one such pair of curves; Fig. 12 repeats it at several positions along the
trajectory; Fig. 13 plots the largest one-step drop Δ_b = l_b(0) − min l_b and
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

from experiments import common

NAME = "fig2_single_step"


def experiment_defaults():
  """``--exp.*`` knobs; ``None`` fields are derived from the training config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  # Positions along the trajectory, as fractions of total_steps (Fig. 12).
  e.position_fractions = (0.25, 0.5, 1.0)
  # Batch sizes of the probe (Fig. 13); None: (B/2, B, 4B) of the config's B.
  e.batch_sizes = mlc.FieldReference(None, field_type=tuple)
  e.num_heldout = 8
  e.num_step_sizes = 41
  # Largest step size on the grid; None: 2.5 x the largest ε_max of the
  # config-size batches at the probed positions (so the grid brackets the
  # minimum the quadratic model predicts), at least 20 x optimizer.lr.
  e.max_step = mlc.FieldReference(None, field_type=float)
  e.poly_degree = 4
  # Batches per size for the noise-scale estimate (sizes B and 4B).
  e.noise_batches = 16
  # Chunked vmap over the grid: faster for conv nets on CPU (probes docstring).
  e.chunk_size = 8
  return e


def _batch_sizes(config, exp) -> list[int]:
  if exp.batch_sizes:
    sizes = [int(b) for b in exp.batch_sizes]
  else:
    b = int(config.batch_size)
    sizes = [max(b // 2, 2), b, 4 * b]
  if any(s < 2 for s in sizes):
    raise ValueError(f"exp.batch_sizes must all be >= 2, got {sizes}")
  return sorted(set(sizes))


def branch_steps(config, exp) -> list[int]:
  """Parent checkpoints this experiment reads."""
  return common.scaled_points(config.total_steps, exp.position_fractions)


def _check(exp):
  if int(exp.num_heldout) < 1:
    raise ValueError(f"exp.num_heldout must be >= 1, got {exp.num_heldout}")
  if int(exp.num_step_sizes) <= int(exp.poly_degree) + 1:
    raise ValueError(
      f"exp.num_step_sizes = {exp.num_step_sizes} must exceed exp.poly_degree + 1 = "
      f"{exp.poly_degree + 1}"
    )
  if exp.max_step is not None and not float(exp.max_step) > 0:
    raise ValueError(f"exp.max_step must be > 0 or None, got {exp.max_step}")


def run(config, exp, workdir: str, *, parent: str | None = None) -> dict:
  """Runs the probe at every (position, batch size); writes JSON + PNG; returns the summary."""
  from trajax import probes

  _check(exp)
  positions = branch_steps(config, exp)
  if parent is None:
    parent = common.ensure_parent(config, workdir, positions)
  sizes = _batch_sizes(config, exp)
  main_b = int(config.batch_size) if int(config.batch_size) in sizes else sizes[len(sizes) // 2]
  final = common.restore(parent)
  # One loss function object for every checkpoint: the statistics ride in the batch.
  loss_fn = common.make_loss_fn(final.model)
  n_held = int(exp.num_heldout)
  if exp.max_step is not None:
    max_step = float(exp.max_step)
  else:
    eps = []
    for s in positions:
      r = common.restore(parent, s)
      batch = common.with_batch_stats(r.dataset.fixed_train_batch(s, main_b), r.state.batch_stats)
      eps.append(float(probes.epsilon_max(loss_fn, r.state.params, batch).eps_max))
    finite = [e for e in eps if np.isfinite(e) and e > 0]
    max_step = max([20.0 * float(config.optimizer.lr)] + [2.5 * e for e in finite])
  grid = np.linspace(0.0, max_step, int(exp.num_step_sizes)).astype(np.float32)

  results = []
  for s in positions:
    r = common.restore(parent, s)
    stats = r.state.batch_stats
    for b in sizes:
      common.log(f"{NAME}: step {s}, batch size {b}: single-step probe over {len(grid)} step sizes")
      fixed = r.dataset.fixed_train_batch(s, b)
      batch = common.with_batch_stats(fixed, stats)
      held = common.with_batch_stats(
        common.heldout_batches(r.dataset, n_held, b), stats, stacked=n_held
      )
      rep = probes.run_step_size_probe(
        loss_fn,
        r.state.params,
        batch,
        grid,
        held,
        degree=int(exp.poly_degree),
        chunk_size=int(exp.chunk_size) or None,
        with_eps_max=True,
      )
      i_best = int(np.argmin(rep.curve.train_loss))
      held0 = float(np.mean(rep.curve.heldout_loss0))
      entry = {
        "step": s,
        "batch_size": b,
        "train_loss0": float(rep.train.loss0),
        "train_best_loss": float(rep.train.best_loss),
        "train_best_step": float(rep.train.best_step_size),
        "train_largest_drop": float(rep.train.largest_drop),
        "train_fit_rmse": float(rep.train.fit.rmse),
        "heldout_loss0": held0,
        "heldout_best_loss": float(rep.heldout_mean.best_loss),
        "heldout_best_step": float(rep.heldout_mean.best_step_size),
        "heldout_largest_drop": float(rep.heldout_mean.largest_drop),
        "heldout_fit_rmse": float(rep.heldout_mean.fit.rmse),
        "heldout_change_at_train_best": float(rep.heldout.mean[i_best]) - held0,
        "eps_max": float(rep.eps_max.eps_max),
        "final_model_loss_on_batch": float(
          loss_fn(final.state.params, common.with_batch_stats(fixed, final.state.batch_stats))
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
      if b == main_b:
        entry["noise_scale"] = _noise_scale(r, loss_fn, b, int(exp.noise_batches), s)
      results.append(common.to_jsonable(entry))

  payload = {
    "experiment": NAME,
    "config": config.to_dict(),
    "exp": exp.to_dict(),
    "parent": parent,
    "step_sizes": grid,
    "batch_sizes": sizes,
    "positions": positions,
    "main_batch_size": main_b,
    "final_step": final.step,
    "results": results,
  }
  payload["claims"] = claims(payload)
  os.makedirs(workdir, exist_ok=True)
  json_path = common.write_json(os.path.join(workdir, f"{NAME}.json"), payload)
  png_path = plot(payload, os.path.join(workdir, f"{NAME}.png"), common.run_label(config))
  return {
    "json": json_path,
    "png": png_path,
    "claims": payload["claims"],
    "main": _main_entry(payload),
  }


def _noise_scale(r, loss_fn, b: int, m: int, s: int) -> dict:
  """B_simple from m batches of size b and max(m // 4, 2) of size 4b, and ε_opt(b)."""
  from trajax import probes

  def draw(size, count, offset):
    bs = [r.dataset.fixed_train_batch(offset + i, size) for i in range(count)]
    return common.with_batch_stats(common.stack_batches(bs), r.state.batch_stats, stacked=count)

  base = 1_000_000 + 10_000 * (s % 97)
  small = draw(b, m, base)
  big = draw(4 * b, max(m // 4, 2), base + 5_000)
  # estimate_noise_scale reads B from axis 1 of every leaf, which the
  # broadcast BatchNorm statistics do not have: pass the sizes explicitly.
  ns = probes.noise_scale_from_sq_norms(
    probes.batch_grad_sq_norms(loss_fn, r.state.params, small),
    b,
    probes.batch_grad_sq_norms(loss_fn, r.state.params, big),
    4 * b,
  )
  # ε_max of the (approximately) true gradient: the concatenated big batches.
  full = {
    k: np.asarray(big[k]).reshape(-1, *np.asarray(big[k]).shape[2:]) for k in ("image", "label")
  }
  full = common.with_batch_stats(full, r.state.batch_stats)
  eps_true = probes.epsilon_max(loss_fn, r.state.params, full)
  b_simple = float(ns.b_simple)
  eps_opt = float(probes.optimal_step_size(eps_true.eps_max, ns.b_simple, b))
  return {
    "b_simple": b_simple,
    "grad_sq_norm": float(ns.grad_sq_norm),
    "trace_cov": float(ns.trace_cov),
    "eps_max_true_gradient": float(eps_true.eps_max),
    "eps_opt": eps_opt,
  }


def _main_entry(payload) -> dict:
  """The Fig. 2 point: the last position at the config's batch size."""
  last = max(payload["positions"])
  for e in payload["results"]:
    if e["step"] == last and e["batch_size"] == payload["main_batch_size"]:
      return e
  raise KeyError("no result at the main point")


def claims(payload) -> list[dict]:
  """The paper's Sec. 3 claims, each decided by a stated criterion on measured numbers."""
  main = _main_entry(payload)
  first = min(payload["positions"])
  x, z = main["train_largest_drop"], main["heldout_largest_drop"]
  y = main["heldout_change_at_train_best"]
  out = [
    {
      "id": "one_step_train_vs_heldout",
      "claim": "one step on the training batch cuts that batch's loss far more than it can "
      "cut held-out loss (Fig. 2)",
      "measured": {
        "train_drop": x,
        "heldout_best_drop": z,
        "step": main["step"],
        "batch_size": main["batch_size"],
      },
      "criterion": "train_drop >= 5 x max(heldout_best_drop, 0) and train_drop > 0",
      "reproduced": bool(x > 0 and x >= 5 * max(z, 0.0)),
      "text": f"one step (η = {main['train_best_step']:.3g}) on the training batch cuts its "
      f"loss by {x:.3f} nats, while the best step for held-out batches cuts their mean "
      f"loss by only {z:.3f}",
    },
    {
      "id": "heldout_rises_at_train_optimum",
      "claim": "at the step size that is best for the training batch, held-out loss rises (Fig. 2)",
      "measured": {"heldout_change": y, "train_best_step": main["train_best_step"]},
      "criterion": "held-out mean loss at the training batch's best η minus at η = 0 > 0",
      "reproduced": bool(y > 0),
      "text": f"at η = {main['train_best_step']:.3g} the training batch's loss falls by "
      f"{x:.3f} while the held-out mean loss changes by {y:+.3f}",
    },
  ]
  early = [
    e
    for e in payload["results"]
    if e["step"] == first and e["batch_size"] == payload["main_batch_size"]
  ][0]
  out.append(
    {
      "id": "one_step_beats_final_model",
      "claim": "one step from a mid-training point takes the batch's loss below that of the "
      "fully trained model on the same batch (Sec. 3)",
      "measured": {
        "step": first,
        "one_step_loss": early["train_best_loss"],
        "final_model_loss": early["final_model_loss_on_batch"],
      },
      "criterion": "one_step_loss < final_model_loss",
      "reproduced": bool(early["train_best_loss"] < early["final_model_loss_on_batch"]),
      "text": f"from step {first}, one step brings the batch's loss to "
      f"{early['train_best_loss']:.3f}; the final model (step {payload['final_step']}) "
      f"has {early['final_model_loss_on_batch']:.3f} on it",
    }
  )
  sizes = payload["batch_sizes"]
  if len(sizes) >= 2:
    ok, pairs = True, {}
    for s in payload["positions"]:
      d = {e["batch_size"]: e["train_largest_drop"] for e in payload["results"] if e["step"] == s}
      pairs[str(s)] = [d[min(sizes)], d[max(sizes)]]
      ok &= d[min(sizes)] > d[max(sizes)]
    out.append(
      {
        "id": "drop_shrinks_with_batch_size",
        "claim": "the largest one-step drop on the training batch is larger for smaller batches "
        "(Fig. 13)",
        "measured": {"drop_smallest_vs_largest_batch_by_step": pairs, "batch_sizes": sizes},
        "criterion": f"drop(B={min(sizes)}) > drop(B={max(sizes)}) at every position",
        "reproduced": bool(ok),
        "text": "; ".join(
          f"step {s}: {a:.3f} (B={min(sizes)}) vs {b:.3f} (B={max(sizes)})"
          for s, (a, b) in pairs.items()
        ),
      }
    )
  ratio = main["eps_max"] / main["train_best_step"] if main["train_best_step"] > 0 else float("inf")
  grid_step = payload["step_sizes"][1] - payload["step_sizes"][0]
  interior = main["train_best_step"] < payload["step_sizes"][-1]
  out.append(
    {
      "id": "eps_max_predicts_best_step",
      "claim": "the second-order optimum ε_max = |g|²/gᵀHg of the batch predicts the probe's "
      "best step (companion notes)",
      "measured": {
        "eps_max": main["eps_max"],
        "best_step": main["train_best_step"],
        "ratio": ratio if np.isfinite(ratio) else None,
        "grid_spacing": grid_step,
        "grid_max": payload["step_sizes"][-1],
      },
      "criterion": "0.5 <= eps_max / best_step <= 2, with the best step inside the grid "
      "(not its largest value: a minimum at the edge is not resolved)",
      "reproduced": bool(np.isfinite(ratio) and 0.5 <= ratio <= 2.0 and interior),
      "text": f"ε_max = {main['eps_max']:.3g} vs best grid step {main['train_best_step']:.3g} "
      f"(grid spacing {grid_step:.3g})",
    }
  )
  return out


def plot(payload, path: str, label: str) -> str:
  grid = np.asarray(payload["step_sizes"])
  main = _main_entry(payload)
  fig, axes = common.new_figure(1, 3, width=5.2, height=3.9)
  ax = axes[0][0]
  c = main["curve"]
  ax.plot(grid, c["train"], "C0-", label="training batch l_b(η)")
  ax.plot(
    grid,
    np.polyval(c["train_fit_coeffs"], grid),
    "C0:",
    lw=1,
    label=f"deg-{payload['exp']['poly_degree']} fit (rmse {main['train_fit_rmse']:.2g})",
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
  ax.set_xlabel("step size η (plain GD, one step)")
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
  ax.set_xlabel("step size η")
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
  return common.save_figure(fig, path, label)


def main(argv=None):
  return common.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
