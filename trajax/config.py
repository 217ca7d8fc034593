"""The run config, declared once: :func:`base_config` is the schema.

Every field a training run reads is declared here, with its type and a neutral
default. The ``ConfigDict`` is locked and typed: a config file
(``configs/*.py``) or a ``--config.<field>=...`` override may change a value,
never add a field or change its type, so a misspelt field is an error and one
override means the same thing for every config. Fields where ``None`` is
meaningful are typed placeholders (``config_dict.placeholder(int)``); ``None``
can be given on the command line (``--config.checkpoint.max_to_keep=None``).

A config stored in a checkpoint's metadata (plain JSON) is read back with
:func:`from_dict`: ``base_config()`` updated from the stored values, so it is
typed and locked too, and a config stored before a field existed gets that
field's default (the behaviour the run had).

Where each section's allowed values live (each owner checks its own section;
``trajax.config_validation.validate`` calls them and keeps only the rules that
span sections):

===============  =================================  ======================================
section          registry                           check
===============  =================================  ======================================
``model.*``      ``trajax.models.MODELS``           ``trajax.models.check_config``
``dataset.*``    ``trajax.data.SOURCES``            ``trajax.data.check_config``
``optimizer.*``  ``trajax.lr_schedules.SCHEDULES``  :func:`check_optimizer`
``averaging.*``  ``trajax.averaging.METHODS``       ``config_validation._check_averaging``
the rest         (the training loop's fields)       :func:`check_run`
``sidetrip.*``   ``trajax.sidetrip.KINDS``          ``trajax.sidetrip.resolve``
===============  =================================  ======================================

The checking machinery every owner uses -- :class:`Problem`,
:class:`ConfigError`, :class:`Rule`, :func:`check_fields`, :func:`flatten` and
the predicates -- is :mod:`trajax.config_rules`, re-exported here.

The ``sidetrip`` section is declared by ``trajax.sidetrip.default_section()``
and added only to side-trip configs (``trajax.sidetrip.with_sidetrip``); the
side-trip package registers it (:func:`register_section`) so that
:func:`from_dict` rebuilds a stored one without this module importing it.

This module imports no JAX and no TensorFlow (only ml_collections and absl,
to register the ``None`` parsers), so the validator runs in about a second,
before TensorFlow is imported. :func:`base_config` reads the averaging
registry (``trajax.averaging``, which imports JAX but initialises no backend)
when it is called, to generate the ``averaging.<param>`` fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trajax import lr_schedules

# The generic checking machinery lives in trajax.config_rules; its names are
# this module's too (every section's owner imports them from here).
from trajax.config_rules import (  # noqa: F401 -- re-exported
  BOOL,
  NONNEG_INT,
  OPT_POS_INT,
  POS_INT,
  ConfigError,
  Problem,
  Rule,
  Shown,
  check_fields,
  flatten,
  is_int,
  is_real,
  one_of,
)
from trajax.lr_schedules import LrSchedule

__all__ = [
  "SCHEDULES",
  "SEED_LIMIT",
  "ConfigError",
  "Problem",
  "Rule",
  "Schedule",
  "Shown",
  "averaging_fields",
  "base_config",
  "check_fields",
  "check_optimizer",
  "check_run",
  "field_names",
  "flatten",
  "from_dict",
  "is_int",
  "is_real",
  "one_of",
  "register_section",
  "registered_sections",
]

# The initial-parameter key (``train.init_key``) keeps the low 32 bits of the
# seed while the data stream uses all of them, so seed 2**32 would start from
# seed 0's weights on a different data order: seeds outside [0, 2**32) are
# refused.
SEED_LIMIT = 2**32
SEED = Rule(
  lambda x: is_int(x) and 0 <= x < SEED_LIMIT,
  "must be an integer in [0, 2**32) (the init key keeps 32 bits of the seed)",
)


def base_config():
  """The full field set with neutral defaults (a config file sets the rest); locked."""
  import ml_collections
  from ml_collections.config_dict import placeholder

  c = ml_collections.ConfigDict()
  c.seed = 0  # in [0, 2**32): the init key and (unless dataset.seed) the data
  c.total_steps = 1000
  c.batch_size = 64  # the GLOBAL batch, split over processes and devices
  c.eval_batch_size = 1000
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  # TFDS data root; required (and must exist) for TFDS datasets so that a
  # training run never downloads or silently reads ~/tensorflow_datasets.
  # The offline sources cache their generated pools under it when set.
  c.data_dir = placeholder(str)
  # Append one "step fingerprint" line per training batch to
  # WORKDIR/batch_fingerprints.jsonl (reliability tests; costs a hash per step).
  c.log_batch_fingerprints = False

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist1d"  # a key of trajax.data.SOURCES
  c.dataset.label_noise = 0.0  # fraction of training labels replaced by a random class
  c.dataset.num_train = 40_000  # generated pool size (mnist1d); ignored by the others
  # Generated test sequences (mnist1d); None: max(num_train // 4, 1000).
  c.dataset.num_eval = placeholder(int)
  # Seed of the data (pool, split, label noise, order, augmentation); None: `seed`.
  c.dataset.seed = placeholder(int)
  c.dataset.augment = False

  c.model = ml_collections.ConfigDict()
  c.model.name = "cnn1d"  # a key of trajax.models.MODELS
  c.model.width = 64  # base channel count
  c.model.dtype = "float32"  # compute dtype; params stay float32

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"  # a key of SCHEDULES
  c.optimizer.warmup_steps = 0
  c.optimizer.step_boundaries = ()  # absolute steps ('step' schedule)
  c.optimizer.step_factor = 0.1

  c.averaging = ml_collections.ConfigDict()
  c.averaging.method = "none"  # 'none' or a key of trajax.averaging.METHODS
  # One flat field per parameter any registered method takes (decay, start_step,
  # every, debias, gap, n, gamma, ...), generated from the registry's records.
  for name, default, field_type in averaging_fields():
    c.averaging[name] = default if default is not None else placeholder(field_type)
  # Extra in-training averages saved with the state, for post-hoc averages
  # (trajax.posthoc): a tuple of {'method': ..., <params>} mappings, e.g. two
  # power EMAs ({'method': 'power_ema', 'gamma': 16.97}, {..., 'gamma': 6.94}).
  # Empty: the state layout of a run without them.
  c.averaging.profiles = ()
  # BatchNorm statistics for the averaged params. 'recompute' (default): a
  # cumulative pass over `bn_recompute_batches` fixed training batches, as
  # torch.optim.swa_utils.update_bn does -- BN statistics of averaged weights
  # are not the average of the statistics. 'average': the running statistics
  # are averaged with the same Averager as the params (free, approximate).
  c.averaging.batch_norm = "recompute"
  c.averaging.bn_recompute_batches = 20

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = _nullable(3, int)  # None: keep every checkpoint
  c.checkpoint.keep_period = placeholder(int)  # also keep every step divisible by it
  c.checkpoint.async_save = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis; -1 = all
  # Shard params/optimizer state over the data axis (ZeRO-3/FSDP style: each
  # leaf's largest dimension divisible by the axis size); off = replicated.
  c.mesh.shard_params = False

  c.nonfinite = ml_collections.ConfigDict()
  # False: the first non-finite loss/grad/BN statistic freezes the state and
  # the run stops at the next log or checkpoint boundary with an error.
  # True: such steps are no-ops (params, optimizer and averaging state do not
  # move); more than `max_consecutive_skips` in a row stops the run.
  c.nonfinite.skip = False
  c.nonfinite.max_consecutive_skips = 10
  c.lock()
  return c


# The ``averaging`` section's own fields (not parameters of a method).
_AVERAGING_OWN = ("method", "profiles", "batch_norm", "bn_recompute_batches")
_PARAM_TYPES = {"int": int, "float": float, "bool": bool}


def averaging_fields() -> tuple[tuple[str, Any, type], ...]:
  """``(name, default, type)`` of the flat ``averaging.<param>`` fields.

  The union of the parameters of every method in ``trajax.averaging.METHODS``
  (first declaration wins; 'dtype' parameters are arithmetic, not config): the
  default is the parameter's own, or for a required one its ``example`` (the
  neutral value the section shows), or None (a typed placeholder). A method
  registered with a new parameter gets its field here, with nothing else to
  touch.

  Imports ``trajax.averaging`` (and so JAX, without initialising a backend)
  when called: this module itself imports no JAX.
  """
  from trajax.averaging.methods import METHODS

  out: dict[str, tuple[str, Any, type]] = {}
  for method in METHODS.values():
    for p in method.params:
      if p.kind not in _PARAM_TYPES:
        continue
      if p.name in _AVERAGING_OWN:
        raise ValueError(
          f"averaging method {method.name!r}: parameter {p.name!r} clashes with the "
          f"averaging section's own field averaging.{p.name}"
        )
      field_type = _PARAM_TYPES[p.kind]
      if p.name in out:
        if out[p.name][2] is not field_type:
          raise ValueError(
            f"averaging method {method.name!r}: parameter {p.name!r} is {p.kind}, but another "
            f"method declares it as {out[p.name][2].__name__}"
          )
        continue
      default = p.example if p.required else p.default
      out[p.name] = (p.name, None if default is None else field_type(default), field_type)
  return tuple(out.values())


def _nullable(default, field_type):
  """A typed field whose value may also be ``None`` (a ``FieldReference``)."""
  import ml_collections

  return ml_collections.FieldReference(default, field_type=field_type)


def field_names() -> tuple[str, ...]:
  """Every dotted field of :func:`base_config`, sorted."""
  return tuple(sorted(flatten(base_config())))


# Sections base_config() does not declare, added to some configs by the package
# that owns them: name -> rebuild(config, stored_section) -> config.
_SECTIONS: dict[str, Callable[[Any, Mapping], Any]] = {}


def register_section(name: str, rebuild: Callable[[Any, Mapping], Any]) -> None:
  """Declares a section a package adds to some configs, and how a stored one is rebuilt.

  ``rebuild(config, stored_section)`` returns a locked copy of ``config`` with
  the section typed again; :func:`from_dict` calls it for a stored config that
  holds the section. The owner registers on import (``trajax.sidetrip``
  registers ``sidetrip``), so this module imports none of them.
  """
  if name in _base_sections():
    raise ValueError(f"section {name!r} is declared by base_config(); it cannot be registered")
  _SECTIONS[name] = rebuild


def registered_sections() -> tuple[str, ...]:
  """The sections packages have registered so far (:func:`register_section`)."""
  return tuple(sorted(_SECTIONS))


def _base_sections() -> frozenset:
  return frozenset(base_config().keys())


def from_dict(stored: Mapping):
  """A typed, locked config from a stored one (``meta['config']`` of a checkpoint).

  ``base_config()`` updated field by field from ``stored``; fields ``stored``
  lacks keep their defaults. A section a package added (a side-trip's
  ``sidetrip``) is rebuilt by that package (:func:`register_section`), which
  must be imported first.

  Raises:
    ConfigError: a stored field this version does not declare, or a value of
      the wrong type (each named with its value).
  """
  stored = dict(stored.to_dict() if hasattr(stored, "to_dict") else stored)
  added = {name: stored.pop(name) for name in list(stored) if name in _SECTIONS}
  config = base_config()
  problems = []
  for field, value in flatten(stored).items():
    *path, last = field.split(".")
    node = config
    try:
      for p in path:
        node = node[p]
      known = hasattr(node, "keys") and last in node and not hasattr(node[last], "keys")
    except (KeyError, TypeError):
      known = False
    if not known:
      allowed = "unknown field (written by a different trajax?)"
      if path and path[0] not in config:
        allowed = (
          "unknown section (written by a different trajax, or its package is not imported; "
          f"registered: {list(registered_sections())})"
        )
      problems.append(Problem(field, value, allowed))
      continue
    try:
      node[last] = value
    except TypeError as e:
      problems.append(Problem(field, value, f"wrong type: {e}"))
  if problems:
    raise ConfigError(problems)
  for name, section in added.items():
    if section is not None:
      config = _SECTIONS[name](config, section)
  return config


# ----------------------------------------------------------------------------
# the optimizer section: schedules


# The registry of learning-rate schedules (``trajax.lr_schedules``, JAX-free at
# import): the names ``optimizer.schedule`` takes, each builder's fields and
# whether it depends on the horizon (check_resume reads ``horizon``).
Schedule = LrSchedule
SCHEDULES = lr_schedules.SCHEDULES

_OPTIMIZER: dict[str, Rule] = {
  "lr": Rule(lambda x: is_real(x) and x > 0, "must be a finite number > 0"),
  "momentum": Rule(lambda x: is_real(x) and 0 <= x < 1, "must be a number in [0, 1)"),
  "nesterov": BOOL,
  "weight_decay": Rule(lambda x: is_real(x) and x >= 0, "must be a finite number >= 0"),
  "warmup_steps": NONNEG_INT,
  "step_boundaries": Rule(
    lambda x: isinstance(x, (tuple, list)) and all(is_int(b) and b > 0 for b in x),
    "must be a tuple of integers > 0",
  ),
  "step_factor": Rule(lambda x: is_real(x) and 0 < x <= 1, "must be a number in (0, 1]"),
}


def check_optimizer(
  section: Mapping, *, total_steps: int | None = None, prefix: str = "optimizer."
) -> list[Problem]:
  """The ``optimizer`` section; ``total_steps`` (when valid) bounds the warmup."""
  # The names as registered now (a schedule registered after import counts).
  rules = {"schedule": one_of(SCHEDULES), **_OPTIMIZER}
  problems = check_fields(section, rules, prefix)
  bad = {p.field for p in problems}
  warmup = section.get("warmup_steps")
  if total_steps is not None and prefix + "warmup_steps" not in bad and warmup >= total_steps:
    problems.append(
      Problem(prefix + "warmup_steps", warmup, f"must be < total_steps={total_steps}")
    )
  spec = SCHEDULES.get(section.get("schedule")) if prefix + "schedule" not in bad else None
  if (
    spec is not None and spec.check is not None and not any(prefix + f in bad for f in spec.fields)
  ):
    problems += [Problem(prefix + f, v, allowed) for f, v, allowed in spec.check(section)]
  return problems


# ----------------------------------------------------------------------------
# the training loop's own fields (top level, checkpoint, mesh, nonfinite, BN)

BATCH_NORM = ("recompute", "average")

_RUN: dict[str, dict[str, Rule]] = {
  "": {
    "seed": SEED,
    # The step counter is int32 on the device (and in every schedule).
    "total_steps": Rule(
      lambda x: is_int(x) and 0 < x < 2**31,
      "must be an integer > 0 and < 2^31 (int32 step counter)",
    ),
    "batch_size": POS_INT,
    "eval_batch_size": POS_INT,
    "checkpoint_every_steps": POS_INT,
    "log_every_steps": POS_INT,
    "eval_every_steps": POS_INT,
    "data_dir": Rule(lambda x: x is None or isinstance(x, str), "must be None or a path string"),
    "log_batch_fingerprints": BOOL,
  },
  "averaging": {"batch_norm": one_of(BATCH_NORM), "bn_recompute_batches": POS_INT},
  "checkpoint": {"max_to_keep": OPT_POS_INT, "keep_period": OPT_POS_INT, "async_save": BOOL},
  "mesh": {
    "data": Rule(lambda x: is_int(x) and (x == -1 or x > 0), "must be -1 (all devices) or > 0"),
    "shard_params": BOOL,
  },
  "nonfinite": {"skip": BOOL, "max_consecutive_skips": POS_INT},
}


def check_run(config: Mapping) -> list[Problem]:
  """The fields the training loop reads itself (everything no other owner checks)."""
  problems = []
  for section, rules in _RUN.items():
    node = config[section] if section else config
    problems += check_fields(node, rules, f"{section}." if section else "")
  return problems


# ----------------------------------------------------------------------------
# command line: `--config.<field>=None` for the fields where None is meaningful


def _register_none_parsers():
  """Lets ``--config.<int or float field>=None`` set ``None``.

  ml_collections parses an override with the parser registered for the
  field's type, and its int and float parsers reject the text ``None``; a
  typed placeholder (``checkpoint.max_to_keep``, ``sidetrip.steps``, ...) could
  then never be reset to ``None`` from the command line. Registered when this
  module is imported, which every config file does (through
  ``configs/common.py``) before its overrides are parsed. Any other int or
  float field given ``None`` is refused by the validator, naming the field.
  """
  try:
    from absl import flags
    from ml_collections import config_flags
  except ImportError:  # the core install: no command line
    return

  def or_none(parser_class):
    class OrNone(parser_class):
      def parse(self, argument):
        if isinstance(argument, str) and argument.strip() in ("None", "none"):
          return None
        return super().parse(argument)

    OrNone.__name__ = f"{parser_class.__name__}OrNone"
    return OrNone()

  config_flags.register_flag_parser_for_type(int, or_none(flags.IntegerParser))
  config_flags.register_flag_parser_for_type(float, or_none(flags.FloatParser))


_register_none_parsers()
