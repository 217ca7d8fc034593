"""Growing the batch vs decaying the learning rate, in the quadratic model (eq. 14).

A batch of B examples averages B independent per-example gradients, so the
noise term b_t of eq. 14 has covariance C/B (C: one example's). Per mode
(curvature κ, per-example noise variance c), v_{t+1} = (1 − λκ) v_t + λ√(c/B) ξ_t.
Compare "λ at batch kB" (L) with "λ/k at batch B" (S), both for k > 1 (Smith
et al. 2018, "Don't decay the learning rate, increase the batch size"):

Stationary level (exact, eqs. 12-13 with C/B):

    F_L = c·S_λ/(kB) = c·λ / (kB·κ(2 − λκ)),
    F_S = c·S_{λ/k}/B = c·λ / (kB·κ(2 − λκ/k)),
    F_L / F_S = (2 − λκ/k) / (2 − λκ)  ≥ 1.

They AGREE to leading order in λκ (the SDE limit: same noise scale λ/B,
the temperature of Smith and Le 2018) and differ at O(λκ): the large batch
sits slightly higher, by (1 + λκ(1 − 1/k)/2 + …), most on stiff modes.

Speed (transient, the mean E v_t = Γ^t v_0): per step, L contracts by
Γ_L = 1 − λκ and S by Γ_S = 1 − λκ/k, so along slow directions (λκ ≪ 1) L is
k times faster per STEP (rate −log Γ ≈ λκ vs λκ/k). Per EXAMPLE seen (L uses
kB per step, S uses B) the rates are −log(1 − λκ)/(kB) and −log(1 − λκ/k)/B,
equal to leading order, λκ/(kB), along slow directions: they DIFFER per step
and AGREE per example. On stiff modes (0 < λκ < 1) L is somewhat faster per
example (−log(1 − x) is convex and 0 at 0, so −log(1 − x)/k ≥ −log(1 − x/k))
and settles somewhat higher (the variance ratio) — see
:func:`batch_vs_lr`, which returns all four numbers exactly.

:func:`trajax.theory.expected_loss` and :func:`trajax.theory.simulate` take
``batch_size`` (noise_cov per example), so whole loss curves of the two
regimes compare exactly, per step or per example.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from trajax.theory.model import check_batch_size
from trajax.theory.stationary import check_lr_kappa


class BatchVsLr(NamedTuple):
  """ "λ at batch kB" (large) vs "λ/k at batch B" (small), per mode, unit per-example noise.

  Attributes:
    variance_large, variance_small: stationary variances F_L, F_S.
    variance_ratio: F_L / F_S = (2 − λκ/k)/(2 − λκ).
    rate_per_step_large, rate_per_step_small: −log|Γ| of the mean's contraction.
    rate_per_example_large, rate_per_example_small: the same divided by the
      examples per step (kB and B).
  """

  variance_large: np.ndarray
  variance_small: np.ndarray
  variance_ratio: np.ndarray
  rate_per_step_large: np.ndarray
  rate_per_step_small: np.ndarray
  rate_per_example_large: np.ndarray
  rate_per_example_small: np.ndarray


def batch_vs_lr(lr, kappa, k, *, batch_size: float = 1) -> BatchVsLr:
  """The exact comparison of the module docstring for learning rate λ, curvature κ, factor k.

  Args:
    lr: λ, the large-batch learning rate (λκ < 2); broadcasts with kappa.
    kappa: κ > 0.
    k: the batch growth factor = learning-rate decay factor, k >= 1.
    batch_size: B, the small batch.
  """
  lr, kappa = check_lr_kappa(lr, kappa)
  k = float(k)
  if not k >= 1:
    raise ValueError(f"k must be >= 1 (batch kB vs learning rate λ/k), got {k!r}")
  b = check_batch_size(batch_size)
  x = lr * kappa
  s_large = lr / (kappa * (2 - x)) / (k * b)
  s_small = (lr / k) / (kappa * (2 - x / k)) / b
  step_l = -np.log(np.abs(1 - x))
  step_s = -np.log(np.abs(1 - x / k))
  return BatchVsLr(
    s_large, s_small, s_large / s_small, step_l, step_s, step_l / (k * b), step_s / b
  )
