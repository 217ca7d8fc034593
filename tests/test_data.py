"""Tests for trajax.data: the offline sources, the stream contract, and TFDS under mock data."""

import itertools
import os

import ml_collections
import numpy as np
import pytest

from trajax.data import batch_fingerprint, get_dataset, offline


def _config(
  name="mnist1d",
  *,
  data_dir,
  batch_size=20,
  eval_batch_size=64,
  seed=0,
  label_noise=0.3,
  num_train=400,
  augment=False,
):
  return ml_collections.ConfigDict(
    {
      "seed": seed,
      "batch_size": batch_size,
      "eval_batch_size": eval_batch_size,
      "data_dir": str(data_dir),
      "dataset": {
        "name": name,
        "label_noise": label_noise,
        "num_train": num_train,
        "augment": augment,
      },
    }
  )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("trajax_data")


def _ds(data_dir, **kwargs):
  process = {k: kwargs.pop(k) for k in ("process_index", "process_count") if k in kwargs}
  return get_dataset(_config(data_dir=data_dir, **kwargs), local_device_count=1, **process)


def _rows(images):
  return [row.tobytes() for row in np.asarray(images)]


# --- mnist1d generator -------------------------------------------------------------


def test_vectorised_mnist1d_equals_the_package_transform_on_the_same_draws():
  import mnist1d

  args = mnist1d.get_dataset_args()
  templates = mnist1d.get_templates()
  labels = np.arange(30) % 10
  # Replay the package's global-RNG call order (pad, scale, translate, corr, iid, shear).
  np.random.seed(7)
  draws = {k: [] for k in ("pad", "scale", "shift", "corr", "iid", "shear")}
  for _ in labels:
    draws["pad"].append(np.random.rand())
    draws["scale"].append(np.random.rand())
    draws["shift"].append(np.random.choice(args.max_translation))
    draws["corr"].append(np.random.randn(72))
    draws["iid"].append(np.random.randn(72))
    draws["shear"].append(np.random.rand())
  np.random.seed(7)
  reference = np.stack(
    [mnist1d.transform(templates["x"][y], templates["t"], args)[0] for y in labels]
  )
  ours = offline.mnist1d_signals(labels, {k: np.asarray(v) for k, v in draws.items()})
  np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_mnist1d_pool_is_cached_atomically_and_reloaded(data_dir):
  ds = _ds(data_dir, num_train=400)
  assert ds.info.input_shape == (40, 1) and ds.info.num_classes == 10
  assert (ds.info.num_train, ds.info.num_eval) == (400, 1000)
  files = os.listdir(os.path.join(data_dir, "mnist1d"))
  assert files == ["mnist1d-v1-seed0-train400-test1000.npz"]  # no temporary left behind
  train = np.concatenate([b["image"] for b in ds.eval_batches("train_clean")])[:400]
  assert abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-4  # standardised
  again = _ds(data_dir, num_train=400)
  first, second = next(ds.train_batches(3)), next(again.train_batches(3))
  assert batch_fingerprint(first) == batch_fingerprint(second)
  # Class-balanced: 40 examples of each digit.
  labels = np.concatenate([b["label"] for b in ds.eval_batches("train_clean")])[:400]
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 40))


