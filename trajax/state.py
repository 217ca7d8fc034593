"""The train state and everything that fixes its layout: optimizer, mesh, shardings, init.

One place answers "what does a run's state look like": :func:`abstract_state`
gives its shapes, dtypes and shardings (``jax.eval_shape``: nothing is
allocated) for a main run, a side-trip and an experiment's restore alike;
:func:`create_train_state` draws the initial one.

The optimizer (paper eq. 1 with heavy-ball momentum, as ``optax.sgd``)::

    m_{t+1} = μ m_t + g_t,   θ_{t+1} = θ_t − η_t m_{t+1},
    g_t = ∇_θ L_{B_t}(θ_t) + λ θ_t   (λ: weight decay on kernels only),

wrapped in the config's :mod:`trajax.averaging` method, so θ̄_t lives in the
optimizer state and is checkpointed with it; so do the extra averages of
``averaging.profiles`` (:func:`trajax.averaging.with_profiles`, inside that
wrapper; none: the layout is unchanged). The paper's fixed-batch side-trip
(Sec. 3, Fig. 3) uses :func:`trajax.probes.fixed_batch_gd` (re-exported here)
instead: θ ← θ − η ∇L_b(θ), plain gradient descent on the batch's loss alone --
no momentum, no average and no weight decay (the quantity Fig. 3 descends and
plots is L_b).

``import trajax.state`` needs only jax, optax, numpy and the core
(:mod:`trajax.averaging`, :mod:`trajax.probes`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trajax import averaging, lr_schedules
from trajax.probes.interpolation import fixed_batch_gd  # noqa: F401  (re-exported)

PyTree = Any

# Bits of Health.bad_what: which quantity was non-finite.
BAD_NAMES = {1: "loss", 2: "gradient", 4: "batch_stats"}
# The two optimizer layouts a state can have (see abstract_state).
OPTIMIZERS = ("config", "fixed_batch_gd")


class Health(NamedTuple):
  """Non-finite bookkeeping carried in the state (all int32 scalars).

  bad_step: step whose update was non-finite and stopped the run; -1 if none.
  bad_what: bit mask of the non-finite quantities at ``bad_step`` (1 loss,
    2 gradient, 4 BatchNorm statistics).
  consecutive_skips: skipped steps in a row (``nonfinite.skip``).
  total_skips: skipped steps since the start of the run.
  """

  bad_step: jax.Array
  bad_what: jax.Array
  consecutive_skips: jax.Array
  total_skips: jax.Array


def healthy() -> Health:
  """A clean :class:`Health` record (no bad step, no skips)."""
  zero = jnp.zeros([], jnp.int32)
  return Health(zero - 1, zero, zero, zero)


class TrainState(NamedTuple):
  """Everything a run needs to continue bit-exactly.

  step: int32, completed steps; also the position in the data stream (batch
    ``i`` of ``Dataset.train_batches`` is a pure function of (seed, i)).
  params, batch_stats: the model variables (float32).
  opt_state: the full optimizer state, including the
    :class:`trajax.averaging.AveragingState` that holds the averaged params.
  rng: uint32[2] raw PRNG key; step ``t`` uses ``fold_in(rng, t)``.
  bn_average: :class:`trajax.averaging.AverageState` of ``batch_stats`` when
    ``averaging.batch_norm == 'average'``, else ``()``.
  health: :class:`Health`.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array
  bn_average: Any
  health: Health


class NonFiniteError(FloatingPointError):
  """A non-finite loss, gradient or BatchNorm statistic stopped the run."""


class ResumeError(RuntimeError):
  """The workdir cannot be resumed (or must not be started fresh)."""


def health_error(health: Health, last_checkpoint) -> NonFiniteError:
  """The error for a frozen state, naming the quantity, the step and the last good checkpoint."""
  bad_what = int(health.bad_what)
  names = [n for bit, n in BAD_NAMES.items() if bad_what & bit] or ["value"]
  where = last_checkpoint if last_checkpoint is not None else "none (no checkpoint committed)"
  return NonFiniteError(
    f"non-finite {' and '.join(names)} at step {int(health.bad_step)} "
    f"(skipped steps so far: {int(health.total_skips)}); the state was frozen before that "
    f"step and nothing non-finite was saved; last good checkpoint: {where}"
  )


