"""In-memory datasets: mnist1d, scikit-learn digits, and the stream they share.

``ArrayDataset`` serves any split held in host memory (the offline sources
here, CIFAR in ``tfds_source``) with exact, O(1) positioning in the stream:
with ``N`` training examples and global batch ``B`` an epoch is
``S = N // B`` steps, and step ``i`` takes positions ``[(i mod S) B, (i mod S) B + B)``
of the permutation ``pi_e`` of ``range(N)`` for epoch ``e = i // S``, where
``pi_e`` is drawn from ``(seed, e)``. (The ``N mod B`` examples at the end of
each epoch's permutation wait for the next epoch, a different set each time.)
Augmentation parameters are drawn for the whole global batch from
``(seed, i)`` and each process keeps its rows, so the global batch does not
depend on the number of processes.

mnist1d (Greydanus 2020) is generated here, vectorised over examples, with the
package's templates and transformation (pad, dilate, scale, translate,
correlated + iid noise, shear, subsample to 40): the package's own generator
loops in Python at ~2 ms per example, this one makes 50 000 examples in about
a second. ``tests/test_data.py`` checks it against ``mnist1d.transform`` fed
the same random draws. Pools are cached as ``.npz`` under
``config.data_dir/mnist1d`` (or ``~/.cache/trajax/mnist1d``), keyed by seed and
sizes, written atomically.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Iterator

import numpy as np
from absl import logging

from trajax.data import (
  DatasetInfo,
  field,
  stream_args,
)

# Stream tags: independent random streams derived from one seed.
_EPOCH, _NOISE, _AUG, _FIXED, _POOL_TRAIN, _POOL_TEST, _SPLIT = range(7)

MNIST1D_VERSION = 1  # bump when the generator changes, so old caches are not reused


# --- the shared in-memory stream ------------------------------------------------------


def noisy_labels(labels: np.ndarray, num_classes: int, noise: float, seed: int) -> np.ndarray:
  """Symmetric label noise: with prob. ``noise`` a label becomes ``Uniform{0..K-1}``."""
  rng = np.random.default_rng([seed, _NOISE])
  replace = rng.random(labels.shape[0]) < noise
  random_class = rng.integers(0, num_classes, labels.shape[0])
  return np.where(replace, random_class, labels).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class PadCropFlip:
  """Zero-pad by ``pad`` pixels, crop back at a random offset, flip left-right if ``flip``."""

  pad: int
  flip: bool

  def sample(self, rng: np.random.Generator, n: int) -> dict:
    return {
      "dy": rng.integers(0, 2 * self.pad + 1, n),
      "dx": rng.integers(0, 2 * self.pad + 1, n),
      "flip": rng.random(n) < 0.5 if self.flip else np.zeros(n, bool),
    }

  def apply(self, images: np.ndarray, params: dict) -> np.ndarray:
    p = self.pad
    b, h, w, c = images.shape
    padded = np.zeros((b, h + 2 * p, w + 2 * p, c), images.dtype)
    padded[:, p : p + h, p : p + w] = images
    out = np.empty_like(images)
    # A loop of slice copies: about 2x faster than one fancy-indexed gather.
    rows = zip(params["dy"].tolist(), params["dx"].tolist(), params["flip"].tolist(), strict=True)
    for i, (dy, dx, flip) in enumerate(rows):
      crop = padded[i, dy : dy + h, dx : dx + w]
      out[i] = crop[:, ::-1] if flip else crop
    return out


class ArrayDataset:
  """The ``trajax.data.Dataset`` interface over arrays held in memory.

  Images are stored raw (e.g. uint8) and normalised per batch after
  augmentation: ``(x * scale - mean) / std``.
  """

  def __init__(
    self,
    info: DatasetInfo,
    *,
    train_images,
    train_labels,
    test_images,
    test_labels,
    seed: int,
    label_noise: float,
    batch_size: int,
    eval_batch_size: int,
    process_index: int,
    process_count: int,
    augment: PadCropFlip | None = None,
    scale: float = 1.0,
    mean=0.0,
    std=1.0,
  ):
    self.info = info
    self.seed = seed
    self.batch_size = batch_size
    self.eval_batch_size = eval_batch_size
    self.process_index = process_index
    self.process_count = process_count
    self.augment = augment
    # (x * scale - mean) / std as one multiply-add: x * gain + offset.
    self._gain = (np.float32(scale) / np.asarray(std, np.float32)).astype(np.float32)
    self._offset = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)
    self._identity = bool(np.all(self._gain == 1) and np.all(self._offset == 0))
    self._tiled = None
    self._train_images = train_images
    self._clean_labels = np.asarray(train_labels, np.int32)
    self._train_labels = noisy_labels(self._clean_labels, info.num_classes, label_noise, seed)
    self._test_images = test_images
    self._test_labels = np.asarray(test_labels, np.int32)
    n = train_images.shape[0]
    if batch_size > n:
      raise ValueError(
        f"batch_size={batch_size} exceeds the {n} training examples of {info.name!r}"
      )
    self.steps_per_epoch = n // batch_size
    self._perms: dict[int, np.ndarray] = {}

  @property
  def noisy_label_mask(self) -> np.ndarray:
    """Boolean ``[num_train]``: training labels that differ from the clean ones."""
    return self._train_labels != self._clean_labels

  def _normalize(self, images):
    out = images.astype(np.float32)
    if self._identity:
      return out
    # Broadcasting a 3-vector along the innermost axis is ~5x slower than along
    # a flattened example, so the per-channel constants are tiled to the example.
    n = int(np.prod(images.shape[1:]))
    if self._tiled is None or self._tiled[0].shape[0] != n:
      reps = n // self._gain.size
      self._tiled = (np.tile(self._gain.ravel(), reps), np.tile(self._offset.ravel(), reps))
    flat = out.reshape(out.shape[0], n)
    flat *= self._tiled[0]
    flat += self._tiled[1]
    return out

  def _local(self, n_global: int) -> slice:
    b = n_global // self.process_count
    return slice(self.process_index * b, (self.process_index + 1) * b)

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 2:
        self._perms.pop(min(self._perms))
      rng = np.random.default_rng([self.seed, _EPOCH, epoch])
      self._perms[epoch] = rng.permutation(self._train_images.shape[0])
    return self._perms[epoch]

  def _gather(self, indices: np.ndarray, aug_rng: np.random.Generator) -> dict:
    n_global = indices.shape[0]
    local = self._local(n_global)
    images = self._train_images[indices[local]]
    if self.augment is not None:
      params = self.augment.sample(aug_rng, n_global)
      images = self.augment.apply(images, {k: v[local] for k, v in params.items()})
    return {"image": self._normalize(images), "label": self._train_labels[indices[local]]}

  def _step_indices(self, step: int) -> tuple[np.ndarray, np.random.Generator | None]:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    indices = self._permutation(epoch)[offset * self.batch_size : (offset + 1) * self.batch_size]
    aug_rng = np.random.default_rng([self.seed, _AUG, int(step)]) if self.augment else None
    return indices, aug_rng

  def train_batch(self, step: int) -> dict:
    """This process's share of the global batch of training step ``step``."""
    return self._gather(*self._step_indices(step))

  def train_keys(self, step: int) -> dict:
    """What :meth:`train_batch` of ``step`` is made of, without the images: this
    process's rows of the global batch as pool ``index`` (int32) and, with
    augmentation, its crop offsets ``dy``, ``dx`` (int32) and ``flip`` (bool)
    -- the same draws, in the same order, as :meth:`train_batch`.
    :class:`trajax.data.device.DevicePool` turns them into the batch on device."""
    indices, aug_rng = self._step_indices(step)
    local = self._local(indices.shape[0])
    keys = {"index": indices[local].astype(np.int32)}
    if self.augment is not None:
      params = self.augment.sample(aug_rng, indices.shape[0])
      keys["dy"] = params["dy"][local].astype(np.int32)
      keys["dx"] = params["dx"][local].astype(np.int32)
      keys["flip"] = np.asarray(params["flip"][local], bool)
    return keys

  def train_key_batches(self, start_step: int = 0) -> Iterator[dict]:
    """:meth:`train_keys` of ``start_step, start_step + 1, ...``."""
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    for step in itertools.count(start_step):
      yield self.train_keys(step)

  def normalized_train_images(self) -> np.ndarray:
    """The whole training pool normalised as :meth:`train_batch` normalises a batch.

    Normalisation is elementwise per channel (``x * gain + offset`` in float32,
    two roundings), and cropping and flipping only move pixels, so gathering
    (and cropping) rows of this array gives :meth:`train_batch` bit for bit.
    """
    return self._normalize(self._train_images)

  def pad_fill(self) -> np.ndarray | None:
    """The normalised value of a padded (zero) pixel, ``[h + 2p, w + 2p, c]``; None without augmentation."""
    if self.augment is None:
      return None
    h, w, c = self._train_images.shape[1:]
    p = self.augment.pad
    return self._normalize(np.zeros((1, h + 2 * p, w + 2 * p, c), self._train_images.dtype))[0]

  @property
  def train_labels(self) -> np.ndarray:
    """The (noisy) training labels, int32 ``[num_train]``, as batches carry them."""
    return self._train_labels

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    for step in itertools.count(start_step):
      yield self.train_batch(step)

  def fixed_train_batch(self, index: int, batch_size: int | None = None) -> dict:
    batch_size = self.batch_size if batch_size is None else batch_size
    if batch_size % self.process_count or not 0 < batch_size <= self._train_images.shape[0]:
      raise ValueError(
        f"batch_size must be in [1, {self._train_images.shape[0]}] and divisible "
        f"by the process count {self.process_count}, got {batch_size}"
      )
    rng = np.random.default_rng([self.seed, _FIXED, int(index)])
    indices = rng.choice(self._train_images.shape[0], batch_size, replace=False)
    return self._gather(indices, rng)

  def eval_batches(self, split: str = "test") -> Iterator[dict]:
    """``split`` is ``'test'``, ``'train'`` (noisy labels, as trained) or ``'train_clean'``."""
    splits = {
      "test": (self._test_images, self._test_labels),
      "train": (self._train_images, self._train_labels),
      "train_clean": (self._train_images, self._clean_labels),
    }
    if split not in splits:
      raise ValueError(f"split must be one of {list(splits)}, got {split!r}")
    images, labels = splits[split]
    n, b = images.shape[0], self.eval_batch_size
    for start in range(0, n, b):
      idx = np.arange(start, start + b)
      mask = idx < n
      idx = np.where(mask, idx, n - 1)[self._local(b)]  # pad by repeating a real row
      yield {
        "image": self._normalize(images[idx]),
        "label": labels[idx],
        "mask": mask[self._local(b)].astype(np.float32),
      }


