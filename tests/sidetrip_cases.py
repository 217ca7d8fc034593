"""What the side-trip tests share: the tiny mnist1d parent, a loss linear per batch, crashes.

``tiny_config`` is configs/mnist1d.py:runlocal shrunk to 40 steps (``TINY``:
command-line overrides, so a CLI test rebuilds exactly the same config);
:func:`train_parent` trains it (each test file's module-scoped ``parent``
fixture calls it). ``LinearLoss`` / ``LinearData``: a per-batch loss linear
in θ (the setting of the paper's Lemma 2). Importing this module sets the
JAX compilation cache (``tests/small_training.py``).
"""

from __future__ import annotations

import json
import os
import types

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import tests.small_training  # noqa: F401 -- sets the compilation cache
from configs import mnist1d
from tests.checkpoint_checks import assert_identical  # noqa: F401 -- re-exported
from tests.workdir_checks import snapshot
from trajax import checkpoint as ckpt_lib
from trajax import loop, sidetrip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The parent's config as command-line overrides of configs/mnist1d.py:runlocal,
# so the CLI test can rebuild exactly the same config.
TINY = {
  "total_steps": 40,
  "batch_size": 32,
  "log_every_steps": 10,
  "eval_every_steps": 20,
  "checkpoint_every_steps": 10,
  "model.width": 8,
  "averaging.gap": 10,
  "averaging.bn_recompute_batches": 3,
}


def tiny_config(**overrides):
  c = mnist1d.get_config("runlocal")
  for key, value in {**TINY, "checkpoint.max_to_keep": None, **overrides}.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def train_parent(tmp_path_factory):
  """A 40-step mnist1d run with two-point averaging, checkpoints at 10, 20, 30, 40."""
  config = tiny_config()
  workdir = tmp_path_factory.mktemp("parent") / "run"
  loop.train_and_evaluate(config, str(workdir))
  assert ckpt_lib.committed_steps(str(workdir / "checkpoints")) == [10, 20, 30, 40]
  return types.SimpleNamespace(config=config, workdir=str(workdir), snapshot=snapshot(workdir))


class Interrupt(Exception):
  pass


def crash_after(config, parent_workdir, step, workdir, *, at):
  """``run_sidetrip`` stopped by an exception right after absolute step ``at`` (a crash)."""

  def crash(t):
    if t == at:
      raise Interrupt

  with pytest.raises(Interrupt):
    sidetrip.run_sidetrip(config, parent_workdir, step, workdir, callbacks=[crash])


def edit_metadata(workdir, step, edit):
  """Rewrites checkpoint ``step``'s stored metadata with ``edit(meta)`` (an older writer's)."""
  path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta.pop(ckpt_lib.META_DIGEST_KEY, None)  # an older writer stored no metadata digest
  edit(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


class LinearLoss(nn.Module):
  """Logits (θ·x, 10⁴) with label 0: the cross-entropy is 10⁴ − θ·x exactly.

  softmax_0 = exp(θ·x − 10⁴) underflows to 0 in float32, so ∇_θ = −x exactly:
  the per-batch loss is linear in θ, Lemma 2's setting.
  """

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    w = self.param("w", nn.initializers.normal(0.1), (x.shape[1],))
    z = x @ w
    return jnp.stack([z, jnp.full_like(z, 1e4)], -1)


class LinearData:
  """Gaussian inputs, all labels 0; batch i a pure function of (seed, i)."""

  def __init__(self, batch_size=16, dim=6):
    self.bs, self.dim = batch_size, dim
    self.info = types.SimpleNamespace(
      name="linear", num_classes=2, input_shape=(dim, 1), num_train=10**6, num_eval=32
    )

  def _batch(self, key, n):
    x = np.random.default_rng(key).normal(1.0, 1.0, size=(n, self.dim, 1)).astype(np.float32)
    return {"image": x, "label": np.zeros(n, np.int32)}

  def train_batches(self, start_step):
    i = start_step
    while True:
      batch = self._batch([0, i], self.bs)
      if i == 1:  # a non-finite batch, skipped: the optimizer's count trails the step by 1
        batch["image"][0, 0, 0] = np.nan
      yield batch
      i += 1

  def fixed_train_batch(self, index, batch_size=None):
    return self._batch([1, index], batch_size or self.bs)

  def eval_batches(self, split="test"):
    b = self._batch([2], 32)
    yield dict(b, mask=np.ones(32, np.float32))
