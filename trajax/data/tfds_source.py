"""TFDS datasets: CIFAR-10/100 (held in memory) and ImageNet (streamed with tf.data).

Nothing is ever downloaded here: ``tfds.builder(name, data_dir=config.data_dir)``
must find the dataset already prepared (``tfds build cifar10 --data_dir=DIR``;
ImageNet needs its manual download in ``DIR/downloads/manual``), otherwise
``FileNotFoundError`` names the dataset and ``data_dir``. TensorFlow is imported
lazily and hidden from the GPUs so it never takes accelerator memory.

**CIFAR** (50 000 training images, 150 MB as uint8) is read once into host
memory, in TFDS's file order, and served by ``offline.ArrayDataset``: the batch
of step ``i`` is rows ``[(i mod S) B, (i mod S + 1) B)`` of a permutation drawn
from ``(seed, i // S)``, every process holds the whole split and keeps its rows
of the global batch, so resuming at any step is O(1) and exact, and the global
batch does not depend on the process count. Augmentation (``dataset.augment``):
4-pixel zero pad, random 32x32 crop, random horizontal flip, drawn from
``(seed, i)``; then per-channel standardisation.

**ImageNet** (1.28 M JPEGs) is streamed. Process ``p`` of ``P`` reads the
contiguous shard ``train[p N // P, p N // P + N // P)`` (TFDS shuffles examples
when it prepares a dataset, so contiguous shards are random ones), and an epoch
of ``S = (N // P) // b`` steps (``b = B / P``) is

  files in an order drawn from (seed, epoch, p)  ->  shuffle buffer of
  ``shuffle_buffer`` examples seeded by (seed, epoch, p)  ->  take S b

with tf.data's deterministic mode on, so the epoch's order is a function of
``(seed, epoch, p, P)``. Each example's augmentation (Inception random-resized
crop, area 8-100 %, aspect 3/4-4/3, to 224x224, and a random flip) uses
stateless TF random ops seeded by (seed, p, its position in the process's
stream), so it does not depend on tf.data's threading.

*Positioning at start_step* ``k``: the stream starts epoch ``k // S`` and skips
``(k mod S) b`` examples inside it. Skipping happens before JPEG decoding
(images are read as raw bytes and decoded in the map), so its cost is reading
and shuffling up to one epoch of this process's records, about ``140 GB / P``
of I/O in the worst case (e.g. ~1-2 min per host on a 32-host pod with fast
storage), once per resumption; nothing else is replayed. Each epoch boundary
rebuilds the pipeline and refills the shuffle buffer (a few seconds).

Label noise: CIFAR draws it per row index (``offline.noisy_labels``); ImageNet
per example from a keyed hash (SipHash, ``tf.strings.to_hash_bucket_strong``)
of the example's ``tfds_id``, so it is fixed per example whatever the sharding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator

import numpy as np

from trajax.data import (
  DatasetInfo,
  field,
  offline,
  stream_args,
)

# Tags for the random streams (distinct from offline's).
_T_EPOCH, _T_AUG, _T_NOISE, _T_FIXED = 101, 102, 103, 104


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  num_classes: int
  input_shape: tuple
  train_split: str
  eval_split: str
  mean: tuple  # per channel, on the 0..255 scale
  std: tuple
  in_memory: bool


SPECS = {
  "cifar10": TfdsSpec(
    10, (32, 32, 3), "train", "test", (125.3, 123.0, 113.9), (63.0, 62.1, 66.7), True
  ),
  "cifar100": TfdsSpec(
    100, (32, 32, 3), "train", "test", (129.3, 124.1, 112.4), (68.2, 65.4, 70.4), True
  ),
  "imagenet2012": TfdsSpec(
    1000,
    (224, 224, 3),
    "train",
    "validation",
    (123.675, 116.28, 103.53),
    (58.395, 57.12, 57.375),
    False,
  ),
}

IMAGE_SIZE = 224
CROP_PADDING = 32  # eval: centre crop of 224/256 of the shorter side, then resize


def import_tf():
  """``(tf, tfds)``, with TensorFlow kept off the GPUs (JAX owns them)."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised (set earlier in this process)
    pass
  import tensorflow_datasets as tfds

  return tf, tfds


