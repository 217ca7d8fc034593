"""The training engine: ``TrainState``, a pure sharded train step, one driver.

Layout (flax ``examples/imagenet`` order, ``jax.jit`` with shardings instead of
``pmap``):

* :func:`make_schedule`, :func:`make_optimizer` -- SGD with momentum under the
  config's learning-rate schedule, wrapped in the config's
  :mod:`trajax.averaging` method, so the average of the parameters lives in the
  optimizer state and is checkpointed with it.
* :func:`create_train_state` -- jitted init with ``out_shardings`` over a
  :class:`jax.sharding.Mesh` from the config (:func:`make_mesh`).
* :func:`train_step` -- pure ``(state, batch) -> (state, metrics)``; jitted
  by :func:`make_train_step` with the state donated.
* :func:`eval_step`, :func:`evaluate`, :func:`recompute_batch_stats` --
  evaluation of the raw and the averaged parameters.
* :func:`train_and_evaluate` -- the host loop with its side effects
  (checkpoints, metrics, signals).

The update (paper eq. 1 with heavy-ball momentum, as ``optax.sgd``)::

    m_{t+1} = μ m_t + g_t,   θ_{t+1} = θ_t − η_t m_{t+1},
    g_t = ∇_θ L_{B_t}(θ_t) + λ θ_t   (λ: weight decay on kernels only),

and the averaged parameters θ̄_t follow :mod:`trajax.averaging` (EMA eq. 25,
SWA, two-/multi-point).

Non-finite values. Each step computes ``bad = 1·[loss ∉ ℝ] | 2·[‖g‖ ∉ ℝ] |
4·[BN statistics ∉ ℝ]`` on device. A bad step never reaches the state: every
state leaf is selected with ``jnp.where(ok, new, old)`` (what
``optax.apply_if_finite`` does for the optimizer, extended to the BatchNorm
statistics, the averaging state and the step). With ``nonfinite.skip=False`` the
first bad step also *freezes* the state (``health.bad_step`` is set and every
later step is a no-op), so the state is exactly the last good one. The host
reads the small ``health`` record only where it synchronises anyway -- at log,
eval and checkpoint boundaries and before every save -- and raises
:class:`NonFiniteError` naming the quantity, the step and the last good
checkpoint. No non-finite state can be saved, and no extra host sync is added
per step. With ``nonfinite.skip=True`` bad steps are skipped (the data stream
moves on; params, momentum, averages and the schedule's count do not) and more
than ``nonfinite.max_consecutive_skips`` in a row freeze and stop the run.

``import trajax.train`` needs only jax, flax, optax and numpy; orbax, clu,
ml_collections and TensorFlow are imported inside the functions that use them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trajax import averaging

PyTree = Any

# Bits of Health.bad_what: which quantity was non-finite.
_BAD_NAMES = {1: "loss", 2: "gradient", 4: "batch_stats"}


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


# ----------------------------------------------------------------------------
# optimizer


def make_schedule(opt_config, total_steps: int) -> optax.Schedule:
  """η_t from ``optimizer.{lr, schedule, warmup_steps, step_boundaries, step_factor}``.

  With warmup w: η_t = lr·t/w for t < w, then the schedule on the remaining
  T − w steps: 'constant' η = lr; 'cosine' η = lr·(1 + cos(π (t−w)/(T−w)))/2;
  'linear' η = lr·(1 − (t−w)/(T−w)); 'step' η = lr·factor^k after the k-th
  boundary (boundaries are absolute steps).
  """
  lr, kind, warmup = float(opt_config.lr), opt_config.schedule, int(opt_config.warmup_steps)
  rest = max(int(total_steps) - warmup, 1)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, rest)
  elif kind == "linear":
    main = optax.linear_schedule(lr, 0.0, rest)
  elif kind == "step":
    bounds = [int(b) - warmup for b in opt_config.step_boundaries]
    factor = float(opt_config.step_factor)
    main = optax.piecewise_constant_schedule(lr, {b: factor for b in bounds if b > 0})
  else:
    raise ValueError(f"optimizer.schedule must be one of constant|cosine|linear|step, got {kind!r}")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_averager(avg_config) -> averaging.Averager:
  """The :class:`trajax.averaging.Averager` named by ``averaging.method``."""
  method = avg_config.method
  params = {
    "none": {},
    "ema": dict(
      decay=avg_config.decay,
      start_step=avg_config.start_step,
      every=avg_config.every,
      debias=avg_config.debias,
    ),
    "swa": dict(start_step=avg_config.start_step, every=avg_config.every),
    "two_point": dict(gap=avg_config.gap, start_step=avg_config.start_step),
    "multi_point": dict(n=avg_config.n, gap=avg_config.gap, start_step=avg_config.start_step),
  }
  if method not in params:
    raise ValueError(f"averaging.method must be one of {sorted(params)}, got {method!r}")
  return averaging.make_averager(method, **params[method])


def _decay_mask(params):
  # Weight decay on kernels only (ndim > 1), not on biases or BatchNorm
  # scales: the usual ResNet recipe; the paper does not say.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
  config, *, schedule: optax.Schedule | None = None, plain: bool = False
) -> optax.GradientTransformationExtraArgs:
  """SGD + momentum (+ decoupled-from-schedule L2) wrapped in the averaging method.

  Args:
    config: the run config (``optimizer``, ``averaging``, ``total_steps``).
    schedule: the learning rate η_t; defaults to :func:`make_schedule` of the
      config. Side-trips pass their own (``trajax.sidetrip``).
    plain: plain gradient descent (no momentum, no averaging) with the same
      weight decay: the paper's fixed-batch side-trip.

  ``averaged_params(opt_state, params)`` reads θ̄ back (the params themselves
  for 'none').
  """
  opt = config.optimizer
  if schedule is None:
    schedule = make_schedule(opt, config.total_steps)
  parts = []
  if opt.weight_decay:
    parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=_decay_mask))
  momentum = None if plain else (float(opt.momentum) or None)
  parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(opt.nesterov) and not plain))
  inner = optax.chain(*parts) if len(parts) > 1 else parts[0]
  averager = averaging.make_averager("none") if plain else make_averager(config.averaging)
  return averaging.wrap(inner, averager)


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


# ----------------------------------------------------------------------------
# state


def _bn_averages(config) -> bool:
  return config.averaging.method != "none" and config.averaging.batch_norm == "average"


def init_state(rng: jax.Array, *, model, optimizer, input_shape, bn_averager=None) -> TrainState:
  """A fresh state from ``rng`` (see :func:`init_key`; pure, jitted by :func:`create_train_state`)."""
  x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
  variables = model.init(rng, x, train=False)
  # Raw uint32[2] threefry key for the steps: plain arrays in the checkpoint.
  step_rng = jax.random.key_data(jax.random.key(jax.random.bits(rng, (), jnp.uint32)))
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  zero = jnp.zeros([], jnp.int32)
  return TrainState(
    step=zero,
    params=params,
    batch_stats=batch_stats,
    opt_state=optimizer.init(params),
    rng=step_rng,
    bn_average=bn_averager.init(batch_stats) if bn_averager is not None else (),
    health=Health(zero - 1, zero, zero, zero),
  )


def create_train_state(config, model, input_shape, mesh: Mesh):
  """``(state, shardings)``: the initial state laid out over ``mesh``.

  Shapes come from ``jax.eval_shape``; the init runs under ``jax.jit`` with
  ``out_shardings`` so no device holds more than its shard.
  """
  optimizer = make_optimizer(config)
  bn_averager = make_averager(config.averaging) if _bn_averages(config) else None
  init = lambda rng: init_state(
    rng, model=model, optimizer=optimizer, input_shape=input_shape, bn_averager=bn_averager
  )
  rng = init_key(config.seed)
  abstract = jax.eval_shape(init, rng)
  shardings = state_shardings(abstract, mesh, shard_params=config.mesh.shard_params)
  # Computed replicated, then laid out: RBG bits may depend on the output
  # sharding, and the initial params must not depend on the device count.
  replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  state = jax.jit(init, out_shardings=replicated)(rng)
  state = jax.device_put(state, shardings)
  return state, shardings


def init_key(seed: int) -> jax.Array:
  """The key that draws the initial parameters (RBG implementation).

  XLA's RngBitGenerator compiles about 5x faster than threefry for a ResNet
  init on CPU (12 s vs 60 s for ResNet-18); its bits are fixed for a backend
  and XLA version, which is all a run needs: the checkpoint holds the params.
  The per-step key (``TrainState.rng``) stays threefry.
  """
  return jax.random.key(int(seed), impl="rbg")


# ----------------------------------------------------------------------------
# steps


def cross_entropy(logits, labels) -> jax.Array:
  """Per-example −log softmax(logits)[label], computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


