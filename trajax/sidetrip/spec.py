"""The side-trip spec: the ``sidetrip`` config section, its checks and its learning-rate rule.

See :mod:`trajax.sidetrip` for the kinds and the field table.

Why one module of over 500 lines: the section, its resolution against the
parent (every kind, the batch-size schedule included), the mapping of the
deprecated spellings and the learning-rate rule are the one contract stored
side-trips resume against; :func:`resolve` reads as one function only with
its pieces beside it.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from trajax import averaging, loop, lr_schedules, schedules
from trajax import config as config_lib
from trajax import state as state_lib

KINDS = ("equivalent", "fixed_batch", "schedule", "batch_size")


# 'config' (the config's own η_t, scaled) and every registered schedule that
# needs no field beyond the rate and the horizon, run from S at f·η_S over k
# steps (trajax.lr_schedules: constant, cosine, linear).
def schedule_names() -> tuple[str, ...]:
  """The ``sidetrip.schedule`` values, from the registry as it is now."""
  return ("config", *(n for n, s in lr_schedules.SCHEDULES.items() if not s.fields))


SCHEDULES = schedule_names()  # as registered at import; schedule_names() is live

# Config fields a side-trip may change relative to its parent, by kind. Every
# other difference would change what "the parent's state" means (model,
# data, averaging state layout) and is refused. The cadence/retention fields
# trajax.config_validation allows on resume are allowed for every kind.
#
# ``batch_size`` is free only for 'fixed_batch', where it is no more than the
# default of ``sidetrip.fixed_batch_size``. Elsewhere the parent's B defines
# the stream the side-trip continues (batch t of the parent's stream under
# another B holds other examples), so it must be the parent's; the batch size
# changes on the parent's stream through kind 'batch_size'.
_FREE_FIELDS = {
  "equivalent": frozenset({"nonfinite.skip", "nonfinite.max_consecutive_skips"}),
  "schedule": frozenset({"total_steps", "nonfinite.skip", "nonfinite.max_consecutive_skips"}),
  "batch_size": frozenset({"total_steps", "nonfinite.skip", "nonfinite.max_consecutive_skips"}),
  "fixed_batch": frozenset(
    {"total_steps", "batch_size", "nonfinite.skip", "nonfinite.max_consecutive_skips"}
  ),
}
_FREE_PREFIXES = {
  "equivalent": (),
  "schedule": ("optimizer.",),
  "batch_size": ("optimizer.",),
  "fixed_batch": ("optimizer.",),
}
# Kinds that follow sidetrip.schedule (and lr_factor) for their learning rate.
_SCHEDULE_KINDS = ("schedule", "batch_size")
# The batch-size fields, refused for every other kind.
_BATCH_FIELDS = ("batch_growth", "batch_sizes")
# Fields added after side-trips were first stored: a stored section without
# them resumes while they are None (they change nothing then).
ADDED_FIELDS = (*_BATCH_FIELDS, "gamma", "average")
# Fields that may change when a side-trip resumes from its own checkpoint.
RESUME_EXTRA = frozenset({"sidetrip.eval_at", "sidetrip.eval_average"})
# The deprecated spelling of an equivalent side-trip's average, before
# ``sidetrip.average``: a method (default ``averaging.method``) and overrides of
# ``averaging.<name>`` for the kernel's shape, the parent's every and debias
# kept. Still read (a stored side-trip, an old command line) and mapped onto
# the value by :func:`legacy_average`, with a one-line note.
DEPRECATED_FIELDS = ("method", "decay", "gap", "n", "gamma")
METHOD_OVERRIDES = DEPRECATED_FIELDS[1:]  # deprecated name, kept for old callers


def parent_average(averaging_section, method: str | None = None, **overrides):
  """The average a side-trip reaches by default: the parent's method and parameters.

  ``method`` (default ``averaging.method``) with its parameters picked from
  the flat ``averaging`` section, ``overrides`` (not None) applied, and
  ``start_step`` left out: the side-trip's average starts at its branch step
  S, whatever ``averaging.start_step`` says about the parent's.

  Raises ValueError or TypeError as :meth:`trajax.averaging.Average.of`.
  """
  section = dict(
    averaging_section.to_dict() if hasattr(averaging_section, "to_dict") else averaging_section
  )
  method = section.get("method") if method is None else method
  section.update({k: v for k, v in overrides.items() if v is not None})
  params = averaging.method_params(method, section)
  params.pop("start_step", None)
  return averaging.average(method, **params)


def legacy_average(s: dict, averaging_section, problems: list, *, note: bool = True):
  """``sidetrip.average`` of a section, or None (the parent's average, start_step aside).

  A section spelt the deprecated way (``sidetrip.{method, decay, gap, n,
  gamma}``) is mapped onto the value, with a one-line deprecation note.
  Appends ``(field, value, allowed)`` to ``problems`` for a bad field and
  returns None then. ``note=False``: no note (comparing spellings).
  """
  legacy = {k: s.get(k) for k in DEPRECATED_FIELDS if s.get(k) is not None}
  text = s.get("average")
  if text is not None:
    if legacy:
      names = ", ".join(f"sidetrip.{k}" for k in legacy)
      problems.append(
        ("sidetrip.average", text, f"give the average once: drop the deprecated {names}")
      )
      return None
    try:
      return averaging.as_average(text)
    except (TypeError, ValueError) as e:
      problems.append(("sidetrip.average", text, str(e)))
      return None
  method = legacy.pop("method", None)
  if method is None:
    method = averaging_section["method"]
    if method not in averaging.METHODS:
      return None  # reported by the averaging section's own check
  elif method not in averaging.METHODS:
    problems.append(("sidetrip.method", method, f"must be one of {list(averaging.METHODS)}"))
    return None
  try:
    value = parent_average(averaging_section, method, **legacy)
  except (TypeError, ValueError) as e:
    # Name the field the message is about (the record names it first):
    # sidetrip.<name> where the side-trip set it, else averaging.<name>.
    name = next((k for k in averaging.METHODS[method].params if str(e).startswith(k.name)), None)
    name = name.name if name is not None else "method"
    where = "sidetrip" if name in legacy or name == "method" else "averaging"
    value = legacy.get(name, averaging_section[name] if name in averaging_section else method)
    problems.append((f"{where}.{name}", value, f"{method}: {e}"))
    return None
  if note and (legacy or s.get("method") is not None):
    logging.warning(
      "sidetrip.%s: deprecated; use --config.sidetrip.average=%r",
      ", sidetrip.".join(k for k in DEPRECATED_FIELDS if s.get(k) is not None),
      str(value),
    )
  return value


def as_stored_spelling(config, stored: dict):
  """``config`` with the average spelt as the ``stored`` side-trip section spells it, if the same.

  A side-trip stored with the deprecated ``sidetrip.{method, decay, …}`` and
  resumed with ``sidetrip.average`` (or the other way round) runs the same
  average when both spellings resolve to the same value (against this
  config's ``averaging`` section); then the stored spelling is kept, so the
  resume check sees no change and the checkpoints keep one spelling.
  Otherwise ``config`` is returned as it is (and a real change is refused).
  """
  if "sidetrip" not in config or not isinstance(stored, dict):
    return config
  mine = config.sidetrip.to_dict()
  names = ("average", *DEPRECATED_FIELDS)
  if all(mine.get(n) == stored.get(n) for n in names) or mine.get("kind") != "equivalent":
    return config
  problems: list = []
  a = legacy_average(mine, config.averaging, problems, note=False)
  b = legacy_average({n: stored.get(n) for n in names}, config.averaging, problems, note=False)
  if problems or a is None or a != b:
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    for n in names:
      if n in stored:
        config.sidetrip[n] = stored[n]
      elif n in config.sidetrip and config.sidetrip[n] is None:
        pass  # a field the stored section predates: dropped as an added field
      elif n in config.sidetrip:
        config.sidetrip[n] = None
  return config


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
  # 'batch_size' kind: ((j_0 = 0, b_0), (j_1, b_1), ...), global batch b_i from
  # side-trip step j_i on (batch_growth k resolves to ((0, k·B),)); else None.
  batch_sizes: tuple | None = None
  # 'equivalent': the spelling of the average (trajax.averaging.as_average reads
  # it; ``method`` and ``params`` are its method and parameters, None and {} for
  # a kernel); None: the average is ``method`` with ``params``.
  average: str | None = None

  def value(self):
    """The equivalent side-trip's :class:`~trajax.averaging.Average` or :class:`~trajax.averaging.Kernel`."""
    if self.average is not None:
      return averaging.as_average(self.average)
    return averaging.average(self.method, **self.params)


# ----------------------------------------------------------------------------
# config section


def default_section():
  """The ``sidetrip`` ConfigDict with its defaults (None: resolved by :func:`resolve`)."""
  import ml_collections as mlc

  s = mlc.ConfigDict()
  s.kind = "schedule"
  s.steps = mlc.FieldReference(None, field_type=int)
  # The equivalent side-trip's average: a spelling (trajax.averaging.as_average:
  # 'ema(decay=0.01, every=4)', 'kernel(0.25, 0.25, 0.5)'); None: the parent's.
  s.average = mlc.FieldReference(None, field_type=str)
  s.window = mlc.FieldReference(None, field_type=int)
  # Deprecated (DEPRECATED_FIELDS): sidetrip.average says it all.
  s.method = mlc.FieldReference(None, field_type=str)
  types = {name: field_type for name, _, field_type in config_lib.averaging_fields()}
  for name in DEPRECATED_FIELDS[1:]:
    s[name] = mlc.FieldReference(None, field_type=types[name])
  s.lr_factor = 1.0
  s.schedule = "config"
  s.fixed_batch_index = 0
  s.fixed_batch_size = mlc.FieldReference(None, field_type=int)
  s.eval_at = (1, 10, 100, 1000)
  s.eval_average = False
  s.batch_growth = mlc.FieldReference(None, field_type=float)
  s.batch_sizes = mlc.FieldReference(None, field_type=tuple)
  return s


def define_config_flag(**fields) -> None:
  """Defines ``--config`` (an ml_collections config file) whose config carries a side-trip.

  The config files know nothing of side-trips: the section (defaults +
  ``fields``, :func:`with_sidetrip`) is added right after the file is loaded
  and before the ``--config.*`` overrides apply (ml_collections applies them
  after the parser returns), then locked, so ``--config.sidetrip.kind=...``
  resolves and a misspelt field is still an error. A section the file's
  config already carries is kept (``fields`` over it). Used by the side-trip and
  ahead-of-time compilation CLIs.
  """
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file; --config.sidetrip.<field> sets the side-trip.",
    lock_config=False,
  )
  parser = flags.FLAGS["config"].parser
  load = parser.parse

  def parse(path):
    # A config file may carry its own side-trip section (posthoc's
    # run_config.py:SECTION.json, the kernel as data): it is kept under fields.
    config = load(path)
    given = config.sidetrip.to_dict() if "sidetrip" in config else {}
    return with_sidetrip(config, **{**given, **fields})

  parser.parse = parse


def with_sidetrip(config, **fields):
  """A locked copy of ``config`` with a ``sidetrip`` section (defaults + ``fields``).

  ``average`` may be anything :func:`trajax.averaging.as_average` reads (an
  :class:`~trajax.averaging.Average`, a :class:`~trajax.averaging.Kernel`, a
  dict, kernel weights or a spelling); the section stores its spelling.

  Example::

    cfg = with_sidetrip(mnist1d.get_config(), kind='equivalent', average='swa', window=500)
    cfg = with_sidetrip(cfg, kind='equivalent', average=averaging.Kernel.of(c))  # posthoc's kernel
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
    if key == "average" and value is not None and not isinstance(value, str):
      value = str(averaging.as_average(value))  # a value, a dict or kernel weights: its spelling
    section[key] = value
  with config.unlocked():
    config.sidetrip = section
  config.lock()
  return config


def without_sidetrip(config):
  """The training config without its ``sidetrip`` section (a deep copy)."""
  config = copy.deepcopy(config)
  if "sidetrip" in config:
    with config.unlocked():
      del config["sidetrip"]
  return config


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
  if not (
    isinstance(eval_at, (tuple, list)) and all(config_lib.is_int(e) and e >= 0 for e in eval_at)
  ):
    bad("eval_at", "must be a tuple of integers >= 0 (side-trip steps)")
    eval_at = ()
  if not isinstance(s["eval_average"], bool):
    bad("eval_average", "must be True or False")

  method = window = sched = fb_index = fb_size = None
  params: dict = {}
  steps = s["steps"]
  if steps is not None and not (config_lib.is_int(steps) and steps > 0):
    bad("steps", "must be None (default) or an integer > 0")
    steps = None

  average = None
  if kind == "equivalent":
    value = legacy_average(s, config.averaging, problems)
    if value is None and not problems:
      # The parent's average (averaging.method not a method: named by its own check).
      problems.append(
        ("averaging.method", config.averaging.method, f"must be one of {list(averaging.METHODS)}")
      )
    if value is not None:
      method = value.method
      params = dict(value.values) if isinstance(value, averaging.Average) else {}
      average = str(value)
      window = s["window"] if s["window"] is not None else value.default_window()
      try:
        # The step weights, checked once here (the rate builds the same table).
        value.step_weights(window)
      except (TypeError, ValueError) as e:
        where = "sidetrip.average" if s["average"] is not None else "sidetrip.window"
        field = "sidetrip.window" if str(e).startswith("window") else where
        problems.append((field, window if field == "sidetrip.window" else s["average"], str(e)))
        window = None
      if steps is None and window is not None:
        steps = window
  elif kind in _SCHEDULE_KINDS:
    sched = s["schedule"]
    if sched not in schedule_names():
      bad("schedule", f"must be one of {list(schedule_names())}")
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
    if not (config_lib.is_int(fb_index) and fb_index >= 0):
      bad("fixed_batch_index", "must be an integer >= 0")
    fb_size = s["fixed_batch_size"] if s["fixed_batch_size"] is not None else config.batch_size
    if not (config_lib.is_int(fb_size) and fb_size > 0):
      problems.append(("sidetrip.fixed_batch_size", fb_size, "must be an integer > 0"))
    if steps is None:
      bad("steps", "kind 'fixed_batch' needs the number of gradient-descent steps")
  batch_sizes = None
  if kind == "batch_size":
    batch_sizes = _resolve_batch_sizes(s, int(config.batch_size), steps, problems)
  else:
    for name in _BATCH_FIELDS:
      if s[name] is not None:
        bad(name, f"only for kind 'batch_size' (kind is {kind!r}); leave it None")
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
    batch_sizes=batch_sizes,
    average=average,
  )


def _resolve_batch_sizes(s: dict, parent_batch: int, steps, problems: list) -> tuple | None:
  """``((j_0, b_0), ...)`` of a 'batch_size' side-trip from ``batch_growth`` or ``batch_sizes``.

  Appends ``(field, value, allowed)`` to ``problems`` for a bad field.
  """
  growth, sizes = s["batch_growth"], s["batch_sizes"]
  if (growth is None) == (sizes is None):
    problems.append(
      (
        "sidetrip.batch_growth",
        growth,
        "kind 'batch_size' needs exactly one of sidetrip.batch_growth (a factor k: batch "
        "k·batch_size) and sidetrip.batch_sizes (((j_0 = 0, b_0), (j_1, b_1), ...)); "
        f"got batch_sizes = {sizes!r}",
      )
    )
    return None
  if growth is not None:
    size = float(growth) * parent_batch if isinstance(growth, numbers.Real) else float("nan")
    if (
      isinstance(growth, bool)
      or not math.isfinite(size)
      or growth <= 0
      or abs(size - round(size)) > 1e-9 * max(1.0, size)
      or round(size) < 1
    ):
      problems.append(
        (
          "sidetrip.batch_growth",
          growth,
          f"must be a number k > 0 with k·batch_size (batch_size = {parent_batch}) a whole "
          "number of examples >= 1",
        )
      )
      return None
    return ((0, int(round(size))),)
  allowed = (
    "must be a non-empty tuple of (start step j, global batch size b) pairs: j integers "
    "starting at 0 and strictly increasing (side-trip steps), b integers >= 1"
  )
  if not (isinstance(sizes, (tuple, list)) and sizes):
    problems.append(("sidetrip.batch_sizes", sizes, allowed))
    return None
  out = []
  for pair in sizes:
    if not (
      isinstance(pair, (tuple, list))
      and len(pair) == 2
      and config_lib.is_int(pair[0])
      and config_lib.is_int(pair[1])
      and pair[0] >= 0
      and pair[1] >= 1
    ):
      problems.append(("sidetrip.batch_sizes", sizes, f"{allowed}; bad entry {pair!r}"))
      return None
    out.append((int(pair[0]), int(pair[1])))
  starts = [j for j, _ in out]
  if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
    problems.append(("sidetrip.batch_sizes", sizes, f"{allowed}; starts are {starts}"))
    return None
  if steps is not None and starts[-1] >= steps:
    problems.append(
      (
        "sidetrip.batch_sizes",
        sizes,
        f"every phase must start before the side-trip ends (steps = {steps}); starts {starts}",
      )
    )
    return None
  return tuple(out)


def batch_size_at(batch_sizes: tuple, j: int) -> int:
  """b_j: the global batch of side-trip step j (the last phase with j_i <= j)."""
  return next(b for start, b in reversed(batch_sizes) if start <= j)


def examples_before(batch_sizes: tuple, j: int) -> int:
  """Σ_{i<j} b_i: the examples side-trip steps 0 … j − 1 consume (``sidetrip/examples_seen``)."""
  total = 0
  for i, (start, b) in enumerate(batch_sizes):
    if j <= start:
      break
    end = batch_sizes[i + 1][0] if i + 1 < len(batch_sizes) else j
    total += (min(j, end) - start) * b
  return total


def check_batch_devices(config, spec: SidetripSpec, unit: int, devices: str) -> None:
  """Every batch of a 'batch_size' side-trip must split evenly over the data-parallel devices.

  Args:
    config: the side-trip's config (names the field the user set).
    spec: the resolved side-trip.
    unit: what every global batch must be a multiple of (the lcm of the mesh's
      data axis and processes × local devices, as ``trajax.data`` requires of
      ``batch_size``).
    devices: those devices in words, for the message.

  Raises:
    trajax.config_validation.ConfigError: naming the field, its value and the unit.
  """
  from trajax.config_validation import ConfigError

  if spec.batch_sizes is None:
    return
  bad = [b for _, b in spec.batch_sizes if b % unit]
  if not bad:
    return
  growth = config.sidetrip.batch_growth
  field, value = (
    ("sidetrip.batch_growth", growth)
    if growth is not None
    else ("sidetrip.batch_sizes", config.sidetrip.batch_sizes)
  )
  raise ConfigError(
    [
      (
        field,
        value,
        f"gives global batch size(s) {bad}, but every batch must be a multiple of {unit} "
        f"({devices}) so that it splits evenly over them",
      )
    ]
  )


def check_against_parent(base, parent_config: dict, kind: str):
  """Refuses config differences that would change what the parent's state means."""
  from trajax import config_validation as cv

  parent = {k: v for k, v in parent_config.items() if k != "sidetrip"}
  free = cv.RESUME_ALLOWED | _FREE_FIELDS[kind]
  bad = []
  for field, old, new in cv.diff(parent, base):
    if field in free or field.startswith(_FREE_PREFIXES[kind]):
      logging.info("side-trip: %s = %r (parent: %r)", field, new, old)
      continue
    hint = ""
    if field == "batch_size":
      hint = (
        "; to change the batch size on the parent's stream use kind='batch_size' with "
        "sidetrip.batch_growth or sidetrip.batch_sizes"
      )
    bad.append(
      (
        field,
        new,
        f"must equal the parent's value {old!r} for a {kind!r} side-trip "
        f"(may differ: {sorted(free)} and {list(_FREE_PREFIXES[kind])}){hint}",
      )
    )
  if bad:
    raise cv.ConfigError(bad)


# ----------------------------------------------------------------------------
# the learning-rate rule (pure; traced scalars in `hyper`)


class SidetripRate(NamedTuple):
  """η'(t) of the absolute step t for a side-trip kind (a :class:`trajax.loop.LearningRate` rule).

  Static and hashable (one compilation per kind); ``hyper`` holds the traced
  scalars ``start`` (the optimizer's count at S), ``scale`` (f for 'config'
  and 'equivalent', f·η_S otherwise) and ``horizon`` (k).

  'equivalent': ``weights`` is the step-weight table w_0 … w_{k−1} of the
  side-trip's average (:meth:`trajax.averaging.Average.step_weights`, float64
  values), computed once from its kernel and indexed by the traced side-trip
  step j = t − S: η'(t) = f · η(t) · w_{t−S} (0 from j = k on), exact by
  construction for any average, a registered method or a bare kernel, and
  the same table serves every branch point.
  """

  kind: str
  schedule: str | None = None
  weights: tuple = ()

  @classmethod
  def of(cls, spec: SidetripSpec) -> SidetripRate:
    weights = ()
    if spec.kind == "equivalent":
      weights = tuple(float(w) for w in spec.value().step_weights(spec.window))
    return cls(spec.kind, spec.schedule, weights)

  @property
  def absolute(self) -> bool:
    """Whether ``scale`` is f·η_S (the rate does not follow the config's schedule)."""
    return self.kind == "fixed_batch" or self.schedule in schedule_names()[1:]

  def __call__(self, base: optax.Schedule, hyper: dict) -> optax.Schedule:
    start, scale, horizon = hyper["start"], hyper["scale"], hyper["horizon"]
    if self.kind == "equivalent":
      rate = schedules.weighted_schedule(base, np.asarray(self.weights, np.float64), start=start)
      return lambda t: rate(jnp.asarray(t) - start) * scale
    if self.kind in _SCHEDULE_KINDS and self.schedule == "config":
      return loop.ScaledRate()(base, {"scale": scale})
    name = "constant" if self.kind == "fixed_batch" else self.schedule
    if name in schedule_names()[1:]:
      # The registered schedule itself from f·η_S, read at the side-trip's
      # progress j/k on a unit horizon: k stays a traced scalar.
      shape = lr_schedules.get(name).build(scale, 1)

      def rate(t):
        frac = jnp.clip((jnp.asarray(t) - start).astype(jnp.float32) / horizon, 0.0, 1.0)
        return jnp.broadcast_to(shape(frac), jnp.shape(t)).astype(jnp.float32)

      return rate
    raise ValueError(f"no schedule for kind={self.kind!r}, schedule={self.schedule!r}")

  def hyper(self, spec: SidetripSpec, base: optax.Schedule, count: int) -> dict:
    """The scalars for a branch whose optimizer count at S is ``count``."""
    eta_s = float(base(count))
    scale = spec.lr_factor * eta_s if self.absolute else spec.lr_factor
    return {"start": int(count), "scale": float(scale), "horizon": float(spec.steps)}


def make_lr_schedule(spec: SidetripSpec, base: optax.Schedule, hyper: dict) -> optax.Schedule:
  """η'(t) of the absolute step t: :class:`SidetripRate` of ``spec`` (``hyper`` may be traced)."""
  return SidetripRate.of(spec)(base, hyper)


def check_optimizer_layout(config, parent_config, params_abstract):
  """The side-trip's optimizer state must have the parent's layout (and train's)."""
  from trajax import config_validation as cv

  const = lambda t: jnp.float32(0.0)
  mine = jax.eval_shape(state_lib.make_optimizer(config, schedule=const).init, params_abstract)
  parent = jax.eval_shape(state_lib.make_optimizer(parent_config).init, params_abstract)
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