# --- the training stream -------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_and_step(data_dir):
  a, b = _ds(data_dir), _ds(data_dir)
  other_seed = _ds(data_dir, seed=1)
  prints = [batch_fingerprint(x) for x in itertools.islice(a.train_batches(0), 30)]
  assert prints == [batch_fingerprint(x) for x in itertools.islice(b.train_batches(0), 30)]
  assert len(set(prints)) == 30  # every step (including across epochs) differs
  assert not set(prints) & {
    batch_fingerprint(x) for x in itertools.islice(other_seed.train_batches(0), 30)
  }
  batch = next(a.train_batches(0))
  assert batch["image"].shape == (20, 40, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (20,) and batch["label"].dtype == np.int32


def test_resume_at_step_k_equals_skipping_k_steps(data_dir):
  ds = _ds(data_dir)
  uninterrupted = list(itertools.islice(ds.train_batches(0), 47))
  resumed = list(itertools.islice(_ds(data_dir).train_batches(29), 18))  # crosses epoch 1->2
  assert [batch_fingerprint(x) for x in uninterrupted[29:]] == [
    batch_fingerprint(x) for x in resumed
  ]


def test_each_epoch_visits_every_example_once(data_dir):
  ds = _ds(data_dir)  # 400 examples, batch 20 -> 20 steps per epoch
  pool = sorted(_rows(np.concatenate([b["image"] for b in ds.eval_batches("train")])[:400]))
  for epoch in range(2):
    batches = itertools.islice(ds.train_batches(20 * epoch), 20)
    seen = sorted(_rows(np.concatenate([b["image"] for b in batches])))
    assert seen == pool


def test_process_shards_partition_the_global_batch(data_dir):
  for kwargs in ({"name": "mnist1d"}, {"name": "digits", "augment": True}):
    whole = _ds(data_dir, batch_size=24, eval_batch_size=48, **kwargs)
    parts = [
      _ds(data_dir, batch_size=24, eval_batch_size=48, process_index=p, process_count=3, **kwargs)
      for p in range(3)
    ]
    batches = [list(itertools.islice(p.train_batches(5), 2)) for p in parts]
    for step, full in enumerate(itertools.islice(whole.train_batches(5), 2)):
      for key in ("image", "label"):
        joined = np.concatenate([batches[p][step][key] for p in range(3)])
        np.testing.assert_array_equal(joined, full[key])
    fixed = np.concatenate([p.fixed_train_batch(4)["image"] for p in parts])
    np.testing.assert_array_equal(fixed, whole.fixed_train_batch(4)["image"])
    per_process = [list(p.eval_batches()) for p in parts]
    for step, full in enumerate(whole.eval_batches()):
      for key in ("image", "label", "mask"):
        joined = np.concatenate([per_process[p][step][key] for p in range(3)])
        np.testing.assert_array_equal(joined, full[key])
    assert sum(b["mask"].sum() for p in per_process for b in p) == whole.info.num_eval


def test_label_noise_rate_and_uniformity_by_monte_carlo():
  q, k, n = 0.3, 10, 200_000
  clean = np.arange(n) % k
  noisy = offline.noisy_labels(clean, k, q, seed=3)
  changed = noisy != clean
  # Replaced w.p. q by Uniform{0..K-1}: changes w.p. q (K-1)/K = 0.27, sd ~ 0.001.
  assert abs(changed.mean() - q * (k - 1) / k) < 0.005
  counts = np.bincount(noisy[changed], minlength=k)
  assert counts.min() > 0.9 * counts.mean()  # wrong labels spread over all classes
  np.testing.assert_array_equal(noisy, offline.noisy_labels(clean, k, q, seed=3))
  assert (noisy != offline.noisy_labels(clean, k, q, seed=4)).any()
  np.testing.assert_array_equal(offline.noisy_labels(clean, k, 0.0, seed=3), clean)


def test_label_noise_is_on_training_labels_only_and_fixed_per_example(data_dir):
  ds = _ds(data_dir, num_train=400, label_noise=0.5)
  noisy = np.concatenate([b["label"] for b in ds.eval_batches("train")])[:400]
  clean = np.concatenate([b["label"] for b in ds.eval_batches("train_clean")])[:400]
  assert 0.35 < (noisy != clean).mean() < 0.55  # expectation 0.45, sd 0.025
  by_row = dict(
    zip(_rows(np.concatenate([b["image"] for b in ds.eval_batches("train")])), noisy, strict=False)
  )
  for batch in itertools.islice(ds.train_batches(0), 40):  # two epochs: same wrong labels
    assert [by_row[r] for r in _rows(batch["image"])] == list(batch["label"])
  fixed = ds.fixed_train_batch(0, 32)
  assert [by_row[r] for r in _rows(fixed["image"])] == list(fixed["label"])
  pool = offline.load_mnist1d_pool(400, 1000, 0, data_dir)
  test_labels = np.concatenate([b["label"] for b in ds.eval_batches("test")])[:1000]
  np.testing.assert_array_equal(test_labels, pool["y_test"])


def test_fixed_train_batches_are_deterministic_keyed_and_off_the_stream(data_dir):
  ds = _ds(data_dir)
  a, b = ds.fixed_train_batch(0), _ds(data_dir).fixed_train_batch(0)
  assert batch_fingerprint(a) == batch_fingerprint(b)
  assert batch_fingerprint(ds.fixed_train_batch(1)) != batch_fingerprint(a)
  assert ds.fixed_train_batch(2, 64)["image"].shape == (64, 40, 1)
  assert batch_fingerprint(a) != batch_fingerprint(next(ds.train_batches(0)))


def test_eval_batches_pad_the_last_batch_and_mask_it(data_dir):
  ds = _ds(data_dir, name="digits", eval_batch_size=64, label_noise=0.0)
  batches = list(ds.eval_batches("test"))
  assert ds.info.num_eval == 297 and len(batches) == 5  # ceil(297 / 64)
  assert all(b["image"].shape == (64, 8, 8, 1) for b in batches)
  masks = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(masks, (np.arange(320) < 297).astype(np.float32))
  split = offline.load_digits_split(0)
  images = np.concatenate([b["image"] for b in batches])[:297]
  x = split["x_train"] / 16.0
  np.testing.assert_allclose(images, (split["x_test"] / 16.0 - x.mean()) / x.std(), atol=1e-5)
  np.testing.assert_array_equal(
    np.concatenate([b["label"] for b in batches])[:297], split["y_test"]
  )
  assert [batch_fingerprint(b) for b in ds.eval_batches("test")] == [
    batch_fingerprint(b) for b in batches
  ]


def test_digits_split_is_fixed_by_the_seed_and_partitions_the_1797_images():
  a, b, c = (offline.load_digits_split(s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a["x_test"], b["x_test"])
  assert not np.array_equal(a["x_test"], c["x_test"])
  assert a["x_train"].shape == (1500, 8, 8, 1) and a["x_test"].shape == (297, 8, 8, 1)
  from sklearn.datasets import load_digits

  everything = sorted(_rows(load_digits().images.astype(np.float32)[..., None]))
  assert sorted(_rows(a["x_train"]) + _rows(a["x_test"])) == everything


def test_pad_crop_flip_matches_a_per_image_reference():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (16, 6, 5, 3)).astype(np.uint8)
  aug = offline.PadCropFlip(pad=2, flip=True)
  params = aug.sample(rng, 16)
  out = aug.apply(images, params)
  assert params["flip"].any() and not params["flip"].all()
  for i in range(16):
    ref = np.pad(images[i], ((2, 2), (2, 2), (0, 0)))
    if params["flip"][i]:
      ref = ref[:, ::-1]
      # A flip of the padded image moves the crop window: offset dx counts from the right.
      dx = 4 - params["dx"][i]
    else:
      dx = params["dx"][i]
    ref = ref[params["dy"][i] : params["dy"][i] + 6, dx : dx + 5]
    np.testing.assert_array_equal(out[i], ref)


def test_batch_fingerprint_is_stable_and_sensitive():
  batch = {"image": np.zeros((2, 3), np.float32), "label": np.array([1, 2], np.int32)}
  assert batch_fingerprint(batch) == batch_fingerprint({k: v.copy() for k, v in batch.items()})
  assert len(batch_fingerprint(batch)) == 16
  changed = dict(batch, label=np.array([1, 3], np.int32))
  assert batch_fingerprint(changed) != batch_fingerprint(batch)
  reshaped = dict(batch, image=batch["image"].reshape(3, 2))
  assert batch_fingerprint(reshaped) != batch_fingerprint(batch)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides,process_count,devices,words",
  [
    ({"batch_size": 25}, 2, 1, ["batch_size=25", "process count 2"]),
    ({"batch_size": 24}, 2, 8, ["batch_size=24", "12 examples per process", "8 local devices"]),
    ({"eval_batch_size": 30}, 4, 1, ["eval_batch_size=30", "process count 4"]),
    ({"batch_size": 800}, 1, 1, ["batch_size=800", "400 training examples"]),
    ({"label_noise": 1.5}, 1, 1, ["dataset.label_noise", "1.5", "[0, 1]"]),
    ({"augment": True}, 1, 1, ["dataset.augment", "mnist1d"]),
    ({"name": "mnist2d"}, 1, 1, ["dataset.name", "mnist2d", "imagenet2012"]),
    ({"seed": -1}, 1, 1, ["seed", "-1"]),
  ],
)
def test_bad_configs_raise_errors_naming_field_value_and_constraint(
  data_dir, overrides, process_count, devices, words
):
  kwargs = {"data_dir": data_dir, "batch_size": 24, "eval_batch_size": 32, **overrides}
  with pytest.raises(ValueError) as err:
    get_dataset(_config(**kwargs), process_count=process_count, local_device_count=devices)
  for word in words:
    assert word in str(err.value)


