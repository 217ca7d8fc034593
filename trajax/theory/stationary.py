"""Stationary closed forms of the averaged iterate (paper A.2, eqs. 12-13, 19-21).

Float64 NumPy: eq. 21's G1, G2 cancel badly in float32. The kernel μ of a
method on lags, μ_k = the weight of u_{t−k} in the stationary average, is the
method's derived kernel (:func:`trajax.averaging.kernel`) reversed, after the
method's memory (or a given window): nothing here is specific to one method,
except the closed forms the methods register (:mod:`trajax.kernels`).
"""

from __future__ import annotations

import numbers

import numpy as np

from trajax import averaging
from trajax.theory.model import check_batch_size

# Not averaging methods, but accepted by the stationary functions: plain SGD
# and an explicit kernel.
_EXTRA = ("sgd", "kernel")


def check_lr_kappa(lr, kappa):
  """λ and κ as float64, each > 0 and λκ < 2 (a stationary state exists)."""
  lr = np.asarray(lr, np.float64)
  kappa = np.asarray(kappa, np.float64)
  x = lr * kappa
  if np.any(~(lr > 0)):
    raise ValueError(f"lr must be > 0, got {lr.min() if lr.size else lr!r}")
  if np.any(~(kappa > 0)):
    raise ValueError(f"kappa must be > 0 for a stationary state, got min {kappa.min()}")
  if np.any(x >= 2):
    raise ValueError(
      f"lr * kappa must be < 2 for SGD to be stable (|1 − λκ| < 1), got max {x.max()}"
    )
  return lr, kappa


def _window(window) -> int | None:
  if window is None:
    return None
  if (
    isinstance(window, bool) or not isinstance(window, (numbers.Integral, np.integer)) or window < 1
  ):
    raise ValueError(f"window must be an integer >= 1, got {window!r}")
  return int(window)


def _resolve(method: str, params: dict):
  """(Method, checked params without start_step, window) for a registered method."""
  if method not in averaging.METHODS:
    raise ValueError(
      f"method must be one of {list(_EXTRA) + list(averaging.METHODS)}, got {method!r}"
    )
  params = dict(params)
  window = _window(params.pop("window", None))
  params.pop("start_step", None)  # the stationary state forgets when averaging began
  given = averaging.check_params(method, params)
  return averaging.METHODS[method], params, given, window


def averaging_kernel(method: str, *, window=None, kernel=None, **params) -> np.ndarray:
  """μ_k, the weight of u_{t−k} in the stationary average (A.2), k = 0, 1, ….

  'sgd' / 'none': [1]; 'kernel': the given array; a registered method: its
  derived kernel (:func:`trajax.averaging.kernel`) after ``window`` steps
  (default: the method's memory, after which the kernel no longer changes
  to 1e-12), reversed. So 'ema' gives δ(1−δ)^k (truncated where the tail is
  below 1e-12), 'swa' with window w gives 1/w for k < w (the mean of the
  last w iterates), 'two_point' ½ at 0 and gap, 'multi_point' 1/n at 0, gap,
  …, (n−1)·gap — and a newly registered method its own.
  """
  if method in ("sgd", "none"):
    if params or window is not None or kernel is not None:
      raise ValueError(f"method {method!r} takes no parameters")
    return np.ones(1)
  if method == "kernel":
    mu = np.asarray(kernel, np.float64)
    if mu.ndim != 1 or mu.size == 0:
      raise ValueError(f"kernel must be a non-empty 1-D array of μ_k, got {kernel!r}")
    return mu
  if kernel is not None:
    raise ValueError(f"kernel= is for method 'kernel', not {method!r}")
  m, params, given, window = _resolve(method, dict(params, window=window))
  if window is None:
    window = m.memory(given)
    if window is None:
      raise ValueError(
        f"method {method!r} needs window (its kernel never stops changing): the "
        "stationary average over the last window steps"
      )
  return averaging.kernel(method, window=window, **params)[::-1].copy()


def _bracket(gamma, method, params) -> np.ndarray:
  """C_0 + 2Σ_{δ≥1} C_δ Γ^δ of eq. 19 for the method's kernel."""
  if method in ("sgd", "none", "kernel"):
    mu = averaging_kernel(method, **params)
  else:
    m, rest, given, window = _resolve(method, params)
    if m.bracket is not None:
      fast = m.bracket(gamma, given, window)
      if fast is not None:
        return np.asarray(fast, np.float64)
    mu = averaging_kernel(method, window=window, **rest)
  corr = np.correlate(mu, mu, "full")[mu.size - 1 :]  # C_δ, δ = 0 … K−1
  coeffs = np.concatenate([corr[:1], 2 * corr[1:]])
  return np.polynomial.polynomial.polyval(gamma, coeffs)