# --- mnist1d --------------------------------------------------------------------------


def _linear_resample(x: np.ndarray, lengths: np.ndarray, m: int) -> np.ndarray:
  """``interp1d(linspace(0,1,L), x[:L])(linspace(0,1,m))`` row by row (valid lengths vary)."""
  pos = np.linspace(0.0, 1.0, m)[None, :] * (lengths[:, None] - 1)
  left = np.minimum(np.floor(pos).astype(np.int64), lengths[:, None] - 2)
  frac = pos - left
  rows = np.arange(x.shape[0])[:, None]
  return x[rows, left] * (1.0 - frac) + x[rows, left + 1] * frac


def mnist1d_draws(rng: np.random.Generator, n: int, args=None) -> dict:
  """The random variables of ``n`` mnist1d transformations (one row per example)."""
  import mnist1d

  args = mnist1d.get_dataset_args() if args is None else args
  length = args.template_len + args.padding[-1]
  return {
    "pad": rng.random(n),
    "scale": rng.random(n),
    "shift": rng.integers(0, args.max_translation, n),
    "corr": rng.standard_normal((n, length)),
    "iid": rng.standard_normal((n, length)),
    "shear": rng.random(n),
  }


def mnist1d_signals(labels: np.ndarray, draws: dict, args=None) -> np.ndarray:
  """mnist1d's ``transform`` applied to the class templates, vectorised.

  Per example (args defaults in brackets): pad the 12-sample template with
  ``p = low + floor(u (high - low + 1))`` zeros [36..60]; resample linearly to
  ``template_len + high`` [72] samples; multiply by ``1 + c (u - 1/2)`` [c=0.4];
  roll right by ``k ~ U{0..max_translation-1}`` [48]; where the signal is
  exactly zero put Gaussian-smoothed (sigma 2) noise of scale 0.25, add iid
  noise of scale 0.02; subtract the ramp ``s (u - 1/2) linspace(-1/2, 1/2)``
  [s=0.75]; resample to ``final_seq_length`` [40].

  Returns:
    float64 ``[n, final_seq_length]``, not yet standardised.
  """
  import mnist1d
  from scipy.ndimage import gaussian_filter1d

  args = mnist1d.get_dataset_args() if args is None else args
  templates = mnist1d.get_templates()["x"]
  n = labels.shape[0]
  tlen, (low, high) = args.template_len, args.padding
  m = tlen + high
  pad = low + (draws["pad"] * (high - low + 1)).astype(np.int64)
  x = np.zeros((n, m))
  x[:, :tlen] = templates[labels] + 1e-8  # the package's eps keeps the template nonzero
  x = _linear_resample(x, tlen + pad, m)
  x *= 1.0 + args.scale_coeff * (draws["scale"][:, None] - 0.5)
  x = x[np.arange(n)[:, None], (np.arange(m)[None, :] - draws["shift"][:, None]) % m]
  corr = gaussian_filter1d(args.corr_noise_scale * draws["corr"], 2, axis=1)
  x = np.where(x != 0, x, corr) + args.iid_noise_scale * draws["iid"]
  x -= (args.shear_scale * (draws["shear"][:, None] - 0.5)) * np.linspace(-0.5, 0.5, m)
  return _linear_resample(x, np.full(n, m), args.final_seq_length)