_state_finite = jax.jit(_all_finite)


def _select(pred, new, old):
  return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  model,
  optimizer,
  schedule: optax.Schedule,
  bn_averager=None,
  skip_nonfinite: bool = False,
  max_consecutive_skips: int = 10,
) -> tuple[TrainState, dict]:
  """One SGD step on ``batch`` (pure; see the module docstring for the maths).

  Args:
    state: the :class:`TrainState` after ``state.step`` steps.
    batch: ``{'image': [B, ...], 'label': [B]}`` (global arrays).
    model, optimizer, schedule, bn_averager: static pieces (closed over by
      :func:`make_train_step`).
    skip_nonfinite, max_consecutive_skips: the ``nonfinite`` config section.

  Returns:
    ``(new_state, metrics)``; metrics are float32 scalars: ``loss``,
    ``accuracy``, ``grad_norm``, ``lr``, ``ok`` (1 if the step was applied).
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits, updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": rng},
    )
    loss = jnp.mean(cross_entropy(logits, batch["label"]))
    return loss, (logits, updates.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  bn_average = bn_averager.update(batch_stats, state.bn_average) if bn_averager else ()

  grad_norm = optax.global_norm(grads)
  bad_what = (
    jnp.where(jnp.isfinite(loss), 0, 1)
    + jnp.where(jnp.isfinite(grad_norm), 0, 2)
    + jnp.where(_all_finite(batch_stats), 0, 4)
  ).astype(jnp.int32)
  ok = bad_what == 0
  h = state.health
  healthy = h.bad_step < 0
  if skip_nonfinite:
    consecutive = jnp.where(ok, 0, h.consecutive_skips + 1)
    fail = healthy & (consecutive > max_consecutive_skips)
  else:
    consecutive = h.consecutive_skips
    fail = healthy & ~ok
  apply = healthy & ok
  advance = healthy & ~fail  # a skipped step consumes its batch; a failed one does not
  health = Health(
    bad_step=jnp.where(fail, state.step, h.bad_step),
    bad_what=jnp.where(fail, bad_what, h.bad_what),
    consecutive_skips=jnp.where(healthy, consecutive, h.consecutive_skips),
    total_skips=h.total_skips + (healthy & ~ok & ~fail).astype(jnp.int32),
  )
  new_state = TrainState(
    step=jnp.where(advance, state.step + 1, state.step),
    params=_select(apply, params, state.params),
    batch_stats=_select(apply, batch_stats, state.batch_stats),
    opt_state=_select(apply, opt_state, state.opt_state),
    rng=state.rng,
    bn_average=_select(apply, bn_average, state.bn_average),
    health=health,
  )
  accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
  metrics = {
    "loss": loss.astype(jnp.float32),
    "accuracy": accuracy,
    "grad_norm": grad_norm.astype(jnp.float32),
    "lr": jnp.asarray(schedule(state.step), jnp.float32),
    "ok": apply.astype(jnp.float32),
  }
  return new_state, metrics


def make_train_step(config, model, mesh: Mesh, shardings) -> Callable:
  """``train_step`` jitted over ``mesh`` with the state donated."""
  import functools

  step = functools.partial(
    train_step,
    model=model,
    optimizer=make_optimizer(config),
    schedule=make_schedule(config.optimizer, config.total_steps),
    bn_averager=make_averager(config.averaging) if _bn_averages(config) else None,
    skip_nonfinite=bool(config.nonfinite.skip),
    max_consecutive_skips=int(config.nonfinite.max_consecutive_skips),
  )
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    step,
    in_shardings=(shardings, batch_sharding(mesh)),
    out_shardings=(shardings, replicated),
    donate_argnums=0,
  )


def eval_step(params, batch_stats, batch, *, model) -> dict:
  """Masked sums over one (padded) eval batch: loss, correct, count."""
  logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=False)
  mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(logits.shape[:1])
  loss = cross_entropy(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return {
    "loss": jnp.sum(loss * mask),
    "correct": jnp.sum(correct * mask),
    "count": jnp.sum(mask),
  }


class Evaluator:
  """Jitted evaluation and BatchNorm recomputation over one mesh."""

  def __init__(self, model, mesh: Mesh):
    import functools

    self.model = model
    self.mesh = mesh
    self.sharding = batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    self._eval = jax.jit(functools.partial(eval_step, model=model), out_shardings=replicated)
    self._bn = jax.jit(self._bn_update, out_shardings=replicated)

  def evaluate(self, params, batch_stats, batches: Iterable[dict]) -> dict[str, float]:
    """Mean loss and accuracy over ``batches`` (padding masked out)."""
    total = None
    for batch in batches:
      out = self._eval(params, batch_stats, global_batch(batch, self.sharding))
      total = out if total is None else jax.tree.map(jnp.add, total, out)
    if total is None:
      raise ValueError("evaluation got no batches")
    total = jax.device_get(total)
    n = float(total["count"])
    return {"loss": float(total["loss"]) / n, "accuracy": float(total["correct"]) / n}

  def _bn_update(self, params, stats, batch):
    _, updates = self.model.apply(
      {"params": params, "batch_stats": stats}, batch["image"], train=True, mutable=["batch_stats"]
    )
    return updates["batch_stats"]

  def recompute_batch_stats(self, params, batch_stats, batches: Iterable[dict]) -> PyTree:
    """BatchNorm statistics of ``params`` as a cumulative mean over ``batches``.

    What ``torch.optim.swa_utils.update_bn`` does: each BatchNorm layer's
    running mean and variance become the plain average, over the K batches, of
    that batch's mean and (biased) variance:  r = (1/K) Σ_k s_k.

    Flax's BatchNorm only exposes its running update r' = m·r + (1 − m)·s with
    the layer's momentum m, so s is read back without knowing m: from r = 0 and
    r = 1 on the first batch, r'(1) − r'(0) = m per layer, then
    s_k = r'_k(0) / (1 − m) for every batch.
    """
    if not jax.tree.leaves(batch_stats):
      return batch_stats
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    ones = jax.tree.map(jnp.ones_like, batch_stats)
    total, k, one_minus_m = None, 0, None
    for batch in batches:
      batch = global_batch(batch, self.sharding)
      from_zero = self._bn(params, zeros, batch)
      if one_minus_m is None:
        from_one = self._bn(params, ones, batch)
        one_minus_m = jax.tree.map(lambda a, b: 1.0 - jnp.mean(b - a), from_zero, from_one)
        bad = [float(x) for x in jax.tree.leaves(one_minus_m) if not float(x) > 1e-6]
        if bad:
          raise ValueError(
            f"BatchNorm momentum is 1 (1 - m = {bad[0]}): statistics never update, "
            "averaging.batch_norm='recompute' cannot read them back"
          )
      stats = jax.tree.map(jnp.divide, from_zero, one_minus_m)
      total = stats if total is None else jax.tree.map(jnp.add, total, stats)
      k += 1
    if total is None:
      raise ValueError("recompute_batch_stats got no batches")
    return jax.tree.map(lambda x: x / k, total)


def averaged_variables(state: TrainState, config, evaluator: Evaluator, dataset) -> tuple:
  """``(params, batch_stats)`` of the averaged model, BN statistics per config."""
  params = averaging.averaged_params(state.opt_state, state.params)
  params = jax.tree.map(lambda a, p: a.astype(p.dtype), params, state.params)
  mode = config.averaging.batch_norm
  if mode == "average":
    stats = state.bn_average.average
  else:
    batches = (dataset.fixed_train_batch(i) for i in range(config.averaging.bn_recompute_batches))
    stats = evaluator.recompute_batch_stats(params, state.batch_stats, batches)
  return params, stats


# ----------------------------------------------------------------------------
# host loop helpers


class _Prefetch:
  """Yields ``(host_batch, device_batch)``; ``wait_s`` is the time the loop spent in it.

  ``threads=0`` (default): the next batch is built and transferred right after
  the previous step was dispatched, so it overlaps the (asynchronous) device
  step; the loop blocks only for host time that exceeds the step time.
  ``threads=1``: a background thread keeps ``size`` batches ready -- better
  when a batch takes longer to build than a step, but on few CPU cores the
  GIL hand-off costs more than it saves (``bench/bench_train.py`` measures both).
  """

  _END = object()

  def __init__(self, it: Iterator[dict], sharding, *, threads: int = 0, size: int = 2):
    self._it, self._sharding = it, sharding
    self.wait_s = 0.0
    self._thread = None
    if threads:
      self._q: queue.Queue = queue.Queue(maxsize=size)
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._run, daemon=True)
      self._thread.start()

  def _make(self, batch):
    return batch, global_batch(batch, self._sharding)

  def _run(self):
    try:
      for batch in self._it:
        item = self._make(batch)
        while not self._stop.is_set():
          try:
            self._q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._q.put(self._END)
    except BaseException as e:  # re-raised in the consumer
      self._q.put(e)

  def __next__(self):
    t = time.perf_counter()
    try:
      if self._thread is None:
        return self._make(next(self._it))
      item = self._q.get()
      if item is self._END:
        raise StopIteration
      if isinstance(item, BaseException):
        raise item
      return item
    finally:
      self.wait_s += time.perf_counter() - t

  def close(self):
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._q.get(timeout=0.1)
      except queue.Empty:
        pass


class _StopFlag:
  """SIGTERM -> flag; the loop saves a checkpoint at the current step and exits.

  Orbax's own preemption save needs ``jax.distributed``; this works on a
  single process too. The previous handler is restored on ``close``.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint at the current step, then exiting")
    self.requested = True

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def truncate_jsonl(path: str, last_step: int | None):
  """Drops lines with ``step > last_step`` (see :func:`trajax.metrics.rewind_jsonl`)."""
  from trajax import metrics

  metrics.rewind_jsonl(path, last_step)


