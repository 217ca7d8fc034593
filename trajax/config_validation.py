"""Checks a training config before anything is allocated or written.

:func:`validate` runs first in ``train_and_evaluate``: it touches no device
memory and no file, so a bad config leaves the workdir as it was. Every
problem is reported at once, each naming the dotted field, the value and what
is allowed::

  ConfigError: 2 problems in the config:
    optimizer.lr = -0.1: must be > 0
    batch_size = 60: must be divisible by the 8 devices on the data axis

:func:`diff` and :func:`check_resume` compare the config of a run being
resumed with the one stored in its checkpoint; only the fields on
:data:`RESUME_ALLOWED` may differ (cadences, retention, paths: nothing that
changes the trajectory).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

DATASETS = ("mnist1d", "digits", "cifar10", "cifar100", "imagenet2012")
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
MODELS = (
  "resnet18",
  "resnet34",
  "resnet50",
  "cifar_resnet18",
  "cifar_resnet34",
  "cnn1d",
  "resnet1d",
)
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine", "linear", "step")
AVERAGING = ("none", "ema", "swa", "two_point", "multi_point")
BATCH_NORM = ("recompute", "average")

# Fields that may change when a run is resumed: they change cadence, retention
# or where things are read from, never the sequence of parameters. total_steps
# is allowed only for schedules that do not depend on it (see check_resume).
RESUME_ALLOWED = frozenset(
  {
    "total_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "eval_batch_size",
    "data_dir",
    "log_batch_fingerprints",
    "checkpoint.max_to_keep",
    "checkpoint.keep_period",
    "checkpoint.async_save",
    "averaging.bn_recompute_batches",
    "mesh.data",
    "mesh.shard_params",
  }
)


class ConfigError(ValueError):
  """A config is invalid; ``problems`` lists ``(field, value, allowed)``."""

  def __init__(self, problems: list[tuple[str, Any, str]]):
    self.problems = problems
    lines = [f"  {f} = {v!r}: {a}" for f, v, a in problems]
    n = len(problems)
    super().__init__(f"{n} problem{'s' * (n != 1)} in the config:\n" + "\n".join(lines))


def _int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _one_of(options):
  return (lambda x: x in options, f"must be one of {list(options)}")


_POS_INT = (lambda x: _int(x) and x > 0, "must be an integer > 0")
_NONNEG_INT = (lambda x: _int(x) and x >= 0, "must be an integer >= 0")
_BOOL = (lambda x: isinstance(x, bool), "must be True or False")
_OPT_POS_INT = (lambda x: x is None or (_int(x) and x > 0), "must be None or an integer > 0")

# dotted field -> (check, what is allowed). The single list of known fields.
SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
  "seed": (_int, "must be an integer"),
  "total_steps": _POS_INT,
  "batch_size": _POS_INT,
  "eval_batch_size": _POS_INT,
  "checkpoint_every_steps": _POS_INT,
  "log_every_steps": _POS_INT,
  "eval_every_steps": _POS_INT,
  "data_dir": (lambda x: x is None or isinstance(x, str), "must be None or a path string"),
  "log_batch_fingerprints": _BOOL,
  "dataset.name": _one_of(DATASETS),
  "dataset.label_noise": (lambda x: _real(x) and 0 <= x <= 1, "must be a number in [0, 1]"),
  "dataset.num_train": _POS_INT,
  "dataset.augment": _BOOL,
  "model.name": _one_of(MODELS),
  "model.width": _POS_INT,
  "model.dtype": _one_of(DTYPES),
  "optimizer.lr": (lambda x: _real(x) and x > 0, "must be a finite number > 0"),
  "optimizer.momentum": (lambda x: _real(x) and 0 <= x < 1, "must be a number in [0, 1)"),
  "optimizer.nesterov": _BOOL,
  "optimizer.weight_decay": (lambda x: _real(x) and x >= 0, "must be a finite number >= 0"),
  "optimizer.schedule": _one_of(SCHEDULES),
  "optimizer.warmup_steps": _NONNEG_INT,
  "optimizer.step_boundaries": (
    lambda x: isinstance(x, (tuple, list)) and all(_int(b) and b > 0 for b in x),
    "must be a tuple of integers > 0",
  ),
  "optimizer.step_factor": (lambda x: _real(x) and 0 < x <= 1, "must be a number in (0, 1]"),
  "averaging.method": _one_of(AVERAGING),
  "averaging.decay": (lambda x: _real(x) and 0 < x <= 1, "must be a number in (0, 1]"),
  "averaging.start_step": _NONNEG_INT,
  "averaging.every": _POS_INT,
  "averaging.gap": _POS_INT,
  "averaging.n": (lambda x: _int(x) and x >= 2, "must be an integer >= 2"),
  "averaging.debias": _BOOL,
  "averaging.batch_norm": _one_of(BATCH_NORM),
  "averaging.bn_recompute_batches": _POS_INT,
  "checkpoint.max_to_keep": _OPT_POS_INT,
  "checkpoint.keep_period": _OPT_POS_INT,
  "checkpoint.async_save": _BOOL,
  "mesh.data": (lambda x: _int(x) and (x == -1 or x > 0), "must be -1 (all devices) or > 0"),
  "mesh.shard_params": _BOOL,
  "nonfinite.skip": _BOOL,
  "nonfinite.max_consecutive_skips": _POS_INT,
}


def flatten(config) -> dict[str, Any]:
  """``{'optimizer.lr': 0.05, ...}`` from a ConfigDict or nested mapping."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  out = {}

  def rec(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, Mapping):
        rec(key + ".", v)
      else:
        out[key] = v

  rec("", config)
  return out


