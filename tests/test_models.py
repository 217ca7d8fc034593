"""Tests for trajax.models: shapes, parameter counts, FLOPs, dtypes, BatchNorm modes."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trajax.models import create_model, model_flops_per_example


def _cfg(name, width=None, dtype="float32"):
  if width is None:
    width = 64 if name.startswith(("resnet", "cifar")) and name != "resnet1d" else 32
  return types.SimpleNamespace(name=name, width=width, dtype=dtype)


def _abstract_init(cfg, shape, num_classes):
  model = create_model(cfg, num_classes=num_classes)
  x = jnp.zeros((2, *shape))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _variables(model, x, seed=0):
  """Variables with the shapes ``model.init`` gives, filled from NumPy.

  ``model.init``'s threefry initialisers take tens of seconds to compile on a
  shared 2-core CPU; the forward-pass tests only need well-scaled values.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), jnp.float32)
    if "scale" in name or "var" in name:
      return jnp.ones(leaf.shape, jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# Reference: torchvision.models.resnet{18,34,50}(num_classes=1000) parameter counts
# (conv + BN scale/bias + fc), published in the torchvision model table.
@pytest.mark.parametrize(
  "name,expected", [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)]
)
def test_imagenet_resnet_parameter_counts_match_torchvision(name, expected):
  variables = _abstract_init(_cfg(name), (224, 224, 3), 1000)
  assert set(variables) == {"params", "batch_stats"}
  assert _count(variables["params"]) == expected


def test_cifar_resnet_counts_follow_from_the_stem_change():
  # The CIFAR stem swaps the 7x7x3x64 conv for a 3x3x3x64 one and the head has 10
  # outputs instead of 1000: the difference is closed-form.
  imagenet = _count(_abstract_init(_cfg("resnet34"), (224, 224, 3), 1000)["params"])
  cifar = _count(_abstract_init(_cfg("cifar_resnet34"), (32, 32, 3), 10)["params"])
  assert imagenet - cifar == (7 * 7 - 3 * 3) * 3 * 64 + (1000 - 10) * (512 + 1)


# Reference: torchvision's reported GFLOPS (multiply-adds) for 224x224 inputs:
# resnet18 1.814, resnet34 3.664, resnet50 4.089. Ours counts FLOPs = 2 * MACs.
@pytest.mark.parametrize(
  "name,gmacs", [("resnet18", 1.814), ("resnet34", 3.664), ("resnet50", 4.089)]
)
def test_flops_match_published_multiply_adds(name, gmacs):
  flops = model_flops_per_example(_cfg(name), (224, 224, 3), 1000)
  assert flops == pytest.approx(2 * gmacs * 1e9, rel=5e-3)


def test_flops_of_cnn1d_by_hand():
  # 40 -> 19 -> 10 -> 5 samples; MACs = out_len * C_out * k * C_in, dense 5*w*10.
  w = 32
  macs = 19 * w * 5 * 1 + 10 * w * 3 * w + 5 * w * 3 * w + 5 * w * 10
  assert model_flops_per_example(_cfg("cnn1d", w), (40, 1), 10) == 2 * macs


@pytest.mark.parametrize(
  "name,shape", [("cnn1d", (40, 1)), ("resnet1d", (40, 1)), ("cifar_resnet18", (8, 8, 3))]
)
def test_forward_shapes_dtypes_and_batch_stats_update(name, shape):
  model = create_model(_cfg(name, width=4), num_classes=7)
  x = jax.random.normal(jax.random.key(1), (4, *shape))

  variables = _variables(model, x)
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
    variables, x
  )
  assert logits.shape == (4, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert set(updates) == {"batch_stats"}
  before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
  assert len(before) == len(after) > 0
  assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval():
  model = create_model(_cfg("cnn1d", 8), num_classes=10)
  x = jax.random.normal(jax.random.key(0), (16, 40, 1))
  variables = _variables(model, x)
  # Training mode normalises with the batch's own statistics. The first conv is
  # linear and bias-free, so scaling the input by a > 0 scales its output, and
  # BN(a z) = BN(z) up to epsilon: the logits do not change.
  train_a, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  train_b, _ = model.apply(variables, 3.0 * x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(train_a, train_b, rtol=2e-3, atol=2e-3)
  # Eval mode uses the running statistics (init: mean 0, var 1), so scale matters.
  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, 3.0 * x, train=False)
  assert np.abs(np.asarray(eval_a) - np.asarray(eval_b)).max() > 1e-2
  # Running statistics move towards the batch statistics with momentum 0.9.
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  conv_out = model.apply(
    variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
  )[1]["intermediates"]["Conv_0"]["__call__"][0]
  mean = np.asarray(conv_out).mean(axis=(0, 1))
  np.testing.assert_allclose(
    upd["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6
  )


def test_bfloat16_compute_keeps_float32_params_and_logits():
  x = jax.random.normal(jax.random.key(0), (2, 40, 1))
  f32 = create_model(_cfg("cnn1d", 8), num_classes=10)
  bf16 = create_model(_cfg("cnn1d", 8, "bfloat16"), num_classes=10)
  variables = _variables(f32, x)
  captured = bf16.apply(
    variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
  )[1]["intermediates"]
  assert captured["Conv_0"]["__call__"][0].dtype == jnp.bfloat16
  out32 = f32.apply(variables, x, train=False)
  out16 = bf16.apply(variables, x, train=False)
  assert out16.dtype == jnp.float32
  # Same parameters, bf16 rounding only (8 significant bits): close, not equal.
  assert not np.array_equal(out32, out16)
  np.testing.assert_allclose(out16, out32, rtol=0.1, atol=0.1 * float(np.abs(out32).max()))


@pytest.mark.parametrize(
  "field,value,words",
  [
    ("name", "vgg16", ["model.name", "vgg16", "cifar_resnet34"]),
    ("width", 0, ["model.width", "0"]),
    ("dtype", "float16", ["model.dtype", "float16", "bfloat16"]),
  ],
)
def test_bad_model_config_errors_name_field_value_and_choices(field, value, words):
  cfg = _cfg("cnn1d")
  setattr(cfg, field, value)
  with pytest.raises(ValueError) as err:
    create_model(cfg, num_classes=10)
  for word in words:
    assert word in str(err.value)