@dataclasses.dataclass
class TrainResult:
  """What :func:`train_and_evaluate` returns.

  state: the final :class:`TrainState` (on device).
  step: its step.
  preempted: True when SIGTERM stopped the run early (after a committed save).
  eval: the last evaluation, ``{'raw': {...}, 'avg': {...}}``.
  """

  state: TrainState
  step: int
  preempted: bool
  eval: dict


def _health_error(health: Health, last_checkpoint) -> NonFiniteError:
  bad_what = int(health.bad_what)
  names = [n for bit, n in _BAD_NAMES.items() if bad_what & bit] or ["value"]
  where = last_checkpoint if last_checkpoint is not None else "none (no checkpoint committed)"
  return NonFiniteError(
    f"non-finite {' and '.join(names)} at step {int(health.bad_step)} "
    f"(skipped steps so far: {int(health.total_skips)}); the state was frozen before that "
    f"step and nothing non-finite was saved; last good checkpoint: {where}"
  )


# ----------------------------------------------------------------------------
# driver

RESUME_MODES = ("auto", "require", "never")


def train_and_evaluate(
  config,
  workdir: str,
  *,
  resume: str = "auto",
  dataset=None,
  model=None,
  callbacks: Iterable[Callable[[int], None]] = (),
) -> TrainResult:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint.

  Order (nothing is allocated or written before the config is valid):
  validate the config; inspect the workdir (plain file reads); refuse a
  resume under a changed config (:func:`trajax.config_validation.check_resume`);
  build mesh, data and model; restore or init; train.

  Args:
    config: a (locked) ``ml_collections.ConfigDict`` from ``configs/``.
    workdir: run directory; created if missing, but its parent must exist (a
      mistyped path is an error, never a silent fresh start elsewhere).
    resume: 'auto' (continue if a committed checkpoint exists, else start),
      'require' (error if there is none: restart scripts), 'never' (error if
      there is one).
    dataset, model: override ``trajax.data.get_dataset`` /
      ``trajax.models.create_model`` (tests).
    callbacks: called as ``cb(step)`` on the host after each dispatched step.

  Returns:
    A :class:`TrainResult`.

  Raises:
    trajax.config_validation.ConfigError: bad config or refused resume.
    ResumeError: workdir problems.
    NonFiniteError: a non-finite step (see the module docstring).
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation, metrics

  if resume not in RESUME_MODES:
    raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
  config_validation.validate(config)
  if not workdir:
    raise ResumeError(f"workdir must be a directory path, got {workdir!r}")
  workdir = os.path.abspath(os.fspath(workdir))
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise ResumeError(
      f"workdir {workdir!r}: parent directory {parent!r} does not exist "
      "(create it first; a mistyped path must not start a fresh run)"
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ResumeError(f"workdir {workdir!r} exists and is not a directory")
  for inner in (workdir, parent):
    # A run's checkpoints/ (or one of its step folders) given as the workdir
    # would start a fresh run inside the committed checkpoints.
    if os.path.basename(inner) == "checkpoints" or ckpt_lib.committed_steps(inner):
      raise ResumeError(
        f"workdir {workdir!r} lies in a checkpoints directory ({inner!r}); pass the run's "
        "WORKDIR (the directory that holds checkpoints/), not its checkpoints"
      )
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = ckpt_lib.committed_steps(ckpt_dir)
  latest = steps[-1] if steps else None
  if resume == "require" and latest is None:
    raise ResumeError(
      f"resume='require' but {ckpt_dir!r} holds no committed checkpoint "
      f"(found: {sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else 'no directory'})"
    )
  if resume == "never" and latest is not None:
    raise ResumeError(f"resume='never' but {ckpt_dir!r} holds checkpoints {steps}")
  stored_meta = ckpt_lib.read_metadata(ckpt_dir, latest) if latest is not None else None
  if stored_meta is not None:
    allowed = config_validation.check_resume(stored_meta["config"], config)
    for field, old, new in allowed:
      logging.info("resume: %s changed %r -> %r (allowed)", field, old, new)

  process_index = jax.process_index()
  mesh = make_mesh(config)
  if dataset is None:
    from trajax import data as data_lib

    dataset = data_lib.get_dataset(
      config, process_index=process_index, process_count=jax.process_count()
    )
  info = dataset.info
  if model is None:
    from trajax import models

    model = models.create_model(config.model, num_classes=int(info.num_classes))

  # From here on SIGTERM means "save at the current step and exit 0" (a
  # signal during init, restore or compilation is acted on before step 1).
  stop = _StopFlag()
  checkpointer = None
  try:
    os.makedirs(workdir, exist_ok=True)
    checkpointer = ckpt_lib.Checkpointer(
      ckpt_dir,
      max_to_keep=config.checkpoint.max_to_keep,
      keep_period=config.checkpoint.keep_period,
      async_save=config.checkpoint.async_save,
    )
    state, shardings = create_train_state(config, model, tuple(info.input_shape), mesh)
    if latest is not None:
      # The newest checkpoint that passes its digest and value checks; damaged
      # newer ones are quarantined (trajax.checkpoint.Checkpointer.restore_latest_good).
      latest, state, meta = checkpointer.restore_latest_good(state) or (None, state, {})
    if latest is not None:
      if meta.get("data_position", latest) != int(state.step):
        raise ResumeError(
          f"checkpoint {latest}: data position {meta.get('data_position')} != step {int(state.step)}"
        )
      logging.info("resumed from %s at step %d", checkpointer.path(latest), latest)
    step = int(state.step)
    last_good = checkpointer.path(latest) if latest is not None else None

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    fp_path = os.path.join(workdir, "batch_fingerprints.jsonl")
    if process_index == 0:
      truncate_jsonl(metrics_path, step or None)  # None: a fresh start archives the old file
      truncate_jsonl(fp_path, step - 1)  # batch `step` is consumed again after the resume
    writer = metrics.create_writer(workdir, process_index=process_index)
    if step == 0:
      writer.write_hparams(config_validation.flatten(config))
    progress = metrics.progress_reporter(config.total_steps, writer, config.log_every_steps)

    p_step = make_train_step(config, model, mesh, shardings)
    evaluator = Evaluator(model, mesh)
    has_average = config.averaging.method != "none"
    total = int(config.total_steps)
    fp_file = open(fp_path, "a") if config.log_batch_fingerprints and process_index == 0 else None
    if fp_file is not None:
      from trajax import data as data_lib

    def check_health():
      health = jax.device_get(state.health)
      if int(health.bad_step) >= 0:
        raise _health_error(health, last_good)
      return health

    def run_eval():
      out = {
        "raw": evaluator.evaluate(state.params, state.batch_stats, dataset.eval_batches("test"))
      }
      if has_average:
        params, stats = averaged_variables(state, config, evaluator, dataset)
        out["avg"] = evaluator.evaluate(params, stats, dataset.eval_batches("test"))
      scalars = {f"eval/{k}": v for k, v in out["raw"].items()}
      scalars.update({f"eval_avg/{k}": v for k, v in out.get("avg", {}).items()})
      writer.write_scalars(step, scalars)
      return out

    def save():
      nonlocal last_good
      check_health()
      if not bool(_state_finite(state)):  # belt and braces: health should have caught it
        raise NonFiniteError(f"state at step {step} holds non-finite values; not saved")
      meta = ckpt_lib.make_metadata(config, step=step)
      if fp_file is not None:
        fp_file.flush()  # the fingerprints of steps < step must survive once `step` commits
      checkpointer.save(step, state, meta)
      last_good = checkpointer.path(step)

    prefetch = _Prefetch(dataset.train_batches(step), batch_sharding(mesh), threads=1)
  except BaseException:
    stop.close()
    if checkpointer is not None:
      checkpointer.close()
    raise
  window, window_start, wait_start, eval_out = [], time.perf_counter(), 0.0, {}
  preempted = False
  try:
    while step < total:
      if stop.requested and (jax.process_count() == 1 or step % config.log_every_steps == 0):
        if _any_process(stop.requested):
          save()
          checkpointer.wait()
          preempted = True
          break
      host_batch, batch = next(prefetch)
      if fp_file is not None:
        fp_file.write(
          json.dumps({"step": step, "fingerprint": data_lib.batch_fingerprint(host_batch)}) + "\n"
        )
      state, step_metrics = p_step(state, batch)
      step += 1
      window.append(step_metrics)
      progress(step)
      for cb in callbacks:
        cb(step)
      if step % config.log_every_steps == 0 or step == total:
        fetched = jax.device_get(window)
        health = check_health()
        now = time.perf_counter()
        summary = summarize(fetched)
        summary["train/input_wait_fraction"] = (prefetch.wait_s - wait_start) / max(
          now - window_start, 1e-9
        )
        summary["train/skipped_steps"] = float(health.total_skips)
        writer.write_scalars(step, summary)
        logging.info(
          "step %d/%d  loss %.4f  acc %.3f  lr %.4g  |g| %.3g  %.1f steps/s  input wait %.1f%%",
          step,
          total,
          summary.get("train/loss", math.nan),
          summary.get("train/accuracy", math.nan),
          summary["train/lr"],
          summary.get("train/grad_norm", math.nan),
          len(window) / max(now - window_start, 1e-9),
          100 * summary["train/input_wait_fraction"],
        )
        window, window_start, wait_start = [], now, prefetch.wait_s
      if step % config.eval_every_steps == 0 or step == total:
        check_health()
        eval_out = run_eval()
      if step % config.checkpoint_every_steps == 0 or step == total:
        save()
    checkpointer.wait()
  finally:
    prefetch.close()
    stop.close()
    if fp_file is not None:
      fp_file.close()
    checkpointer.close()
    writer.flush()
    writer.close()
  return TrainResult(state=state, step=step, preempted=preempted, eval=eval_out)


def summarize(window: list[dict]) -> dict[str, float]:
  """Means over the applied steps of a log window (``lr`` over all)."""
  ok = np.array([m["ok"] for m in window])
  out = {"train/lr": float(np.mean([m["lr"] for m in window]))}
  if ok.sum() > 0:
    for k in ("loss", "accuracy", "grad_norm"):
      vals = np.array([m[k] for m in window])
      out[f"train/{k}"] = float(np.sum(np.where(ok > 0, vals, 0.0)) / ok.sum())
  return out