def prepared_builder(name: str, data_dir):
  """``tfds.builder(name, data_dir)``; raises if not prepared (never downloads)."""
  _, tfds = import_tf()
  if not data_dir:
    raise FileNotFoundError(
      f"TFDS dataset {name!r} needs data_dir (the directory it was "
      f"prepared in), got data_dir={data_dir!r}"
    )
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"TFDS dataset {name!r} is not prepared under data_dir={data_dir!r} (looked for "
      f"{builder.data_dir}); training runs never download. Prepare it first, e.g. "
      f"`tfds build {name} --data_dir={data_dir}`"
      + (
        " (ImageNet needs the manual download in <data_dir>/downloads/manual)"
        if name == "imagenet2012"
        else ""
      )
    )
  return builder


def num_examples(builder, split: str) -> int:
  """Examples in ``split``, from the dataset's metadata, else by counting.

  Counting only happens when the metadata has no split sizes, which is the
  case under ``tfds.testing.mock_data``.
  """
  try:
    n = builder.info.splits[split].num_examples
  except KeyError:
    n = 0
  if n:
    return int(n)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return int(ds.reduce(np.int64(0), lambda count, _: count + 1).numpy())


def _int_seed(*parts) -> int:
  return int(np.random.default_rng(list(parts)).integers(0, 2**31 - 1))


# --- CIFAR: in memory ---------------------------------------------------------------------


