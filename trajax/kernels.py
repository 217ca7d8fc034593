"""Closed forms of averaging kernels: the registered fast paths of :mod:`trajax.averaging`.

Every quantity here is also *derived* by running the averager itself
(:func:`trajax.averaging.kernel`); these formulas are faster for long windows
and, where the derivation would cancel, more accurate. Each is tested against
the derivation (``tests/test_averaging_methods.py``). A closed form returns
None where its method's parameters fall outside the case it covers; the caller
then derives.

Notation as in :mod:`trajax.schedules`: the kernel c on θ_s … θ_{s+k} of the
average after k steps, the step weights w_j = Σ_{i>j} c_i, j = 0 … k−1; and,
for the stationary theory (:mod:`trajax.theory`, paper A.2), the bracket
C_0 + 2 Σ_{δ≥1} C_δ Γ^δ of eq. 19 with C_δ = Σ_k μ_k μ_{k+δ} and μ the kernel
on lags (μ_k = c_{k_max − k}).
"""

from __future__ import annotations

import numpy as np

__all__ = [
  "comb_sum",
  "ema_bracket",
  "ema_step_weights",
  "multi_point_bracket",
  "multi_point_step_weights",
  "power_ema_step_weights",
  "swa_bracket",
  "swa_step_weights",
  "two_point_bracket",
]


def _plain(params: dict, **expected) -> bool:
  """True when the optional parameters have the values a closed form assumes."""
  return all(params.get(name, value) == value for name, value in expected.items())


def ema_step_weights(window: int, params: dict) -> np.ndarray | None:
  """EMA (every=1, debias=False, start_step=0): w_j = 1 − (1 − δ)^{k−j} (eq. 29).

  Via expm1/log1p, so a small δ keeps its digits.
  """
  if not _plain(params, every=1, debias=False, start_step=0):
    return None
  j = np.arange(window)
  with np.errstate(divide="ignore"):  # δ = 1: log1p(−1) = −inf, and w_j = 1 exactly
    return -np.expm1((window - j) * np.log1p(-float(params["decay"])))


def power_ema_step_weights(window: int, params: dict) -> np.ndarray | None:
  """Power EMA (every=1, start_step=0): w_j = 1 − (j/k)^{γ+1}.

  With c_i = (i^{γ+1} − (i−1)^{γ+1})/k^{γ+1} (i ≥ 1, c_0 = 0) the tail sum
  telescopes: Σ_{i>j} c_i = (k^{γ+1} − j^{γ+1})/k^{γ+1}. Via expm1/log so
  (j/k)^{γ+1} near 1 keeps its digits.
  """
  if not _plain(params, every=1, start_step=0):
    return None
  j = np.arange(window, dtype=np.float64)
  with np.errstate(divide="ignore"):  # j = 0: log 0 = −inf, w_0 = 1 exactly
    return -np.expm1((float(params["gamma"]) + 1) * np.log(j / window))


def swa_step_weights(window: int, params: dict) -> np.ndarray | None:
  """SWA (every=1, start_step=0), the mean of θ_{s+1} … θ_{s+k}: w_j = (k − j)/k."""
  if not _plain(params, every=1, start_step=0):
    return None
  return (window - np.arange(window)) / window


def multi_point_step_weights(window: int, params: dict) -> np.ndarray | None:
  """n points ``gap`` apart over k = (n − 1)·gap: w_j = (n − 1 − ⌊j/gap⌋)/n.

  Two-point is n = 2: w_j = 1/2. The staircase of n − 1 stairs.
  """
  n, gap = int(params.get("n", 2)), int(params["gap"])
  if not _plain(params, start_step=0) or window != (n - 1) * gap:
    return None
  return (n - 1 - np.arange(window) // gap) / n


def comb_sum(r, n: int) -> np.ndarray:
  """(1/n²) Σ_{k,l<n} r^{|k−l|} = 1/n + (2/n)(G1 − G2/n)   (eq. 21, r = Γ^Δ).

  G1 = r(1 − r^{n−1})/(1 − r), G2 = r(1 − n r^{n−1} + (n−1) r^n)/(1 − r)²
  (A.4). Near r = 1 the closed form cancels (relative error ≈ ε/(n(1 − r)²)),
  so it is used only where n(1 − r)² >= 1e-4; where n·a < 1e-3 (a = −ln r)
  the expansion Σ_{k,l} r^{|k−l|} = n² − a n(n²−1)/3 + a² n²(n²−1)/12 + O(a³n⁵)
  is; in between, the direct sum n + 2Σ_m (n − m) r^m (positive terms, Horner).
  """
  r = np.asarray(r, np.float64)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    one_minus = 1.0 - r
    rn1 = r ** (n - 1)
    g1 = r * (1 - rn1) / one_minus
    g2 = r * (1 - n * rn1 + (n - 1) * rn1 * r) / one_minus**2
    closed = 1.0 / n + (2.0 / n) * (g1 - g2 / n)
    a = -np.log(np.where(r > 0, r, 1.0))
    series = (n * n - a * n * (n * n - 1) / 3 + a * a * n * n * (n * n - 1) / 12) / n**2
  use_closed = (r <= 0) | (n * one_minus**2 >= 1e-4)
  use_series = ~use_closed & (n * a < 1e-3)
  out = np.where(use_closed, closed, series)
  middle = ~use_closed & ~use_series
  if np.any(middle):
    coeffs = np.concatenate([[n], 2.0 * (n - np.arange(1, n))]) / n**2
    out = np.where(middle, np.polynomial.polynomial.polyval(np.where(middle, r, 0.0), coeffs), out)
  return out


def ema_bracket(gamma, params: dict, window: int | None) -> np.ndarray | None:
  """EMA's stationary kernel μ_k = δ(1−δ)^k (every=1, the infinite window).

  Geometric sums give C_δ = δ²ρ^δ/(1 − ρ²) with ρ = 1 − δ, so the bracket is
  δ/(2 − δ) · (1 + ργ)/(1 − ργ); 1 − ργ = δ + λκ − δλκ without cancellation.
  (Debiasing only changes the early average, not the stationary one.)
  """
  if window is not None or not _plain(params, every=1):
    return None
  delta = float(params["decay"])
  lam_kappa = 1.0 - gamma
  return delta / (2 - delta) * (1 + (1 - delta) * gamma) / (delta + lam_kappa - delta * lam_kappa)


def two_point_bracket(gamma, params: dict, window: int | None) -> np.ndarray | None:
  """Eq. 20: (1 + Γ^Δ)/2 for (θ_t + θ_{t−Δ})/2."""
  gap = int(params["gap"])
  if window not in (None, gap):
    return None
  return (1 + gamma**gap) / 2


def multi_point_bracket(gamma, params: dict, window: int | None) -> np.ndarray | None:
  """Eq. 21 with A.4's G1, G2: n points Δ apart, comb_sum(Γ^Δ, n)."""
  n, gap = int(params["n"]), int(params["gap"])
  if window not in (None, (n - 1) * gap):
    return None
  return comb_sum(gamma**gap, n)


def swa_bracket(gamma, params: dict, window: int | None) -> np.ndarray | None:
  """The mean of the last w iterates (SWA over a window w, every=1): comb_sum(Γ, w)."""
  if window is None or not _plain(params, every=1):
    return None
  return comb_sum(gamma, int(window))
