"""Averaging against its equivalent schedule in the quadratic model (synthetic Figs. 1/5; eq. 20).

Eq. 14 with fast and slow modes (as in ``synthetic_fast_slow``) at a constant
λ. At step ``start`` each averaging method (two-point, SWA, EMA) starts, and
a side-trip branches off with the schedule of ``trajax.schedules.equivalent_schedule``
(Table 1, exact for linear losses). Here the loss is quadratic, so the
batch gradients depend on θ and the equivalence is approximate (Lemma 2);
the experiment shows how close it is. Each method is one exact
``trajax.theory.expected_loss`` call and one ``simulate`` call over two
learning-rate columns: the constant-λ run (averaged) and the side-trip (the
same run with the schedule switched at ``start``). The columns share their
noise (the same batches), so the per-path distance between the average and
the side-trip's endpoint is measured too.

Second panel: eq. 20, the effective learning rate of the two-point average
against the distance Δ for several κ (paper form, and the exact inversion of
``trajax.theory.effective_lr``).

    python -m experiments.synthetic_equivalence [--config.window=400] [--outdir=DIR]

Writes ``equivalence.json`` and ``equivalence.png``; ~20 s on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np

from experiments import synthetic_common as common


def get_config():
  c = common.fast_slow_config()
  c.lr = 5e-2
  c.start = 3000
  c.window = 400  # two-point gap, SWA window, EMA side-trip length
  c.ema_decay = 0.01
  c.methods = "two_point,swa,ema"  # comma-separated
  c.num_seeds = 16
  # eq. 20 panel
  c.eq20_kappas = (0.01, 0.1, 1.0)
  c.eq20_max_gap = 2000
  return c


METHODS = ("two_point", "swa", "ema")


def _methods(config):
  """``{method: parameters}`` over the window [start, start + window].

  Each method's record sets what the window fixes
  (:func:`trajax.averaging.params_for_window`: two-point's gap), EMA takes
  ``config.ema_decay``; ``start_step`` is passed separately (``config.start``).
  """
  from trajax import averaging

  names = [m.strip() for m in config.methods.split(",") if m.strip()]
  for name in names:
    if name not in METHODS:
      raise ValueError(f"config.methods: {name!r} is not one of {METHODS}")
  out = {}
  for name in names:
    params = averaging.params_for_window(name, config.window, {"decay": config.ema_decay})
    params.pop("start_step")
    out[name] = params
  return out


def run(config, outdir: str) -> dict:
  import jax
  import jax.numpy as jnp

  from trajax import schedules, theory

  hess = np.concatenate(
    [np.full(config.num_fast, config.kappa_fast), np.full(config.num_slow, config.kappa_slow)]
  )
  groups = np.concatenate([np.zeros(config.num_fast, int), np.ones(config.num_slow, int)])
  s, k, lr = config.start, config.window, config.lr
  total = s + k
  kw = dict(num_steps=total, theta0=config.theta0, dof_groups=groups)
  key = jax.random.key(config.seed)
  summary = {"config": config.to_dict(), "methods": {}}
  curves = {}
  for method, params in _methods(config).items():
    sched = schedules.equivalent_schedule(method, lr, start=s, window=k, **params)
    # One run with two learning-rate columns sharing their noise (the same
    # batches): column 0 is the constant-λ run whose average is taken,
    # column 1 switches to the side-trip schedule at `start`.
    both_lr = lambda t, sched=sched: jnp.stack(
      [jnp.full(jnp.shape(t), lr, jnp.float32), jnp.where(t < s, lr, sched(t - s))], -1
    )
    ex = theory.expected_loss(hess, lr=both_lr, method=method, start_step=s, **params, **kw)
    sim = theory.simulate(
      key, hess, lr=both_lr, method=method, start_step=s, num_seeds=config.num_seeds, **params, **kw
    )
    a, b, plain = (np.asarray(x) for x in (sim.average[0], sim.params[1], sim.params[0]))
    dist_side = np.linalg.norm(a - b, axis=-1).mean()
    dist_plain = np.linalg.norm(a - plain, axis=-1).mean()
    avg_loss, plain_loss, side_loss = ex.loss[0], ex.iterate_loss[0], ex.iterate_loss[1]
    end = {
      "loss_average": common.finite(avg_loss[-1]),
      "loss_side_trip": common.finite(side_loss[-1]),
      "loss_plain": common.finite(plain_loss[-1]),
      "loss_average_fast": common.finite(ex.loss_by_dof[0, -1, 0]),
      "loss_side_trip_fast": common.finite(ex.iterate_loss_by_dof[1, -1, 0]),
      "loss_average_slow": common.finite(ex.loss_by_dof[0, -1, 1]),
      "loss_side_trip_slow": common.finite(ex.iterate_loss_by_dof[1, -1, 1]),
      "loss_average_monte_carlo": common.finite(np.asarray(sim.loss)[0, :, -1].mean()),
      "loss_side_trip_monte_carlo": common.finite(np.asarray(sim.iterate_loss)[1, :, -1].mean()),
      "path_distance_average_to_side_trip": common.finite(dist_side),
      "path_distance_average_to_plain": common.finite(dist_plain),
    }
    end["side_trip_over_average"] = end["loss_side_trip"] / end["loss_average"]
    summary["methods"][method] = end
    curves[method] = (np.asarray(avg_loss), np.asarray(side_loss), np.asarray(plain_loss))

  gaps = np.unique(np.geomspace(1, config.eq20_max_gap, 40).astype(int))
  eq20 = {}
  for kappa in config.eq20_kappas:
    paper = [
      float(theory.effective_lr(lr, kappa, "two_point", exact=False, gap=int(g))) for g in gaps
    ]
    exact = [float(theory.effective_lr(lr, kappa, "two_point", gap=int(g))) for g in gaps]
    eq20[str(kappa)] = {
      "paper_over_lr": (np.array(paper) / lr).tolist(),
      "exact_over_lr": (np.array(exact) / lr).tolist(),
    }
  summary["eq20"] = {"gaps": gaps.tolist(), "by_kappa": eq20}
  common.write_json(outdir, "equivalence.json", summary)

  fig, axes = common.new_figure(1, 4, width=4.2)
  steps = np.arange(total + 1)
  view = steps >= s - k // 2
  for i, (method, (avg_c, side_c, plain_c)) in enumerate(curves.items()):
    ax = axes[0, i]
    ax.plot(steps[view], plain_c[view], color="C0", lw=0.8, label=f"constant λ={lr:g}")
    ax.plot(steps[view], avg_c[view], color="C3", label=f"{method} average")
    ax.plot(steps[view], side_c[view], color="C2", ls="--", label="side-trip, Table 1 schedule")
    ax.axvline(s, color="gray", lw=0.5)
    ax.axvline(s + k, color="gray", lw=0.5)
    ax.set(xlabel="step", ylabel="expected loss", title=f"{method}: lands at step {s + k}")
    ax.legend(fontsize=7)
  ax = axes[0, 3]
  for j, kappa in enumerate(config.eq20_kappas):
    ax.semilogx(
      gaps, eq20[str(kappa)]["paper_over_lr"], color=f"C{j}", label=f"κ={kappa:g}, eq. 20"
    )
    ax.semilogx(gaps, eq20[str(kappa)]["exact_over_lr"], color=f"C{j}", ls=":", label="exact")
  ax.set(
    xlabel="Δ (steps between the two points)", ylabel="λ̂ / λ", title=f"eq. 20, two-point, λ={lr:g}"
  )
  ax.legend(fontsize=7)
  common.save_figure(fig, outdir, "equivalence.png")
  return summary


def main(argv=None):
  return common.cli(get_config, run, "synthetic_equivalence", argv)


if __name__ == "__main__":
  main()
