"""Flax ResNets (He et al. 2016) with an ImageNet stem or a CIFAR stem.

The paper trains ResNet-34 on ImageNet (Sec. 3) and on CIFAR-10/100 (Sec. 5).
Blocks follow the torchvision layout (v1.5: in a bottleneck the stride sits on
the 3x3 convolution), so the parameter counts match the published ones:
ResNet-18 11 689 512, ResNet-34 21 797 672, ResNet-50 25 557 032 weights at
width 64 and 1 000 classes (BatchNorm scale/bias included, running statistics
excluded).

Compute dtype and parameter dtype are separate: ``dtype=jnp.bfloat16`` runs the
convolutions in bf16 on accelerators while parameters (and BatchNorm's
reductions, which flax keeps in float32) stay float32; the logits are always
returned as float32 so the loss is computed at full precision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): He
# initialisation counted over the output fan, so that the backward signal keeps
# its scale through deep stacks of convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj_conv")(
        residual
      )
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a projection shortcut."""

  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters * self.expansion, (1, 1))(y))
    if residual.shape != y.shape:
      residual = self.conv(
        self.filters * self.expansion, (1, 1), (self.strides, self.strides), name="proj_conv"
      )(residual)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet on NHWC images.

  Attributes:
    stage_sizes: blocks per stage; stage ``s`` has ``width * 2**s`` filters
      and (except the first) halves the spatial size.
    block_cls: ``BasicBlock`` or ``BottleneckBlock``.
    num_classes: size of the logits.
    width: base channel count (64 in the standard nets).
    stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool, for 224x224 inputs) or
      ``"cifar"`` (one 3x3/1 conv, no pooling, for 32x32 inputs).
    dtype: compute dtype; parameters are float32 regardless.
  """

  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(
      nn.Conv,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=conv_kernel_init,
      padding="SAME",
    )
    # momentum 0.9 / eps 1e-5: the torchvision and flax-example defaults.
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=jnp.float32,
    )
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = conv(self.width, (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(self.width * 2**stage, strides, conv=conv, norm=norm)(x)
    # Global average pool and classifier in float32: the logits feed a softmax
    # whose small differences matter for the loss curves the paper measures.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="head")(x)


def resnet(
  depth: int, *, num_classes: int, width: int = 64, stem: str = "imagenet", dtype: Any = jnp.float32
) -> ResNet:
  """ResNet-``depth`` (18, 34 or 50)."""
  if depth not in STAGE_SIZES:
    raise ValueError(f"depth must be one of {sorted(STAGE_SIZES)}, got {depth!r}")
  block_cls = BottleneckBlock if depth >= 50 else BasicBlock
  return ResNet(
    stage_sizes=STAGE_SIZES[depth],
    block_cls=block_cls,
    num_classes=num_classes,
    width=width,
    stem=stem,
    dtype=dtype,
  )