def generate_mnist1d(num_examples: int, seed: int, split_tag: int = _POOL_TRAIN):
  """``num_examples`` class-balanced mnist1d signals ``[n, 40]`` and labels, from ``seed``."""
  rng = np.random.default_rng([seed, split_tag])
  labels = rng.permutation(np.arange(num_examples) % 10)
  return mnist1d_signals(labels, mnist1d_draws(rng, num_examples)), labels.astype(np.int32)


def default_cache_dir(data_dir) -> str:
  base = data_dir if data_dir else os.path.join(os.path.expanduser("~"), ".cache", "trajax")
  return os.fspath(base)


def load_mnist1d_pool(num_train: int, num_test: int, seed: int, data_dir=None) -> dict:
  """Train/test pools, standardised with the training split's mean/std; cached on disk."""
  cache_dir = os.path.join(default_cache_dir(data_dir), "mnist1d")
  path = os.path.join(
    cache_dir, f"mnist1d-v{MNIST1D_VERSION}-seed{seed}-train{num_train}-test{num_test}.npz"
  )
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        pool = dict(f)
      shapes = {k: pool[k].shape[:1] for k in ("x_train", "y_train", "x_test", "y_test")}
      if shapes != {
        "x_train": (num_train,),
        "y_train": (num_train,),
        "x_test": (num_test,),
        "y_test": (num_test,),
      }:
        raise ValueError(f"array lengths {shapes} do not match the file name")
      return pool
    except Exception as e:  # noqa: BLE001 -- our own cache: any damage means rebuild it
      # The file is a pure function of its name, so a damaged one (a torn copy,
      # a full disk) is regenerated rather than trusted or fatal.
      logging.warning(
        "mnist1d cache %s is damaged (%s: %s); rebuilding it",
        path,
        type(e).__name__,
        " ".join(str(e).split())[:200],
      )
  x_train, y_train = generate_mnist1d(num_train, seed, _POOL_TRAIN)
  x_test, y_test = generate_mnist1d(num_test, seed, _POOL_TEST)
  mean, std = x_train.mean(), x_train.std()
  pool = {
    "x_train": ((x_train - mean) / std).astype(np.float32)[..., None],
    "y_train": y_train,
    "x_test": ((x_test - mean) / std).astype(np.float32)[..., None],
    "y_test": y_test,
  }
  os.makedirs(cache_dir, exist_ok=True)
  # Atomic: concurrent processes each write a private file, then rename over.
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **pool)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return pool


