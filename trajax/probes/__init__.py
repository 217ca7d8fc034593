"""Probes of the loss landscape along a training trajectory (paper Sections 3, 5).

Every probe is a pure, jitted function of a ``loss_fn(params, batch) -> scalar``
and pytrees of parameters, so it works on any Flax model: close over
``model.apply``, batch statistics and RNGs to build ``loss_fn``. ``loss_fn`` is a
static argument (hashed by identity): keep one function object to reuse the
compiled probe. Sequences of parameters or batches are pytrees stacked on a
leading axis.

=================  ==================  ===============================================
module             paper               measures
=================  ==================  ===============================================
``step_size``      Fig. 2, 12, 13      loss after one step vs step size, on the step's
                                       batch and held-out batches
``interpolation``  Fig. 3              fixed-batch GD side-trips from two points, loss
                                       along their interpolation
``alignment``      Fig. 7              cosine / norm ratio of fixed-batch gradients
                                       along side-trips
``distances``      Fig. 6, 8           L2 distances between parameter pytrees and
                                       along trajectories
``noise_scale``    companion notes     B_simple = tr(Sigma)/abs(G)^2 and
                                       eps_max = abs(G)^2/(G^T H G)
``curvature``      Sec. 4 (Lemma 1),   top-k Hessian eigenpairs (Lanczos), trace
                   companion notes     (Hutchinson)
=================  ==================  ===============================================
"""

from trajax.probes.alignment import (
  Alignment,
  cosine_similarity,
  gradient_alignment,
  independent_batch_cosine,
  norm_ratio,
  parallel_gradient_cosine,
)
from trajax.probes.curvature import (
  HessianEigs,
  HutchinsonTrace,
  LanczosResult,
  MidpointGap,
  hessian_top_eigs,
  hutchinson_trace,
  lanczos,
  midpoint_gap,
  num_params,
)
from trajax.probes.distances import (
  distance_sequence,
  l2_distance,
  pairwise_distance_sequence,
  relative_distance,
  tree_dot,
  tree_norm,
  tree_sq_norm,
)
from trajax.probes.interpolation import (
  InterpolationResult,
  fixed_batch_gd,
  gd_trajectory,
  interpolate,
  interpolation_losses,
  run_sidetrip_interpolation,
  sidetrip_interpolation,
)
from trajax.probes.noise_scale import (
  EpsilonMax,
  NoiseScale,
  batch_grad_sq_norms,
  epsilon_max,
  estimate_noise_scale,
  hvp,
  noise_scale_from_sq_norms,
  optimal_step_size,
)
from trajax.probes.step_size import (
  HeldoutStats,
  OneStepSummary,
  PolynomialFit,
  StepSizeCurve,
  StepSizeReport,
  fit_polynomial,
  heldout_stats,
  report_to_dict,
  run_step_size_probe,
  single_step_losses,
  summarize_curve,
  sweep_step_size_probe,
)

__all__ = [
  "Alignment",
  "EpsilonMax",
  "HeldoutStats",
  "HessianEigs",
  "HutchinsonTrace",
  "InterpolationResult",
  "LanczosResult",
  "MidpointGap",
  "NoiseScale",
  "OneStepSummary",
  "PolynomialFit",
  "StepSizeCurve",
  "StepSizeReport",
  "batch_grad_sq_norms",
  "cosine_similarity",
  "distance_sequence",
  "epsilon_max",
  "estimate_noise_scale",
  "fit_polynomial",
  "fixed_batch_gd",
  "gd_trajectory",
  "gradient_alignment",
  "heldout_stats",
  "hessian_top_eigs",
  "hutchinson_trace",
  "hvp",
  "independent_batch_cosine",
  "interpolate",
  "interpolation_losses",
  "l2_distance",
  "lanczos",
  "midpoint_gap",
  "noise_scale_from_sq_norms",
  "norm_ratio",
  "num_params",
  "optimal_step_size",
  "pairwise_distance_sequence",
  "parallel_gradient_cosine",
  "relative_distance",
  "report_to_dict",
  "run_sidetrip_interpolation",
  "run_step_size_probe",
  "sidetrip_interpolation",
  "single_step_losses",
  "summarize_curve",
  "sweep_step_size_probe",
  "tree_dot",
  "tree_norm",
  "tree_sq_norm",
]
