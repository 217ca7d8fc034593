"""Cost of the single-step probe over K step sizes vs K forward passes + 1 backward.

Issue 6 asks that ``trajax.probes.single_step_losses`` over K step sizes cost at
most 1.5x the time of K separate forward passes plus one ``value_and_grad``
(the work it must do at least). Both sides are jitted and timed in the same
process on a small conv net; times are medians over interleaved repeats after
a warm-up, each call synchronised with ``block_until_ready``.

  .venv/bin/python bench/bench_probes.py                 # defaults below
  .venv/bin/python bench/bench_probes.py --k=32 --batch=256 --repeats=15

Prints one line per configuration: probe time, reference time, their ratio,
and the ratio with N held-out batches against (N + 1) K forwards + 1 backward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trajax import probes


class SmallConvNet(nn.Module):
  """Two 3x3 convs and a dense head on 28x28x1 inputs, 10 classes."""

  width: int = 16

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(2 * self.width, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--k", type=int, default=16, help="number of step sizes K")
  ap.add_argument("--batch", type=int, default=128, help="examples per batch")
  ap.add_argument("--heldout", type=int, default=4, help="held-out batches N")
  ap.add_argument("--width", type=int, default=16, help="conv width")
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()

  rng = np.random.default_rng(0)
  model = SmallConvNet(args.width)
  x = rng.normal(size=(args.heldout + 1, args.batch, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, size=(args.heldout + 1, args.batch))
  params = model.init(jax.random.key(0), x[0])["params"]
  n_params = sum(p.size for p in jax.tree.leaves(params))

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["x"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

  batch = {"x": jnp.asarray(x[0]), "y": jnp.asarray(y[0])}
  heldout = {"x": jnp.asarray(x[1:]), "y": jnp.asarray(y[1:])}
  etas = jnp.linspace(0.0, 2.0, args.k)

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  forward = jax.jit(lambda p, g, eta, b: loss_fn(jax.tree.map(lambda a, d: a - eta * d, p, g), b))

  def reference(num_fwd_batches):
    _, g = value_and_grad(params, batch)
    out = []
    for eta in etas:  # K separate dispatches: the baseline, not the probe
      for i in range(num_fwd_batches):
        b = batch if i == 0 else jax.tree.map(lambda h, i=i: h[i - 1], heldout)
        out.append(forward(params, g, eta, b))
    return out

  def probe(chunk=None, with_heldout=False):
    return probes.single_step_losses(
      loss_fn, params, batch, etas, heldout if with_heldout else None, chunk_size=chunk
    )

  # Held-out slices for the reference are materialised once, outside timing.
  heldout_list = [jax.tree.map(lambda h, i=i: h[i], heldout) for i in range(args.heldout)]

  def reference_heldout():
    _, g = value_and_grad(params, batch)
    out = []
    for eta in etas:
      out.append(forward(params, g, eta, batch))
      for hb in heldout_list:
        out.append(forward(params, g, eta, hb))
    return out

  cases = {
    "reference K fwd + 1 bwd": lambda: reference(1),
    "probe vmap": lambda: probe(),
    "probe chunk=4": lambda: probe(4),
    "reference (N+1)K fwd + 1 bwd": reference_heldout,
    "probe vmap + heldout": lambda: probe(with_heldout=True),
    "probe chunk=4 + heldout": lambda: probe(4, with_heldout=True),
    "probe chunk=1 + heldout": lambda: probe(1, with_heldout=True),
  }
  for fn in cases.values():  # compile + warm up
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  times = {name: [] for name in cases}
  for _ in range(args.repeats):  # interleave so load drift hits all cases
    for name, fn in cases.items():
      times[name].append(_median_time(fn, 1))
  med = {name: statistics.median(v) for name, v in times.items()}

  print(
    f"jax {jax.__version__} backend={jax.default_backend()} "
    f"cpus={os.cpu_count()} params={n_params} K={args.k} "
    f"batch={args.batch} N={args.heldout} repeats={args.repeats}"
  )
  for name, t in med.items():
    print(f"  {name:32s} {1e3 * t:9.2f} ms")
  ref = med["reference K fwd + 1 bwd"]
  ref_h = med["reference (N+1)K fwd + 1 bwd"]
  print(f"ratio probe/reference (train only, vmap)    = {med['probe vmap'] / ref:.2f}")
  print(f"ratio probe/reference (train only, chunk=4) = {med['probe chunk=4'] / ref:.2f}")
  for c in ("vmap", "chunk=4", "chunk=1"):
    print(
      f"ratio probe/reference (with {args.heldout} held-out, {c:7s}) = "
      f"{med[f'probe {c} + heldout'] / ref_h:.2f}"
    )


if __name__ == "__main__":
  main()
