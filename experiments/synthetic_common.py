"""The thin command line shared by the synthetic experiments (``experiments/synthetic_*.py``).

Each experiment module has ``get_config()`` and ``run(config, outdir) -> dict``
(pure but for writing its JSON and PNG into ``outdir``); its ``main`` is
``cli(module.get_config, module.run, name)``:

    python -m experiments.synthetic_fast_slow --config.num_steps=5000 --outdir=/tmp/x

absl and ml_collections are imported here, inside ``cli``, so importing an
experiment module (e.g. in a test) costs nothing beyond jax and numpy.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from experiments import cli as _cli_lib
from experiments.plotting import new_figure  # noqa: F401  (the synthetic modules' figures)


def fast_slow_config():
  """The Fig. 9 model shared by the fast/slow and equivalence experiments.

  Ω diagonal with ``num_fast`` modes at κ = ``kappa_fast`` (1) and
  ``num_slow`` at ``kappa_slow`` (0.015), unit noise, θ_0 = ``theta0`` in every
  mode; each experiment adds its own schedule and averaging fields.
  """
  import ml_collections

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.kappa_fast = 1.0
  c.kappa_slow = 0.015
  c.num_fast = 50
  c.num_slow = 50
  c.theta0 = 10.0
  return c


def cli(
  get_config: Callable[[], Any],
  run: Callable[[Any, str], dict],
  name: str,
  argv: list[str] | None = None,
) -> dict:
  """Parses ``--config.<field>=value`` and ``--outdir``, runs, prints the summary."""
  from absl import flags
  from ml_collections import config_flags

  full_argv = sys.argv if argv is None else [name, *argv]
  values = flags.FlagValues()
  # sys_argv: the override flags (--config.x) are defined from the argv given.
  config_flags.DEFINE_config_dict("config", get_config(), flag_values=values, sys_argv=full_argv)
  flags.DEFINE_string(
    "outdir", os.path.join("results", name), "folder for the JSON and PNG", flag_values=values
  )
  values(full_argv)
  summary = run(values.config, values.outdir)
  print(json.dumps(summary, indent=2))
  return summary


def write_json(outdir: str, filename: str, payload: dict) -> str:
  """Writes ``payload`` as ``outdir/filename`` (:func:`experiments.cli.write_json`: NaN/inf refused)."""
  return _cli_lib.write_json(os.path.join(outdir, filename), payload)


def save_figure(fig, outdir: str, filename: str) -> str:
  import matplotlib.pyplot as plt

  os.makedirs(outdir, exist_ok=True)
  path = os.path.join(outdir, filename)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def first_step_below(steps, curve, level: float) -> int | None:
  """The first recorded step at which ``curve`` <= ``level`` (None if never)."""
  for step, value in zip(steps, curve, strict=True):
    if value <= level:
      return int(step)
  return None


def finite(x: float) -> float:
  x = float(x)
  if not math.isfinite(x):
    raise ValueError(f"non-finite result {x}")
  return x
