"""The training engine's pure pieces: the sharded train step and evaluation.

Layout (flax ``examples/imagenet`` order, ``jax.jit`` with shardings instead of
``pmap``); a run's life is split by idea:

* :mod:`trajax.state` -- :class:`TrainState`, the optimizer
  (:func:`make_optimizer`: SGD with momentum under the config's schedule,
  wrapped in the config's :mod:`trajax.averaging` method), the mesh, the
  shardings and :func:`trajax.state.abstract_state`, the one description of a
  state's layout. Its names are re-exported here.
* this module -- :func:`train_step`, pure ``(state, batch) -> (state, metrics)``,
  jitted by :func:`make_train_step` with the state donated; :func:`eval_step`,
  :class:`Evaluator`; :func:`evaluation_variables`, the one BatchNorm policy
  for free parameters (an average, post hoc or in training), and
  :func:`averaged_variables` for the state's own average.
* :mod:`trajax.loop` -- :func:`trajax.loop.fit`, the one host loop (checkpoints,
  metrics, signals) that a main run, a side-trip and a replay share, and
  :func:`trajax.loop.train_and_evaluate`, the main run (a thin call of it;
  ``trajax.train.train_and_evaluate`` still resolves, deprecated).

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

import copy
import functools
import json
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trajax import averaging
from trajax.state import (  # noqa: F401  (re-exported: the engine's public names)
  Health,
  NonFiniteError,
  PyTree,
  ResumeError,
  TrainState,
  abstract_state,
  batch_sharding,
  bn_averager,
  create_train_state,
  decay_mask,
  fixed_batch_gd,
  global_batch,
  health_error,
  init_key,
  init_state,
  make_averager,
  make_mesh,
  make_optimizer,
  make_schedule,
  state_shardings,
)

# Old private names some callers reached for.
_health_error = health_error


# ----------------------------------------------------------------------------
# steps


def cross_entropy(logits, labels) -> jax.Array:
  """Per-example −log softmax(logits)[label], computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


