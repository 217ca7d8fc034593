"""The quadratic model of SGD (paper Section 4, Appendix A) and its exact moments.

The model (eq. 14, the finite-batch form of eq. 5): every batch has the same
curvature A (symmetric, positive definite; the paper's ⟨A_xᵀA_x⟩) and its own
linear term b_t ~ N(0, C), so

    θ_{t+1} = θ_t − λ_t (A θ_t + b_t),           L(θ) = ½ θᵀAθ.

L is the excess of the expected loss over its minimum. (Eq. 1 prints
θᵀE[AᵀA]θ without the ½ that L(θ, x) = ‖A_xθ + c_x‖²/2 gives; we keep it.)
Writing b_t = −Q ξ_t with QQᵀ = C and θ = Qu gives eq. 15,
u_{t+1} = (I − λΩ)u_t + λξ_t with Ω = Q⁻¹AQ (Appendix A.1, :func:`whiten`).

Degrees of freedom. The dynamics decouple in the eigenbasis of A,
A = V diag(κ) Vᵀ: the mode v = Vᵀθ follows v_{t+1} = (1 − λκ)v_t + λ√c·ξ_t
with c = (VᵀCV)_ii, the noise variance of the mode. The modes' noises are
correlated when A and C do not commute, but the loss ½Σκ_i v_i² needs only
each mode's own variance, which depends on its own c alone. So every loss in
this module is exact for full A and C with per-mode κ and c (:func:`modes`);
the paper's per-eigenvalue formulas (eqs. 19-21) are stated for unit noise
and scale with c. (Ω = Q⁻¹AQ of A.1 is symmetric only when A and C commute,
so its eigenbasis is not orthogonal in general; the eigenbasis of A is.)

Averaging. Any method of :mod:`trajax.averaging` is a linear filter of the
trajectory, so simulation runs the very averager on the simulated θ_t, and
:func:`expected_loss` folds the averager's state into the state of a linear
Gaussian system whose second moments evolve exactly.

Stationary averaged variance (Appendix A.2). With Γ = 1 − λκ and the averaged
iterate û_t = Σ_k μ_k u_{t−k} (kernel μ on lags k ≥ 0), eq. 19 is

    F = S_λ (C_0 + 2 Σ_{δ≥1} C_δ Γ^δ),   S_λ = λ/(2κ − λκ²),   C_δ = Σ_k μ_k μ_{k+δ},

and it is exact in the stationary limit for a single mode (the stationary
autocovariance of u is S_λ Γ^{|δ|}, so Var û = S_λ Σ_{k,l} μ_k μ_l Γ^{|k−l|});
the paper's ≈ only reflects the limit T → ∞. Paper typos, stated rather than
copied: "the coefficient of 2 emerges because C_δ = −C_δ" means C_{−δ} = C_δ;
A.2 calls κ an eigenvalue of Γ in places where it is one of Ω (as in eq. 20),
and the averaging time that matters is compared with 1/(λκ), not 1/κ.

Batch size: ``noise_cov`` is per example and the batch's is C/B with
``batch_size=B`` (:func:`simulate`, :func:`expected_loss`,
:func:`stationary_variance`); :mod:`trajax.theory.batch_size` compares
"λ at batch kB" with "λ/k at batch B" exactly (:func:`batch_vs_lr`).

Layout: :mod:`trajax.theory.model` (A, C, the modes), ``monte_carlo``
(:func:`simulate`), ``moments`` (:func:`expected_loss`) and ``stationary``
(eqs. 12-13, 19-21). Every averaging method enters through its one
definition in :data:`trajax.averaging.METHODS`: simulation and moments run
its averager, the stationary forms use its derived kernel (or a closed form
it registers), so a newly registered method needs nothing here.
"""

from trajax.theory.batch_size import BatchVsLr, batch_vs_lr
from trajax.theory.model import LearningRate, Modes, batch_noise_cov, modes, whiten
from trajax.theory.moments import LossCurves, expected_loss
from trajax.theory.monte_carlo import SimulationResult, simulate
from trajax.theory.stationary import (
  averaging_kernel,
  effective_lr,
  shell_radius,
  stationary_variance,
)

__all__ = [
  "BatchVsLr",
  "LearningRate",
  "LossCurves",
  "Modes",
  "SimulationResult",
  "averaging_kernel",
  "batch_noise_cov",
  "batch_vs_lr",
  "effective_lr",
  "expected_loss",
  "modes",
  "shell_radius",
  "simulate",
  "stationary_variance",
  "whiten",
]
