"""Study 5: the average inside the shell -- the midpoint's loss drop (paper Sec. 4, Fig. 4b).

At the end of a pair (a, c) of constant-rate side-trips of
:mod:`experiments.curvature.shell`, on training batches neither trip stepped
on: (L_b(a) + L_b(c))/2 - L_b((a+c)/2) beside the quadratic model's
(1/8) (a - c)^T H_b((a+c)/2) (a - c)
(:func:`trajax.probes.curvature.midpoint_gap`), equal for a quadratic loss.
Claim ``curv.average_inside_shell``.
"""

from __future__ import annotations

import numpy as np

from experiments import evaluation

__all__ = ["midpoint_check"]


def midpoint_check(loss_fn, a, c, batches, batch_stats) -> dict:
  """Fig. 4b's midpoint drop on each batch beside the quadratic model's (1/8) d^T H d."""
  from trajax.probes import curvature as curv

  gaps, quads, la, lm = [], [], [], []
  for b in batches:
    g = curv.midpoint_gap(loss_fn, a, c, evaluation.with_batch_stats(b, batch_stats))
    gaps.append(float(g.gap))
    quads.append(float(g.quadratic))
    la.append(0.5 * (float(g.loss_a) + float(g.loss_c)))
    lm.append(float(g.loss_mid))
  gap, quad = float(np.mean(gaps)), float(np.mean(quads))
  return {
    "gap": gap,
    "quadratic": quad,
    "ratio": gap / quad if quad > 0 else None,
    "gap_per_batch": gaps,
    "quadratic_per_batch": quads,
    "pair_mean_loss": float(np.mean(la)),
    "midpoint_loss": float(np.mean(lm)),
  }
