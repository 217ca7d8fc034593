"""Overhead of the averaging wrappers on a jitted train step (issue: ≤ 1.05×), profiles included.

A small conv net (two 3×3 convs + dense, ~0.3 M params) on 32×32×3 inputs,
``optax.sgd(0.05, momentum=0.9)`` plain vs wrapped in each averaging
transform, timed in one process with the variants interleaved so machine
noise hits all alike. Each round times a block of steps for every variant;
the reported ratio is the median over rounds of the paired per-round ratio
to plain, which cancels slow drifts in machine load.

    .venv/bin/python -m bench.bench_averaging [--steps 20] [--repeats 15] [--batch 64]

``--update-only N`` times the optimizer update alone on N float32 params
(no model): the memory-bound cost of the wrappers themselves, which the
small conv net hides on CPU. The wrappers keep the average without its
newest point (exact in any chain position), so each update also completes
the previous point: one extra pass over each stored tree.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trajax import averaging

PROFILES = (
  {"method": "power_ema", "gamma": averaging.power_ema_gamma(0.05)},
  {"method": "power_ema", "gamma": averaging.power_ema_gamma(0.10)},
)


def init_params(key, width=32, classes=10):
  k1, k2, k3 = jax.random.split(key, 3)
  he = lambda k, shape, fan_in: jax.random.normal(k, shape) * np.sqrt(2.0 / fan_in)
  return {
    "conv1": he(k1, (3, 3, 3, width), 27),
    "conv2": he(k2, (3, 3, width, 2 * width), 9 * width),
    "dense": he(k3, (8 * 8 * 2 * width, classes), 8 * 8 * 2 * width),
  }


def loss_fn(params, images, labels):
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  pool = lambda x: jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
  )
  x = pool(jax.nn.relu(conv(images, params["conv1"])))
  x = pool(jax.nn.relu(conv(x, params["conv2"])))
  logits = x.reshape(x.shape[0], -1) @ params["dense"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_step(opt):
  @jax.jit
  def step(params, state, images, labels):
    grads = jax.grad(loss_fn)(params, images, labels)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def make_update_step(opt):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, grad, _):
    updates, state = opt.update({"w": grad}, state, params)
    return optax.apply_updates(params, updates), state

  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--update-only", type=int, default=0, metavar="N")
  args = parser.parse_args()

  inner = lambda: optax.sgd(0.05, momentum=0.9)
  variants = {
    "plain": inner(),
    "ema": averaging.ema(inner(), 1e-3),
    "ema_debias": averaging.ema(inner(), 1e-3, debias=True),
    "swa": averaging.swa(inner(), start_step=10),
    "two_point": averaging.two_point(inner(), gap=50),
    "multi_point(n=4)": averaging.multi_point(inner(), n=4, gap=25),
    # The engine's layout with averaging.profiles (trajax.state.make_optimizer):
    # two power-function EMAs (Karras et al. 2024's σ_rel = 0.05, 0.10) for post-hoc EMAs.
    "two_point+2 profiles": averaging.two_point(
      averaging.with_profiles(inner(), averaging.make_profiles(PROFILES)), gap=50
    ),
  }
  key = jax.random.key(0)
  if args.update_only:
    params = {"w": jax.random.normal(key, (args.update_only,))}
    images = jax.random.normal(jax.random.key(1), (args.update_only,))  # the "gradient"
    labels = None
  else:
    params = init_params(key)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=args.batch), jnp.int32)

  runs = {}
  for name, opt in variants.items():
    step = make_update_step(opt) if args.update_only else make_step(opt)
    state = opt.init(params)
    p, s = step(jax.tree.map(jnp.copy, params), state, images, labels)  # compile
    jax.block_until_ready(p)
    runs[name] = (step, p, s)

  times = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, (step, p, s) in runs.items():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        p, s = step(p, s, images, labels)
      jax.block_until_ready((p, s))
      times[name].append((time.perf_counter() - t0) / args.steps)
      runs[name] = (step, p, s)

  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(
    f"device={jax.devices()[0].platform} params={n_params} batch={args.batch} steps={args.steps} repeats={args.repeats}"
  )
  base = np.asarray(times["plain"])
  print(f"{'variant':<22}{'median ms/step':>16}{'paired ratio':>14}{'IQR':>16}")
  for name, ts in times.items():
    r = np.asarray(ts) / base
    q1, q3 = np.percentile(r, [25, 75])
    print(
      f"{name:<22}{1e3 * np.median(ts):>16.3f}{np.median(r):>14.3f}{f'[{q1:.3f}, {q3:.3f}]':>16}"
    )


if __name__ == "__main__":
  main()