# --- TFDS (under mock data: random examples from the feature spec, offline) -----------


@pytest.fixture(scope="module")
def mock_tfds():
  from trajax.data.tfds_source import mock_prepared_tfds

  with mock_prepared_tfds(num_examples=40):
    yield


def _tfds(name, tmp, **kwargs):
  process = {k: kwargs.pop(k) for k in ("process_index", "process_count") if k in kwargs}
  kwargs = {"batch_size": 8, "eval_batch_size": 16, "label_noise": 0.0, **kwargs}
  return get_dataset(_config(name, data_dir=tmp, **kwargs), local_device_count=1, **process)


def test_tfds_dataset_that_is_not_prepared_is_an_error_naming_it_and_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    _tfds("cifar10", tmp_path)
  assert "'cifar10'" in str(err.value) and str(tmp_path) in str(err.value)
  assert not any(tmp_path.iterdir())  # nothing downloaded or written
  with pytest.raises(FileNotFoundError, match="imagenet2012.*data_dir"):
    get_dataset(_config("imagenet2012", data_dir="", batch_size=8), local_device_count=1)


def test_cifar_is_served_from_memory_with_exact_resume_sharding_and_normalisation(
  mock_tfds, tmp_path
):
  from trajax.data import tfds_source

  ds = _tfds("cifar10", tmp_path, augment=True, label_noise=0.3)
  assert ds.info.input_shape == (32, 32, 3) and ds.info.num_classes == 10
  first = list(itertools.islice(ds.train_batches(0), 12))  # 5 steps/epoch: crosses 2 epochs
  resumed = list(
    itertools.islice(_tfds("cifar10", tmp_path, augment=True, label_noise=0.3).train_batches(7), 5)
  )
  assert [batch_fingerprint(b) for b in first[7:]] == [batch_fingerprint(b) for b in resumed]
  assert first[0]["image"].shape == (8, 32, 32, 3) and first[0]["image"].dtype == np.float32
  halves = [
    _tfds("cifar10", tmp_path, augment=True, label_noise=0.3, process_index=p, process_count=2)
    for p in range(2)
  ]
  joined = np.concatenate([next(h.train_batches(7))["image"] for h in halves])
  np.testing.assert_array_equal(joined, resumed[0]["image"])
  # Evaluation images are the raw uint8 split, standardised per channel, in order.
  builder = tfds_source.prepared_builder("cifar10", str(tmp_path))
  raw, labels = tfds_source.load_split_arrays(builder, "test")
  spec = tfds_source.SPECS["cifar10"]
  evals = list(ds.eval_batches("test"))
  images = np.concatenate([b["image"] for b in evals])[:40]
  np.testing.assert_allclose(images, (raw - np.array(spec.mean)) / np.array(spec.std), atol=1e-4)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in evals])[:40], labels)


