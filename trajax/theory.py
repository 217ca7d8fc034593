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
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trajax import averaging

__all__ = [
  "STATIONARY_METHODS",
  "LossCurves",
  "Modes",
  "SimulationResult",
  "averaging_kernel",
  "effective_lr",
  "expected_loss",
  "modes",
  "shell_radius",
  "simulate",
  "stationary_variance",
  "whiten",
]

STATIONARY_METHODS = ("sgd", "ema", "swa", "two_point", "multi_point", "kernel")

LearningRate = float | np.ndarray | jax.Array | Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------
# The model: curvature, noise, modes.


class Modes(NamedTuple):
  """The decoupled degrees of freedom: v = basisᵀθ, v_{t+1} = (1 − λκ)v + λ√c ξ.

  Attributes:
    kappa: (d,) curvatures κ_i (eigenvalues of A; A itself when diagonal).
    noise_var: (d,) c_i = (VᵀCV)_ii, the noise variance of each mode.
    basis: (d, d) orthonormal eigenvectors V as columns, or None when A is
      given as a diagonal (the modes are the coordinates).
  """

  kappa: np.ndarray
  noise_var: np.ndarray
  basis: np.ndarray | None


def _hessian(hessian) -> np.ndarray:
  a = np.asarray(hessian, np.float64)
  if a.ndim == 0:
    a = a.reshape(1)
  if a.ndim == 2:
    if a.shape[0] != a.shape[1]:
      raise ValueError(f"hessian must be (d,) or square (d, d), got shape {a.shape}")
    if not np.allclose(a, a.T, rtol=1e-6, atol=1e-12 * max(1.0, np.abs(a).max())):
      raise ValueError("hessian must be symmetric (A = ⟨A_xᵀA_x⟩ is)")
  elif a.ndim != 1:
    raise ValueError(f"hessian must be (d,) or square (d, d), got shape {a.shape}")
  return a


def _noise_cov(noise_cov, d: int) -> np.ndarray:
  """C as a (d,) diagonal or a (d, d) matrix (None: identity)."""
  if noise_cov is None:
    return np.ones(d)
  c = np.asarray(noise_cov, np.float64)
  if c.ndim == 0:
    c = np.full(d, float(c))
  if c.shape not in ((d,), (d, d)):
    raise ValueError(f"noise_cov must be a scalar, (d,) or (d, d) with d={d}, got shape {c.shape}")
  if c.ndim == 1 and np.any(c < 0):
    raise ValueError(f"noise_cov must be non-negative, got min {c.min()}")
  if c.ndim == 2:
    if not np.allclose(c, c.T, atol=1e-12 * max(1.0, np.abs(c).max())):
      raise ValueError("noise_cov must be symmetric")
    if np.linalg.eigvalsh(c).min() < -1e-10 * max(1.0, np.abs(c).max()):
      raise ValueError("noise_cov must be positive semi-definite")
  return c


def modes(hessian, noise_cov=None) -> Modes:
  """Eigen-decomposition of the model into decoupled modes (module docstring).

  Args:
    hessian: A, a (d,) diagonal or a symmetric (d, d) matrix.
    noise_cov: C, None (identity), a scalar, a (d,) diagonal or (d, d).
  """
  a = _hessian(hessian)
  d = a.shape[0]
  c = _noise_cov(noise_cov, d)
  if a.ndim == 1:
    return Modes(a, c if c.ndim == 1 else np.diagonal(c).copy(), None)
  kappa, v = np.linalg.eigh(a)
  cm = np.diag(c) if c.ndim == 1 else c
  return Modes(kappa, np.einsum("ik,ij,jk->k", v, cm, v), v)


def whiten(hessian, noise_cov) -> tuple[np.ndarray, np.ndarray]:
  """Appendix A.1: Q with QQᵀ = C (Cholesky) and Ω = Q⁻¹AQ.

  With θ = Qu and b = −Qξ, eq. 14 becomes eq. 15, u_{t+1} = (I − λΩ)u_t + λξ_t
  with white ξ. Ω has A's eigenvalues but is not symmetric unless A and C
  commute (module docstring). C must be positive definite.

  Returns:
    (omega, q), both (d, d) float64.
  """
  a = _hessian(hessian)
  a = np.diag(a) if a.ndim == 1 else a
  c = _noise_cov(noise_cov, a.shape[0])
  c = np.diag(c) if c.ndim == 1 else c
  try:
    q = np.linalg.cholesky(c)
  except np.linalg.LinAlgError:
    raise ValueError("whiten needs a positive definite noise_cov") from None
  return np.linalg.solve(q, a @ q), q


