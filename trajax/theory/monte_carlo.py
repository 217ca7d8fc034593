"""Monte Carlo runs of the quadratic model (paper eqs. 14-15) with any averager."""

from __future__ import annotations

import numbers
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
  batch_size: float = 1,
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
    batch_size: B > 0; ``noise_cov`` is one example's gradient covariance and
      the batch's is C/B (the mean of B independent examples). Default 1:
      ``noise_cov`` is the batch's own.
    **method_params: the averaging parameters (decay, start_step, n, gap, …).

  Returns:
    :class:`SimulationResult`.
  """
  check_steps(num_steps, record_every)
  if (
    isinstance(num_seeds, bool)
    or not isinstance(num_seeds, (numbers.Integral, np.integer))
    or num_seeds < 1
  ):
    raise ValueError(f"num_seeds must be an integer >= 1, got {num_seeds!r}")
  averaging.make_averager(method, **method_params)  # validates the parameters
  a = check_hessian(hessian)
  d = a.shape[0]
  c = batch_noise_cov(noise_cov, batch_size, d)
  m = modes(a, c)
  theta0 = np.broadcast_to(np.asarray(theta0, np.float32), (d,))
  lrs, has_l = lr_table(lr, num_steps)
  groups = group_matrix(dof_groups, d)
  if c.ndim == 1:
    q = np.sqrt(c)
  else:  # Q with QQᵀ = C; eigh rather than Cholesky so a singular C works.
    w, u = np.linalg.eigh(c)
    q = u * np.sqrt(np.clip(w, 0, None))
  seed_keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_seeds))
  run = cached_build(
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
      return [per_mode.sum(-1), sum_to_groups(by_dof, groups, True) if grouped else by_dof]

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
