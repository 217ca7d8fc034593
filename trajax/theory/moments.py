"""Exact second moments of the quadratic model with any averager (no sampling)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trajax import averaging
from trajax.theory.model import (
  LearningRate,
  batch_noise_cov,
  cached_build,
  check_hessian,
  check_steps,
  group_matrix,
  lr_table,
  modes,
  sum_to_groups,
)


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
  batch_size: float = 1,
  **method_params,
) -> LossCurves:
  """The exact E[L] curve of :func:`simulate`'s model, without sampling.

  Each mode is a scalar linear Gaussian system. Its state x = (v, the
  averager's float state) — (v, a) for EMA and SWA, (v, a, snapshots) for
  multi-point — moves as x_{t+1} = M_t x_t + λ_t√c·b_t ξ_t, where M_t, b_t
  are the averager's own update applied to v_{t+1} = Γ_t v_t + λ_t√c ξ_t
  (it is linear in θ), so the second moments P = E[xxᵀ] move exactly as

      P_{t+1} = M_t P_t M_tᵀ + λ_t² c b_t b_tᵀ    (Σ_{t+1} = Γ_t Σ_t Γ_tᵀ + λ_t² C per mode),

  and E[loss] = ½ Σ_i κ_i P_i[a, a]. An averager whose state is one average
  tree ('none', EMA, SWA, any lerp-form method) takes a fused path over the
  three moments of (v, a) with its coefficients read off the averager.
  Multi-point (its :class:`trajax.averaging.Points` schedule) needs only
  E[v²] at each snapshot and the products of Γ between snapshots, O(1) per
  step and mode; the lag covariances E[v_τ v_τ'] = Π_{τ'≤s<τ} Γ_s · E[v_τ'²]
  are combined only at the recorded points (:func:`_points_moments`). Any
  other averager with snapshots runs the averager itself on the columns of P
  (and once more on the rows) to form M_t P M_tᵀ. Modes with identical (κ, c, v_0) are computed once. Compiled
  functions are cached per structure. Same arguments as :func:`simulate`,
  without key and seeds (``batch_size`` B: ``noise_cov`` is one example's,
  the batch's is C/B, :func:`trajax.theory.model.batch_noise_cov`); float32 throughout (relative error ~1e-5 against
  a float64 reference in the tests).

  Returns:
    :class:`LossCurves`.

  Example:

    Two unit modes (A = I, C = I) from θ_0 = 0 at λ = 0.1 reach the stationary
    loss ½ Σ_i κ_i S_λ = λ/(2 − λ) (:func:`stationary_variance`); the two-point
    average 100 steps apart halves it (eq. 20, Γ^100 ≈ 0):

    >>> import numpy as np
    >>> from trajax import theory
    >>> curves = theory.expected_loss(np.eye(2), lr=0.1, num_steps=2000,
    ...                               noise_cov=np.eye(2), record_every=1000)
    >>> print(curves.steps, np.round(curves.loss, 4))
    [   0 1000 2000] [0.     0.0526 0.0526]
    >>> print(round(0.1 / (2 - 0.1), 4))
    0.0526
    >>> pair = theory.expected_loss(np.eye(2), lr=0.1, num_steps=2000, noise_cov=np.eye(2),
    ...                             method="two_point", gap=100, record_every=1000)
    >>> print(np.round(pair.loss, 4))
    [0.     0.0263 0.0263]
  """
  check_steps(num_steps, record_every)
  averaging.make_averager(method, **method_params)  # validates the parameters
  a = check_hessian(hessian)
  d = a.shape[0]
  m = modes(a, batch_noise_cov(noise_cov, batch_size, d))
  theta0 = np.broadcast_to(np.asarray(theta0, np.float64), (d,))
  v0 = theta0 if m.basis is None else m.basis.T @ theta0
  lrs, has_l = lr_table(lr, num_steps)
  groups = group_matrix(dof_groups, d)

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
  run = cached_build(_moments, method, method_params, record_every, groups is not None)
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
  averager = averaging.make_averager(method, **dict(items))
  if averager.points is not None:  # multi-point: lag covariances at the recorded points
    return _points_moments(averager.points, record_every, grouped)
  if not averager.init(jnp.zeros(())).snapshots:  # one average tree (or none): fused path
    return _one_average_moments(averager, record_every, grouped)

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
        out += [(per_mode * multiplicity).sum(-1), sum_to_groups(per_mode, to_groups, grouped)]
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


def _points_moments(points, record_every, grouped):
  """Fast path of :func:`_moments` for multi-point averaging (paper A.4).

  Per mode, with snapshots v_{τ_0}, v_{τ_1}, … (newest first, τ_0 ≤ t) the
  average of the m newest is a = (1/m) Σ_{j<m} v_{τ_j}, so

      E[a²] = (1/m²) (Σ_{j<m} E[v_{τ_j}²] + 2 Σ_{l<j<m} Φ_{l,j} E[v_{τ_j}²]),

  Φ_{l,j} = Π_{τ_j ≤ s < τ_l} Γ_s (the noise after τ_j is independent of
  v_{τ_j}). Each step moves E[v²] and the running product of Γ since the
  newest snapshot (O(1) per mode); a snapshot writes E[v²] and the product of
  Γ over the last segment into one slot of a ring of n (one dynamic update,
  not a shift). At a recorded point the cross sum is formed newest-first by
  B_l = G_{l+1}·(S_{l+1} + B_{l+1}) (S: E[v²] at a snapshot, G: Γ over the
  segment after it): O(n) per recorded point. While following (t < s), a = v.
  """
  n, schedule = points.n, points.schedule

  def run(v0, kappa, noise_var, multiplicity, to_groups, lrs):
    num_steps, num_l = lrs.shape
    half_kappa = 0.5 * kappa
    shape = (num_l, v0.shape[0])
    vv0 = jnp.broadcast_to(v0 * v0, shape)
    zero = jnp.zeros([], jnp.int32)
    _, snap0, _ = schedule(zero)
    ring_s = jnp.zeros((n,) + shape).at[0].set(vv0)
    ring_g = jnp.ones((n,) + shape)
    head0 = jnp.where(snap0, 1 % n, 0).astype(jnp.int32)
    carry0 = (vv0, jnp.ones(shape), ring_s, ring_g, head0, zero)

    def step(carry, t):
      vv, run_g, ring_s, ring_g, head, count = carry
      lr_t = lrs[t][:, None]
      gamma = 1.0 - lr_t * kappa
      vv = gamma * gamma * vv + lr_t * lr_t * noise_var
      run_g = run_g * gamma
      count = count + 1
      _, snap, _ = schedule(count)
      prev = (head - 1) % n
      ring_g = ring_g.at[prev].set(jnp.where(snap, run_g, ring_g[prev]))
      ring_s = ring_s.at[head].set(jnp.where(snap, vv, ring_s[head]))
      run_g = jnp.where(snap, 1.0, run_g)
      head = jnp.where(snap, (head + 1) % n, head)
      return (vv, run_g, ring_s, ring_g, head, count), None

    def average_moment(carry):
      vv, _, ring_s, ring_g, head, count = carry
      follow, _, taken = schedule(count)
      m = jnp.clip(taken, 1, n)
      ages = (head - 1 - jnp.arange(n)) % n  # slot of the j-th newest snapshot
      s_by_age = ring_s[ages] * (jnp.arange(n) < m)[:, None, None]
      g_by_age = ring_g[ages]
      cross = jnp.zeros(shape)
      b = jnp.zeros(shape)
      for j in range(n - 1, 0, -1):  # b = B_{j−1} = G_j (S_j + B_j), masked beyond m
        b = g_by_age[j] * (s_by_age[j] + b)
        cross = cross + b
      m_f = m.astype(jnp.float32)
      return jnp.where(follow, vv, (s_by_age.sum(0) + 2.0 * cross) / (m_f * m_f))

    def record(carry):
      out = []
      for second in (average_moment(carry), carry[0]):  # the average, then the iterate
        per_mode = half_kappa * second
        out += [(per_mode * multiplicity).sum(-1), sum_to_groups(per_mode, to_groups, grouped)]
      return tuple(out)

    def chunk(carry, r):
      if record_every > 1:
        carry, _ = jax.lax.scan(step, carry, r * record_every + jnp.arange(record_every))
      else:
        carry, _ = step(carry, r)
      return carry, record(carry)

    first = record(carry0)
    _, recs = jax.lax.scan(chunk, carry0, jnp.arange(num_steps // record_every))
    return tuple(jnp.concatenate([f[None], r]) for f, r in zip(first, recs, strict=True))

  return jax.jit(run)


def _one_average_moments(averager, record_every, grouped):
  """Fast path of :func:`_moments` for averagers whose state is one average a
  (EMA, SWA, any lerp-form method; 'none', where a is v itself).

  Linearity makes the update a' = α_t a + β_t v' with scalars read off the
  averager itself (β_t: a = 0, θ = 1; α_t: a = 1, θ = 0), so the three second
  moments of (v, a) move in one fused elementwise step (E[v'a] = Γ E[va]: the
  new noise is independent of a):

      E[v'²]  = Γ² E[v²] + λ²c
      E[v'a'] = α Γ E[va] + β E[v'²]
      E[a'²]  = α² E[a²] + 2αβ Γ E[va] + β² E[v'²].
  """

  def coefficients(num_steps):
    state = averager.init(jnp.zeros(()))
    if state.average is None:  # 'none': a = v
      return jnp.zeros(num_steps), jnp.ones(num_steps)

    def probe(state, _):
      beta = averager.update(jnp.ones(()), state._replace(average=jnp.zeros(()))).average
      alpha = averager.update(jnp.zeros(()), state._replace(average=jnp.ones(()))).average
      return averager.update(jnp.zeros(()), state), (alpha, beta)

    _, (alpha, beta) = jax.lax.scan(probe, state, None, length=num_steps)
    return alpha, beta

  def run(v0, kappa, noise_var, multiplicity, to_groups, lrs):
    num_steps, num_l = lrs.shape
    alphas, betas = coefficients(num_steps)
    half_kappa = 0.5 * kappa

    def step(m, t):
      vv, va, aa = m
      lr_t = lrs[t][:, None]
      alpha, beta = alphas[t], betas[t]
      gamma = 1.0 - lr_t * kappa
      vv_new = gamma * gamma * vv + lr_t * lr_t * noise_var
      va_new = alpha * gamma * va + beta * vv_new
      aa_new = alpha * alpha * aa + 2 * alpha * beta * gamma * va + beta * beta * vv_new
      return (vv_new, va_new, aa_new), None

    def summarize(m):
      out = []
      for second in (m[2], m[0]):  # the average, then the iterate
        per_mode = half_kappa * second
        out += [(per_mode * multiplicity).sum(-1), sum_to_groups(per_mode, to_groups, grouped)]
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