def _lr_table(lr: LearningRate, num_steps: int) -> tuple[jax.Array, bool]:
  """λ_t for t = 0 … T−1 as (T, L) float32, and whether lr had an L axis."""
  if callable(lr):
    table = jnp.asarray(lr(jnp.arange(num_steps)), jnp.float32)
    if table.ndim == 1 and table.shape[0] == num_steps:
      return table[:, None], False
    if table.ndim == 2 and table.shape[0] == num_steps:
      return table, True
    raise ValueError(
      f"lr schedule must return shape (num_steps,) or (num_steps, L) on "
      f"arange(num_steps), got {table.shape}"
    )
  arr = np.asarray(lr, np.float32)
  if arr.ndim > 1:
    raise ValueError(f"lr must be a scalar, a (L,) array or a schedule, got shape {arr.shape}")
  vector = arr.ndim == 1
  return jnp.broadcast_to(jnp.asarray(arr.reshape(-1)), (num_steps, arr.size)), vector


def _check_steps(num_steps, record_every):
  for name, value in (("num_steps", num_steps), ("record_every", record_every)):
    if (
      isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 1
    ):
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  if num_steps % record_every:
    raise ValueError(f"record_every={record_every} must divide num_steps={num_steps}")


def _groups(dof_groups, d: int) -> np.ndarray | None:
  """(d, G) 0/1 matrix: which group each degree of freedom adds to (None: G = d,
  one group per degree of freedom, no matmul needed)."""
  if dof_groups is None:
    return None
  g = np.asarray(dof_groups)
  if g.shape != (d,) or not np.issubdtype(g.dtype, np.integer) or (g.size and g.min() < 0):
    raise ValueError(
      f"dof_groups must be a (d,) array of group ids >= 0 with d={d}, got {dof_groups!r}"
    )
  return np.eye(int(g.max()) + 1, dtype=np.float32)[g]


# ----------------------------------------------------------------------------
# Monte Carlo.


class SimulationResult(NamedTuple):
  """Loss curves of simulated runs (leading L axis only when lr had one).

  Attributes:
    steps: (R,) the recorded steps t = 0, r, 2r, … (r = record_every).
    loss: (L, S, R) loss ½âᵀAâ of the averaged params per seed.
    loss_by_dof: (L, R, G) the same split by group of degrees of freedom
      (modes of A; one group per mode by default), mean over seeds.
    iterate_loss, iterate_loss_by_dof: the same for the iterate θ_t itself.
    params, average: (L, S, d) the final θ_T and average â_T.
  """

  steps: np.ndarray
  loss: jax.Array
  loss_by_dof: jax.Array
  iterate_loss: jax.Array
  iterate_loss_by_dof: jax.Array
  params: jax.Array
  average: jax.Array


