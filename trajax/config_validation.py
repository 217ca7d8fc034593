"""Checks a training config before anything is allocated or written.

:func:`validate` runs first in ``train_and_evaluate`` (and in ``trajax.main``
before TensorFlow is imported): it touches no device memory and no file, so a
bad config leaves the workdir as it was. Every problem is reported at once,
each naming the dotted field, the value and what is allowed::

  ConfigError: 2 problems in the config:
    optimizer.lr = -0.1: must be a finite number > 0
    batch_size = 60: must be divisible by the 8 devices on the data axis

The fields are declared once, in :func:`trajax.config.base_config` (a field it
lacks is unknown); each section's values are checked by its owner's registry
(``trajax.models``, ``trajax.data``, ``trajax.config`` for the optimizer and
the training loop's fields, :func:`_check_averaging`). This module keeps only
the rules that span sections: batch sizes against devices and processes, a
TFDS dataset's ``data_dir``, 1-D data with a 1-D model, warmup and averaging
against ``total_steps``.

:func:`diff` and :func:`check_resume` compare the config of a run being
resumed with the one stored in its checkpoint; only the fields on
:data:`RESUME_ALLOWED` may differ (cadences, retention, paths: nothing that
changes the trajectory).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from trajax import averaging, data, models
from trajax import config as config_lib
from trajax.config import ConfigError, Problem, flatten

__all__ = [
  "RESUME_ALLOWED",
  "TFDS_DATASETS",
  "ConfigError",
  "check_resume",
  "diff",
  "flatten",
  "validate",
]

TFDS_DATASETS = data.TFDS_NAMES

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


# A run's multi-point average holds n copies of the params; one point is no
# average (the averager accepts it: it is the held latest snapshot).
_RUN_MAX_POINTS = 1000


def _check_averaging(config, *, total_steps: int | None = None) -> list[str]:
  """``averaging.method`` and its parameters, as ``"field = value: allowed"`` lines.

  The method's own record checks them (:func:`trajax.averaging.validate_params`
  reads the parameters ``averaging.method`` takes from the flat section and
  ignores the others); a run adds only the bound on ``n``.
  """
  section = config["averaging"]
  errors = averaging.validate_params(section["method"], section, total_steps=total_steps)
  n = section.get("n")
  if (
    section["method"] == "multi_point"
    and config_lib.is_int(n)
    and not 2 <= n <= _RUN_MAX_POINTS
    and not any(e.startswith("averaging.n =") for e in errors)
  ):
    errors.append(
      f"averaging.n = {n!r}: must be an integer >= 2 (one point is no average) and "
      f"<= {_RUN_MAX_POINTS} (a run holds n copies of the params)"
    )
  errors += averaging.validate_profiles(section.get("profiles", ()), total_steps=total_steps)
  return errors


def _field_problems(config: dict) -> list[Problem]:
  """Unknown and missing fields: the declaration is :func:`trajax.config.base_config`."""
  flat = flatten(config)
  known = config_lib.field_names()
  problems = []
  for field in sorted(set(flat) - set(known)):
    close = difflib.get_close_matches(field, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    allowed = f"unknown field; {hint}(declared in trajax.config.base_config: {list(known)})"
    problems.append(Problem(field, flat[field], allowed))
  for field in sorted(set(known) - set(flat)):
    problems.append(Problem(field, None, "missing field (start from trajax.config.base_config())"))
  return problems


def validate(config, *, num_devices: int | None = None, process_count: int | None = None):
  """Raises :class:`ConfigError` listing every problem in ``config``.

  Args:
    config: a ``ml_collections.ConfigDict`` (or nested mapping).
    num_devices: devices available to the run (default ``jax.device_count()``;
      querying it initialises the backend but allocates nothing).
    process_count: processes in the run (default ``jax.process_count()``).
  """
  c = config.to_dict() if hasattr(config, "to_dict") else config
  problems = _field_problems(c)
  if problems:
    raise ConfigError(problems)

  # Each owner checks its own section.
  problems += config_lib.check_run(c)
  total = c["total_steps"] if config_lib.POS_INT.ok(c["total_steps"]) else None
  problems += config_lib.check_optimizer(c["optimizer"], total_steps=total)
  problems += data.check_config(c["dataset"])
  problems += models.check_config(c["model"])
  problems = [Problem.of(p) for p in problems + _check_averaging(c, total_steps=total)]
  bad = {p.field for p in problems}
  good = lambda *fields: not bad.intersection(fields)

  # Rules that span sections.
  if num_devices is None or process_count is None:
    import jax

    num_devices = jax.device_count() if num_devices is None else num_devices
    process_count = jax.process_count() if process_count is None else process_count
  mesh_data = c["mesh"]["data"] if good("mesh.data") else -1
  if mesh_data > num_devices:
    problems.append(Problem("mesh.data", mesh_data, f"must be -1 or <= the {num_devices} devices"))
  elif mesh_data != -1 and num_devices % mesh_data:
    problems.append(Problem("mesh.data", mesh_data, f"must divide the {num_devices} devices"))
  data_axis = num_devices if mesh_data == -1 else mesh_data
  for field in ("batch_size", "eval_batch_size"):
    if not good(field):
      continue
    if c[field] % data_axis:
      problems.append(
        Problem(field, c[field], f"must be divisible by the {data_axis} devices on the data axis")
      )
    elif c[field] % process_count:
      problems.append(
        Problem(field, c[field], f"must be divisible by the {process_count} processes")
      )

  name = c["dataset"]["name"]
  source = data.SOURCES[name] if good("dataset.name") else None
  if source is not None and source.tfds and good("data_dir"):
    data_dir = c["data_dir"]
    if not data_dir:
      problems.append(
        Problem(
          "data_dir",
          data_dir,
          f"TFDS dataset {name!r} needs the directory it was prepared in (training never "
          "downloads)",
        )
      )
    elif "://" not in data_dir and not os.path.isdir(data_dir):
      problems.append(Problem("data_dir", data_dir, "must be an existing directory"))
  if source is not None and good("model.name"):
    model = c["model"]["name"]
    dims = models.MODELS[model].spatial_dims
    if dims != source.spatial_dims:
      fitting = [m for m, spec in models.MODELS.items() if spec.spatial_dims == source.spatial_dims]
      kind = "1-D sequence" if source.spatial_dims == 1 else f"{source.spatial_dims}-D image"
      problems.append(
        Problem("model.name", model, f"{name} needs a {kind} model: one of {fitting}")
      )
  if problems:
    raise ConfigError(problems)


# Marks a field one of two compared configs does not have.
ABSENT = config_lib.Shown("<absent>")


def diff(old, new) -> list[tuple[str, Any, Any]]:
  """``(field, old value, new value)`` for every field that differs (tuples == lists).

  A field of :func:`trajax.config.base_config` that one side lacks counts as
  its default (a config stored before the field existed ran with the
  default); any other field one side lacks (a ``sidetrip.*`` field, say) is
  :data:`ABSENT` on that side.
  """
  a, b = flatten(old), flatten(new)
  defaults = flatten(config_lib.base_config())

  def norm(v):  # nested too: a stored ((j, b), ...) comes back as [[j, b], ...]
    return [norm(x) for x in v] if isinstance(v, (tuple, list)) else v

  out = []
  for field in sorted(set(a) | set(b)):
    x, y = (d.get(field, defaults.get(field, ABSENT)) for d in (a, b))
    if x is ABSENT or y is ABSENT or norm(x) != norm(y):
      out.append((field, x, y))
  return out


def check_resume(stored, new, *, allowed=RESUME_ALLOWED) -> list[tuple[str, Any, Any]]:
  """Refuses to resume under a config that changes the trajectory.

  Returns the allowed differences (to be logged); raises :class:`ConfigError`
  naming every other differing field with both values. ``total_steps`` is
  allowed only when the schedule does not depend on it
  (``trajax.config.SCHEDULES[name].horizon``). A section only one side has
  (a side-trip's ``sidetrip``) is one problem, not one per field.
  """
  diffs = diff(stored, new)
  flat_stored, flat_new = flatten(stored), flatten(new)
  schedule = flat_new.get("optimizer.schedule")
  spec = config_lib.SCHEDULES.get(schedule) if isinstance(schedule, str) else None
  depends_on_horizon = spec is None or spec.horizon
  advice = "start a new workdir or branch a side-trip instead"
  has_section = lambda flat, s: any(k.startswith(s + ".") for k in flat)
  bad, reported = [], set()
  for field, old, cur in diffs:
    section = field.split(".")[0] if "." in field else None
    if cur is ABSENT and section and not has_section(flat_new, section):
      if section not in reported:
        reported.add(section)
        why = f"the checkpoint's config has a {section!r} section and this config has none"
        if section == "sidetrip":
          why = (
            "the checkpoint was written by a side-trip: resume it with python -m trajax.sidetrip"
          )
        bad.append((section, ABSENT, why))
    elif old is ABSENT and section and not has_section(flat_stored, section):
      if section not in reported:
        reported.add(section)
        why = f"the checkpoint's config has no {section!r} section; {advice}"
        bad.append((section, config_lib.Shown("{...}"), why))
    elif cur is ABSENT:
      bad.append(
        (field, ABSENT, f"the checkpoint's config has it (= {old!r}); this config lacks it")
      )
    elif old is ABSENT:
      bad.append((field, cur, f"the checkpoint's config has no such field; {advice}"))
    elif field not in allowed or (field == "total_steps" and depends_on_horizon):
      why = (
        f"the {schedule!r} schedule depends on total_steps"
        if field in allowed
        else f"differs from the checkpoint's value {old!r}; only {sorted(allowed)} may change "
        f"on resume ({advice})"
      )
      bad.append((field, cur, why))
  if bad:
    raise ConfigError(bad)
  return diffs
