"""Host input-pipeline throughput of trajax.data on CPU (process time).

    .venv/bin/python -m bench.bench_data

Prints: mnist1d pool generation vs cached load, mnist1d batches/s at the
default batch 64, and a CIFAR-size in-memory source (synthetic uint8 images,
pad-crop-flip + normalise) at batch 512. Compare against the train step time
from bench.bench_train to see whether input can keep up.
"""

import tempfile
import time

import ml_collections
import numpy as np

from trajax.data import DatasetInfo, get_dataset, offline


def per_batch(iterator, n):
  next(iterator)
  t = time.process_time()
  for _ in range(n):
    next(iterator)
  return (time.process_time() - t) / n


def main():
  with tempfile.TemporaryDirectory() as d:
    config = ml_collections.ConfigDict(
      dict(
        seed=0,
        batch_size=64,
        eval_batch_size=1000,
        data_dir=d,
        dataset=dict(name="mnist1d", label_noise=0.3, num_train=40_000, augment=False),
      )
    )
    t = time.process_time()
    ds = get_dataset(config, local_device_count=1)
    generate = time.process_time() - t
    t = time.process_time()
    get_dataset(config, local_device_count=1)
    cached = time.process_time() - t
    per = per_batch(ds.train_batches(0), 5000)
    print(
      f"mnist1d 40k+10k pool: generate+cache {generate:.2f} s, load cached {cached:.3f} s; "
      f"batch 64: {per * 1e3:.3f} ms/batch ({64 / per:,.0f} examples/s)"
    )

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 50_000)
  ds = offline.ArrayDataset(
    DatasetInfo("cifar10", 10, (32, 32, 3), 50_000, 10_000),
    train_images=images,
    train_labels=labels,
    test_images=images[:10_000],
    test_labels=labels[:10_000],
    seed=0,
    label_noise=0.0,
    batch_size=512,
    eval_batch_size=1000,
    process_index=0,
    process_count=1,
    augment=offline.PadCropFlip(4, True),
    mean=(125.3, 123.0, 113.9),
    std=(63.0, 62.1, 66.7),
  )
  per = per_batch(ds.train_batches(0), 100)
  print(
    f"CIFAR-size in-memory, pad-crop-flip + normalise, batch 512: "
    f"{per * 1e3:.1f} ms/batch ({512 / per:,.0f} examples/s)"
  )


if __name__ == "__main__":
  main()