def validate(config, *, num_devices: int | None = None, process_count: int | None = None):
  """Raises :class:`ConfigError` listing every problem in ``config``.

  Args:
    config: a ``ml_collections.ConfigDict`` (or nested mapping).
    num_devices: devices available to the run (default ``jax.device_count()``;
      querying it initialises the backend but allocates nothing).
    process_count: processes in the run (default ``jax.process_count()``).
  """
  flat = flatten(config)
  problems: list[tuple[str, Any, str]] = []
  for field in sorted(set(flat) - set(SCHEMA)):
    problems.append((field, flat[field], f"unknown field; known fields: {sorted(SCHEMA)}"))
  for field in sorted(set(SCHEMA) - set(flat)):
    problems.append((field, None, "missing field (start configs from configs/common.py)"))
  for field, (ok, allowed) in SCHEMA.items():
    if field in flat and not ok(flat[field]):
      problems.append((field, flat[field], allowed))
  if any(p[2].startswith(("unknown", "missing")) for p in problems):
    raise ConfigError(problems)
  bad = {p[0] for p in problems}
  good = lambda *fields: not bad.intersection(fields)

  if num_devices is None or process_count is None:
    import jax

    num_devices = jax.device_count() if num_devices is None else num_devices
    process_count = jax.process_count() if process_count is None else process_count

  total = flat["total_steps"] if good("total_steps") else math.inf
  mesh_data = flat["mesh.data"] if good("mesh.data") else -1
  if mesh_data > num_devices:
    problems.append(("mesh.data", mesh_data, f"must be -1 or <= the {num_devices} devices"))
  elif mesh_data != -1 and num_devices % mesh_data:
    problems.append(("mesh.data", mesh_data, f"must divide the {num_devices} devices"))
  data_axis = num_devices if mesh_data == -1 else mesh_data
  for field in ("batch_size", "eval_batch_size"):
    if not good(field):
      continue
    if flat[field] % data_axis:
      problems.append(
        (field, flat[field], f"must be divisible by the {data_axis} devices on the data axis")
      )
    elif flat[field] % process_count:
      problems.append((field, flat[field], f"must be divisible by the {process_count} processes"))

  if good("dataset.name", "data_dir") and flat["dataset.name"] in TFDS_DATASETS:
    data_dir = flat["data_dir"]
    if not data_dir:
      problems.append(
        (
          "data_dir",
          data_dir,
          f"TFDS dataset {flat['dataset.name']!r} needs the directory it was prepared "
          "in (training never downloads)",
        )
      )
    elif "://" not in data_dir and not os.path.isdir(data_dir):
      problems.append(("data_dir", data_dir, "must be an existing directory"))
  if good("dataset.name", "model.name"):
    one_d_data = flat["dataset.name"] == "mnist1d"
    one_d_model = flat["model.name"].endswith("1d")
    if one_d_data and not one_d_model:
      problems.append(("model.name", flat["model.name"], "mnist1d needs 'cnn1d' or 'resnet1d'"))
    elif one_d_model and not one_d_data:
      problems.append(
        ("model.name", flat["model.name"], f"{flat['dataset.name']} needs a 2-D image model")
      )

  if good("optimizer.warmup_steps") and flat["optimizer.warmup_steps"] >= total:
    problems.append(
      ("optimizer.warmup_steps", flat["optimizer.warmup_steps"], f"must be < total_steps={total}")
    )
  bounds = tuple(flat["optimizer.step_boundaries"])
  if good("optimizer.schedule", "optimizer.step_boundaries") and (
    flat["optimizer.schedule"] == "step"
  ):
    if not bounds:
      problems.append(("optimizer.step_boundaries", bounds, "the 'step' schedule needs >= 1"))
    elif list(bounds) != sorted(set(bounds)):
      problems.append(("optimizer.step_boundaries", bounds, "must be strictly increasing"))
  method = flat["averaging.method"] if good("averaging.method") else None
  if (
    good("averaging.start_step")
    and method in ("ema", "swa")
    and flat["averaging.start_step"] >= total
  ):
    problems.append(
      ("averaging.start_step", flat["averaging.start_step"], f"must be < total_steps={total}")
    )
  if (
    good("averaging.gap")
    and method in ("two_point", "multi_point")
    and flat["averaging.gap"] > total
  ):
    problems.append(("averaging.gap", flat["averaging.gap"], f"must be <= total_steps={total}"))
  if good("averaging.n") and method == "multi_point" and flat["averaging.n"] > 1000:
    problems.append(("averaging.n", flat["averaging.n"], "must be <= 1000 (memory: n copies)"))
  if problems:
    raise ConfigError(problems)


