r"""Side-trips: branch a run off a parent's checkpoint (paper Secs. 3, 5; Figs. 1, 3, 5, 7, 10).

A side-trip is :func:`trajax.loop.fit` started from a parent's committed step
S (read *read-only* through :func:`trajax.checkpoint.restore_readonly`: nothing
in the parent's directory is written, pruned or cleaned up) with its own
learning rate, batches and workdir::

  python -m trajax.sidetrip --parent=workdirs/mnist1d --step=3000 \
      --workdir=workdirs/mnist1d-trip-3000 --config=configs/mnist1d.py \
      --config.sidetrip.kind=equivalent --config.sidetrip.average='two_point(gap=500)'

This module holds only what makes a run a side-trip: the ``sidetrip`` config
section (:func:`resolve`), its learning-rate rule (:class:`SidetripRate`), the
checks against the parent and the lineage. The run itself -- SIGTERM saves
(exit 0), prefetch, batch fingerprints, progress, TensorBoard and JSON-lines
metrics, finiteness before every save -- is the main run's loop.

Kinds (``config.sidetrip.kind``), with η the config's schedule of the absolute
step t (equal to the parent's unless ``optimizer.*`` is overridden), f =
``sidetrip.lr_factor``, j = t − S the side-trip's own step and k its length:

* ``'equivalent'`` -- η'_t = f · η_t · w_{t−S} (paper Table 1, eq. 29), w the
  step weights of the side-trip's average ``sidetrip.average`` (a method with
  every parameter, or any kernel; default the parent's ``averaging.*``), a
  static table indexed by the traced t − S (:class:`SidetripRate`), on the parent's
  batch stream from S on (batch t is a pure function of (seed, t)) with the
  parent's optimizer state. For a loss linear per batch it lands exactly on
  the average that method started at S reaches after k steps (Lemma 2); on a
  real network approximately (Figs. 1, 5, 10). The average starts at the
  branch step: S is the schedule's ``start``, the averager's start step, and
  ``averaging.start_step`` (when the *parent's* averager starts) does not enter.
* ``'fixed_batch'`` -- :func:`trajax.probes.fixed_batch_gd`, plain gradient
  descent θ ← θ − η'∇L_b(θ) on the fixed batch's loss alone (no momentum, no
  average, no weight decay: the same rule as :func:`trajax.probes.gd_trajectory`)
  on ``dataset.fixed_train_batch(fixed_batch_index)``, η' = f · η_S, for k
  steps: the paper's fixed-batch side-trip (Sec. 3, Fig. 3).
* ``'schedule'`` -- the parent's stream and optimizer state under
  ``sidetrip.schedule``: ``'config'`` η'_t = f · η_t (with an unchanged config
  and f = 1 the side-trip reproduces the parent bit for bit), ``'constant'``
  η' = f · η_S, ``'linear'`` η'_t = f · η_S · max(0, 1 − j/k), ``'cosine'``
  η'_t = f · η_S · (1 + cos(π min(j, k)/k))/2.
* ``'batch_size'`` -- the batch size changes instead of (or with) the rate:
  the parent's optimizer state, the learning rate of ``sidetrip.schedule`` and
  ``lr_factor`` exactly as for 'schedule', and the batch of side-trip step j
  holds b_j examples read on from the parent's stream taken as one flat stream
  of examples (parent batch t = examples [tB, (t+1)B); the side-trip from S
  reads from example S·B on; :mod:`trajax.sidetrip.stream`). With
  ``batch_growth`` = k every batch is kB: batch j is the parent's batches
  S + kj … S + kj + k − 1 concatenated, so "λ at kB for J steps" and "λ/k at
  B for kJ steps" ('schedule', ``schedule='constant'``, ``lr_factor=1/k``) see
  the same examples in the same order (Smith et al. 2018; the quadratic model's
  comparison is :func:`trajax.theory.batch_vs_lr`). Each global batch must be
  a multiple of the data-parallel devices (checked before anything is written).

The step counter is the absolute step t (checkpoints, metrics and the data
stream line up with the parent's); every metrics record carries
``sidetrip/step`` = j and, except for 'fixed_batch', ``sidetrip/examples_seen``
= Σ_{i<j} b_i, the training examples consumed since S (j·B unless the batch
size changes). S, f·η_S and k enter the step as traced scalars, so one
compilation serves every branch point (Fig. 1).

Start and restart (big_vision's precedence, :func:`trajax.loop.fit`): the
side-trip's own latest checkpoint, else the parent's step S. A restart needs
only its own checkpoints -- the parent's step S may since have been pruned.
Every checkpoint carries the lineage: the parent's checkpoints directory
(symlinks resolved), S, the parent's config and its hash, a hash of its
trajectory-defining fields, the resolved side-trip and the parent's own
lineage. A restart names the parent by identity, not path string: a path
that resolves to the recorded one is the parent; a parent moved elsewhere is
accepted with ``--parent_moved`` (``parent_moved=True``) once its config
matches the recorded one.

Fields a side-trip may change relative to its parent: ``total_steps``,
``nonfinite.*`` and, except for 'equivalent', ``optimizer.*`` (within the
parent's optimizer-state layout); ``batch_size`` only for 'fixed_batch' (the
default ``fixed_batch_size``): the parent's B defines the stream the other
kinds continue. The batch-size fields enter the lineage and the stored config,
so a restart under another batch schedule is refused like any other change.

The ``sidetrip`` config section (added by :func:`with_sidetrip` or by the
CLI before the config is locked; every field is dotted as ``sidetrip.<name>``
in errors):

==================  ==========================================================
kind                'equivalent' | 'fixed_batch' | 'schedule' | 'batch_size'
steps               k; default: window ('equivalent'), total_steps − S
                    ('schedule', 'batch_size'); required for 'fixed_batch'
average             'equivalent': the average, a value of trajax.averaging
                    spelt ``ema(decay=0.01, every=4, debias=True)`` or
                    ``kernel(c_0, …, c_k)`` (every parameter; start_step
                    counts from S); default the parent's ``averaging.method``
                    with its parameters, averaging from S
window              steps the average covers; default its own (gap for
                    two_point, (n − 1)·gap for multi_point, k for a kernel),
                    required for ema/swa/power_ema
method, decay,      deprecated spelling of ``average``: a method (default
gap, n, gamma       ``averaging.method``) overriding ``averaging.*``, every and
                    debias the parent's; mapped onto ``average`` with a note
lr_factor           f > 0 (default 1)
schedule            'config' | 'constant' | 'linear' | 'cosine' ('schedule' and
                    'batch_size' kinds)
fixed_batch_index   index of the fixed batch (>= 0)
fixed_batch_size    its size; default ``batch_size``
eval_at             side-trip steps j to evaluate and checkpoint at (0 … k);
                    points beyond k are dropped, k is always evaluated
eval_average        also evaluate the averaged params (kinds that keep them)
batch_growth        'batch_size' kind: k > 0, every batch k·B (k·B a whole
                    number; B = ``batch_size``, the parent's)
batch_sizes         'batch_size' kind, instead of batch_growth: a schedule
                    ((0, b_0), (j_1, b_1), …): global batch b_i from side-trip
                    step j_i on (starts strictly increasing, each < steps)
==================  ==========================================================
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from absl import logging

from trajax import config as config_lib
from trajax import loop, train
from trajax import state as state_lib
from trajax.sidetrip.lineage import (
  LINEAGE_VERSION,
  SidetripError,
  check_step,
  fresh_parent,
  recorded_parent,
  trajectory_hash,
  workdir_checks,
)
from trajax.sidetrip.spec import (
  ADDED_FIELDS,
  KINDS,
  RESUME_EXTRA,
  SCHEDULES,
  SidetripRate,
  SidetripSpec,
  as_stored_spelling,
  batch_size_at,
  check_against_parent,
  check_batch_devices,
  check_optimizer_layout,
  default_section,
  examples_before,
  make_lr_schedule,
  resolve,
  with_sidetrip,
  without_sidetrip,
)
from trajax.sidetrip.stream import flat_stream_batches

__all__ = [
  "KINDS",
  "batch_size_at",
  "check_batch_devices",
  "examples_before",
  "flat_stream_batches",
  "LINEAGE_VERSION",
  "SCHEDULES",
  "SidetripError",
  "SidetripRate",
  "SidetripResult",
  "SidetripSpec",
  "default_section",
  "make_lr_schedule",
  "rebuild_section",
  "resolve",
  "run_sidetrip",
  "trajectory_hash",
  "with_sidetrip",
]


def rebuild_section(config, section):
  """``config`` with a stored ``sidetrip`` section typed again (:func:`with_sidetrip`).

  Registered with :func:`trajax.config.register_section`, so
  :func:`trajax.config.from_dict` rebuilds a side-trip's stored config once
  this package is imported, without ``trajax.config`` importing it.
  """
  return with_sidetrip(config, **dict(section))


config_lib.register_section("sidetrip", rebuild_section)


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
  preempted: True when SIGTERM stopped it early (after a committed save).
  """

  state: Any
  step: int
  parent_step: int
  sidetrip_steps: int
  evals: dict
  resumed_from: str
  lineage: dict
  timings: dict
  preempted: bool = False