def load_split_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as ``(uint8 images [n, H, W, C], int32 labels [n])`` in file order."""
  _, tfds = import_tf()
  images, labels = [], []
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(4096)
  for batch in tfds.as_numpy(ds):
    images.append(batch["image"])
    labels.append(batch["label"].astype(np.int32))
  return np.concatenate(images), np.concatenate(labels)


def _cifar(config, spec, builder, **common) -> offline.ArrayDataset:
  x_train, y_train = load_split_arrays(builder, spec.train_split)
  x_test, y_test = load_split_arrays(builder, spec.eval_split)
  info = DatasetInfo(
    field(config.dataset, "name"),
    spec.num_classes,
    spec.input_shape,
    int(x_train.shape[0]),
    int(x_test.shape[0]),
  )
  augment = bool(field(config.dataset, "augment", False))
  return offline.ArrayDataset(
    info,
    train_images=x_train,
    train_labels=y_train,
    test_images=x_test,
    test_labels=y_test,
    augment=offline.PadCropFlip(pad=4, flip=True) if augment else None,
    scale=1.0,
    mean=spec.mean,
    std=spec.std,
    **common,
  )


# --- ImageNet: streamed ----------------------------------------------------------------------


def _decode_train(tf, image_bytes, seed_crop, seed_flip):
  """Inception-style random resized crop (area 8-100 %, aspect 3/4-4/3) + flip."""
  shape = tf.image.extract_jpeg_shape(image_bytes)
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    whole,
    seed=seed_crop,
    min_object_covered=0.1,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  y, x, _ = tf.unstack(begin)
  h, w, _ = tf.unstack(size)
  image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=3)
  image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")
  return tf.image.stateless_random_flip_left_right(image, seed_flip)


def decode_eval(tf, image_bytes):
  """Centre crop of ``224 / (224 + 32)`` of the shorter side, resized to 224x224."""
  shape = tf.image.extract_jpeg_shape(image_bytes)
  h, w = shape[0], shape[1]
  crop = tf.cast(
    IMAGE_SIZE / (IMAGE_SIZE + CROP_PADDING) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32
  )
  crop = tf.maximum(crop, 1)
  y, x = (h - crop + 1) // 2, (w - crop + 1) // 2
  image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, crop, crop]), channels=3)
  return tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")


class StreamingDataset:
  """The ``trajax.data.Dataset`` interface over a tf.data stream (ImageNet)."""

  def __init__(
    self,
    info: DatasetInfo,
    spec: TfdsSpec,
    builder,
    *,
    seed: int,
    label_noise: float,
    augment: bool,
    batch_size: int,
    eval_batch_size: int,
    process_index: int,
    process_count: int,
    shuffle_buffer: int = 16_384,
  ):
    self.info, self.spec, self.builder = info, spec, builder
    self.seed, self.label_noise, self.augment = seed, label_noise, augment
    self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.shuffle_buffer = shuffle_buffer
    self.local_batch = batch_size // process_count
    self.shard_size = info.num_train // process_count
    self.steps_per_epoch = self.shard_size // self.local_batch
    if self.steps_per_epoch < 1:
      raise ValueError(
        f"batch_size={batch_size} exceeds the {info.num_train} training examples of {info.name!r}"
      )

  # -- pieces --

  def _shard(self, split: str, total: int, drop_remainder: bool) -> tuple[str, int]:
    p, n = self.process_index, self.process_count
    start = p * total // n
    size = total // n if drop_remainder else (p + 1) * total // n - start
    return f"{split}[{start}:{start + size}]", size

  def _read(self, split: str, *, shuffle_seed: int | None):
    tf, tfds = import_tf()
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=shuffle_seed, options=options)
    # Raw JPEG bytes: skipping (on resume) and shuffling never pay for decoding.
    return self.builder.as_dataset(
      split=split,
      shuffle_files=shuffle_seed is not None,
      read_config=read_config,
      decoders={"image": tfds.decode.SkipDecoding()},
    )

  def _labels(self, tf, example, noisy: bool):
    label = tf.cast(example["label"], tf.int32)
    if not noisy or self.label_noise == 0.0:
      return label
    buckets = 1 << 30
    key = [_int_seed(self.seed, _T_NOISE, 0), _int_seed(self.seed, _T_NOISE, 1)]
    u = tf.strings.to_hash_bucket_strong(example["tfds_id"], buckets, key)
    random_class = tf.strings.to_hash_bucket_strong(
      example["tfds_id"], self.info.num_classes, [key[1], key[0]]
    )
    replace = u < int(self.label_noise * buckets)
    return tf.where(replace, tf.cast(random_class, tf.int32), label)

  def _normalize(self, tf, image):
    mean = tf.constant(self.spec.mean, tf.float32)
    std = tf.constant(self.spec.std, tf.float32)
    return (tf.cast(image, tf.float32) - mean) / std

  def _train_map(self, stream_key: int):
    """Example at stream position ``pos`` -> augmented, normalised, noisy-labelled."""
    tf, _ = import_tf()
    key_crop, key_flip = _int_seed(stream_key, 0), _int_seed(stream_key, 1)

    def fn(pos, example):
      pos = tf.cast(pos, tf.int64)
      if self.augment:
        image = _decode_train(
          tf,
          example["image"],
          tf.stack([tf.constant(key_crop, tf.int64), pos]),
          tf.stack([tf.constant(key_flip, tf.int64), pos]),
        )
      else:
        image = decode_eval(tf, example["image"])
      return {"image": self._normalize(tf, image), "label": self._labels(tf, example, True)}

    return fn

  def _to_numpy(self, ds):
    _, tfds = import_tf()
    for batch in tfds.as_numpy(ds):
      yield {k: np.asarray(v) for k, v in batch.items()}

  # -- the interface --

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    tf, _ = import_tf()
    split, _ = self._shard(self.spec.train_split, self.info.num_train, drop_remainder=True)
    b, s = self.local_batch, self.steps_per_epoch
    stream_key = _int_seed(self.seed, _T_AUG, self.process_index, self.process_count)
    first_epoch, offset = divmod(int(start_step), s)
    for epoch in itertools.count(first_epoch):
      epoch_seed = _int_seed(self.seed, _T_EPOCH, epoch, self.process_index, self.process_count)
      ds = self._read(split, shuffle_seed=epoch_seed).take(self.shard_size)
      ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
      ds = ds.take(s * b).skip(offset * b)
      # Position in this process's stream: keys the example's augmentation.
      ds = tf.data.Dataset.zip(
        tf.data.Dataset.range(epoch * s * b + offset * b, (epoch + 1) * s * b), ds
      )
      ds = ds.map(
        self._train_map(stream_key), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
      ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
      yield from self._to_numpy(ds)
      offset = 0

  def fixed_train_batch(self, index: int, batch_size: int | None = None) -> dict:
    """``batch_size`` consecutive training examples (TFDS stores them shuffled)
    from an offset drawn from ``(seed, index)``, preprocessed as in training."""
    tf, _ = import_tf()
    batch_size = self.batch_size if batch_size is None else batch_size
    if batch_size % self.process_count or not 0 < batch_size <= self.info.num_train:
      raise ValueError(
        f"batch_size must be in [1, {self.info.num_train}] and divisible by "
        f"the process count {self.process_count}, got {batch_size}"
      )
    b = batch_size // self.process_count
    rng = np.random.default_rng([self.seed, _T_FIXED, int(index)])
    start = int(rng.integers(0, self.info.num_train - batch_size + 1)) + self.process_index * b
    ds = self._read(f"{self.spec.train_split}[{start}:{start + b}]", shuffle_seed=None).take(b)
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(start, start + b), ds)
    ds = ds.map(self._train_map(_int_seed(self.seed, _T_FIXED, int(index))))
    return next(self._to_numpy(ds.batch(b)))

  def eval_batches(self, split: str = "test") -> Iterator[dict]:
    """``'test'`` (the validation split), ``'train'`` (noisy labels) or ``'train_clean'``."""
    tf, _ = import_tf()
    names = {
      "test": self.spec.eval_split,
      "train": self.spec.train_split,
      "train_clean": self.spec.train_split,
    }
    if split not in names:
      raise ValueError(f"split must be one of {list(names)}, got {split!r}")
    total = self.info.num_eval if split == "test" else self.info.num_train
    shard, size = self._shard(names[split], total, drop_remainder=False)
    b = self.eval_batch_size // self.process_count
    # Every process yields the same number of batches (the largest shard's).
    num_batches = math.ceil(math.ceil(total / self.process_count) / b)
    noisy = split == "train"

    def fn(example):
      return {
        "image": self._normalize(tf, decode_eval(tf, example["image"])),
        "label": self._labels(tf, example, noisy),
        "mask": tf.constant(1.0, tf.float32),
      }

    ds = self._read(shard, shuffle_seed=None).take(size)
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pad = {
      "image": tf.zeros(self.info.input_shape, tf.float32),
      "label": tf.constant(0, tf.int32),
      "mask": tf.constant(0.0, tf.float32),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * b - size))
    yield from self._to_numpy(ds.batch(b).prefetch(tf.data.AUTOTUNE))


# --- testing ---------------------------------------------------------------------------


@contextlib.contextmanager
def mock_prepared_tfds(num_examples: int = 32):
  """``tfds.testing.mock_data`` that also reports every dataset as prepared.

  ``mock_data`` replaces ``as_dataset`` with random examples built from the
  dataset's feature spec in code (``MockPolicy.USE_CODE``: no metadata files,
  works offline) but leaves ``is_prepared()`` false, which ``get_dataset``
  refuses. Under the mock, every split (and sub-split: slicing is ignored)
  yields the same ``num_examples`` examples, and ``info.splits`` is empty, so
  split sizes are counted.
  """
  from unittest import mock

  _, tfds = import_tf()
  with (
    tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE),
    mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
  ):
    yield


# --- entry point ----------------------------------------------------------------------


def get_tfds_dataset(config, *, process_index: int, process_count: int, local_device_count: int):
  """``cifar10``/``cifar100`` (in memory) or ``imagenet2012`` (streamed)."""
  name = field(config.dataset, "name")
  if name not in SPECS:
    raise ValueError(f"dataset.name must be one of {list(SPECS)} here, got {name!r}")
  spec = SPECS[name]
  common = stream_args(
    config,
    process_index=process_index,
    process_count=process_count,
    local_device_count=local_device_count,
  )
  builder = prepared_builder(name, field(config, "data_dir", None))
  if spec.in_memory:
    return _cifar(config, spec, builder, **common)
  info = DatasetInfo(
    name,
    spec.num_classes,
    spec.input_shape,
    num_examples(builder, spec.train_split),
    num_examples(builder, spec.eval_split),
  )
  return StreamingDataset(
    info, spec, builder, augment=bool(field(config.dataset, "augment", False)), **common
  )
