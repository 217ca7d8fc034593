"""One ``Dataset`` interface over the offline sources and TFDS.

``get_dataset(config)`` returns an object with

* ``info``: a ``DatasetInfo`` (name, classes, per-example shape, split sizes);
* ``train_batches(start_step)``: this process's share of the global training
  batches for steps ``start_step, start_step + 1, ...`` forever. The batch of
  step ``i`` is a pure function of ``(seed, i, process_index, process_count)``,
  so a run resumed at step ``k`` sees exactly the batches an uninterrupted run
  saw from step ``k`` on; the step is the whole "position in the stream" a
  checkpoint has to hold;
* ``eval_batches(split)``: a split once, in a fixed order, the last batch
  padded, with ``mask`` (1 real, 0 padding);
* ``fixed_train_batch(index, batch_size)``: a deterministic batch from the
  training distribution (noisy labels and augmentation as in training) keyed by
  ``index``: the "held-out batches" of the paper's Sec. 3 probes.

Batches are dicts of NumPy arrays: ``image`` float32 ``[b, *input_shape]``,
``label`` int32 ``[b]`` (and ``mask`` float32 ``[b]`` for evaluation), where
``b = global_batch // process_count``. Process ``p`` holds rows
``[p * b, (p + 1) * b)`` of the global batch.

Label noise (``config.dataset.label_noise = q``) is symmetric: each training
example, independently with probability ``q``, has its label replaced by a class
drawn uniformly from all ``K`` classes (so a label actually changes with
probability ``q (K - 1) / K``). The draw is fixed per example by the seed, so
an example keeps its wrong label for the whole run; evaluation splits are clean.

Seeds: the pool (mnist1d), the split (digits), the label noise, the epoch
orders and the augmentation all derive from ``config.dataset.seed`` when it
is set, else ``config.seed``.

Sources (``config.dataset.name``, a key of the registry :data:`SOURCES`;
:func:`check_config` checks the ``dataset`` section):

* ``mnist1d``: ``dataset.num_train`` generated training sequences (default
  40 000) and ``dataset.num_eval`` test ones (None: ``max(num_train // 4,
  1000)``, the package's 80/20 ratio), no download,
  cached on disk; ``dataset.augment`` must be False.
* ``digits``: scikit-learn's 1 797 8x8 images, 1 500 train / 297 test;
  ``augment`` shifts by up to one pixel.
* ``cifar10``/``cifar100``/``imagenet2012``: TFDS, already prepared under
  ``config.data_dir`` (``FileNotFoundError`` otherwise); see
  ``trajax.data.tfds_source`` for how the stream is positioned on resume.
  Tests run them under ``tfds_source.mock_prepared_tfds()``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from trajax import config as config_lib

__all__ = [
  "DATASET_NAMES",
  "SOURCES",
  "Dataset",
  "DatasetInfo",
  "Source",
  "batch_fingerprint",
  "check_config",
  "get_dataset",
]


@dataclasses.dataclass(frozen=True)
class Source:
  """A registered dataset: where it is built and what it holds.

  Attributes:
    module: the module whose ``get_<kind>_dataset(config, ...)`` builds it,
      imported only when the dataset is (TensorFlow only for TFDS sources).
    builder: that function's name.
    tfds: read from TFDS already prepared under ``config.data_dir``.
    spatial_dims: 1 for sequences ``[L, C]``, 2 for images ``[H, W, C]``
      (``trajax.models.MODELS`` says the same of each model).
    augment: whether ``dataset.augment=True`` is defined for it.
  """

  module: str
  builder: str
  tfds: bool
  spatial_dims: int
  augment: bool


_OFFLINE = ("trajax.data.offline", "get_offline_dataset")
_TFDS = ("trajax.data.tfds_source", "get_tfds_dataset")
# The registry: ``config.dataset.name`` is one of its keys.
SOURCES: dict[str, Source] = {
  "mnist1d": Source(*_OFFLINE, tfds=False, spatial_dims=1, augment=False),
  "digits": Source(*_OFFLINE, tfds=False, spatial_dims=2, augment=True),
  "cifar10": Source(*_TFDS, tfds=True, spatial_dims=2, augment=True),
  "cifar100": Source(*_TFDS, tfds=True, spatial_dims=2, augment=True),
  "imagenet2012": Source(*_TFDS, tfds=True, spatial_dims=2, augment=True),
}
DATASET_NAMES = tuple(SOURCES)
OFFLINE_NAMES = tuple(n for n, s in SOURCES.items() if not s.tfds)
TFDS_NAMES = tuple(n for n, s in SOURCES.items() if s.tfds)


def check_config(section, *, prefix: str = "dataset.") -> list:
  """Problems ``(field, value, allowed)`` of a ``dataset`` config section (``[]``: fine)."""
  problems = config_lib.check_fields(
    section,
    {
      "name": config_lib.one_of(SOURCES),
      "label_noise": config_lib.Rule(
        lambda x: config_lib.is_real(x) and 0 <= x <= 1,
        "must be a number in [0, 1]",
      ),
      "num_train": config_lib.POS_INT,
      "num_eval": config_lib.OPT_POS_INT,
      "seed": config_lib.Rule(
        lambda x: x is None or config_lib.SEED.ok(x),
        "must be None (use `seed`) or an integer in [0, 2**32)",
      ),
      "augment": config_lib.BOOL,
    },
    prefix,
  )
  bad = {p[0] for p in problems}
  name = section.get("name")
  if name == "mnist1d" and prefix + "num_train" not in bad and section.get("num_train") < 10:
    problems.append((prefix + "num_train", section.get("num_train"), "must be >= 10 for mnist1d"))
  source = SOURCES.get(name) if isinstance(name, str) else None
  if source is not None and section.get("augment") is True and not source.augment:
    problems.append(
      (prefix + "augment", True, f"must be False for {name} (its generator already augments)")
    )
  return problems


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: ``config.dataset.name``.
    num_classes: number of classes ``K``.
    input_shape: one example's shape, e.g. ``(40, 1)`` for mnist1d,
      ``(8, 8, 1)`` for digits, ``(32, 32, 3)`` CIFAR, ``(224, 224, 3)`` ImageNet.
    num_train: training examples (the whole split, all processes together).
    num_eval: examples in the ``'test'`` split (ImageNet: validation).
  """

  name: str
  num_classes: int
  input_shape: tuple
  num_train: int
  num_eval: int


