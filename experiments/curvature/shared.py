"""What the curvature studies share: the probes at one point and the window's length.

:func:`measure` is what every point of :mod:`experiments.curvature` gets
(the trajectory's checkpoints, the last window's raw, averaged and side-trip
points): the top-k eigenvalues of the training-batch Hessian (Lanczos), its
trace (Hutchinson, with a standard error) and eps_max = |g_b|^2 /
(g_b^T H_b g_b), on each of the given batches, with their means.
"""

from __future__ import annotations

import numpy as np

from experiments import evaluation

__all__ = ["measure", "window_length"]


def window_length(config, exp) -> int:
  """k of the last window [T - k, T]: ``exp.window``, default ``averaging.gap``, in [1, T)."""
  T = int(config.total_steps)
  k = int(exp.window if exp.window is not None else config.averaging.gap)
  if not 1 <= k < T:
    raise ValueError(
      f"exp.window (default averaging.gap) must lie in [1, total_steps={T}), got {k}"
    )
  return k


def measure(loss_fn, params, batch_stats, batches, exp, key) -> dict:
  """Top-k eigenvalues, Hutchinson trace and eps_max of ``params`` on each batch."""
  import jax

  from trajax import probes

  out = {"eigenvalues": [], "trace": [], "trace_stderr": [], "eps_max": [], "residuals": []}
  for i, b in enumerate(batches):
    bb = evaluation.with_batch_stats(b, batch_stats)
    kb = jax.random.fold_in(key, i)
    eig = probes.hessian_top_eigs(
      loss_fn, params, bb, int(exp.k), key=kb, num_iters=int(exp.lanczos_iters)
    )
    tr = probes.hutchinson_trace(
      loss_fn, params, bb, int(exp.probes), key=jax.random.fold_in(kb, 1)
    )
    em = probes.epsilon_max(loss_fn, params, bb)
    out["eigenvalues"].append(np.asarray(eig.eigenvalues).tolist())
    out["residuals"].append(np.asarray(eig.residuals).tolist())
    out["trace"].append(float(tr.trace))
    out["trace_stderr"].append(float(tr.stderr))
    out["eps_max"].append(float(em.eps_max))
  lam = np.asarray(out["eigenvalues"])
  se = np.asarray(out["trace_stderr"])
  out["lambda_max"] = float(lam[:, 0].mean())
  out["lambda_max_spread"] = float(lam[:, 0].std(ddof=1)) if len(batches) > 1 else 0.0
  out["trace_mean"] = float(np.mean(out["trace"]))
  # SE of the batch mean from the probes alone (batches' own spread is reported separately).
  out["trace_mean_stderr"] = float(np.sqrt(np.sum(se**2)) / len(batches))
  out["eps_max_mean"] = float(np.mean(out["eps_max"]))
  return out
