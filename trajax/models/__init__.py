"""Model zoo: ``create_model(config.model, num_classes=...)`` and FLOP counts.

Every model maps ``x`` (``[B, *input_shape]``) to float32 logits ``[B, K]``;
``model.init(rng, x, train=False)`` returns ``{'params', 'batch_stats'}`` and
``model.apply(variables, x, train=True, mutable=['batch_stats'])`` returns
``(logits, {'batch_stats': ...})``. Parameters are float32; ``model.dtype``
selects the compute dtype (bf16 on accelerators).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trajax import config as config_lib
from trajax.models.resnet import ResNet, resnet
from trajax.models.small import CNN1D, ResNet1D

__all__ = [
  "CNN1D",
  "DTYPES",
  "MODELS",
  "MODEL_NAMES",
  "ModelSpec",
  "ResNet",
  "ResNet1D",
  "check_config",
  "create_model",
  "model_flops_per_example",
  "resnet",
]


class ModelSpec(NamedTuple):
  """A registered model: its constructor and the inputs it takes.

  ``build(num_classes=, width=, dtype=)`` returns the unbound module;
  ``spatial_dims`` is 1 for sequences ``[B, L, C]`` and 2 for images
  ``[B, H, W, C]`` (``trajax.data.SOURCES`` says the same of each dataset).
  """

  build: Callable[..., nn.Module]
  spatial_dims: int


# The registry: ``config.model.name`` is one of its keys, and every key is a
# valid ``model.name`` (trajax.config_validation asks nothing else).
MODELS: dict[str, ModelSpec] = {
  "resnet18": ModelSpec(functools.partial(resnet, 18, stem="imagenet"), 2),
  "resnet34": ModelSpec(functools.partial(resnet, 34, stem="imagenet"), 2),
  "resnet50": ModelSpec(functools.partial(resnet, 50, stem="imagenet"), 2),
  "cifar_resnet18": ModelSpec(functools.partial(resnet, 18, stem="cifar"), 2),
  "cifar_resnet34": ModelSpec(functools.partial(resnet, 34, stem="cifar"), 2),
  "cifar_resnet50": ModelSpec(functools.partial(resnet, 50, stem="cifar"), 2),
  "cnn1d": ModelSpec(CNN1D, 1),
  "resnet1d": ModelSpec(ResNet1D, 1),
}
MODEL_NAMES = tuple(MODELS)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPES = tuple(_DTYPES)


def check_config(section, *, prefix: str = "model.") -> list:
  """Problems ``(field, value, allowed)`` of a ``model`` config section (``[]``: fine)."""
  return config_lib.check_fields(
    section,
    {
      "name": config_lib.one_of(MODELS),
      "width": config_lib.POS_INT,
      "dtype": config_lib.one_of(DTYPES),
    },
    prefix,
  )


def _field(model_config, name, default=None):
  try:
    value = getattr(model_config, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def create_model(model_config, *, num_classes: int) -> nn.Module:
  """Builds the Flax module named by ``model_config.name``.

  Args:
    model_config: an object with ``name`` (one of ``MODEL_NAMES``), ``width``
      (base channel count, positive int) and ``dtype`` (``'float32'`` or
      ``'bfloat16'``, the compute dtype).
    num_classes: number of logits.

  Returns:
    An unbound ``flax.linen.Module``.
  """
  name = _field(model_config, "name")
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {list(MODEL_NAMES)}, got {name!r}")
  width = _field(model_config, "width", 64 if "resnet" in name and name != "resnet1d" else 32)
  if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
    raise ValueError(f"model.width must be a positive int, got {width!r}")
  dtype = _field(model_config, "dtype", "float32")
  if dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {list(_DTYPES)}, got {dtype!r}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  return MODELS[name].build(num_classes=num_classes, width=width, dtype=_DTYPES[dtype])


def model_flops_per_example(model_config, input_shape, num_classes: int) -> float:
  """Forward FLOPs of one example, counted from the convolution and dense shapes.

  FLOPs = 2 * MACs with, per layer,
    conv:  MACs = prod(output spatial) * C_out * prod(kernel) * C_in / groups,
    dense: MACs = d_in * d_out,
  summed over the layers (BatchNorm, ReLU, pooling and the residual adds are
  left out; they are < 1 % for the ResNets). Note the factor 2: the "3.6 GFLOPs"
  usually quoted for ResNet-34 at 224x224 (4.1 for ResNet-50) are multiply-adds,
  so this returns about 7.3e9 (8.2e9). Use this (FMA = 2 FLOPs, as hardware peak
  figures count them) for model-FLOPs utilisation; training is ~3x forward.

  Args:
    model_config: as for ``create_model``.
    input_shape: one example's shape, e.g. ``(224, 224, 3)``.
    num_classes: number of logits.

  Returns:
    Forward FLOPs per example (a Python float).
  """
  model = create_model(model_config, num_classes=num_classes)
  macs = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      (x,) = args[:1]
      if isinstance(module, nn.Dense):
        macs.append(math.prod(out.shape[1:]) * x.shape[-1])
      else:
        kernel = math.prod(module.kernel_size)
        groups = module.feature_group_count
        macs.append(math.prod(out.shape[1:]) * kernel * x.shape[-1] // groups)
    return out

  x = jax.ShapeDtypeStruct((1, *tuple(input_shape)), jnp.float32)

  def forward(x):
    with nn.intercept_methods(count):
      variables = model.init(jax.random.key(0), x, train=False)
      macs.clear()  # init also runs the forward pass; count only apply's
      return model.apply(variables, x, train=False)

  jax.eval_shape(forward, x)
  return 2.0 * float(sum(macs))
