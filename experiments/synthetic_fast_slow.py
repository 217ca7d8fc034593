"""Fast and slow degrees of freedom with and without EMA (paper Sec. 5.1, Figs. 9 and 11b).

Eq. 14 with a diagonal A of "fast" (κ = 1) and "slow" (κ = 0.015) modes and
b ~ N(0, I); λ0 = 5e-2 with and without an EMA of decay time 450 steps
(δ = 1/450), and λ1 = 2e-2. Curves are exact (``trajax.theory.expected_loss``)
with a Monte Carlo overlay (``trajax.theory.simulate``); the EMA and λ0 runs
are one run (the average and the iterate). The paper does not give the number
of modes or θ_0; the defaults (50 + 50 modes, θ_0 = 10) make both time scales
visible.

Claims checked and written to ``fast_slow.json``: EMA reaches a far lower
stationary loss than λ0; in the slow coordinates it reaches a given level
about as soon as λ0 (lagging by about the decay time), while λ1 is much slower.

    python -m experiments.synthetic_fast_slow [--config.num_steps=20000] [--outdir=DIR]

Cost: ~10 s on 2 CPU cores at the default size.
"""

from __future__ import annotations

import numpy as np

from experiments import synthetic_common as common


def get_config():
  c = common.fast_slow_config()
  c.lr0 = 5e-2
  c.lr1 = 2e-2
  c.ema_decay_steps = 450.0  # δ = 1/450
  c.num_steps = 20_000
  c.record_every = 10
  c.num_seeds = 8  # Monte Carlo overlay
  # "Steps to reach a level in slow coordinates": the level as a fraction of
  # the slow modes' initial loss.
  c.slow_level = 0.1
  # Stationary loss: mean over the last fraction of the run.
  c.stationary_fraction = 0.2
  return c


def run(config, outdir: str) -> dict:
  import jax

  from trajax import theory

  hess = np.concatenate(
    [np.full(config.num_fast, config.kappa_fast), np.full(config.num_slow, config.kappa_slow)]
  )
  groups = np.concatenate([np.zeros(config.num_fast, int), np.ones(config.num_slow, int)])
  decay = 1.0 / config.ema_decay_steps
  kw = dict(
    num_steps=config.num_steps,
    theta0=config.theta0,
    dof_groups=groups,
    record_every=config.record_every,
  )
  lrs = np.array([config.lr0, config.lr1])
  exact = theory.expected_loss(hess, lr=lrs, method="ema", decay=decay, **kw)
  sim = theory.simulate(
    jax.random.key(config.seed),
    hess,
    lr=lrs,
    method="ema",
    decay=decay,
    num_seeds=config.num_seeds,
    **kw,
  )
  steps = exact.steps

  # Three runs: λ0 (iterate), λ0 + EMA (its average), λ1 (iterate).
  def pick(curves, by_dof):
    return {
      "lr0": (curves.iterate_loss[0], curves.iterate_loss_by_dof[0]),
      "lr0_ema": (curves.loss[0], curves.loss_by_dof[0]),
      "lr1": (curves.iterate_loss[1], curves.iterate_loss_by_dof[1]),
    }

  runs = pick(exact, True)
  mc = {
    "lr0": (np.asarray(sim.iterate_loss[0]).mean(0), np.asarray(sim.iterate_loss_by_dof[0])),
    "lr0_ema": (np.asarray(sim.loss[0]).mean(0), np.asarray(sim.loss_by_dof[0])),
    "lr1": (np.asarray(sim.iterate_loss[1]).mean(0), np.asarray(sim.iterate_loss_by_dof[1])),
  }

  tail = steps >= (1 - config.stationary_fraction) * config.num_steps
  slow0 = 0.5 * config.kappa_slow * config.theta0**2 * config.num_slow
  level = config.slow_level * slow0
  summary = {"config": config.to_dict(), "slow_level": level, "runs": {}}
  for name, (total, by_dof) in runs.items():
    total, by_dof = np.asarray(total), np.asarray(by_dof)
    mc_total, mc_by_dof = mc[name]
    summary["runs"][name] = {
      "stationary_loss": common.finite(total[tail].mean()),
      "stationary_loss_fast": common.finite(by_dof[tail, 0].mean()),
      "stationary_loss_slow": common.finite(by_dof[tail, 1].mean()),
      "stationary_loss_monte_carlo": common.finite(mc_total[tail].mean()),
      "steps_to_slow_level": common.first_step_below(steps, by_dof[:, 1], level),
      "steps_to_slow_level_monte_carlo": common.first_step_below(steps, mc_by_dof[:, 1], level),
    }
  r = summary["runs"]
  summary["ema_over_lr0_stationary"] = r["lr0_ema"]["stationary_loss"] / r["lr0"]["stationary_loss"]
  summary["ema_over_lr0_fast"] = (
    r["lr0_ema"]["stationary_loss_fast"] / r["lr0"]["stationary_loss_fast"]
  )
  summary["ema_over_lr0_slow"] = (
    r["lr0_ema"]["stationary_loss_slow"] / r["lr0"]["stationary_loss_slow"]
  )
  common.write_json(outdir, "fast_slow.json", summary)

  fig, axes = common.new_figure(1, 2)
  labels = {
    "lr0": f"λ0={config.lr0:g}",
    "lr0_ema": f"λ0 + EMA ({config.ema_decay_steps:g} steps)",
    "lr1": f"λ1={config.lr1:g}",
  }
  colors = {"lr0": "C0", "lr0_ema": "C3", "lr1": "C2"}
  t = np.maximum(steps, 1)
  for name, (total, by_dof) in runs.items():
    axes[0, 0].loglog(t, np.asarray(total), color=colors[name], label=labels[name])
    axes[0, 0].loglog(t[1:], mc[name][0][1:], color=colors[name], alpha=0.3, lw=0.6)
    axes[0, 1].loglog(
      t, np.asarray(by_dof)[:, 0], color=colors[name], ls="--", label=labels[name] + ", fast"
    )
    axes[0, 1].loglog(
      t, np.asarray(by_dof)[:, 1], color=colors[name], label=labels[name] + ", slow"
    )
  axes[0, 0].axhline(level, color="gray", lw=0.5)
  axes[0, 0].set(
    xlabel="step", ylabel="loss ½θᵀAθ", title="Fig. 9: exact (thick), Monte Carlo (thin)"
  )
  axes[0, 1].axhline(level, color="gray", lw=0.5)
  axes[0, 1].set(xlabel="step", ylabel="loss", title="Fig. 11b: fast (dashed) and slow modes")
  for ax in axes[0]:
    ax.legend(fontsize=7)
  common.save_figure(fig, outdir, "fast_slow.png")
  return summary


def main(argv=None):
  return common.cli(get_config, run, "synthetic_fast_slow", argv)


if __name__ == "__main__":
  main()