# --- digits ---------------------------------------------------------------------------

DIGITS_NUM_TEST = 297  # of 1 797: leaves 1 500 training images


def load_digits_split(seed: int) -> dict:
  """scikit-learn's 8x8 digits (values 0..16), split 1 500 / 297 by a permutation from ``seed``."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  perm = np.random.default_rng([seed, _SPLIT]).permutation(labels.shape[0])
  test, train = perm[:DIGITS_NUM_TEST], perm[DIGITS_NUM_TEST:]
  return {
    "x_train": images[train],
    "y_train": labels[train],
    "x_test": images[test],
    "y_test": labels[test],
  }


# --- entry point ----------------------------------------------------------------------


def get_offline_dataset(
  config, *, process_index: int, process_count: int, local_device_count: int
) -> ArrayDataset:
  """``mnist1d`` or ``digits`` as an ``ArrayDataset`` (see ``trajax.data.get_dataset``)."""
  name = field(config.dataset, "name")
  common = stream_args(
    config,
    process_index=process_index,
    process_count=process_count,
    local_device_count=local_device_count,
  )
  seed = common["seed"]
  augment = bool(field(config.dataset, "augment", False))
  if name == "mnist1d":
    if augment:
      raise ValueError(
        "dataset.augment=True is not defined for mnist1d (its generator already "
        "translates, shears and adds noise); set dataset.augment=False"
      )
    num_train = field(config.dataset, "num_train", 40_000)
    if (
      isinstance(num_train, bool) or not isinstance(num_train, (int, np.integer)) or num_train < 10
    ):
      raise ValueError(f"dataset.num_train must be an int >= 10 for mnist1d, got {num_train!r}")
    num_test = field(config.dataset, "num_eval", max(int(num_train) // 4, 1000))
    pool = load_mnist1d_pool(int(num_train), int(num_test), seed, field(config, "data_dir", None))
    info = DatasetInfo("mnist1d", 10, (40, 1), int(num_train), int(num_test))
    return ArrayDataset(
      info,
      train_images=pool["x_train"],
      train_labels=pool["y_train"],
      test_images=pool["x_test"],
      test_labels=pool["y_test"],
      **common,
    )
  if name == "digits":
    split = load_digits_split(seed)
    # Standardise with the training split's pixel statistics (scaled to [0, 1]).
    x = split["x_train"] / 16.0
    info = DatasetInfo("digits", 10, (8, 8, 1), split["y_train"].shape[0], split["y_test"].shape[0])
    return ArrayDataset(
      info,
      train_images=split["x_train"],
      train_labels=split["y_train"],
      test_images=split["x_test"],
      test_labels=split["y_test"],
      augment=PadCropFlip(pad=1, flip=False) if augment else None,
      scale=1 / 16.0,
      mean=float(x.mean()),
      std=float(x.std()),
      **common,
    )
  raise ValueError(f"dataset.name must be 'mnist1d' or 'digits' here, got {name!r}")