def diff(old, new) -> list[tuple[str, Any, Any]]:
  """``(field, old value, new value)`` for every field that differs (tuples == lists)."""
  a, b = flatten(old), flatten(new)
  missing = object()
  out = []
  for field in sorted(set(a) | set(b)):
    x, y = a.get(field, missing), b.get(field, missing)
    norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v
    if norm(x) != norm(y):
      out.append((field, None if x is missing else x, None if y is missing else y))
  return out


def check_resume(stored, new, *, allowed=RESUME_ALLOWED) -> list[tuple[str, Any, Any]]:
  """Refuses to resume under a config that changes the trajectory.

  Returns the allowed differences (to be logged); raises :class:`ConfigError`
  naming every other differing field with both values. ``total_steps`` is
  allowed only when the schedule does not depend on it ('constant', 'step').
  """
  diffs = diff(stored, new)
  schedule = flatten(new).get("optimizer.schedule")
  bad = []
  for field, old, cur in diffs:
    horizon = field == "total_steps" and schedule not in ("constant", "step")
    if field not in allowed or horizon:
      why = (
        f"the {schedule!r} schedule depends on total_steps"
        if horizon
        else f"differs from the checkpoint's value {old!r}; only {sorted(allowed)} may change "
        "on resume (start a new workdir or branch a side-trip instead)"
      )
      bad.append((field, cur, why))
  if bad:
    raise ConfigError(bad)
  return diffs
