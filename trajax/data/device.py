"""Device-resident training pools: the batch of step i gathered on the device.

An in-memory source (``offline.ArrayDataset``: mnist1d, digits, CIFAR) holds
its whole training split; copying each batch from the host every step costs
the loop a host gather, a normalisation pass and a transfer. A
:class:`DevicePool` puts the *normalised* pool (and the noisy labels) on every
device once, and each step only sends this process's rows of the batch as
pool indices (and, with augmentation, the crop offsets and flips): 4-12 bytes
per example. A jitted gather turns them into the batch, sharded over the
mesh's data axis like a host batch, so each process (and device) builds only
its own rows.

Bit-exactness: the pool is normalised on the host by the very function that
normalises a host batch (``x * gain + offset`` in float32, elementwise per
channel), the padding of pad-crop-flip is filled with the normalised value of
a zero pixel, and the device code only moves values (gather, dynamic slice,
reverse, select). So the device batch of step i equals
``dataset.train_batch(i)`` bit for bit (``tests/test_data.py`` checks it on 1
and 8 devices and per process), and batch fingerprints are unchanged.

Streamed sources (ImageNet) have no pool and keep the host pipeline.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["MAX_POOL_BYTES", "DevicePool", "DeviceStream", "device_pool", "gather_step"]

# Pools larger than this (per device, normalised float32) stay on the host.
MAX_POOL_BYTES = 4 << 30


def _replicated(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  # Every process holds the same pool (it is a pure function of the seed).
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _gather(images, labels, fill, keys):
  rows = images[keys["index"]]
  if fill is not None:
    h, w = rows.shape[1:3]
    p = (fill.shape[0] - h) // 2
    padded = jnp.broadcast_to(fill, (rows.shape[0], *fill.shape))
    padded = padded.at[:, p : p + h, p : p + w].set(rows)

    def crop(image, dy, dx, flip):
      out = jax.lax.dynamic_slice(image, (dy, dx, 0), (h, w, image.shape[-1]))
      return jnp.where(flip, out[:, ::-1], out)

    rows = jax.vmap(crop)(padded, keys["dy"], keys["dx"], keys["flip"])
  return {"image": rows, "label": labels[keys["index"]]}


def gather_step(inputs: dict) -> dict:
  """The batch of one step from a :class:`DeviceStream` item (traced inside the train step).

  inputs: ``images``, ``labels``, ``fill`` (the pool), ``chunk`` (``[chunk, B]``
  keys of consecutive steps) and ``j`` (this step's row of the chunk).
  """
  chunk, j = inputs["chunk"], inputs["j"]
  keys = {k: jax.lax.dynamic_index_in_dim(v, j, 0, keepdims=False) for k, v in chunk.items()}
  return _gather(inputs["images"], inputs["labels"], inputs["fill"], keys)


class DevicePool:
  """A training pool on ``mesh``'s devices; :meth:`stream` yields its batches there.

  ``batch(keys)``: the batch of one step from the global arrays of
  ``dataset.train_keys(i)``, sharded like a host batch
  (``state.batch_sharding(mesh)``).
  """

  def __init__(self, dataset, mesh: Mesh, *, chunk: int = 64):
    from trajax import state as state_lib

    if chunk < 1:
      raise ValueError(f"chunk must be a positive number of steps, got {chunk!r}")
    self.dataset, self.chunk = dataset, int(chunk)
    replicated = NamedSharding(mesh, P())
    self.images = _replicated(np.ascontiguousarray(dataset.normalized_train_images()), replicated)
    self.labels = _replicated(np.asarray(dataset.train_labels, np.int32), replicated)
    fill = dataset.pad_fill()
    self.fill = None if fill is None else _replicated(fill, replicated)
    self.key_sharding = state_lib.batch_sharding(mesh)
    self.chunk_sharding = NamedSharding(mesh, P(None, *self.key_sharding.spec))
    self._gather = jax.jit(_gather, out_shardings=self.key_sharding)
    self._gather_step = jax.jit(gather_step, out_shardings=self.key_sharding)

  def batch(self, keys: dict) -> dict:
    return self._gather(self.images, self.labels, self.fill, keys)

  def gather(self, inputs: dict) -> dict:
    """:func:`gather_step` of a :class:`DeviceStream` item, as its own jitted call."""
    return self._gather_step(inputs)

  def stream(self, start_step: int) -> DeviceStream:
    """The batches of steps ``start_step, start_step + 1, ...`` (see :class:`DeviceStream`)."""
    return DeviceStream(self, start_step)


class DeviceStream:
  """Yields ``(None, inputs)`` per step, like ``trajax.host.Prefetch``.

  The keys of ``chunk`` steps at a time travel in one transfer (``[chunk, b]``
  arrays, batch axis sharded). ``inputs`` is what :func:`gather_step` turns
  into the step's batch: the train step made with
  ``trajax.train.make_step(..., gather=gather_step)`` does it inside the same
  compiled call, so a step costs one dispatch; :meth:`DevicePool.gather`
  does it alone. ``wait_s``: host time spent here.
  """

  def __init__(self, pool: DevicePool, start_step: int):
    from trajax import state as state_lib

    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    self._pool, self._step = pool, int(start_step)
    self._global = state_lib.global_batch
    self._chunk, self._j = None, pool.chunk
    self.wait_s = 0.0

  def __iter__(self):
    return self

  def __next__(self):
    t = time.perf_counter()
    pool = self._pool
    if self._j == pool.chunk:
      keys = [pool.dataset.train_keys(s) for s in range(self._step, self._step + pool.chunk)]
      stacked = {k: np.stack([x[k] for x in keys]) for k in keys[0]}
      self._chunk, self._j = self._global(stacked, pool.chunk_sharding), 0
    out = {
      "images": pool.images,
      "labels": pool.labels,
      "fill": pool.fill,
      "chunk": self._chunk,
      "j": np.int32(self._j),
    }
    self._j += 1
    self._step += 1
    self.wait_s += time.perf_counter() - t
    return None, out

  def close(self):
    pass


def device_pool(dataset, mesh: Mesh, *, max_bytes: int = MAX_POOL_BYTES) -> DevicePool | None:
  """A :class:`DevicePool` of ``dataset``, or None for a streamed or too-large one."""
  if not all(hasattr(dataset, a) for a in ("train_keys", "normalized_train_images")):
    return None
  n_bytes = 4 * int(np.prod(dataset.info.input_shape)) * int(dataset.info.num_train)
  if n_bytes > max_bytes:
    return None
  return DevicePool(dataset, mesh)
