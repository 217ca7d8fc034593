r"""Side-trips: branch a run off a parent's checkpoint (paper Secs. 3, 5; Figs. 1, 3, 5, 7, 10).

A side-trip restores the parent's full :class:`trajax.train.TrainState` at a
committed step S *read-only* (:func:`trajax.checkpoint.restore_readonly`: no
``CheckpointManager`` is ever opened on the parent's directory, so nothing
there is written, pruned or cleaned up), then trains in its own workdir under
a different learning-rate schedule or on a fixed batch::

  python -m trajax.sidetrip --parent=workdirs/mnist1d --step=3000 \
      --workdir=workdirs/mnist1d-trip-3000 --config=configs/mnist1d.py \
      --config.sidetrip.kind=equivalent --config.sidetrip.method=two_point

Kinds (``config.sidetrip.kind``), with η the config's schedule of the absolute
step t (equal to the parent's unless ``optimizer.*`` is overridden), f =
``sidetrip.lr_factor``, j = t − S the side-trip's own step and k its length:

* ``'equivalent'`` -- the schedule of :func:`trajax.schedules.equivalent_schedule`
  for an averaging method: η'_t = f · η_t · w_{t−S} (paper Table 1, eq. 29),
  on the parent's own batch stream from S on (batch t is a pure function of
  (seed, t)) with the parent's optimizer state (momentum trace included). For
  a loss that is linear per batch it lands exactly on the average that method
  started at S would reach after k steps (Lemma 2); on a real network only
  approximately (Figs. 1, 5, 10).
* ``'fixed_batch'`` -- plain gradient descent (no momentum, the config's weight
  decay) on one fixed batch ``dataset.fixed_train_batch(fixed_batch_index)``,
  η' = f · η_S, for k steps: the paper's fixed-batch side-trip (Sec. 3, Fig. 3).
* ``'schedule'`` -- the parent's stream and optimizer state under
  ``sidetrip.schedule``: ``'config'`` η'_t = f · η_t (the config's own schedule;
  with an unchanged config and f = 1 the side-trip reproduces the parent
  bit-for-bit), ``'constant'`` η' = f · η_S (e.g. the paper's λ/2 with f = ½),
  ``'linear'`` η'_t = f · η_S · max(0, 1 − j/k), ``'cosine'``
  η'_t = f · η_S · (1 + cos(π min(j, k)/k))/2.

The side-trip's own step counter is the absolute step t (so its checkpoints,
metrics and the data stream line up with the parent's) and its metrics go to
``WORKDIR/metrics.jsonl`` in the main run's JSON-lines format, every scalar
record also carrying ``sidetrip/step`` = j. Checkpoints (``WORKDIR/checkpoints/<t>``)
carry the lineage in their metadata: parent directory, step, parent config
and its hash, the resolved side-trip parameters (and the parent's own lineage
when the parent is itself a side-trip's workdir). Precedence on (re)start is
big_vision's: the side-trip's own latest checkpoint, then the parent's step S.

One step function is compiled per side-trip *kind* (and static shape of the
problem): S, f, η_S and k enter it as traced scalars, so side-trips from many
branch points (Fig. 1) reuse one compilation.

The ``sidetrip`` config section (added by :func:`with_sidetrip` or by the
CLI before the config is locked; every field is dotted as ``sidetrip.<name>``
in errors):

==================  ==========================================================
kind                'equivalent' | 'fixed_batch' | 'schedule'
steps               k; default: window ('equivalent'), total_steps − S
                    ('schedule'); required for 'fixed_batch'
method              'ema' | 'swa' | 'two_point' | 'multi_point'; default the
                    config's ``averaging.method``
window              steps the average covers; default gap (two_point),
                    (n − 1)·gap (multi_point), required for ema/swa
decay, gap, n       the method's parameters; default ``averaging.*``
lr_factor           f > 0 (default 1)
schedule            'config' | 'constant' | 'linear' | 'cosine' ('schedule' kind)
fixed_batch_index   index of the fixed batch (>= 0)
fixed_batch_size    its size; default ``batch_size``
eval_at             side-trip steps j to evaluate and checkpoint at (0 … k);
                    points beyond k are dropped, k is always evaluated
eval_average        also evaluate the averaged params (kinds that keep them)
==================  ==========================================================
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trajax import schedules, train

__all__ = [
  "KINDS",
  "SCHEDULES",
  "SidetripResult",
  "SidetripSpec",
  "default_section",
  "make_lr_schedule",
  "resolve",
  "run_sidetrip",
  "with_sidetrip",
]

KINDS = ("equivalent", "fixed_batch", "schedule")
SCHEDULES = ("config", "constant", "linear", "cosine")

# Config fields a side-trip may change relative to its parent, by kind. Every
# other difference would change what "the parent's state" means (model,
# data, averaging state layout) and is refused. The cadence/retention fields
# trajax.config_validation allows on resume are allowed for every kind.
_FREE_FIELDS = {
  "equivalent": frozenset({"nonfinite.skip", "nonfinite.max_consecutive_skips"}),
  "schedule": frozenset(
    {"total_steps", "batch_size", "nonfinite.skip", "nonfinite.max_consecutive_skips"}
  ),
  "fixed_batch": frozenset(
    {"total_steps", "batch_size", "nonfinite.skip", "nonfinite.max_consecutive_skips"}
  ),
}
_FREE_PREFIXES = {"equivalent": (), "schedule": ("optimizer.",), "fixed_batch": ("optimizer.",)}
# Fields that may change when a side-trip resumes from its own checkpoint.
_RESUME_EXTRA = frozenset({"sidetrip.eval_at", "sidetrip.eval_average"})


class SidetripSpec(NamedTuple):
  """The side-trip section with every default resolved (see the module table)."""

  kind: str
  steps: int
  method: str | None
  window: int | None
  params: dict
  lr_factor: float
  schedule: str | None
  fixed_batch_index: int | None
  fixed_batch_size: int | None
  eval_at: tuple
  eval_average: bool


@dataclasses.dataclass
class SidetripResult:
  """What :func:`run_sidetrip` returns.

  state: the final state (on device), at absolute step ``step``.
  sidetrip_steps: j = step − parent_step.
  evals: ``{j: {'eval/loss': …, 'eval/accuracy': …, …}}`` for every eval
    point run in this call (the records also sit in ``metrics.jsonl``).
  resumed_from: ``'own:<step>'`` or ``'parent:<step>'``.
  lineage: the dict stored in every checkpoint's metadata.
  timings: ``restore_s`` (abstract state + restore), ``first_step_s`` (the
    first step including its compilation, blocked on), ``compiled`` (whether
    that step compiled, False when the kind's step was cached).
  """

  state: train.TrainState
  step: int
  parent_step: int
  sidetrip_steps: int
  evals: dict
  resumed_from: str
  lineage: dict
  timings: dict


# ----------------------------------------------------------------------------
# config section


def default_section():
  """The ``sidetrip`` ConfigDict with its defaults (None: resolved by :func:`resolve`)."""
  import ml_collections as mlc

  s = mlc.ConfigDict()
  s.kind = "schedule"
  s.steps = mlc.FieldReference(None, field_type=int)
  s.method = mlc.FieldReference(None, field_type=str)
  s.window = mlc.FieldReference(None, field_type=int)
  s.decay = mlc.FieldReference(None, field_type=float)
  s.gap = mlc.FieldReference(None, field_type=int)
  s.n = mlc.FieldReference(None, field_type=int)
  s.lr_factor = 1.0
  s.schedule = "config"
  s.fixed_batch_index = 0
  s.fixed_batch_size = mlc.FieldReference(None, field_type=int)
  s.eval_at = (1, 10, 100, 1000)
  s.eval_average = False
  return s


def with_sidetrip(config, **fields):
  """A locked copy of ``config`` with a ``sidetrip`` section (defaults + ``fields``).

  Example::

    cfg = with_sidetrip(mnist1d.get_config(), kind='equivalent', method='swa', window=500)
  """
  config = copy.deepcopy(config)
  section = default_section()
  unknown = sorted(set(fields) - set(section.keys()))
  if unknown:
    raise ValueError(
      f"unknown side-trip field(s) {['sidetrip.' + u for u in unknown]}; "
      f"known: {sorted('sidetrip.' + k for k in section.keys())}"
    )
  for key, value in fields.items():
    section[key] = value
  with config.unlocked():
    config.sidetrip = section
  config.lock()
  return config


def _base_config(config):
  """The training config without its ``sidetrip`` section (a deep copy)."""
  config = copy.deepcopy(config)
  if "sidetrip" in config:
    with config.unlocked():
      del config["sidetrip"]
  return config


def _is_int(x) -> bool:
  return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, bool)


def resolve(config, parent_step: int) -> SidetripSpec:
  """Validates ``config.sidetrip`` and fills its defaults from the config.

  Raises:
    trajax.config_validation.ConfigError: listing every bad field as
      ``sidetrip.<name> = value: what is allowed``.
  """
  from trajax.config_validation import ConfigError

  if "sidetrip" not in config:
    raise ConfigError([("sidetrip", None, "missing section: build the config with with_sidetrip")])
  s = config.sidetrip.to_dict()
  known = set(default_section().keys())
  problems = [
    (f"sidetrip.{k}", s[k], f"unknown field; known: {sorted(known)}")
    for k in sorted(set(s) - known)
  ]
  if problems:
    raise ConfigError(problems)
  bad = lambda field, allowed: problems.append((f"sidetrip.{field}", s[field], allowed))

  kind = s["kind"]
  if kind not in KINDS:
    bad("kind", f"must be one of {list(KINDS)}")
  lr_factor = s["lr_factor"]
  if not (
    isinstance(lr_factor, numbers.Real)
    and not isinstance(lr_factor, bool)
    and math.isfinite(lr_factor)
    and lr_factor > 0
  ):
    bad("lr_factor", "must be a finite number > 0")
  eval_at = s["eval_at"]
  if not (isinstance(eval_at, (tuple, list)) and all(_is_int(e) and e >= 0 for e in eval_at)):
    bad("eval_at", "must be a tuple of integers >= 0 (side-trip steps)")
    eval_at = ()
  if not isinstance(s["eval_average"], bool):
    bad("eval_average", "must be True or False")

  method = window = sched = fb_index = fb_size = None
  params: dict = {}
  steps = s["steps"]
  if steps is not None and not (_is_int(steps) and steps > 0):
    bad("steps", "must be None (default) or an integer > 0")
    steps = None

  if kind == "equivalent":
    method = s["method"] if s["method"] is not None else config.averaging.method
    if method not in schedules.METHODS:
      where = "" if s["method"] is not None else " (taken from averaging.method)"
      problems.append(
        ("sidetrip.method", method, f"must be one of {list(schedules.METHODS)}{where}")
      )
    else:
      take = lambda name: s[name] if s[name] is not None else config.averaging[name]
      decay = take("decay") if method == "ema" else None
      gap = take("gap") if method in ("two_point", "multi_point") else None
      n = take("n") if method == "multi_point" else None
      window = s["window"]
      if window is None:
        if method == "two_point":
          window = gap
        elif method == "multi_point" and _is_int(n) and _is_int(gap):
          window = (n - 1) * gap
        else:
          bad("window", f"method {method!r} needs the number of steps the average covers")
      if window is not None:
        try:
          # The schedules module is the one place that knows each method's
          # parameters; let it check them and report its own message.
          schedules.step_weights(method, 0, window=window, decay=decay, n=n, gap=gap)
          params = {k: v for k, v in (("decay", decay), ("n", n), ("gap", gap)) if v is not None}
          if decay is not None:
            params["decay"] = float(decay)
        except (TypeError, ValueError) as e:
          # Name the field the message is about (schedules names its argument first).
          values = {"decay": decay, "gap": gap, "n": n, "window": window}
          name = next((k for k in values if str(e).startswith(k)), "window")
          problems.append((f"sidetrip.{name}", values[name], f"{method}: {e}"))
      if steps is None and window is not None:
        steps = window
  elif kind == "schedule":
    sched = s["schedule"]
    if sched not in SCHEDULES:
      bad("schedule", f"must be one of {list(SCHEDULES)}")
    if steps is None:
      steps = int(config.total_steps) - int(parent_step)
      if steps <= 0:
        problems.append(
          (
            "sidetrip.steps",
            None,
            f"default total_steps - step = {config.total_steps} - {parent_step} <= 0: give steps",
          )
        )
  elif kind == "fixed_batch":
    fb_index = s["fixed_batch_index"]
    if not (_is_int(fb_index) and fb_index >= 0):
      bad("fixed_batch_index", "must be an integer >= 0")
    fb_size = s["fixed_batch_size"] if s["fixed_batch_size"] is not None else config.batch_size
    if not (_is_int(fb_size) and fb_size > 0):
      problems.append(("sidetrip.fixed_batch_size", fb_size, "must be an integer > 0"))
    if steps is None:
      bad("steps", "kind 'fixed_batch' needs the number of gradient-descent steps")
  if problems:
    raise ConfigError(problems)
  points = tuple(sorted({int(e) for e in eval_at if e <= steps} | {int(steps)}))
  return SidetripSpec(
    kind=kind,
    steps=int(steps),
    method=method,
    window=None if window is None else int(window),
    params=params,
    lr_factor=float(lr_factor),
    schedule=sched,
    fixed_batch_index=None if fb_index is None else int(fb_index),
    fixed_batch_size=None if fb_size is None else int(fb_size),
    eval_at=points,
    eval_average=bool(s["eval_average"]),
  )


def _check_against_parent(base, parent_config: dict, kind: str):
  """Refuses config differences that would change what the parent's state means."""
  from trajax import config_validation as cv

  parent = {k: v for k, v in parent_config.items() if k != "sidetrip"}
  free = cv.RESUME_ALLOWED | _FREE_FIELDS[kind]
  bad = []
  for field, old, new in cv.diff(parent, base):
    if field in free or field.startswith(_FREE_PREFIXES[kind]):
      logging.info("side-trip: %s = %r (parent: %r)", field, new, old)
      continue
    bad.append(
      (
        field,
        new,
        f"must equal the parent's value {old!r} for a {kind!r} side-trip "
        f"(may differ: {sorted(free)} and {list(_FREE_PREFIXES[kind])})",
      )
    )
  if bad:
    raise cv.ConfigError(bad)


# ----------------------------------------------------------------------------
# schedules and optimizer (pure; traced scalars in `hyper`)


def make_lr_schedule(spec: SidetripSpec, base: optax.Schedule, hyper: dict) -> optax.Schedule:
  """η'(t) of the absolute step t (the optimizer's count continues the parent's).

  ``hyper`` holds scalars that may be traced: ``start`` (S), ``scale`` (f for
  'config' and 'equivalent', f·η_S otherwise) and ``horizon`` (k). The
  'equivalent' rate is ``equivalent_schedule(method, base, start=S, window)``
  evaluated at j = t − S, times f, written through
  :func:`trajax.schedules.step_weights` so that S may be traced.
  """
  start, scale, horizon = hyper["start"], hyper["scale"], hyper["horizon"]
  if spec.kind == "equivalent":

    def schedule(t):
      j = jnp.asarray(t) - start
      w = schedules.step_weights(spec.method, j, window=spec.window, **spec.params)
      return base(t) * scale * w
  elif spec.kind == "schedule" and spec.schedule == "config":

    def schedule(t):
      return base(t) * scale
  elif spec.kind == "fixed_batch" or spec.schedule == "constant":

    def schedule(t):
      return jnp.broadcast_to(scale, jnp.shape(t)).astype(jnp.float32)
  elif spec.schedule == "linear":

    def schedule(t):
      frac = jnp.clip((jnp.asarray(t) - start).astype(jnp.float32) / horizon, 0.0, 1.0)
      return scale * (1.0 - frac)
  elif spec.schedule == "cosine":

    def schedule(t):
      frac = jnp.clip((jnp.asarray(t) - start).astype(jnp.float32) / horizon, 0.0, 1.0)
      return scale * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  else:
    raise ValueError(f"no schedule for kind={spec.kind!r}, schedule={spec.schedule!r}")
  return schedule


def _optimizer(config, schedule, *, plain: bool) -> optax.GradientTransformationExtraArgs:
  """``trajax.train.make_optimizer`` with the side-trip's schedule."""
  return train.make_optimizer(config, schedule=schedule, plain=plain)


def _bn_averages(config, spec) -> bool:
  return (
    spec.kind != "fixed_batch"
    and config.averaging.method != "none"
    and config.averaging.batch_norm == "average"
  )


# ----------------------------------------------------------------------------
# compiled pieces, cached per kind


_STEP_CACHE: dict = {}
_EVAL_CACHE: dict = {}
_CACHE_FIELDS = ("total_steps", "optimizer", "averaging", "nonfinite", "mesh")


def _static_key(config, spec, model, mesh, shardings) -> tuple:
  cfg = {
    k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in _CACHE_FIELDS
  }
  static = spec._replace(
    steps=0, lr_factor=0.0, eval_at=(), fixed_batch_index=None, eval_average=False
  )
  devices = tuple(d.id for d in mesh.devices.flat)
  return (
    json.dumps(cfg, sort_keys=True, default=list),
    repr(static),
    _model_key(model),
    devices,
    jax.tree.structure(shardings),
    tuple(jax.tree.leaves(shardings)),
  )


def _model_key(model):
  # Flax modules are frozen dataclasses (hashable, equal when configured
  # alike); anything else is keyed by identity.
  try:
    hash(model)
    return model
  except TypeError:
    return ("id", id(model))


def _compilations(fn) -> int | None:
  size = getattr(fn, "_cache_size", None)  # jax's jit cache size; None if not exposed
  return size() if callable(size) else None


def _step_fn(config, spec, model, mesh, shardings, base):
  """The jitted ``(state, batch, hyper) -> (state, metrics)`` of this kind (cached)."""
  key = _static_key(config, spec, model, mesh, shardings)
  if key in _STEP_CACHE:
    return _STEP_CACHE[key]
  plain = spec.kind == "fixed_batch"
  bn_averager = train.make_averager(config.averaging) if _bn_averages(config, spec) else None
  skip, max_skips = bool(config.nonfinite.skip), int(config.nonfinite.max_consecutive_skips)
  opt_config = copy.deepcopy(config)

  def step(state, batch, hyper):
    schedule = make_lr_schedule(spec, base, hyper)
    return train.train_step(
      state,
      batch,
      model=model,
      optimizer=_optimizer(opt_config, schedule, plain=plain),
      schedule=schedule,
      bn_averager=bn_averager,
      skip_nonfinite=skip,
      max_consecutive_skips=max_skips,
    )

  replicated = NamedSharding(mesh, P())
  fn = jax.jit(
    step,
    in_shardings=(shardings, train.batch_sharding(mesh), replicated),
    out_shardings=(shardings, replicated),
    donate_argnums=0,
  )
  _STEP_CACHE[key] = fn
  return fn


def _evaluator(model, mesh) -> train.Evaluator:
  key = (_model_key(model), tuple(d.id for d in mesh.devices.flat))
  if key not in _EVAL_CACHE:
    _EVAL_CACHE[key] = train.Evaluator(model, mesh)
  return _EVAL_CACHE[key]


# ----------------------------------------------------------------------------
# states


def _abstract_parent_state(parent_config, model, input_shape, mesh):
  """ShapeDtypeStructs (with shardings) of the parent's TrainState: no allocation."""
  optimizer = train.make_optimizer(parent_config)
  bn = parent_config.averaging.method != "none" and parent_config.averaging.batch_norm == "average"
  bn_averager = train.make_averager(parent_config.averaging) if bn else None
  init = lambda rng: train.init_state(
    rng, model=model, optimizer=optimizer, input_shape=input_shape, bn_averager=bn_averager
  )
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = train.state_shardings(abstract, mesh, shard_params=parent_config.mesh.shard_params)
  return _with_shardings(abstract, shardings)


def _with_shardings(abstract, shardings):
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def _to_side_state(
  state: train.TrainState, optimizer, *, fresh_optimizer: bool
) -> train.TrainState:
  """The parent's state as the side-trip's start (fresh optimizer for fixed-batch GD)."""
  if not fresh_optimizer:
    return state
  zero = jnp.zeros([], jnp.int32)
  return state._replace(
    opt_state=optimizer.init(state.params),
    bn_average=(),
    health=train.Health(zero - 1, zero, zero, zero),
  )


def _check_optimizer_layout(config, parent_config, params_abstract):
  """The side-trip's optimizer state must have the parent's layout (and train's)."""
  from trajax import config_validation as cv

  const = lambda t: jnp.float32(0.0)
  mine = jax.eval_shape(_optimizer(config, const, plain=False).init, params_abstract)
  parent = jax.eval_shape(train.make_optimizer(parent_config).init, params_abstract)
  shape = lambda t: (jax.tree.structure(t), [(x.shape, x.dtype) for x in jax.tree.leaves(t)])
  if shape(mine) != shape(parent):
    fields = [d for d in cv.diff(parent_config.optimizer.to_dict(), config.optimizer.to_dict())]
    raise cv.ConfigError(
      [
        (
          f"optimizer.{f}",
          new,
          f"changes the optimizer state's layout (parent: {old!r}); "
          "momentum and weight_decay cannot switch between zero and non-zero on a side-trip",
        )
        for f, old, new in fields
      ]
      or [("optimizer", None, "changes the optimizer state layout")]
    )


# ----------------------------------------------------------------------------
# host side


def _workdir_checks(workdir: str, parent_ckpt_dir: str) -> str:
  from trajax.train import ResumeError

  if not workdir:
    raise ResumeError(f"workdir must be a directory path, got {workdir!r}")
  workdir = os.path.abspath(os.fspath(workdir))
  if not os.path.isdir(os.path.dirname(workdir)):
    raise ResumeError(
      f"workdir {workdir!r}: parent directory {os.path.dirname(workdir)!r} does not exist"
    )
  parent_root = os.path.dirname(parent_ckpt_dir)
  for root in (parent_root, parent_ckpt_dir):
    if workdir == root or workdir.startswith(root + os.sep):
      raise ResumeError(
        f"workdir {workdir!r} lies inside the parent's directory {root!r}: a side-trip "
        "writes only into a directory of its own"
      )
  return workdir


def _parent_checks(parent: str, step) -> tuple[str, dict]:
  from trajax import checkpoint as ckpt_lib

  if not _is_int(step) or step < 0:
    raise ValueError(f"step must be an integer >= 0 (a committed step of the parent), got {step!r}")
  path = os.path.abspath(os.fspath(parent))
  if not os.path.exists(path):
    raise FileNotFoundError(f"parent {path!r} does not exist (expected a run's WORKDIR)")
  try:
    directory = ckpt_lib.resolve_directory(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"parent {path!r}: {e}") from None
  steps = ckpt_lib.committed_steps(directory)
  if int(step) not in steps:
    raise FileNotFoundError(
      f"step {step} is not a committed checkpoint of parent {directory!r}; "
      f"committed steps: {steps if steps else 'none'}"
    )
  return directory, ckpt_lib.read_metadata(directory, int(step))


def run_sidetrip(
  config,
  parent: str,
  step: int,
  workdir: str,
  *,
  dataset=None,
  model=None,
  callbacks: Iterable[Callable[[int], None]] = (),
) -> SidetripResult:
  """Branches a side-trip off ``parent`` at ``step`` and trains it in ``workdir``.

  Order: check the parent (plain file reads) and the config (side-trip section,
  training fields, differences from the parent's config); inspect the own
  workdir (its latest committed checkpoint wins over the parent, and must
  belong to the same side-trip); build the abstract state; restore; train.

  Args:
    config: a training config with a ``sidetrip`` section (:func:`with_sidetrip`).
    parent: the parent's WORKDIR (or its ``checkpoints`` directory).
    step: a committed step S of the parent.
    workdir: the side-trip's own directory (created; its parent must exist;
      never inside the parent's directory).
    dataset, model: overrides of ``trajax.data.get_dataset`` /
      ``trajax.models.create_model`` (tests), as in ``train_and_evaluate``.
    callbacks: ``cb(absolute_step)`` after each dispatched step.

  Returns:
    A :class:`SidetripResult`.

  Raises:
    FileNotFoundError: no parent, or S not committed there (lists the steps).
    trajax.config_validation.ConfigError: bad side-trip or training field, a
      difference from the parent that the kind does not allow, or a restart
      under a changed side-trip.
    trajax.train.ResumeError: workdir problems or a foreign lineage.
    trajax.train.NonFiniteError: a non-finite step.
  """
  import ml_collections as mlc

  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation as cv

  t_begin = time.perf_counter()
  parent_dir, parent_meta = _parent_checks(parent, step)
  step = int(step)
  base = _base_config(config)
  cv.validate(base)
  spec = resolve(config, step)
  _check_against_parent(base, parent_meta["config"], spec.kind)
  workdir = _workdir_checks(workdir, parent_dir)
  if (parent_meta.get("lineage") or {}).get("kind") == "fixed_batch":
    # Its state has a plain-GD optimizer state, not the config's optimizer's.
    raise ValueError(
      f"parent {parent_dir!r} is a fixed-batch side-trip: branch off its own parent instead"
    )
  parent_config = mlc.ConfigDict(
    {k: v for k, v in parent_meta["config"].items() if k != "sidetrip"}
  )

  lineage = {
    "parent": parent_dir,
    "parent_step": step,
    "parent_config": parent_meta["config"],
    "parent_config_hash": parent_meta.get("config_hash"),
    "parent_lineage": parent_meta.get("lineage"),
    "kind": spec.kind,
    "params": json.loads(json.dumps(spec._asdict(), default=list)),
  }
  ckpt_dir = os.path.join(workdir, "checkpoints")
  own_steps = ckpt_lib.committed_steps(ckpt_dir)
  own = own_steps[-1] if own_steps else None
  if own is not None:
    own_meta = ckpt_lib.read_metadata(ckpt_dir, own)
    own_lineage = own_meta.get("lineage") or {}
    if (own_lineage.get("parent"), own_lineage.get("parent_step")) != (parent_dir, step):
      raise train.ResumeError(
        f"workdir {workdir!r} holds a side-trip of {own_lineage.get('parent')!r} at step "
        f"{own_lineage.get('parent_step')}, not of {parent_dir!r} at step {step}: use a new "
        "workdir"
      )
    for field, old, new in cv.check_resume(
      own_meta["config"], config, allowed=cv.RESUME_ALLOWED | _RESUME_EXTRA
    ):
      logging.info("side-trip resume: %s changed %r -> %r (allowed)", field, old, new)

  mesh = train.make_mesh(base)
  if dataset is None:
    from trajax import data as data_lib

    dataset = data_lib.get_dataset(
      base, process_index=jax.process_index(), process_count=jax.process_count()
    )
  info = dataset.info
  if model is None:
    from trajax import models

    model = models.create_model(base.model, num_classes=int(info.num_classes))
  input_shape = tuple(info.input_shape)

  parent_abstract = _abstract_parent_state(parent_config, model, input_shape, mesh)
  plain = spec.kind == "fixed_batch"
  if not plain:
    _check_optimizer_layout(base, parent_config, parent_abstract.params)
  const = lambda t: jnp.float32(0.0)
  side_optimizer = _optimizer(base, const, plain=plain)
  to_side = functools.partial(_to_side_state, optimizer=side_optimizer, fresh_optimizer=plain)
  side_abstract = jax.eval_shape(to_side, parent_abstract)
  shardings = train.state_shardings(side_abstract, mesh, shard_params=base.mesh.shard_params)
  side_target = _with_shardings(side_abstract, shardings)

  os.makedirs(workdir, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(
    ckpt_dir,
    max_to_keep=base.checkpoint.max_to_keep,
    keep_period=base.checkpoint.keep_period,
    async_save=base.checkpoint.async_save,
  )
  try:
    if own is not None:
      state, _ = checkpointer.restore(own, side_target)
      lineage["count_at_branch"] = own_lineage["count_at_branch"]
      resumed_from = f"own:{own}"
    else:
      state, _ = ckpt_lib.restore_readonly(parent_dir, step=step, target=parent_abstract)
      if int(state.step) != step:
        raise train.ResumeError(f"parent checkpoint {step} holds a state at step {int(state.step)}")
      lineage["count_at_branch"] = step - int(state.health.total_skips)
      state = jax.jit(to_side, out_shardings=shardings)(state) if plain else state
      resumed_from = f"parent:{step}"
    state = jax.block_until_ready(state)
    restore_s = time.perf_counter() - t_begin
    logging.info(
      "side-trip %s from %s at step %d: restored from %s in %.2fs",
      spec.kind,
      parent_dir,
      step,
      resumed_from,
      restore_s,
    )
    run = _Run(
      config,
      base,
      spec,
      step,
      workdir,
      checkpointer,
      lineage,
      dataset,
      model,
      mesh,
      shardings,
      resumed_from,
      restore_s,
    )
    return _train(run, state, callbacks)
  finally:
    checkpointer.close()


@dataclasses.dataclass
class _Run:
  """What the host loop needs besides the state (built by :func:`run_sidetrip`)."""

  config: Any
  base: Any
  spec: SidetripSpec
  parent_step: int
  workdir: str
  checkpointer: Any
  lineage: dict
  dataset: Any
  model: Any
  mesh: Any
  shardings: Any
  resumed_from: str
  restore_s: float


def _train(run: _Run, state: train.TrainState, callbacks) -> SidetripResult:
  """The host loop of :func:`run_sidetrip` (state restored, checkpointer open)."""
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation as cv
  from trajax import metrics

  config, base, spec, parent_step = run.config, run.base, run.spec, run.parent_step
  dataset, model, mesh, checkpointer = run.dataset, run.model, run.mesh, run.checkpointer
  lineage, resumed_from = run.lineage, run.resumed_from

  base_schedule = train.make_schedule(base.optimizer, base.total_steps)
  # The schedules read the optimizer's update count, which trails the step by
  # the steps skipped as non-finite (nonfinite.skip): S's count anchors them.
  start = int(lineage["count_at_branch"])
  eta_s = float(base_schedule(start))
  absolute_scale = spec.kind == "fixed_batch" or spec.schedule in ("constant", "linear", "cosine")
  hyper = {
    "start": jnp.asarray(start, jnp.int32),
    "scale": jnp.asarray(spec.lr_factor * eta_s if absolute_scale else spec.lr_factor, jnp.float32),
    "horizon": jnp.asarray(spec.steps, jnp.float32),
  }
  step_fn = _step_fn(base, spec, model, mesh, run.shardings, base_schedule)
  cache_before = _compilations(step_fn)
  evaluator = _evaluator(model, mesh)
  batch_sharding = train.batch_sharding(mesh)

  end = parent_step + spec.steps
  t = int(state.step)
  writes = jax.process_index() == 0
  metrics_path = os.path.join(run.workdir, "metrics.jsonl")
  if writes:
    train.truncate_jsonl(metrics_path, t if resumed_from.startswith("own") else None)
  writer = metrics.JsonlWriter(metrics_path) if writes else None
  if writer is not None and resumed_from.startswith("parent"):
    writer.write_hparams(cv.flatten(config))

  if spec.kind == "fixed_batch":
    fixed = dataset.fixed_train_batch(spec.fixed_batch_index, spec.fixed_batch_size)
    fixed_global = train.global_batch(fixed, batch_sharding)
    batches = None
  else:
    batches = dataset.train_batches(t)
  has_average = spec.eval_average and spec.kind != "fixed_batch" and base.averaging.method != "none"

  def check_health():
    health = jax.device_get(state.health)
    if int(health.bad_step) >= 0:
      raise train.NonFiniteError(
        f"side-trip: non-finite value at step {int(health.bad_step)} "
        f"(mask {int(health.bad_what)}: 1 loss, 2 gradient, 4 BN statistics); nothing "
        f"non-finite was saved in {checkpointer.directory!r}"
      )

  def write(t_abs, scalars):
    scalars = dict(scalars, **{"sidetrip/step": t_abs - parent_step})
    if writer is not None:
      writer.write_scalars(t_abs, scalars)

  def run_eval(t_abs):
    out = {
      f"eval/{k}": v
      for k, v in evaluator.evaluate(
        state.params, state.batch_stats, dataset.eval_batches("test")
      ).items()
    }
    if has_average:
      params, stats = train.averaged_variables(state, base, evaluator, dataset)
      out.update(
        {
          f"eval_avg/{k}": v
          for k, v in evaluator.evaluate(params, stats, dataset.eval_batches("test")).items()
        }
      )
    if spec.kind == "fixed_batch":
      fb = evaluator.evaluate(
        state.params,
        state.batch_stats,
        [dict(fixed, mask=np.ones(len(fixed["label"]), np.float32))],
      )
      out.update({f"sidetrip/fixed_batch_{k}": v for k, v in fb.items()})
    write(t_abs, out)
    return out

  def save(t_abs):
    check_health()
    meta = ckpt_lib.make_metadata(config, step=t_abs)
    meta["lineage"] = lineage
    meta["sidetrip_step"] = t_abs - parent_step
    checkpointer.save(t_abs, state, meta)

  evals = {}
  eval_points = {parent_step + j for j in spec.eval_at}
  if t == parent_step and parent_step in eval_points:
    evals[0] = run_eval(t)
  window, first_step_s = [], None
  t_first = time.perf_counter()
  while t < end:
    batch = fixed_global if batches is None else train.global_batch(next(batches), batch_sharding)
    state, step_metrics = step_fn(state, batch, hyper)
    if first_step_s is None:
      jax.block_until_ready(step_metrics)
      first_step_s = time.perf_counter() - t_first
    t += 1
    window.append(step_metrics)
    for cb in callbacks:
      cb(t)
    if t % base.log_every_steps == 0 or t == end:
      check_health()
      write(t, train.summarize(jax.device_get(window)))
      window = []
    if t in eval_points:
      check_health()
      evals[t - parent_step] = run_eval(t)
    if t in eval_points or t % base.checkpoint_every_steps == 0 or t == end:
      save(t)
  checkpointer.wait()
  if writer is not None:
    writer.close()
  timings = {
    "restore_s": run.restore_s,
    "first_step_s": first_step_s,
    "compiled": None if cache_before is None else _compilations(step_fn) > cache_before,
  }
  return SidetripResult(
    state=state,
    step=t,
    parent_step=parent_step,
    sidetrip_steps=t - parent_step,
    evals=evals,
    resumed_from=resumed_from,
    lineage=lineage,
    timings=timings,
  )


# ----------------------------------------------------------------------------
# command line


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  flags.DEFINE_string("parent", None, "The parent run's WORKDIR (or WORKDIR/checkpoints).")
  flags.DEFINE_integer("step", None, "A committed step of the parent to branch off.")
  flags.DEFINE_string("workdir", None, "The side-trip's own directory.")
  for name in ("parent", "step", "workdir"):
    flags.mark_flag_as_required(name)

  config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file; --config.sidetrip.<field> sets the side-trip.",
    lock_config=False,
  )
  # The config files know nothing of side-trips: the section is added right
  # after the file is loaded and before the --config.* overrides are applied
  # (ml_collections applies them after the parser returns), then locked, so
  # --config.sidetrip.kind=... resolves and a misspelt field is still an error.
  parser = flags.FLAGS["config"].parser
  load = parser.parse
  parser.parse = lambda path: with_sidetrip(load(path))
  flags.mark_flag_as_required("config")
  return flags.FLAGS


def _main(argv):
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  config = FLAGS.config
  from trajax import config_validation as cv

  if config.dataset.name in cv.TFDS_DATASETS:
    import tensorflow as tf  # tf.data must not take accelerator memory

    tf.config.set_visible_devices([], "GPU")
  result = run_sidetrip(config, FLAGS.parent, FLAGS.step, FLAGS.workdir)
  last = result.evals.get(result.sidetrip_steps, {})
  logging.info(
    "side-trip done at step %d (%d steps from %d): %s; timings %s",
    result.step,
    result.sidetrip_steps,
    result.parent_step,
    last,
    result.timings,
  )


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(_main)