# ----------------------------------------------------------------------------
# optimizer


def make_schedule(opt_config, total_steps: int) -> optax.Schedule:
  """η_t from ``optimizer.{lr, schedule, warmup_steps, <the schedule's fields>}``.

  The registered schedule (:data:`trajax.lr_schedules.SCHEDULES`, the one
  definition of each) on the T − w steps after a linear warmup of w steps:
  :func:`trajax.lr_schedules.build`.
  """
  return lr_schedules.build(opt_config, total_steps)


def make_averager(avg_config) -> averaging.Averager:
  """The :class:`trajax.averaging.Averager` named by ``averaging.method``."""
  method = avg_config.method
  return averaging.make_averager(method, **averaging.method_params(method, avg_config))


def decay_mask(params) -> PyTree:
  """Weight decay on kernels only (ndim > 1), not on biases or BatchNorm scales.

  The usual ResNet recipe; the paper does not say.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
  config, *, schedule: optax.Schedule | None = None, plain: bool = False
) -> optax.GradientTransformationExtraArgs:
  """SGD + momentum (+ L2 on kernels) wrapped in the averaging method.

  Args:
    config: the run config (``optimizer``, ``averaging``, ``total_steps``).
    schedule: the learning rate η_t; defaults to :func:`make_schedule` of the
      config. Side-trips pass their own (``trajax.sidetrip``).
    plain: :func:`fixed_batch_gd` (wrapped in averaging 'none' so the state
      layout reads the same way): the paper's fixed-batch side-trip.

  ``averaged_params(opt_state, params)`` reads θ̄ back (the params themselves
  for 'none').
  """
  opt = config.optimizer
  if schedule is None:
    schedule = make_schedule(opt, config.total_steps)
  if plain:
    return averaging.wrap(fixed_batch_gd(schedule), averaging.make_averager("none"))
  parts = []
  if opt.weight_decay:
    parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=decay_mask))
  parts.append(
    optax.sgd(schedule, momentum=float(opt.momentum) or None, nesterov=bool(opt.nesterov))
  )
  inner = optax.chain(*parts) if len(parts) > 1 else parts[0]
  # Extra averages (averaging.profiles) inside the run's own averaging wrapper:
  # none leaves the optimizer, and so the state layout, as it was.
  profiles = averaging.make_profiles(tuple(getattr(config.averaging, "profiles", ())))
  inner = averaging.with_profiles(inner, profiles)
  return averaging.wrap(inner, make_averager(config.averaging))


def bn_averager(config, *, optimizer: str = "config") -> averaging.Averager | None:
  """The averager of the BatchNorm statistics, or None when they are not averaged."""
  avg = config.averaging
  if optimizer != "config" or avg.method == "none" or avg.batch_norm != "average":
    return None
  return make_averager(avg)


# ----------------------------------------------------------------------------
# mesh and shardings


def make_mesh(config, devices=None) -> Mesh:
  """A 1-D ``('data',)`` mesh over ``mesh.data`` devices (-1: all)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices) if config.mesh.data == -1 else int(config.mesh.data)
  if n > len(devices):
    raise ValueError(f"mesh.data = {n}: only {len(devices)} devices are available")
  return Mesh(np.asarray(devices[:n]), ("data",))


def _leaf_spec(shape, axis_size: int, shard: bool) -> P:
  """FSDP rule: shard the largest dimension divisible by the data axis."""
  if not shard or axis_size == 1 or len(shape) == 0:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % axis_size == 0 and shape[d] >= axis_size:
      spec = [None] * len(shape)
      spec[d] = "data"
      return P(*spec)
  return P()


