"""Learning-rate schedules, each defined once: the registry the main run and side-trips build from.

:data:`SCHEDULES` maps each name ``optimizer.schedule`` may take to its
:class:`LrSchedule` record: the builder (the one implementation), the
``optimizer.*`` fields it reads beyond ``lr``, whether η depends on the
horizon, and any rule spanning its fields. Everything else reads the
record:

* the main run: :func:`trajax.state.make_schedule` is :func:`build` of the
  config (warmup w: η_t = lr·t/w for t < w, :func:`with_warmup`, then the
  named schedule on the remaining T − w steps);
* side-trips (``sidetrip.schedule``): 'constant', 'linear' and 'cosine' are
  the same builders with η_0 = f·η_S and horizon 1, read at the side-trip's
  progress j/k ∈ [0, 1] (:class:`trajax.sidetrip.SidetripRate`): f·η_S and
  k stay traced scalars, so one compilation serves every branch point;
* the config check (:func:`trajax.config.check_optimizer`): the names, each
  record's ``fields`` and ``check``; resume checks read ``horizon``.

With η_0 = ``lr``, τ the steps since the schedule's start and K its horizon:

============  ================================================  ==================================
name          η(τ)                                              builder
============  ================================================  ==================================
constant      η_0                                               ``optax.constant_schedule``
cosine        η_0 (1 + cos(π min(τ, K)/K))/2                    ``optax.cosine_decay_schedule``
linear        η_0 (1 − min(τ, K)/K)                             ``optax.linear_schedule``
step          η_0 · factor^i after the i-th ``step_boundaries``  ``optax.piecewise_constant_schedule``
============  ================================================  ==================================

``step_boundaries`` are absolute steps; a builder's ``lr`` may be a traced
scalar, its horizon is a Python int (optax checks it is positive).

This module imports no JAX at import (the config check reads it before
TensorFlow and JAX); the builders import ``jax.numpy`` and ``optax`` when
called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["SCHEDULES", "LrSchedule", "build", "get", "register", "with_warmup"]


class LrSchedule(NamedTuple):
  """One named learning-rate schedule, defined once.

  Attributes:
    name: the ``optimizer.schedule`` / ``sidetrip.schedule`` value.
    build: ``build(lr, horizon, *, start=0, **fields) -> η(τ)``, an optax
      schedule of τ, the steps since the schedule's start (``start``, in
      absolute steps, places absolute fields such as ``step_boundaries``);
      ``lr`` may be a traced scalar, ``horizon`` is a Python int >= 1.
    fields: the ``optimizer.<field>`` names ``build`` takes as keywords.
    horizon: η depends on ``horizon`` (so a run's ``total_steps`` may not
      change on resume).
    check: optional ``section -> [(field, value, allowed)]``: rules over its
      fields that a single field's rule cannot state (the config's own rules
      check each field's type and range).
  """

  name: str
  build: Callable[..., Any]
  fields: tuple[str, ...] = ()
  horizon: bool = False
  check: Callable[[Mapping], list] | None = None


SCHEDULES: dict[str, LrSchedule] = {}


def register(schedule: LrSchedule) -> LrSchedule:
  """Adds ``schedule`` to :data:`SCHEDULES` (replacing one of the same name)."""
  if not isinstance(schedule, LrSchedule):
    raise TypeError(f"register needs a trajax.lr_schedules.LrSchedule, got {schedule!r}")
  SCHEDULES[schedule.name] = schedule
  return schedule


def get(name: str) -> LrSchedule:
  """The registered schedule ``name`` (ValueError naming the allowed ones)."""
  if not isinstance(name, str) or name not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {list(SCHEDULES)}, got {name!r}")
  return SCHEDULES[name]


def with_warmup(main, lr, warmup: int):
  """η_t = lr·t/w for t < w (``optax.linear_schedule``), then ``main(t − w)`` (``optax.join_schedules``)."""
  import optax

  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def build(opt_config: Mapping, total_steps: int):
  """η_t of the absolute step t from ``optimizer.{lr, schedule, warmup_steps, <fields>}``.

  The named schedule runs on the T − w steps after the warmup w (at least 1).
  """
  spec = get(opt_config["schedule"])
  lr, warmup = float(opt_config["lr"]), int(opt_config["warmup_steps"])
  rest = max(int(total_steps) - warmup, 1)
  fields = {f: opt_config[f] for f in spec.fields}
  return with_warmup(spec.build(lr, rest, start=warmup, **fields), lr, warmup)


# ----------------------------------------------------------------------------
# The builders.


def _constant(lr, horizon, *, start=0):
  import optax

  return optax.constant_schedule(lr)


def _cosine(lr, horizon, *, start=0):
  import optax

  return optax.cosine_decay_schedule(lr, horizon)


def _linear(lr, horizon, *, start=0):
  import optax

  return optax.linear_schedule(lr, 0.0, horizon)


def _step(lr, horizon, *, start=0, step_boundaries=(), step_factor=0.1):
  """lr·factor^i after the i-th boundary (absolute steps; those at or before ``start`` drop out)."""
  import optax

  bounds = [int(b) - int(start) for b in step_boundaries]
  factor = float(step_factor)
  return optax.piecewise_constant_schedule(lr, {b: factor for b in bounds if b > 0})


def _check_step(section: Mapping) -> list:
  bounds = section.get("step_boundaries")
  if not isinstance(bounds, (tuple, list)):
    return []  # the field's own rule reports it
  bounds = tuple(bounds)
  if not bounds:
    return [("step_boundaries", bounds, "the 'step' schedule needs >= 1")]
  if list(bounds) != sorted(set(bounds)):
    return [("step_boundaries", bounds, "must be strictly increasing")]
  return []


register(LrSchedule("constant", _constant))
register(LrSchedule("cosine", _cosine, horizon=True))
register(LrSchedule("linear", _linear, horizon=True))
register(LrSchedule("step", _step, ("step_boundaries", "step_factor"), check=_check_step))