def test_imagenet_stream_resumes_exactly_across_epochs_and_depends_on_the_seed(mock_tfds, tmp_path):
  ds = _tfds("imagenet2012", tmp_path, augment=True, label_noise=0.2)
  assert ds.steps_per_epoch == 5  # 40 mock examples, batch 8
  uninterrupted = [batch_fingerprint(b) for b in itertools.islice(ds.train_batches(0), 8)]
  resumed = [batch_fingerprint(b) for b in itertools.islice(ds.train_batches(3), 5)]
  assert uninterrupted[3:] == resumed
  assert len(set(uninterrupted)) == 8
  other = _tfds("imagenet2012", tmp_path, augment=True, label_noise=0.2, seed=1)
  assert batch_fingerprint(next(other.train_batches(3))) != resumed[0]
  batch = next(ds.train_batches(0))
  assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  fixed = ds.fixed_train_batch(2)
  assert batch_fingerprint(fixed) == batch_fingerprint(ds.fixed_train_batch(2))
  assert batch_fingerprint(fixed) != batch_fingerprint(ds.fixed_train_batch(3))


def test_imagenet_eval_is_padded_identically_on_every_process(mock_tfds, tmp_path):
  parts = [
    _tfds("imagenet2012", tmp_path, eval_batch_size=12, process_index=p, process_count=2)
    for p in range(2)
  ]
  batches = [list(p.eval_batches("test")) for p in parts]
  # 40 examples, 20 per process, 6 per process batch -> 4 batches, the last with 2 real.
  assert [len(b) for b in batches] == [4, 4]
  for per_process in batches:
    masks = np.concatenate([b["mask"] for b in per_process])
    np.testing.assert_array_equal(masks, (np.arange(24) < 20).astype(np.float32))
    assert per_process[-1]["image"].shape == (6, 224, 224, 3)
    assert not per_process[-1]["image"][2:].any()  # padding rows are zeros