def state_shardings(abstract_state: PyTree, mesh: Mesh, *, shard_params: bool) -> PyTree:
  """NamedShardings for every state leaf: replicated, or FSDP when ``shard_params``."""
  size = mesh.shape["data"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, _leaf_spec(x.shape, size, shard_params)), abstract_state
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P("data"))


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
  """This process's share of a batch -> global arrays over the mesh."""
  if jax.process_count() == 1:  # one transfer call for the whole dict: ~2x cheaper
    return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, sharding)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def shardings_of(abstract: PyTree) -> PyTree:
  """The ``.sharding`` of every leaf of an abstract (or concrete) state."""
  return jax.tree.map(lambda x: x.sharding, abstract)


# ----------------------------------------------------------------------------
# state


def init_key(seed: int) -> jax.Array:
  """The key that draws the initial parameters (RBG implementation).

  XLA's RngBitGenerator compiles about 5x faster than threefry for a ResNet
  init on CPU (12 s vs 60 s for ResNet-18); its bits are fixed for a backend
  and XLA version, which is all a run needs: the checkpoint holds the params.
  The per-step key (``TrainState.rng``) stays threefry.
  """
  return jax.random.key(int(seed), impl="rbg")


def init_state(rng: jax.Array, *, model, optimizer, input_shape, bn_averager=None) -> TrainState:
  """A fresh state from ``rng`` (see :func:`init_key`; pure, jitted by :func:`create_train_state`)."""
  x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
  variables = model.init(rng, x, train=False)
  # Raw uint32[2] threefry key for the steps: plain arrays in the checkpoint.
  step_rng = jax.random.key_data(jax.random.key(jax.random.bits(rng, (), jnp.uint32)))
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=optimizer.init(params),
    rng=step_rng,
    bn_average=bn_averager.init(batch_stats) if bn_averager is not None else (),
    health=healthy(),
  )


def _init_fn(config, model, input_shape, optimizer: str):
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
  opt = make_optimizer(config, plain=optimizer == "fixed_batch_gd")
  bn = bn_averager(config, optimizer=optimizer)
  return lambda rng: init_state(
    rng, model=model, optimizer=opt, input_shape=tuple(input_shape), bn_averager=bn
  )


def abstract_state(
  config, model, input_shape, mesh: Mesh, *, optimizer: str = "config"
) -> TrainState:
  """The state's ``jax.ShapeDtypeStruct`` leaves, each with its sharding (nothing allocated).

  The one description of a run's layout: the target every restore reads into
  (a run's own checkpoint, a parent's step, an experiment's replay).

  Args:
    config: the run config (model, optimizer, averaging, mesh sections).
    model: the Flax module.
    input_shape: one example's shape.
    mesh: the device mesh (``mesh.shard_params`` picks FSDP or replicated).
    optimizer: 'config' (the config's SGD + averaging) or 'fixed_batch_gd'
      (:func:`fixed_batch_gd`: a fixed-batch side-trip's state).
  """
  abstract = jax.eval_shape(_init_fn(config, model, input_shape, optimizer), init_key(config.seed))
  shardings = state_shardings(abstract, mesh, shard_params=bool(config.mesh.shard_params))
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def create_train_state(config, model, input_shape, mesh: Mesh):
  """``(state, shardings)``: the initial state laid out over ``mesh``.

  The init runs under ``jax.jit``, computed replicated and then laid out: RBG
  bits may depend on the output sharding, and the initial params must not
  depend on the device count.
  """
  init = _init_fn(config, model, input_shape, "config")
  shardings = shardings_of(abstract_state(config, model, input_shape, mesh))
  replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), shardings)
  state = jax.jit(init, out_shardings=replicated)(init_key(config.seed))
  return jax.device_put(state, shardings), shardings


def fixed_batch_start(state: TrainState, config) -> TrainState:
  """A state as the start of a fixed-batch side-trip: fresh :func:`fixed_batch_gd` state.

  Params, BatchNorm statistics, step and key are kept; the momentum trace and
  the averages are dropped (plain GD has neither); the health record restarts.
  """
  opt = make_optimizer(config, plain=True)
  return state._replace(opt_state=opt.init(state.params), bn_average=(), health=healthy())
