"""The command line of the experiments: configs, ``--exp`` knobs, progress lines and JSON results.

Every figure module is ``python -m experiments.<name> --config=configs/x.py
[--config.field=...] [--exp.field=...] --workdir=DIR``: :func:`cli` parses
that (the training config with the same ml_collections parser as
``python -m trajax.main --config``, the module's knobs from its
``experiment_defaults()``), calls the module's ``run(config, exp, workdir)``
and prints its summary. Fields of ``exp`` left ``None`` are derived from the
training config (:func:`scaled_points`, :func:`branch_step`, :func:`window`),
so one module runs at paper scale from the ImageNet/CIFAR configs and at
small scale offline. Results go to ``DIR/<name>.json`` through
:func:`write_json` (NaN refused, with the key path that holds it).

The rest of the experiments' shared pieces: :mod:`experiments.parents` (the
parent run and replays), :mod:`experiments.evaluation` (losses, batches,
evaluation), :mod:`experiments.plotting` (figures).

Heavy packages (ml_collections, absl flags) are imported inside the functions
that use them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
  "apply_overrides",
  "branch_step",
  "cli",
  "load_config",
  "log",
  "scaled_points",
  "to_jsonable",
  "window",
  "write_json",
]


# ----------------------------------------------------------------------------
# progress and JSON


def log(message: str) -> None:
  """One progress line on stderr with wall-clock time (the demo's terminal output)."""
  sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
  sys.stderr.flush()


def to_jsonable(x):
  """NumPy / JAX scalars, arrays, NamedTuples and dicts -> plain Python for ``json``."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, tuple) and hasattr(x, "_fields"):
    return {k: to_jsonable(v) for k, v in x._asdict().items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if x is None or isinstance(x, (bool, str)):
    return x
  if isinstance(x, (int, np.integer)):
    return int(x)
  arr = np.asarray(x)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


def _check_finite(x, where: str):
  if isinstance(x, dict):
    for k, v in x.items():
      _check_finite(v, f"{where}.{k}")
  elif isinstance(x, list):
    for i, v in enumerate(x):
      _check_finite(v, f"{where}[{i}]")
  elif isinstance(x, float) and not math.isfinite(x):
    raise ValueError(f"non-finite value {x} at {where}: refusing to write it as a result")


def write_json(path: str, payload, *, allow_nan: bool = False) -> str:
  """Writes ``payload`` (converted by :func:`to_jsonable`) to ``path``.

  Non-finite numbers are refused with the key path that holds them, unless
  ``allow_nan`` (then they are written as ``null``, never as invalid JSON).
  """
  data = to_jsonable(payload)
  if allow_nan:
    data = _nan_to_none(data)
  else:
    _check_finite(data, "payload")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, allow_nan=False)
  os.replace(tmp, path)
  return path


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_nan_to_none(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


# ----------------------------------------------------------------------------
# configs and the command line


def load_config(path: str, overrides: dict | None = None):
  """``configs/x.py[:arg]`` -> its ``get_config(arg)``, with dotted ``overrides`` applied.

  The file is read by ml_collections' config-file parser, the one behind
  ``--config`` of ``trajax.main`` and of :func:`cli` (so a config loads here
  exactly as on the command line), unlocked. ``overrides`` maps
  ``'optimizer.lr'`` style names to values (:func:`apply_overrides`).
  """
  from ml_collections.config_flags import config_flags

  file = path.partition(":")[0]
  if not os.path.isfile(file):
    raise FileNotFoundError(f"config file {file!r} does not exist")
  config = config_flags.ConfigFileFlagParser("config", lock_config=False).parse(path)
  return apply_overrides(config, overrides or {})


def apply_overrides(config, overrides: dict):
  """A copy of ``config`` with ``{'a.b': value}`` set (the field must exist)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for name, value in overrides.items():
      node = config
      parts = name.split(".")
      for p in parts[:-1]:
        if p not in node:
          raise KeyError(f"config field {name!r} does not exist (no section {p!r})")
        node = node[p]
      if parts[-1] not in node:
        raise KeyError(f"config field {name!r} does not exist")
      node[parts[-1]] = value
  return config


def cli(
  name: str,
  run: Callable[[Any, Any, str], dict],
  experiment_defaults: Callable[[], Any],
  argv: Sequence[str] | None = None,
) -> dict:
  """The command line of a figure module.

  ``--config=configs/x.py[:arg]`` (training config, ``--config.<field>``
  overrides), ``--exp.<field>`` (the module's experiment knobs from
  ``experiment_defaults()``) and ``--workdir``; then ``run(config, exp,
  workdir)``, whose summary is printed as JSON and returned.
  """
  from absl import flags
  from ml_collections import config_flags

  full_argv = list(sys.argv if argv is None else [name, *argv])
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", "configs/mnist1d.py", "training config file", flag_values=values, lock_config=False
  )
  config_flags.DEFINE_config_dict(
    "exp", experiment_defaults(), "experiment knobs", flag_values=values, lock_config=False
  )
  flags.DEFINE_string(
    "workdir", None, "output folder (parent run + JSON + PNG)", flag_values=values
  )
  values(full_argv)
  if not values.workdir:
    raise ValueError(f"{name}: --workdir is required (got {values.workdir!r})")
  summary = run(values.config, values.exp, values.workdir)
  print(json.dumps(to_jsonable(summary), indent=2))
  return summary


# ----------------------------------------------------------------------------
# knobs derived from the training config


def scaled_points(total_steps: int, fractions: Iterable[float], *, minimum: int = 1) -> list[int]:
  """Steps at the given fractions of ``total_steps`` (sorted, unique, >= ``minimum``)."""
  total = int(total_steps)
  if total < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  out = set()
  for f in fractions:
    if not 0 <= f <= 1:
      raise ValueError(f"fractions must lie in [0, 1], got {f}")
    out.add(max(int(minimum), int(round(f * total))))
  return sorted(out)


def branch_step(config, fraction: float, name: str) -> int:
  """round(fraction * total_steps), validated (named after the --exp field)."""
  if not 0 < fraction < 1:
    raise ValueError(f"exp.{name} must lie in (0, 1), got {fraction!r}")
  step = int(round(fraction * int(config.total_steps)))
  if not 0 < step < int(config.total_steps):
    raise ValueError(
      f"exp.{name}={fraction} gives step {step}, outside (0, total_steps={config.total_steps})"
    )
  return step


def window(config, exp) -> int:
  """The averaging window k: ``exp.window``, default the config's ``averaging.gap``."""
  k = exp.window if exp.window is not None else int(config.averaging.gap)
  if not int(k) >= 1:
    raise ValueError(f"exp.window (default averaging.gap) must be >= 1, got {k!r}")
  return int(k)