# ----------------------------------------------------------------------------
# the run


def _as_stored(config, own_config: dict):
  """``config`` as a side-trip written before some of its fields existed stored it.

  Such a checkpoint's ``sidetrip`` section lacks fields of
  :data:`~trajax.sidetrip.spec.ADDED_FIELDS` (``batch_growth``,
  ``batch_sizes``, ``gamma``); left at None they change nothing, so they are dropped from
  the config the resume is checked against (and that its checkpoints store)
  rather than refused as new fields. Set, they are a change and are refused.
  """
  old = own_config.get("sidetrip")
  if not isinstance(old, dict) or "sidetrip" not in config:
    return config
  config = as_stored_spelling(config, old)  # the same average, spelt the other way
  drop = [n for n in ADDED_FIELDS if n not in old and config.sidetrip[n] is None]
  if not drop:
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    for name in drop:
      del config.sidetrip[name]
  return config


def run_sidetrip(
  config,
  parent: str,
  step: int,
  workdir: str,
  *,
  parent_moved: bool = False,
  dataset=None,
  model=None,
  callbacks: Iterable[Callable[[int], None]] = (),
) -> SidetripResult:
  """Branches a side-trip off ``parent`` at ``step`` and trains it in ``workdir``.

  Order: check the config (side-trip section, training fields); inspect the
  own workdir -- its latest committed checkpoint wins over the parent and
  must belong to the same side-trip (lineage) -- else check the parent
  (plain file reads); check the config against the parent's; then
  :func:`trajax.loop.fit` from :class:`trajax.loop.FromCheckpoint` (parent, S).

  Args:
    config: a training config with a ``sidetrip`` section (:func:`with_sidetrip`).
    parent: the parent's WORKDIR (or its ``checkpoints`` directory).
    step: the branch step S, a committed step of the parent (on a restart from
      the side-trip's own checkpoints it need not be committed any more).
    workdir: the side-trip's own directory (created; its parent must exist;
      never inside the parent's directory).
    parent_moved: accept a parent at another path than the recorded one once
      its config matches the recorded parent's (restarts only).
    dataset, model: overrides of ``trajax.data.get_dataset`` /
      ``trajax.models.create_model`` (tests), as in ``train_and_evaluate``.
    callbacks: ``cb(absolute_step)`` after each dispatched step.

  Returns:
    A :class:`SidetripResult` (``preempted`` after a SIGTERM save).

  Raises:
    FileNotFoundError: no parent, or S not committed there (lists the steps).
    trajax.config_validation.ConfigError: bad side-trip or training field, a
      difference from the parent that the kind does not allow, or a restart
      under a changed side-trip.
    trajax.state.ResumeError: workdir problems or a foreign lineage.
    SidetripError: a bad step or a fixed-batch parent.
    trajax.state.NonFiniteError: a non-finite step.
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import config_validation as cv
  from trajax import paths

  step = check_step(step)
  base = without_sidetrip(config)
  cv.validate(base)
  spec = resolve(config, step)
  own_dir = paths.join(paths.absolute(workdir), "checkpoints") if workdir else ""
  own_steps = ckpt_lib.committed_steps(own_dir) if own_dir else []
  # The newest own step whose metadata verifies (a damaged latest one is
  # quarantined by the loop's writer, not fatal here).
  own_meta = ckpt_lib.newest_good_metadata(own_dir, own_steps)
  if own_meta is not None:
    own_lineage = own_meta.get("lineage") or {}
    stored = _as_stored(config, own_meta.get("config") or {})
    parent_dir = recorded_parent(own_lineage, parent, step, workdir, parent_moved)
    parent_meta = {
      "config": own_lineage["parent_config"],
      "config_hash": own_lineage.get("parent_config_hash"),
      "lineage": own_lineage.get("parent_lineage"),
    }
    wd = float(base.optimizer.weight_decay or 0.0)
    if spec.kind == "fixed_batch" and own_lineage.get("version", 1) < 2 and wd:
      raise state_lib.ResumeError(
        f"workdir {workdir!r} holds a fixed-batch side-trip started by an older trajax whose "
        f"gradient descent included weight decay ({wd}); this version's does not "
        "(trajax.state.fixed_batch_gd): restart it in a new workdir"
      )
  else:
    own_lineage, stored = None, config
    parent_dir, parent_meta = fresh_parent(parent, step)
  check_against_parent(base, parent_meta["config"], spec.kind)
  workdir = workdir_checks(workdir, parent_dir)
  parent_config = loop.stored_config(parent_meta)

  mesh = state_lib.make_mesh(base)
  if spec.kind == "batch_size":
    # As trajax.data requires of batch_size: whole rows per process and device.
    per_host = jax.process_count() * jax.local_device_count()
    unit = math.lcm(int(mesh.shape["data"]), per_host)
    check_batch_devices(
      config,
      spec,
      unit,
      f"{mesh.shape['data']} data-parallel devices (mesh.data), {jax.process_count()} "
      f"process(es) x {jax.local_device_count()} local devices",
    )
  if dataset is None:
    from trajax import data as data_lib

    dataset = data_lib.get_dataset(
      base, process_index=jax.process_index(), process_count=jax.process_count()
    )
  if model is None:
    from trajax import models

    model = models.create_model(base.model, num_classes=int(dataset.info.num_classes))
  input_shape = tuple(dataset.info.input_shape)
  if spec.kind != "fixed_batch":
    parent_abstract = state_lib.abstract_state(parent_config, model, input_shape, mesh)
    check_optimizer_layout(base, parent_config, parent_abstract.params)

  lineage = {
    "version": LINEAGE_VERSION,
    "parent": parent_dir,
    "parent_step": step,
    "parent_config": parent_meta["config"],
    "parent_config_hash": parent_meta.get("config_hash"),
    "parent_identity": trajectory_hash(parent_meta["config"]),
    "parent_lineage": parent_meta.get("lineage"),
    "kind": spec.kind,
    "params": json.loads(json.dumps(spec._asdict(), default=list)),
  }
  if own_lineage and own_lineage.get("parent") != parent_dir:
    lineage["moved_from"] = own_lineage.get("parent")
  rate = SidetripRate.of(spec)
  base_schedule = state_lib.make_schedule(base.optimizer, base.total_steps)

  def hyper_at_branch(state):
    # The schedules read the optimizer's update count, which trails the step
    # by the steps skipped as non-finite (nonfinite.skip): S's count anchors them.
    count = step - int(state.health.total_skips)
    lineage["count_at_branch"] = count
    return rate.hyper(spec, base_schedule, count)

  if own_lineage is not None:
    lineage["count_at_branch"] = own_lineage["count_at_branch"]
    hyper = rate.hyper(spec, base_schedule, own_lineage["count_at_branch"])
  else:
    hyper = hyper_at_branch

  evaluator = train.evaluator(model, mesh)
  batches, extra_eval = None, None
  if spec.kind == "fixed_batch":
    fixed = dataset.fixed_train_batch(spec.fixed_batch_index, spec.fixed_batch_size)
    masked = dict(fixed, mask=np.ones(len(fixed["label"]), np.float32))
    batches = lambda t: itertools.repeat(fixed)  # noqa: E731

    def extra_eval(state):
      fb = evaluator.evaluate(state.params, state.batch_stats, [masked])
      return {f"sidetrip/fixed_batch_{k}": v for k, v in fb.items()}

  if spec.kind == "batch_size":
    batches = flat_stream_batches(
      dataset, step, spec.batch_sizes, int(base.batch_size), jax.process_count()
    )
  # Examples consumed since S (the parent's B per step unless the kind sets it).
  sizes = spec.batch_sizes or ((0, int(base.batch_size)),)

  def scalars(t):
    out = {"sidetrip/step": t - step}
    if spec.kind != "fixed_batch":
      out["sidetrip/examples_seen"] = examples_before(sizes, t - step)
    return out

  points = [step + j for j in spec.eval_at]
  result = loop.fit(
    base,
    workdir,
    start=loop.FromCheckpoint(parent_dir, step, parent_config),
    schedule=loop.LearningRate(rate, hyper),
    batches=batches,
    optimizer="fixed_batch_gd" if spec.kind == "fixed_batch" else "config",
    end=step + spec.steps,
    eval_at=points,
    eval_average=(
      spec.eval_average and spec.kind != "fixed_batch" and base.averaging.method != "none"
    ),
    extra_eval=extra_eval,
    save_at=points,
    scalars=scalars,
    metadata=lambda t: {"lineage": lineage, "sidetrip_step": t - step},
    stored=stored,
    resume_allowed=cv.RESUME_ALLOWED | RESUME_EXTRA,
    dataset=dataset,
    model=model,
    callbacks=callbacks,
  )
  origin = result.origin.replace("from:", "parent:")
  logging.info(
    "side-trip %s from %s at step %d: started from %s", spec.kind, parent_dir, step, origin
  )
  return SidetripResult(
    state=result.state,
    step=result.step,
    parent_step=step,
    sidetrip_steps=result.step - step,
    evals={t - step: v for t, v in result.evals.items()},
    resumed_from=origin,
    lineage=lineage,
    timings=result.timings,
    preempted=result.preempted,
  )