class Dataset(Protocol):
  """What the training loop and the probes rely on (see the module docstring)."""

  info: DatasetInfo

  def train_batches(self, start_step: int) -> Iterator[dict]: ...

  def eval_batches(self, split: str = "test") -> Iterator[dict]: ...

  def fixed_train_batch(self, index: int, batch_size: int | None = None) -> dict: ...


def batch_fingerprint(batch: dict) -> str:
  """A short stable hash (16 hex digits) of a batch's keys, dtypes, shapes and bytes."""
  digest = hashlib.sha256()
  for key in sorted(batch):
    value = np.ascontiguousarray(np.asarray(batch[key]))
    digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()[:16]


def get_dataset(
  config, *, process_index: int = 0, process_count: int = 1, local_device_count: int | None = None
) -> Dataset:
  """Builds the dataset named by ``config.dataset.name``.

  Reads ``config.dataset.{name, label_noise, num_train, num_eval, seed, augment}``,
  ``config.batch_size`` (the GLOBAL batch), ``config.eval_batch_size``,
  ``config.seed`` and ``config.data_dir``.

  Args:
    config: the run's config (``ml_collections.ConfigDict`` or any object with
      those attributes).
    process_index: this host's index (``jax.process_index()``).
    process_count: number of hosts (``jax.process_count()``).
    local_device_count: devices on this host; each process's batch must split
      evenly over them. Defaults to ``jax.local_device_count()``.

  Raises:
    ValueError: unknown dataset, a batch size that does not divide over the
      processes and their devices, or an out-of-range field.
  """
  name = field(config.dataset, "name")
  if name not in SOURCES:
    raise ValueError(f"dataset.name must be one of {list(SOURCES)}, got {name!r}")
  if local_device_count is None:
    import jax

    local_device_count = jax.local_device_count()
  source = SOURCES[name]
  build = getattr(importlib.import_module(source.module), source.builder)
  return build(
    config,
    process_index=process_index,
    process_count=process_count,
    local_device_count=local_device_count,
  )


# --- helpers shared by the sources -------------------------------------------------

_MISSING = object()


def field(section, name, default=_MISSING):
  """``section.name``, or ``default`` when absent (or None); an error names it if required."""
  try:
    value = getattr(section, name)
  except (AttributeError, KeyError):
    value = None
  if value is None:
    if default is _MISSING:
      raise ValueError(f"config field {name!r} is required by trajax.data but is missing")
    return default
  return value


def data_seed(config) -> int:
  seed = field(config.dataset, "seed", None)
  if seed is None:
    seed = field(config, "seed")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  return int(seed)


def check_batch_sizes(
  config, *, process_index: int, process_count: int, local_device_count: int
) -> tuple[int, int]:
  """Validates ``batch_size``/``eval_batch_size`` against the processes and devices."""
  if not (isinstance(process_count, int) and process_count >= 1):
    raise ValueError(f"process_count must be a positive int, got {process_count!r}")
  if not (isinstance(process_index, int) and 0 <= process_index < process_count):
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
  sizes = []
  for key in ("batch_size", "eval_batch_size"):
    default = _MISSING if key == "batch_size" else sizes[0]
    size = field(config, key, default)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"{key} must be a positive int, got {size!r}")
    if size % process_count:
      raise ValueError(
        f"{key}={size} is the global batch and must be divisible by the "
        f"process count {process_count}"
      )
    if (size // process_count) % local_device_count:
      raise ValueError(
        f"{key}={size} gives {size // process_count} examples per process, "
        f"which must be divisible by the {local_device_count} local devices; "
        f"use a multiple of {process_count * local_device_count}"
      )
    sizes.append(int(size))
  return sizes[0], sizes[1]


def stream_args(config, *, process_index: int, process_count: int, local_device_count: int) -> dict:
  """The keyword arguments every source's stream takes, read and checked once:
  seed, label_noise, this process's batch_size / eval_batch_size, process_index,
  process_count."""
  batch_size, eval_batch_size = check_batch_sizes(
    config,
    process_index=process_index,
    process_count=process_count,
    local_device_count=local_device_count,
  )
  return dict(
    seed=data_seed(config),
    label_noise=label_noise_fraction(config),
    batch_size=batch_size,
    eval_batch_size=eval_batch_size,
    process_index=process_index,
    process_count=process_count,
  )


def label_noise_fraction(config) -> float:
  noise = field(config.dataset, "label_noise", 0.0)
  if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
    raise ValueError(f"dataset.label_noise must be a fraction in [0, 1], got {noise!r}")
  return float(noise)