def test_imagenet_label_noise_is_a_keyed_hash_of_the_example_id(mock_tfds, tmp_path):
  import tensorflow as tf

  ds = _tfds("imagenet2012", tmp_path, label_noise=0.4)
  ids = tf.constant(
    [f"imagenet2012-train.tfrecord-{i // 1000:05d}-of-01024__{i % 1000}" for i in range(20_000)]
  )
  example = {"tfds_id": ids, "label": tf.zeros(20_000, tf.int64)}
  noisy = ds._labels(tf, example, noisy=True).numpy()
  # Monte Carlo: changed w.p. q (K-1)/K = 0.3996, sd 0.0035; wrong classes ~ uniform.
  assert abs((noisy != 0).mean() - 0.4 * 999 / 1000) < 0.015
  assert len(np.unique(noisy[noisy != 0])) > 900
  np.testing.assert_array_equal(noisy, ds._labels(tf, example, noisy=True).numpy())
  reseeded = _tfds("imagenet2012", tmp_path, label_noise=0.4, seed=5)
  assert (reseeded._labels(tf, example, noisy=True).numpy() != noisy).mean() > 0.3
  assert not ds._labels(tf, example, noisy=False).numpy().any()


def test_imagenet_eval_centre_crop_geometry_on_a_ramp_image():
  import tensorflow as tf

  from trajax.data import tfds_source

  # A grey ramp (equal channels, so JPEG's chroma subsampling cannot blur it):
  # bilinear resizing keeps a linear ramp linear, so each output pixel tells
  # which input coordinate it sampled.
  h, w = 300, 400
  crop = int(224 / 256 * min(h, w))  # 262: centre crop of 224/256 of the shorter side
  # Half-pixel centres: output i samples input (i + 0.5) * crop / 224 - 0.5.
  src = (np.arange(224) + 0.5) * crop / 224 - 0.5
  inner = slice(4, 220)  # away from the clamped borders
  for axis, (size, slope) in enumerate([(h, 0.8), (w, 0.6)]):
    ramp = np.arange(size) * slope
    grey = ramp[:, None] * np.ones(w) if axis == 0 else np.ones(h)[:, None] * ramp
    image = np.repeat(np.round(grey)[..., None], 3, -1).astype(np.uint8)
    out = tfds_source.decode_eval(tf, tf.io.encode_jpeg(tf.constant(image), quality=100)).numpy()
    assert out.shape == (224, 224, 3)
    start = (size - crop + 1) // 2
    profile = out[inner, 112, 0] if axis == 0 else out[112, inner, 0]
    np.testing.assert_allclose(profile, ((start + src) * slope)[inner], atol=1.5)


# --- device-resident pools (trajax.data.device) ---------------------------------------

