"""A small run for the tests: a persistent compilation cache, :class:`FakeDataset`, :func:`small_config`.

``FakeDataset`` is an in-memory stand-in for ``trajax.data`` with the same
interface: batch ``i`` is a pure function of (seed, i). Importing this module
sets the JAX compilation cache (``CACHE_DIR``) for the process.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import types

import jax
import numpy as np

from configs import mnist1d

# Runs in these tests compile the same small programs many times: a persistent
# compilation cache makes every run after the first cost seconds, not tens.
CACHE_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
  tempfile.gettempdir(), "trajax-test-jax-cache"
)
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


class FakeDataset:
  """Gaussian inputs with a learnable linear rule, the ``trajax.data`` interface."""

  def __init__(
    self, *, n=512, shape=(40, 1), k=10, batch_size=32, eval_batch_size=64, seed=0, nan_steps=()
  ):
    r = np.random.default_rng(seed)
    w = r.normal(size=(math.prod(shape), k))
    self.x = r.normal(size=(n, *shape)).astype(np.float32)
    self.y = np.argmax(self.x.reshape(n, -1) @ w, -1).astype(np.int32)
    self.xt = r.normal(size=(100, *shape)).astype(np.float32)
    self.yt = np.argmax(self.xt.reshape(100, -1) @ w, -1).astype(np.int32)
    self.bs, self.ebs, self.seed, self.nan_steps = batch_size, eval_batch_size, seed, set(nan_steps)
    self.info = types.SimpleNamespace(
      name="fake", num_classes=k, input_shape=shape, num_train=n, num_eval=100
    )

  def batch(self, i):
    idx = np.random.default_rng([self.seed, i]).choice(len(self.x), self.bs, replace=False)
    x = self.x[idx].copy()
    if i in self.nan_steps:
      x[0, 0] = np.nan
    return {"image": x, "label": self.y[idx]}

  def train_batches(self, start_step):
    for i in itertools.count(start_step):
      yield self.batch(i)

  def fixed_train_batch(self, index, batch_size=None):
    return self.batch(10**6 + index)

  def eval_batches(self, split="test"):
    for s in range(0, len(self.xt), self.ebs):
      x, y = self.xt[s : s + self.ebs], self.yt[s : s + self.ebs]
      m = np.ones(len(x), np.float32)
      pad = self.ebs - len(x)
      if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        m = np.concatenate([m, np.zeros(pad, np.float32)])
      yield {"image": x, "label": y, "mask": m}


def small_config(**overrides):
  """mnist1d's config shrunk to a few dozen steps."""
  c = mnist1d.get_config("runlocal")
  c.total_steps = 40
  c.batch_size = 32
  c.eval_batch_size = 64
  c.log_every_steps = 10
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 10
  c.model.width = 8
  c.averaging.gap = 10
  c.averaging.bn_recompute_batches = 3
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c