def simulate(
  key: jax.Array,
  hessian,
  *,
  lr: LearningRate,
  num_steps: int,
  theta0=0.0,
  noise_cov=None,
  num_seeds: int = 1,
  method: str = "none",
  dof_groups=None,
  record_every: int = 1,
  **method_params,
) -> SimulationResult:
  """Monte Carlo runs of eq. 14, θ_{t+1} = θ_t − λ_t(Aθ_t − Qξ_t), ξ_t ~ N(0, I).

  Equivalently eq. 15 in whitened coordinates (:func:`whiten`); the sign of
  the noise follows A.1 (b = −Qξ). Seed s uses ``fold_in(key, s)`` and step t
  ``fold_in(·, t)``: its path does not depend on ``num_seeds``, and all
  learning rates see the same noise (common random numbers). The averager
  ``trajax.averaging.make_averager(method, **method_params)`` runs on θ_t.
  One ``jax.lax.scan`` over time; seeds and learning rates are batch axes.

  Args:
    key: a JAX PRNG key.
    hessian: A, a (d,) diagonal or symmetric (d, d).
    lr: a float, an (L,) array of constant rates (an L axis on the outputs),
      or a schedule of the step returning () or (L,) (called once on
      ``jnp.arange(num_steps)``, as optax schedules allow).
    num_steps: T.
    theta0: θ_0, a scalar or (d,).
    noise_cov: C: None (identity), a scalar, (d,) or (d, d).
    num_seeds: S.
    method: 'none', 'ema', 'swa', 'two_point' or 'multi_point'.
    dof_groups: optional (d,) group ids for ``loss_by_dof`` (modes in the order
      of :func:`modes`).
    record_every: record every r-th step (r must divide T).
    **method_params: the averaging parameters (decay, start_step, n, gap, …).

  Returns:
    :class:`SimulationResult`.
  """
  _check_steps(num_steps, record_every)
  if (
    isinstance(num_seeds, bool)
    or not isinstance(num_seeds, (numbers.Integral, np.integer))
    or num_seeds < 1
  ):
    raise ValueError(f"num_seeds must be an integer >= 1, got {num_seeds!r}")
  averaging.make_averager(method, **method_params)  # validates the parameters
  a = _hessian(hessian)
  d = a.shape[0]
  c = _noise_cov(noise_cov, d)
  m = modes(a, c)
  theta0 = np.broadcast_to(np.asarray(theta0, np.float32), (d,))
  lrs, has_l = _lr_table(lr, num_steps)
  groups = _groups(dof_groups, d)
  if c.ndim == 1:
    q = np.sqrt(c)
  else:  # Q with QQᵀ = C; eigh rather than Cholesky so a singular C works.
    w, u = np.linalg.eigh(c)
    q = u * np.sqrt(np.clip(w, 0, None))
  seed_keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_seeds))
  run = _cached(
    _simulator,
    method,
    method_params,
    record_every,
    a.ndim == 1,
    c.ndim == 1,
    m.basis is not None,
    groups is not None,
  )
  f32 = lambda x: jnp.asarray(np.zeros(0) if x is None else x, jnp.float32)
  (loss, by_dof, it_loss, it_by_dof), theta, avg = run(
    seed_keys, f32(theta0), f32(a), f32(q), f32(0.5 * m.kappa), f32(m.basis), f32(groups), lrs
  )
  squeeze = (lambda x: x) if has_l else (lambda x: x[0])
  return SimulationResult(
    steps=np.arange(0, num_steps + 1, record_every),
    loss=squeeze(jnp.moveaxis(loss, 0, -1)),
    loss_by_dof=squeeze(jnp.moveaxis(by_dof, 0, 1)),
    iterate_loss=squeeze(jnp.moveaxis(it_loss, 0, -1)),
    iterate_loss_by_dof=squeeze(jnp.moveaxis(it_by_dof, 0, 1)),
    params=squeeze(theta),
    average=squeeze(avg),
  )


def _cached(builder, method, method_params, *static):
  """builder(method, params_items, *static), cached when the parameters hash, so
  repeated calls with the same structure reuse one compiled function."""
  items = tuple(sorted(method_params.items()))
  try:
    return _BUILD_CACHE(builder, method, items, *static)
  except TypeError:  # unhashable parameter values (e.g. arrays): build afresh
    return builder(method, items, *static)


@functools.lru_cache(maxsize=64)
def _BUILD_CACHE(builder, method, items, *static):
  return builder(method, items, *static)