def stationary_variance(
  lr, kappa, method: str = "sgd", *, batch_size: float = 1, **method_params
) -> np.ndarray:
  """Per-mode stationary variance of the (averaged) iterate for unit noise (eq. 19).

  F = S_λ (C_0 + 2Σ_δ C_δ Γ^δ), S_λ = λ/(2κ − λκ²), Γ = 1 − λκ: exact in the
  stationary limit (module docstring). Any registered averaging method works:
  its kernel is derived from its averager (:func:`averaging_kernel`) and
  summed directly; where the method registers a closed form it is used
  instead: 'ema' (decay δ, μ_k = δ(1−δ)^k) the geometric sum; 'two_point'
  (gap Δ) eq. 20, S_λ(1 + Γ^Δ)/2; 'multi_point' (n, gap) eq. 21 with A.4's
  G1, G2; 'swa' (window w: the mean of the last w iterates) the same sums
  with n = w, Δ = 1. 'sgd' ('none') is F = S_λ; 'kernel' takes an arbitrary
  finite μ_0 … μ_{K−1}. For a mode with noise variance c multiply by c.
  With ``batch_size`` B the unit noise is one example's and the batch's is
  1/B, so F scales by 1/B (see :func:`trajax.theory.batch_vs_lr`).

  Args:
    lr: λ > 0 (broadcasts with kappa).
    kappa: κ > 0, eigenvalues of A (Ω); λκ < 2.
    method: 'sgd' (= 'none'), 'kernel', or a registered averaging method.
    **method_params: the averager's parameters (``start_step`` is ignored:
      the stationary state does not depend on it), plus ``window`` (the
      kernel after that many steps; default the method's memory, e.g. EMA's
      to 1e-12; SWA needs one), or ``kernel`` for 'kernel'.

  Returns:
    float64 array of the broadcast shape of lr and kappa.

  Example:

    Plain SGD's S_λ = λ/(2κ − λκ²), and the two-point average with Γ^Δ ≈ 0
    halves it (eq. 20):

    >>> from trajax import theory
    >>> print(round(float(theory.stationary_variance(0.1, 1.0)), 6), round(0.1 / 1.9, 6))
    0.052632 0.052632
    >>> print(round(float(theory.stationary_variance(0.1, 1.0, "two_point", gap=100)), 6))
    0.026316
  """
  lr, kappa = check_lr_kappa(lr, kappa)
  gamma = 1.0 - lr * kappa
  s = lr / (kappa * (2.0 - lr * kappa))
  return s * _bracket(gamma, method, method_params) / check_batch_size(batch_size)


def effective_lr(lr, kappa, method: str, *, exact: bool = True, **method_params) -> np.ndarray:
  """The plain-SGD learning rate whose stationary variance is the averaged one.

  exact=True solves S_λ̂(κ) = F: λ̂ = 2κF/(1 + κ²F). exact=False returns
  λ · F/S_λ, the paper's form, which for 'two_point' is eq. 20,
  λ̂ = λ(1 + (1 − λκ)^Δ)/2; the two agree to first order in λκ.
  """
  f = stationary_variance(lr, kappa, method, **method_params)
  lr, kappa = np.asarray(lr, np.float64), np.asarray(kappa, np.float64)
  if exact:
    return 2 * kappa * f / (1 + kappa * kappa * f)
  return lr * f / stationary_variance(lr, kappa, "sgd")


def shell_radius(lr, kappa=1.0, noise_var=1.0, *, leading_order: bool = False) -> np.ndarray:
  """Lemma 1: the radius √E‖θ‖² of the stationary shell of plain SGD.

  E‖θ‖² = Σ_i c_i λ/(2κ_i − λκ_i²) over the modes (κ_i, c_i) (eq. 12 with
  γ = κ); for A = I this is λE‖ξ‖²/(2 − λ), and to leading order
  E‖ξ‖²·λ/2, i.e. ‖θ‖ = √(E‖ξ‖²)·√(λ/2) (eq. 13), which grows as √λ. Eq. 13
  writes ‖c‖ for √(E‖ξ‖²) and the proof E[γ_x|θ] = I for the scalar 1. In
  high dimension ‖θ‖ concentrates at this radius (the shell).

  Args:
    lr: λ, any shape.
    kappa, noise_var: per-mode κ_i and c_i, broadcast to a common (d,) (the
      last axis is summed).
    leading_order: use λ/(2κ) (eq. 13) instead of λ/(2κ − λκ²).

  Returns:
    float64 array of lr's shape.

  Example:

    For A = I in d = 100 dimensions the radius is √(dλ/(2 − λ)):

    >>> import numpy as np
    >>> from trajax import theory
    >>> print(round(float(theory.shell_radius(0.02, np.ones(100))), 4))
    1.005
    >>> print(round(float(np.sqrt(100 * 0.02 / 1.98)), 4))
    1.005
  """
  lr = np.asarray(lr, np.float64)
  kappa, noise_var = np.broadcast_arrays(
    np.atleast_1d(np.asarray(kappa, np.float64)), np.atleast_1d(np.asarray(noise_var, np.float64))
  )
  if np.any(noise_var < 0):
    raise ValueError(f"noise_var must be >= 0, got min {noise_var.min()}")
  lam = lr[..., None]
  if leading_order:
    if np.any(~(lr > 0)) or np.any(~(kappa > 0)):
      raise ValueError("lr and kappa must be > 0")
    per_mode = lam / (2 * kappa)
  else:
    per_mode = stationary_variance(lam, kappa)
  return np.sqrt((noise_var * per_mode).sum(-1))
