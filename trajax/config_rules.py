"""The config's checking machinery, shared by every section's owner.

A check returns a list of :class:`Problem` ``(field, value, allowed)`` -- one
per bad field, so a user sees every mistake at once -- and
:class:`ConfigError` raises them together as one line each. A field's
:class:`Rule` pairs a predicate with the text saying what is allowed;
:func:`check_fields` applies a section's rules. :func:`flatten` gives a config
as ``{'dotted.field': value}``.

The schema these check is :func:`trajax.config.base_config`, which re-exports
every name here (``trajax.config.ConfigError`` and the rest keep working);
the section checks are their owners' (:mod:`trajax.config` has the table).
Like :mod:`trajax.config`, this module imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

__all__ = [
  "BOOL",
  "NONNEG_INT",
  "OPT_POS_INT",
  "POS_INT",
  "ConfigError",
  "Problem",
  "Rule",
  "Shown",
  "check_fields",
  "flatten",
  "is_int",
  "is_real",
  "one_of",
]

# ----------------------------------------------------------------------------
# problems


class Problem(NamedTuple):
  """One bad field: its dotted name, its value and what is allowed."""

  field: str
  value: Any
  allowed: str

  def __str__(self):
    return f"{self.field} = {self.value!r}: {self.allowed}"

  @classmethod
  def of(cls, p) -> Problem:
    """From a ``(field, value, allowed)`` triple or a ``"field = value: allowed"`` line."""
    if isinstance(p, str):
      field, _, rest = p.partition(" = ")
      value, _, allowed = rest.partition(": ")
      return cls(field.strip(), Shown(value), allowed)
    return cls(*p)


class Shown(str):
  """A value known only by its printed form (``repr`` is the text itself)."""

  def __repr__(self):
    return str(self)


class ConfigError(ValueError):
  """A config is invalid; ``problems`` lists :class:`Problem` ``(field, value, allowed)``.

  Accepts ``(field, value, allowed)`` triples or ``"field = value: allowed"`` lines.
  """

  def __init__(self, problems: Iterable):
    self.problems = [Problem.of(p) for p in problems]
    lines = [f"  {p}" for p in self.problems]
    n = len(self.problems)
    super().__init__(f"{n} problem{'s' * (n != 1)} in the config:\n" + "\n".join(lines))


# ----------------------------------------------------------------------------
# field rules: (predicate, what is allowed)


class Rule(NamedTuple):
  """A field's rule: ``ok(value)`` and the text saying what is allowed."""

  ok: Callable[[Any], bool]
  allowed: str


def is_int(x) -> bool:
  """An integer (Python or NumPy), not a bool."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
  """A finite real number, not a bool."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def one_of(options: Iterable) -> Rule:
  """One of the strings ``options``."""
  options = list(options)
  return Rule(lambda x: isinstance(x, str) and x in options, f"must be one of {options}")


POS_INT = Rule(lambda x: is_int(x) and x > 0, "must be an integer > 0")
NONNEG_INT = Rule(lambda x: is_int(x) and x >= 0, "must be an integer >= 0")
OPT_POS_INT = Rule(lambda x: x is None or (is_int(x) and x > 0), "must be None or an integer > 0")
BOOL = Rule(lambda x: isinstance(x, bool), "must be True or False")


def check_fields(section: Mapping, rules: Mapping[str, Rule], prefix: str = "") -> list[Problem]:
  """A :class:`Problem` for every field of ``section`` that fails its rule."""
  out = []
  for name, rule in rules.items():
    value = section.get(name)
    if not rule.ok(value):
      out.append(Problem(prefix + name, value, rule.allowed))
  return out


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