state_finite = jax.jit(_all_finite)  # True when every leaf is finite


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
  """``train_step`` under the config's schedule, jitted over ``mesh`` with the state donated.

  ``(state, batch) -> (state, metrics)``. :func:`trajax.train.make_step` is the
  general form (a learning-rate rule with traced scalars, the fixed-batch
  optimizer); this is its main-run case.
  """
  step = functools.partial(
    train_step,
    model=model,
    optimizer=make_optimizer(config),
    schedule=make_schedule(config.optimizer, config.total_steps),
    bn_averager=bn_averager(config),
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


# ----------------------------------------------------------------------------
# the step, compiled once per static key


_STEPS: dict = {}
_STATIC_FIELDS = ("total_steps", "optimizer", "averaging", "nonfinite", "mesh")


def _model_key(model):
  # Flax modules are frozen dataclasses (hashable, equal when configured
  # alike); anything else is keyed by identity.
  try:
    hash(model)
    return model
  except TypeError:
    return ("id", id(model))


def hyper_arrays(hyper: dict) -> dict:
  return {
    k: jnp.asarray(v, jnp.int32 if isinstance(v, (int, np.integer)) else jnp.float32)
    for k, v in hyper.items()
  }


def make_step(config, model, mesh, shardings, *, rule=None, optimizer: str = "config", gather=None):
  """The jitted ``(state, batch, hyper) -> (state, metrics)`` (cached per static key).

  ``train.train_step`` with the learning rate ``rule(base, hyper)`` (``rule=None``:
  the config's schedule η_t itself) and the optimizer layout ``optimizer``. The
  cache key holds the config sections that shape the step, the rule, the
  model, the devices, the shardings and ``gather``; ``hyper`` is traced.

  ``gather``: None (``batch`` is ``{'image', 'label'}`` sharded over the data
  axis) or a hashable function ``gather(inputs) -> batch`` run first, inside
  the same compiled step, on whatever arrays ``inputs`` holds, laid out as
  they come (:func:`trajax.data.device.gather_step`: a batch gathered from a
  device-resident pool).
  """
  cfg = {
    k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in _STATIC_FIELDS
  }
  key = (
    json.dumps(cfg, sort_keys=True, default=list),
    rule,
    optimizer,
    gather,
    _model_key(model),
    tuple(d.id for d in mesh.devices.flat),
    jax.tree.structure(shardings),
    tuple(jax.tree.leaves(shardings)),
  )
  if key in _STEPS:
    return _STEPS[key]
  config = copy.deepcopy(config)
  base = make_schedule(config.optimizer, config.total_steps)
  plain = optimizer == "fixed_batch_gd"
  bn = bn_averager(config, optimizer=optimizer)

  def step(state, batch, hyper):
    schedule = base if rule is None else rule(base, hyper)
    if gather is not None:
      batch = gather(batch)
    return train_step(
      state,
      batch,
      model=model,
      optimizer=make_optimizer(config, schedule=schedule, plain=plain),
      schedule=schedule,
      bn_averager=bn,
      skip_nonfinite=bool(config.nonfinite.skip),
      max_consecutive_skips=int(config.nonfinite.max_consecutive_skips),
    )

  replicated = NamedSharding(mesh, P())
  fn = jax.jit(
    step,
    in_shardings=(shardings, batch_sharding(mesh) if gather is None else None, replicated),
    out_shardings=(shardings, replicated),
    donate_argnums=0,
  )
  _STEPS[key] = fn
  return fn


def compilations(fn) -> int | None:
  size = getattr(fn, "_cache_size", None)  # jax's jit cache size; None if not exposed
  return size() if callable(size) else None


_EVALUATORS: dict = {}


def evaluator(model, mesh) -> Evaluator:
  """A :class:`trajax.Evaluator` for ``model`` on ``mesh`` (cached: compiled once)."""
  key = (_model_key(model), tuple(d.id for d in mesh.devices.flat))
  if key not in _EVALUATORS:
    _EVALUATORS[key] = Evaluator(model, mesh)
  return _EVALUATORS[key]


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
    self.model = model
    self.mesh = mesh
    self.sharding = batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    # The jitted per-batch step (summed loss, correct, count); trajax.aot compiles it.
    self.eval_batch = jax.jit(functools.partial(eval_step, model=model), out_shardings=replicated)
    self._bn = jax.jit(self._bn_update, out_shardings=replicated)

  def evaluate(self, params, batch_stats, batches: Iterable[dict]) -> dict[str, float]:
    """Mean loss and accuracy over ``batches`` (padding masked out)."""
    total = None
    for batch in batches:
      out = self.eval_batch(params, batch_stats, global_batch(batch, self.sharding))
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


def evaluation_variables(
  params, batch_stats, *, config, evaluator: Evaluator, dataset, policy: str | None = None
) -> tuple:
  """``(params, batch_stats)`` to evaluate free parameters with: the one BatchNorm policy.

  Free parameters (an average θ̄, in training or built post hoc, an
  interpolation point, a replay's state) have no BatchNorm statistics of their
  own. ``policy`` (default ``config.averaging.batch_norm``) says which:

  * ``'recompute'`` -- the cumulative mean over the first
    ``config.averaging.bn_recompute_batches`` fixed training batches
    (``dataset.fixed_train_batch(i)``) of each batch's statistics under
    ``params`` (:meth:`Evaluator.recompute_batch_stats`; what
    ``torch.optim.swa_utils.update_bn`` does): statistics of averaged weights
    are not the average of the statistics. ``batch_stats`` only gives the tree.
  * ``'average'`` -- ``batch_stats`` as given (the caller's average of the
    statistics, e.g. ``state.bn_average.average``).

  Args:
    params: the free parameters (returned unchanged).
    batch_stats: the statistics used under ``'average'``; the layout under
      ``'recompute'``.
    config: the run's config (its ``averaging.batch_norm`` and
      ``averaging.bn_recompute_batches``).
    evaluator: an :class:`Evaluator` of the run's model (:func:`evaluator`).
    dataset: the run's dataset (``fixed_train_batch``).
    policy: overrides ``config.averaging.batch_norm``.
  """
  from trajax.config import BATCH_NORM

  policy = config.averaging.batch_norm if policy is None else policy
  if policy not in BATCH_NORM:
    raise ValueError(f"batch-norm policy = {policy!r}: must be one of {BATCH_NORM}")
  if policy == "recompute":
    n = int(config.averaging.bn_recompute_batches)
    batches = (dataset.fixed_train_batch(i) for i in range(n))
    batch_stats = evaluator.recompute_batch_stats(params, batch_stats, batches)
  return params, batch_stats


def averaged_variables(state: TrainState, config, evaluator: Evaluator, dataset) -> tuple:
  """``(params, batch_stats)`` of the state's average, BatchNorm per :func:`evaluation_variables`.

  θ̄ (cast to the raw parameters' dtypes) with the in-training average of the
  statistics under ``'average'``, recomputed statistics under ``'recompute'``.
  """
  params = averaging.averaged_params(state.opt_state, state.params)
  params = jax.tree.map(lambda a, p: a.astype(p.dtype), params, state.params)
  average = config.averaging.batch_norm == "average"
  stats = state.bn_average.average if average else state.batch_stats
  return evaluation_variables(params, stats, config=config, evaluator=evaluator, dataset=dataset)


def __getattr__(name):
  # The host-loop pieces moved to trajax.loop and trajax.host; old names still
  # resolve (looked up by name, so this module imports nothing above it).
  import importlib

  if name == "train_and_evaluate":
    import warnings

    warnings.warn(
      "trajax.train.train_and_evaluate moved to trajax.loop.train_and_evaluate",
      DeprecationWarning,
      stacklevel=2,
    )
  moved = {
    "RESUME_MODES": ("trajax.loop", "RESUME_MODES"),
    "train_and_evaluate": ("trajax.loop", "train_and_evaluate"),
    "TrainResult": ("trajax.loop", "TrainResult"),
    "truncate_jsonl": ("trajax.host", "truncate_jsonl"),
    "summarize": ("trajax.host", "summarize"),
  }
  if name in moved:
    module, attr = moved[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'trajax.train' has no attribute {name!r}")
