"""Side-trips on a loss linear per batch, where the equivalent schedule is exact (Lemma 2).

:func:`side_trip_gap` runs a main run with an averaging wrapper and the
side-trip of ``trajax.schedules.equivalent_schedule`` from its step ``start``
on the same gradients, and returns how far apart they land: float32
rounding only, for every method. Shared by tests/test_schedules.py and
tests/test_averaging_methods.py.
"""

import jax
import jax.numpy as jnp
import optax

from trajax import averaging, schedules

D = 5  # parameter dimension of the linear-loss runs


def run_linear(opt, params, state, grads):
  """Applies opt to a fixed sequence of gradients (a linear loss per batch:
  the gradient of ⟨g_t, θ⟩ is g_t whatever θ is)."""

  def step(carry, g):
    params, state = carry
    updates, state = opt.update(g, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(step, (params, state), grads)
  return params, state


def side_trip_state(side, theta_s, main_inner_state):
  """The side-trip optimizer's state at start: the main run's momentum trace
  (element 0 of optax.sgd's chain state) and a fresh step counter, so the
  schedule sees the side-trip's own step j."""
  fresh = side.init(theta_s)
  return (main_inner_state[0],) + tuple(fresh[1:])


def sgd_with(lr, momentum):
  if momentum == "nesterov":
    return optax.sgd(lr, momentum=0.9, nesterov=True)
  return optax.sgd(lr, momentum=momentum)


def averager_at(method, start, params):
  """The averager started at ``start`` ('none' takes no start_step)."""
  if averaging.get_method(method).param("start_step") is not None:
    params = dict(params, start_step=start)
  return averaging.make_averager(method, **params)


def side_trip_gap(method, params, *, base, momentum, start, window, seed=0):
  """Max |average − side-trip| and the size of the displacement it is about."""
  key_g, key_p = jax.random.split(jax.random.key(seed))
  grads = jax.random.normal(key_g, (start + window, D))
  theta0 = jax.random.normal(key_p, (D,))

  main = averaging.wrap(sgd_with(base, momentum), averager_at(method, start, params))
  state = main.init(theta0)
  theta_s, state_s = run_linear(main, theta0, state, grads[:start])
  theta_end, state_end = run_linear(main, theta_s, state_s, grads[start:])
  average = averaging.averaged_params(state_end, theta_end)

  sched = schedules.equivalent_schedule(method, base, start=start, window=window, **params)
  side = sgd_with(sched, momentum)
  side_state = side_trip_state(side, theta_s, state_s.inner_state)
  landed, _ = run_linear(side, theta_s, side_state, grads[start:])
  return float(jnp.max(jnp.abs(average - landed))), float(jnp.max(jnp.abs(landed - theta_s)))
