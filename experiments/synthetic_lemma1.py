"""Lemma 1: the stationary ‖θ‖ of SGD grows as √λ (paper Sec. 4, eqs. 12-13).

Eq. 14 with A = I and b ~ N(0, I) in d dimensions, one ``simulate`` call over
a log-spaced range of learning rates (common random numbers). After a burn-in
of ``burn_in_relaxations`` relaxation times 1/(2λ) of ‖θ‖² at the smallest λ,
the measured radius √(mean ‖θ‖²) is compared with the exact
``trajax.theory.shell_radius`` (√(dλ/(2 − λ))) and eq. 13 (√(dλ/2)); the
log-log slope is fitted. Writes ``lemma1.json`` and ``lemma1.png``.

(Lemma 1 is stated for the per-sample model, eq. 5, with E[A_xᵀA_x] = I; the
finite-batch model of eq. 14 has the same mean dynamics and isotropic noise,
which is what eq. 13's derivation uses.)

    python -m experiments.synthetic_lemma1 [--config.dim=500] [--outdir=DIR]

Cost: ~10 s on 2 CPU cores at the default size.
"""

from __future__ import annotations

import numpy as np

from experiments import synthetic_common as common


def get_config():
  import ml_collections

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dim = 500
  c.lr_min = 1e-3
  c.lr_max = 0.3
  c.num_lrs = 8
  c.burn_in_relaxations = 8.0  # in units of 1/(2 λ_min)
  c.measure_steps = 5000
  c.record_every = 10
  return c


def run(config, outdir: str) -> dict:
  import jax

  from trajax import theory

  lrs = np.geomspace(config.lr_min, config.lr_max, config.num_lrs)
  burn = int(np.ceil(config.burn_in_relaxations / (2 * config.lr_min) / config.record_every))
  burn *= config.record_every
  num_steps = burn + config.measure_steps
  d = config.dim
  sim = theory.simulate(
    jax.random.key(config.seed),
    np.ones(d),
    lr=lrs,
    num_steps=num_steps,
    record_every=config.record_every,
    dof_groups=np.zeros(d, int),
  )
  norm_sq = 2 * np.asarray(sim.loss)[:, 0, sim.steps > burn]  # A = I: ‖θ‖² = 2 L
  measured = np.sqrt(norm_sq.mean(-1))
  mean_norm = np.sqrt(norm_sq).mean(-1)
  spread = np.sqrt(norm_sq).std(-1) / measured
  exact = theory.shell_radius(lrs, np.ones(d))
  eq13 = theory.shell_radius(lrs, np.ones(d), leading_order=True)
  slope, intercept = np.polyfit(np.log(lrs), np.log(measured), 1)
  small = lrs <= 0.05
  slope_small = np.polyfit(np.log(lrs[small]), np.log(measured[small]), 1)[0]

  summary = {
    "config": config.to_dict(),
    "burn_in_steps": burn,
    "lr": lrs.tolist(),
    "radius_measured": [common.finite(x) for x in measured],
    "mean_norm_measured": [common.finite(x) for x in mean_norm],
    "radius_exact": exact.tolist(),
    "radius_eq13": eq13.tolist(),
    "relative_error_vs_exact": (measured / exact - 1).tolist(),
    "shell_relative_spread": spread.tolist(),
    "loglog_slope": common.finite(slope),
    "loglog_slope_lr_le_0.05": common.finite(slope_small),
  }
  common.write_json(outdir, "lemma1.json", summary)

  fig, axes = common.new_figure(1, 1, width=5.5)
  ax = axes[0, 0]
  ax.loglog(lrs, measured, "o", label="measured √mean‖θ‖²")
  ax.loglog(lrs, exact, "-", label="exact √(dλ/(2−λ))")
  ax.loglog(lrs, eq13, "--", label="eq. 13: √d·√(λ/2)")
  ax.set(
    xlabel="learning rate λ",
    ylabel="stationary ‖θ‖",
    title=f"Lemma 1 (d={d}): fitted slope {slope:.3f}",
  )
  ax.legend(fontsize=8)
  common.save_figure(fig, outdir, "lemma1.png")
  return summary


def main(argv=None):
  return common.cli(get_config, run, "synthetic_lemma1", argv)


if __name__ == "__main__":
  main()