_DEVICE_SCRIPT = r"""
import itertools, json, sys
import jax, ml_collections, numpy as np
from trajax import state as state_lib
from trajax.data import batch_fingerprint, device, get_dataset

def config(name, augment, batch_size, data_dir):
  return ml_collections.ConfigDict({
    "seed": 3, "batch_size": batch_size, "eval_batch_size": 48, "data_dir": data_dir,
    "mesh": {"data": -1},
    "dataset": {"name": name, "label_noise": 0.3, "num_train": 400, "augment": augment}})

out = {"devices": jax.device_count(), "checked": 0}
mesh = state_lib.make_mesh(config("mnist1d", False, 24, sys.argv[1]))
for name, augment in (("mnist1d", False), ("digits", True)):
  c = config(name, augment, 24, sys.argv[1])
  ds = get_dataset(c)
  pool = device.DevicePool(ds, mesh, chunk=5)
  start = ds.steps_per_epoch - 3  # across an epoch and two chunk boundaries
  stream = pool.stream(start)
  for step in range(start, start + 12):
    _, inputs = next(stream)
    batch = pool.gather(inputs)
    assert len(batch["image"].sharding.device_set) == jax.device_count()
    host = ds.train_batch(step)
    got = jax.device_get(batch)
    for key in ("image", "label"):
      assert got[key].dtype == host[key].dtype and got[key].shape == host[key].shape, key
      assert got[key].tobytes() == host[key].tobytes(), (name, step, key)
    assert batch_fingerprint(got) == batch_fingerprint(host)
    out["checked"] += 1
  # Each of 3 processes gathers exactly its own rows of the global batch.
  whole = ds.train_batch(start)
  rows = []
  for p in range(3):
    part = get_dataset(c, process_index=p, process_count=3, local_device_count=1)
    keys = state_lib.global_batch(part.train_keys(start), pool.key_sharding)
    got = jax.device_get(pool.batch(keys))
    host = part.train_batch(start)
    assert got["image"].tobytes() == host["image"].tobytes()
    rows.append(got["image"])
  assert np.concatenate(rows).tobytes() == whole["image"].tobytes()
print("RESULT " + json.dumps(out))
"""


def _run_device_script(data_dir, devices):
  import subprocess
  import sys

  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", _DEVICE_SCRIPT, str(data_dir)],
    cwd=repo,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  import json

  return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("devices", [1, 8])
def test_device_gathered_batches_equal_host_batches_bit_for_bit(data_dir, devices):
  # mnist1d and digits with label noise and pad-crop augmentation, across an
  # epoch boundary and the key chunks, on 1 and 8 devices, and per process.
  out = _run_device_script(data_dir, devices)
  assert out == {"devices": devices, "checked": 24}


def test_train_keys_are_the_draws_of_train_batch(data_dir):
  ds = _ds(data_dir, name="digits", augment=True, batch_size=24)
  keys = ds.train_keys(7)
  assert set(keys) == {"index", "dy", "dx", "flip"}
  assert keys["index"].dtype == np.int32 and keys["index"].shape == (24,)
  # Rebuild the batch on the host from the keys alone: the pool rows, cropped.
  pad, (h, w) = 1, ds.info.input_shape[:2]
  pool = ds.normalized_train_images()
  fill = ds.pad_fill()
  assert fill.shape == (h + 2 * pad, w + 2 * pad, 1)
  rebuilt = []
  for i, dy, dx in zip(keys["index"], keys["dy"], keys["dx"], strict=True):
    padded = fill.copy()
    padded[pad : pad + h, pad : pad + w] = pool[i]
    rebuilt.append(padded[dy : dy + h, dx : dx + w])
  batch = ds.train_batch(7)
  assert np.stack(rebuilt).tobytes() == batch["image"].tobytes()
  np.testing.assert_array_equal(ds.train_labels[keys["index"]], batch["label"])
  assert not keys["flip"].any()  # digits: PadCropFlip(flip=False)


def test_streamed_or_oversized_sources_have_no_device_pool(data_dir):
  import jax

  from trajax.data import device

  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  ds = _ds(data_dir)
  assert device.device_pool(ds, mesh, max_bytes=1) is None
  assert device.device_pool(object(), mesh) is None
  assert isinstance(device.device_pool(ds, mesh), device.DevicePool)
  with pytest.raises(ValueError, match="chunk must be a positive"):
    device.DevicePool(ds, mesh, chunk=0)
