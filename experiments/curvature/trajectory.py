"""Study 1: curvature along the parent trajectory against its learning rate (Appendix A).

At the parent's checkpoints theta_s (every ``exp.every`` steps) on the
training batches s, s+1, ... of its own stream: :func:`measure`'s
eigenvalues, trace and eps_max beside the learning rate eta_s, the paper's
effective rate eta_s/(1 - beta), and the edge-of-stability references of
full-batch GD, 2/lambda_1, and of heavy-ball momentum, 2(1 + beta)/lambda_1
(a quadratic direction with curvature lambda is stable under GD with momentum
iff eta lambda < 2(1 + beta)). Claim ``curv.contracting``
(:mod:`experiments.curvature.criteria`).
"""

from __future__ import annotations

from experiments import cli, evaluation
from experiments.curvature.shared import measure

__all__ = ["trajectory"]


def trajectory(run, states: dict, steps, loss_fn, exp, key, schedule, beta: float) -> list[dict]:
  """One :func:`measure` record per step of ``steps`` (``states[s]``: the parent's state at s).

  ``schedule``: the parent's learning rate eta_s; ``beta``: its momentum.
  """
  m = int(exp.batches)
  out = []
  for s in steps:
    rs = states[s]
    batches = [evaluation.train_batch(run.dataset, s + i) for i in range(m)]
    cur = measure(loss_fn, rs.params, rs.batch_stats, batches, exp, key)
    lr = float(schedule(s))
    cur.update(
      step=s,
      lr=lr,
      eff_lr=lr / (1.0 - beta),
      gd_edge=2.0 / cur["lambda_max"],
      momentum_edge=2.0 * (1.0 + beta) / cur["lambda_max"],
    )
    out.append(cur)
    cli.log(
      f"curvature step {s}: lambda_max {cur['lambda_max']:.4g} trace {cur['trace_mean']:.4g}"
      f" +- {cur['trace_mean_stderr']:.2g}, lr {lr:.3g} vs 2/lambda_max {cur['gd_edge']:.3g},"
      f" eps_max {cur['eps_max_mean']:.3g}"
    )
  return out