def _simulator(method, items, record_every, diagonal, noise_diagonal, rotate, grouped):
  """The jitted simulation for one structure; all arrays are arguments (not
  constants baked into the program, which would slow compilation)."""
  averager = averaging.make_averager(method, **dict(items))

  def run(seed_keys, theta0, hess, q, half_kappa, basis, groups, lrs):
    num_steps, num_l = lrs.shape
    num_seeds, d = seed_keys.shape[0], theta0.shape[0]

    def per_mode_loss(x):  # (L, S, d) -> (L, S, d)
      proj = x @ basis if rotate else x
      return half_kappa * proj * proj

    def summaries(x):
      per_mode = per_mode_loss(x)
      by_dof = per_mode.mean(1)
      return [per_mode.sum(-1), _to_groups(by_dof, groups, True) if grouped else by_dof]

    def record(theta, avg_state):
      it = summaries(theta)
      avg = it if avg_state.average is None else summaries(avg_state.average)
      return tuple(avg + it)

    def step(carry, t):
      theta, avg_state = carry
      noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), (d,)))(seed_keys)
      noise = noise * q if noise_diagonal else noise @ q.T
      drift = theta * hess if diagonal else theta @ hess
      lr_t = lrs[t][:, None, None]
      theta = theta - lr_t * (drift - noise[None])
      return (theta, averager.update(theta, avg_state)), None

    def chunk(carry, r):
      carry, _ = jax.lax.scan(step, carry, r * record_every + jnp.arange(record_every))
      return carry, record(*carry)

    theta = jnp.broadcast_to(theta0, (num_l, num_seeds, d))
    carry = (theta, averager.init(theta))
    first = record(*carry)
    carry, recs = jax.lax.scan(chunk, carry, jnp.arange(num_steps // record_every))
    recs = tuple(jnp.concatenate([f[None], r]) for f, r in zip(first, recs, strict=True))
    theta, avg_state = carry
    avg = theta if avg_state.average is None else avg_state.average
    return recs, theta, avg

  return jax.jit(run)


# ----------------------------------------------------------------------------
# Exact moments.


class LossCurves(NamedTuple):
  """Exact expected loss curves (leading L axis only when lr had one).

  Attributes:
    steps: (R,) recorded steps.
    loss: (L, R) E[½âᵀAâ] of the averaged params.
    loss_by_dof: (L, R, G) split by group of modes (one group per mode by default).
    iterate_loss, iterate_loss_by_dof: the same for θ_t.
  """

  steps: np.ndarray
  loss: jax.Array
  loss_by_dof: jax.Array
  iterate_loss: jax.Array
  iterate_loss_by_dof: jax.Array


def expected_loss(
  hessian,
  *,
  lr: LearningRate,
  num_steps: int,
  theta0=0.0,
  noise_cov=None,
  method: str = "none",
  dof_groups=None,
  record_every: int = 1,
  **method_params,
) -> LossCurves:
  """The exact E[L] curve of :func:`simulate`'s model, without sampling.

  Each mode is a scalar linear Gaussian system. Its state x = (v, the
  averager's float state) — (v, a) for EMA and SWA, (v, a, snapshots) for
  multi-point — moves as x_{t+1} = M_t x_t + λ_t√c·b_t ξ_t, where M_t, b_t
  are the averager's own update applied to v_{t+1} = Γ_t v_t + λ_t√c ξ_t
  (it is linear in θ), so the second moments P = E[xxᵀ] move exactly as

      P_{t+1} = M_t P_t M_tᵀ + λ_t² c b_t b_tᵀ    (Σ_{t+1} = Γ_t Σ_t Γ_tᵀ + λ_t² C per mode),

  and E[loss] = ½ Σ_i κ_i P_i[a, a]. For multi-point M_t P M_tᵀ is computed
  by running the averager itself on the columns of P (and once more on the
  rows); 'none', EMA and SWA (a ← (1 − w_t)a + w_t θ_t) take a fused path
  over the three moments of (v, a) with the weights w_t read off the
  averager. Modes with identical (κ, c, v_0) are computed once. Compiled
  functions are cached per structure. Same arguments as :func:`simulate`,
  without key and seeds; float32 throughout (relative error ~1e-5 against
  a float64 reference in the tests).

  Returns:
    :class:`LossCurves`.
  """
  _check_steps(num_steps, record_every)
  averaging.make_averager(method, **method_params)  # validates the parameters
  a = _hessian(hessian)
  d = a.shape[0]
  m = modes(a, noise_cov)
  theta0 = np.broadcast_to(np.asarray(theta0, np.float64), (d,))
  v0 = theta0 if m.basis is None else m.basis.T @ theta0
  lrs, has_l = _lr_table(lr, num_steps)
  groups = _groups(dof_groups, d)

  # Identical modes evolve identically: solve each distinct (κ, c, v0) once.
  rows = np.stack([m.kappa, m.noise_var, v0], axis=1)
  uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  multiplicity = np.bincount(inverse, minlength=len(uniq))
  if groups is None:  # one group per degree of freedom: a gather, no matmul
    to_groups = inverse
  else:
    to_groups = np.zeros((len(uniq), groups.shape[1]), np.float32)
    np.add.at(to_groups, inverse, groups)
  run = _cached(_moments, method, method_params, record_every, groups is not None)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  loss, by_dof, it_loss, it_by_dof = run(
    f32(uniq[:, 2]),
    f32(uniq[:, 0]),
    f32(uniq[:, 1]),
    f32(multiplicity),
    jnp.asarray(to_groups),
    lrs,
  )
  squeeze = (lambda x: x) if has_l else (lambda x: x[0])
  return LossCurves(
    steps=np.arange(0, num_steps + 1, record_every),
    loss=squeeze(loss.T),
    loss_by_dof=squeeze(jnp.moveaxis(by_dof, 0, 1)),
    iterate_loss=squeeze(it_loss.T),
    iterate_loss_by_dof=squeeze(jnp.moveaxis(it_by_dof, 0, 1)),
  )


def _moments(method, items, record_every, grouped):
  """The jitted second-moment recursion of :func:`expected_loss` for one structure."""
  if method in _LERP_METHODS:
    return _lerp_moments(method, items, record_every, grouped)
  averager = averaging.make_averager(method, **dict(items))

  def run(v0, kappa, noise_var, multiplicity, to_groups, lrs):
    num_steps, num_l = lrs.shape
    num_u = v0.shape[0]
    template = averager.init(jnp.zeros((num_l, num_u), jnp.float32))
    leaves, treedef = jax.tree.flatten((template.average, template.snapshots))
    dim = 1 + len(leaves)  # v plus the averager's float state
    readout = 1 if leaves else 0  # the average is the first leaf ('none': v)
    half_kappa = 0.5 * kappa

    def apply(cols, noise, gamma, count):
      """The affine step on a batch of state vectors cols (k, dim, L, U)."""
      v_new = gamma * cols[:, 0] + noise
      avg_part, snaps = jax.tree.unflatten(treedef, list(jnp.moveaxis(cols[:, 1:], 1, 0)))
      new = averager.update(v_new, averaging.AverageState(count, avg_part, snaps))
      new_leaves = jax.tree.leaves((new.average, new.snapshots))
      return jnp.stack([v_new] + new_leaves, axis=1), new.count

    def step(carry, t):
      p, count = carry  # p: (dim, dim, L, U), second moments
      lr_t = lrs[t][:, None]  # (L, 1)
      gamma = 1.0 - lr_t * kappa
      # The columns of P, and a zero column that receives the unit noise.
      cols = jnp.concatenate([jnp.moveaxis(p, 1, 0), jnp.zeros((1,) + p.shape[1:])])
      noise = jnp.zeros((dim + 1, 1, 1)).at[dim].set(1.0)
      mp_t, new_count = apply(cols, noise, gamma, count)  # (MP)ᵀ rows, then b
      b = mp_t[dim]
      mpm, _ = apply(jnp.moveaxis(mp_t[:dim], 1, 0), 0.0, gamma, count)
      p = jnp.moveaxis(mpm, 1, 0) + (lr_t * lr_t * noise_var) * b[:, None] * b[None, :]
      return (p, new_count), None

    def record(p):
      out = []
      for second in (p[readout, readout], p[0, 0]):  # (L, U) each
        per_mode = half_kappa * second
        out += [(per_mode * multiplicity).sum(-1), _to_groups(per_mode, to_groups, grouped)]
      return tuple(out)

    def chunk(carry, r):
      carry, _ = jax.lax.scan(step, carry, r * record_every + jnp.arange(record_every))
      return carry, record(carry[0])

    x0 = jnp.broadcast_to(v0, (num_l, num_u))
    p0 = jnp.broadcast_to(x0 * x0, (dim, dim, num_l, num_u))
    first = record(p0)
    _, recs = jax.lax.scan(chunk, (p0, template.count), jnp.arange(num_steps // record_every))
    return tuple(jnp.concatenate([f[None], r]) for f, r in zip(first, recs, strict=True))

  return jax.jit(run)


def _to_groups(per_mode, to_groups, grouped):
  """(L, U) per distinct mode -> (L, G) per group: a gather when every degree
  of freedom is its own group; for a few groups a fused multiply-and-sum,
  which inside a loop is cheaper on CPU than a small matmul."""
  if not grouped:
    return per_mode[:, to_groups]
  if to_groups.shape[1] <= 8:
    return (per_mode[:, :, None] * to_groups).sum(1)
  return per_mode @ to_groups


# 'none', EMA and SWA update as a ← (1 − w_t)·a + w_t·θ_t (trajax.averaging's
# lerp form); multi-point keeps snapshots and takes the general path.
_LERP_METHODS = ("none", "ema", "swa")


def _lerp_moments(method, items, record_every, grouped):
  """Fast path of :func:`_moments` for averagers of the lerp form.

  The step weights w_t are read off the averager itself (w_t = a_t when
  a_{t−1} = 0 and θ_t = 1: the update is linear), then the three second
  moments of (v, a) move in one fused elementwise step:

      E[v'²]  = Γ² E[v²] + λ²c
      E[v'a'] = (1 − w) Γ E[va] + w E[v'²]
      E[a'²]  = (1 − w)² E[a²] + 2w(1 − w) Γ E[va] + w² E[v'²].
  """
  averager = averaging.make_averager(method, **dict(items))

  def weights(num_steps):
    if method == "none":
      return jnp.ones(num_steps)

    def probe(state, _):
      w = averager.update(jnp.ones(()), state._replace(average=jnp.zeros(()))).average
      return averager.update(jnp.zeros(()), state), w

    _, w = jax.lax.scan(probe, averager.init(jnp.zeros(())), None, length=num_steps)
    return w

  def run(v0, kappa, noise_var, multiplicity, to_groups, lrs):
    num_steps, num_l = lrs.shape
    w_table = weights(num_steps)
    half_kappa = 0.5 * kappa

    def step(m, t):
      vv, va, aa = m
      lr_t = lrs[t][:, None]
      w = w_table[t]
      gamma = 1.0 - lr_t * kappa
      vv_new = gamma * gamma * vv + lr_t * lr_t * noise_var
      va_new = (1 - w) * gamma * va + w * vv_new
      aa_new = (1 - w) ** 2 * aa + 2 * w * (1 - w) * gamma * va + w * w * vv_new
      return (vv_new, va_new, aa_new), None

    def summarize(m):
      out = []
      for second in (m[2], m[0]):  # the average, then the iterate
        per_mode = half_kappa * second
        out += [(per_mode * multiplicity).sum(-1), _to_groups(per_mode, to_groups, grouped)]
      return tuple(out)

    def chunk(m, r):
      if record_every > 1:
        m, _ = jax.lax.scan(step, m, r * record_every + jnp.arange(record_every))
      else:  # no inner loop of length one
        m, _ = step(m, r)
      return m, summarize(m)

    x0 = jnp.broadcast_to(v0 * v0, (num_l, v0.shape[0]))
    m0 = (x0, x0, x0)
    first = summarize(m0)
    _, recs = jax.lax.scan(chunk, m0, jnp.arange(num_steps // record_every))
    return tuple(jnp.concatenate([f[None], r]) for f, r in zip(first, recs, strict=True))

  return jax.jit(run)


# ----------------------------------------------------------------------------
# Stationary closed forms (float64 NumPy: eq. 21's G1, G2 cancel badly in float32).


def _lr_kappa(lr, kappa):
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


def _int_param(method, name, value, minimum):
  if value is None:
    raise ValueError(f"method {method!r} needs {name}")
  if (
    isinstance(value, bool)
    or not isinstance(value, (numbers.Integral, np.integer))
    or value < minimum
  ):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _comb_sum(r, n: int) -> np.ndarray:
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


def averaging_kernel(
  method: str, *, decay=None, window=None, n=None, gap=None, kernel=None, length: int | None = None
) -> np.ndarray:
  """μ_k, the weight of u_{t−k} in the stationary average (A.2), k = 0, 1, ….

  'sgd': [1]; 'ema': δ(1−δ)^k (infinite: truncated at ``length``, default
  where the tail is below 1e-12); 'swa': 1/window for k < window (the mean
  of the last ``window`` iterates); 'two_point': ½ at 0 and gap;
  'multi_point': 1/n at 0, gap, …, (n−1)·gap; 'kernel': the given array.
  """
  if method in ("sgd", "none"):
    return np.ones(1)
  if method == "ema":
    if decay is None or not 0 < decay <= 1:
      raise ValueError(f"decay must be a float in (0, 1], got {decay!r}")
    if length is None:
      length = 1 if decay == 1 else int(np.ceil(np.log(1e-12) / np.log1p(-decay)))
    return decay * (1 - decay) ** np.arange(length)
  if method == "swa":
    w = _int_param(method, "window", window, 1)
    return np.full(w, 1.0 / w)
  if method in ("two_point", "multi_point"):
    n = 2 if method == "two_point" else _int_param(method, "n", n, 1)
    gap = _int_param(method, "gap", gap, 1)
    mu = np.zeros((n - 1) * gap + 1)
    mu[::gap] = 1.0 / n
    return mu
  if method == "kernel":
    mu = np.asarray(kernel, np.float64)
    if mu.ndim != 1 or mu.size == 0:
      raise ValueError(f"kernel must be a non-empty 1-D array of μ_k, got {kernel!r}")
    return mu
  raise ValueError(f"method must be one of {STATIONARY_METHODS}, got {method!r}")


def _bracket(gamma, method, params) -> np.ndarray:
  """C_0 + 2Σ_{δ≥1} C_δ Γ^δ of eq. 19 for the method's kernel."""
  allowed = {
    "sgd": (),
    "none": (),
    "ema": ("decay",),
    "swa": ("window",),
    "two_point": ("gap",),
    "multi_point": ("n", "gap"),
    "kernel": ("kernel",),
  }
  if method not in allowed:
    raise ValueError(f"method must be one of {STATIONARY_METHODS}, got {method!r}")
  extra = set(params) - set(allowed[method])
  if extra:
    raise ValueError(
      f"method {method!r} takes {allowed[method] or 'no parameters'}, got {sorted(extra)}"
    )
  if method in ("sgd", "none"):
    return np.ones_like(gamma)
  if method == "ema":
    delta = params.get("decay")
    if delta is None or not isinstance(delta, numbers.Real) or not 0 < delta <= 1:
      raise ValueError(f"decay must be a float in (0, 1], got {delta!r}")
    rho = 1.0 - delta
    # Geometric sums: C_δ = δ²ρ^δ/(1 − ρ²), so the bracket is
    # δ/(2 − δ) · (1 + ργ)/(1 − ργ); 1 − ργ = δ + λκ − δλκ without cancellation.
    lam_kappa = 1.0 - gamma
    return delta / (2 - delta) * (1 + rho * gamma) / (delta + lam_kappa - delta * lam_kappa)
  if method == "two_point":
    gap = _int_param(method, "gap", params.get("gap"), 1)
    return (1 + gamma**gap) / 2  # eq. 20
  if method in ("swa", "multi_point"):
    if method == "swa":
      n, gap = _int_param(method, "window", params.get("window"), 1), 1
    else:
      n = _int_param(method, "n", params.get("n"), 1)
      gap = _int_param(method, "gap", params.get("gap"), 1)
    return _comb_sum(gamma**gap, n)
  mu = averaging_kernel("kernel", kernel=params.get("kernel"))
  corr = np.correlate(mu, mu, "full")[mu.size - 1 :]  # C_δ, δ = 0 … K−1
  coeffs = np.concatenate([corr[:1], 2 * corr[1:]])
  return np.polynomial.polynomial.polyval(gamma, coeffs)


def stationary_variance(lr, kappa, method: str = "sgd", **method_params) -> np.ndarray:
  """Per-mode stationary variance of the (averaged) iterate for unit noise (eq. 19).

  F = S_λ (C_0 + 2Σ_δ C_δ Γ^δ), S_λ = λ/(2κ − λκ²), Γ = 1 − λκ: exact in the
  stationary limit (module docstring). Closed forms: 'sgd' F = S_λ; 'ema'
  (decay δ, μ_k = δ(1−δ)^k) the geometric sum; 'two_point' (gap Δ) eq. 20,
  S_λ(1 + Γ^Δ)/2; 'multi_point' (n, gap) eqs. 21 with A.4's G1, G2; 'swa'
  (window w: the mean of the last w iterates) is multi_point(n=w, gap=1);
  'kernel' (an arbitrary finite μ_0 … μ_{K−1}) by direct summation. For a
  mode with noise variance c multiply by c.

  Args:
    lr: λ > 0 (broadcasts with kappa).
    kappa: κ > 0, eigenvalues of A (Ω); λκ < 2.
    method: one of :data:`STATIONARY_METHODS` ('none' = 'sgd').
    **method_params: decay | window | gap | n, gap | kernel.

  Returns:
    float64 array of the broadcast shape of lr and kappa.
  """
  lr, kappa = _lr_kappa(lr, kappa)
  gamma = 1.0 - lr * kappa
  s = lr / (kappa * (2.0 - lr * kappa))
  return s * _bracket(gamma, method, method_params)


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
