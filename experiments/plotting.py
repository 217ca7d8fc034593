"""Figures of the experiments: a fresh grid of axes, and a PNG that names its run.

Every plot carries :func:`run_label` (dataset, model, batch size, lr,
schedule, seed, label noise) under its axes, written by :func:`save_figure`.
matplotlib is imported inside the functions (Agg backend, no display).
"""

from __future__ import annotations

import os

__all__ = ["new_figure", "run_label", "save_figure"]


def run_label(config, extra: str = "") -> str:
  """One line naming the run in every plot: data, model, batch, lr, schedule, seed, noise."""
  parts = [
    f"{config.dataset.name} (label noise {float(config.dataset.label_noise):g})",
    f"{config.model.name} w{config.model.width}",
    f"B={config.batch_size}",
    f"lr={float(config.optimizer.lr):g} {config.optimizer.schedule}, mom {float(config.optimizer.momentum):g}",
    f"{config.total_steps} steps",
    f"seed {config.seed}",
  ]
  if extra:
    parts.append(extra)
  return " | ".join(parts)


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 5.0, height: float = 3.8):
  """``(fig, axes[nrows][ncols])`` on the Agg backend (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def save_figure(fig, path: str, label: str) -> str:
  """Adds ``label`` (the run's :func:`run_label`) under the plots and writes a PNG."""
  import matplotlib.pyplot as plt

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.text(0.5, 0.005, label, ha="center", va="bottom", fontsize=7, color="0.3")
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
