"""Small 1-D networks for mnist1d (40-sample signals, NWC layout ``[B, 40, 1]``).

``CNN1D`` is the three-convolution net of the mnist1d paper (Greydanus 2020:
kernel 5 then 3, 3, stride 2, ``width`` channels, a linear read-out) with a
BatchNorm after each convolution, so that every trajax model carries
``batch_stats`` and the BatchNorm questions the paper's ResNets raise for
averaged parameters (recomputed vs averaged statistics) arise here too.

``ResNet1D`` is a three-stage 1-D ResNet (two basic blocks per stage, widths
``w, 2w, 4w``), the 1-D analogue of the CIFAR ResNets.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from trajax.models.resnet import conv_kernel_init


def _layers(dtype, train):
  conv = functools.partial(
    nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=conv_kernel_init
  )
  norm = functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    param_dtype=jnp.float32,
  )
  return conv, norm


class CNN1D(nn.Module):
  """conv(5,/2) -> conv(3,/2) -> conv(3,/2), each BN + ReLU, flatten, dense."""

  num_classes: int
  width: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = _layers(self.dtype, train)
    x = jnp.asarray(x, self.dtype)
    # padding 1 as in the reference net: 40 -> 19 -> 10 -> 5 samples.
    x = nn.relu(norm()(conv(self.width, (5,), (2,), padding=[(1, 1)])(x)))
    x = nn.relu(norm()(conv(self.width, (3,), (2,), padding=[(1, 1)])(x)))
    x = nn.relu(norm()(conv(self.width, (3,), (2,), padding=[(1, 1)])(x)))
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="head")(x)


class _Block1D(nn.Module):
  filters: int
  strides: int
  dtype: Any
  train: bool

  @nn.compact
  def __call__(self, x):
    conv, norm = _layers(self.dtype, self.train)
    y = nn.relu(norm()(conv(self.filters, (3,), (self.strides,), padding="SAME")(x)))
    y = norm()(conv(self.filters, (3,), padding="SAME")(y))
    if x.shape != y.shape:
      x = norm(name="proj_bn")(conv(self.filters, (1,), (self.strides,), name="proj_conv")(x))
    return nn.relu(x + y)


class ResNet1D(nn.Module):
  """Stem conv(3) + stages of two basic blocks at widths w, 2w, 4w; GAP; dense."""

  num_classes: int
  width: int = 32
  stage_sizes: tuple = (2, 2, 2)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = _layers(self.dtype, train)
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(norm(name="stem_bn")(conv(self.width, (3,), padding="SAME", name="stem_conv")(x)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = _Block1D(self.width * 2**stage, strides, self.dtype, train)(x)
    x = jnp.mean(x.astype(jnp.float32), axis=1)
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="head")(x)
