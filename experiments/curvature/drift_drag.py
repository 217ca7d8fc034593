"""Study 4: drift and drag of the updates around the running average (paper Fig. 4a).

After a quasi-stationary constant-rate side-trip of :mod:`experiments.curvature.shell`,
each further update is split into its component toward the centre (drag,
Sec. 4's -lambda gamma theta) and the orthogonal remainder (drift, Sec. 4's
xi); Fig. 4's caption: |drag| ~ sqrt(lambda), drift ~ lambda. Claim
``curv.drift_drag``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["drift_drag"]


def drift_drag(runner, centre, steps: int) -> dict:
  """Splits ``steps`` further updates of ``runner`` into drag and drift (paper Fig. 4a).

  The quasi-stationary centre c is the running average of the trip's samples
  over its second half (both batch orders, the shell's measurement times).
  For each update Delta_t = theta_{t+1} - theta_t, with r_t = (c - theta_t) /
  |c - theta_t|: drag_t = <Delta_t, r_t> (the pull back toward the centre,
  Sec. 4's -lambda gamma theta), drift_t = |Delta_t - drag_t r_t| (the
  orthogonal remainder, Sec. 4's xi). Fig. 4's caption: |drag| ~ sqrt(lambda),
  drift ~ lambda.
  """
  from jax.flatten_util import ravel_pytree

  prev = np.asarray(ravel_pytree(runner.params)[0], np.float64)
  drag, drift, size = [], [], []
  for _ in range(steps):
    runner.advance_to(runner.step + 1)
    cur = np.asarray(ravel_pytree(runner.params)[0], np.float64)
    delta, r = cur - prev, centre - prev
    r = r / np.linalg.norm(r)
    g = float(delta @ r)
    drag.append(g)
    drift.append(float(np.linalg.norm(delta - g * r)))
    size.append(float(np.linalg.norm(delta)))
    prev = cur
  return {
    "steps": steps,
    "centre": "mean of the trip's samples over its second half, both batch orders",
    "mean_drag": float(np.mean(drag)),
    "mean_abs_drag": float(np.mean(np.abs(drag))),
    "mean_drift": float(np.mean(drift)),
    "mean_update_norm": float(np.mean(size)),
  }
