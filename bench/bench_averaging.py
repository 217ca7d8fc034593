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
small conv net hides on CPU; multi-point runs there for n = 2, 4, 8, 16
(issue 23: its update must not grow with n).

``--drift`` measures the float32 accuracy of every method (issue 23), no
timing: the average of a constant sequence (params fixed at
linspace(0.5, 3, 64), ``--drift-steps`` updates, default 10^6) must be that
constant, and a noisy sequence (θ_t = linspace(0.5, 3, 64) + 0.1·ξ_t, 10^5
steps) is compared with a float64 NumPy reference of the definition; both
print the worst relative error over the 64 entries.
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
  # The state donated, as the engine's train step does (trajax.train): the
  # multi-point ring is then written in place.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
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


DRIFT_DIM = 64


def drift_variants():
  """name -> (optax wrapper over sgd(0), float64 reference ``ref(thetas) -> a_T``, profile index).

  Profile index None: the wrapper's own average; i: ``profile_averages(...)[i]``.
  """
  sgd = lambda: optax.sgd(0.0)

  def ema_ref(decay, debias=False):
    def ref(th):
      a = th[0].copy()
      if debias:
        acc, norm = np.zeros_like(a), 0.0
        for x in th[1:]:
          acc = (1 - decay) * acc + decay * x
          norm = (1 - decay) * norm + decay
        return acc / norm
      for x in th[1:]:
        a = (1 - decay) * a + decay * x
      return a

    return ref

  def power_ref(gamma):
    def ref(th):
      k = len(th) - 1
      i = np.arange(1, k + 1, dtype=np.float64)
      c = (i / k) ** (gamma + 1) - ((i - 1) / k) ** (gamma + 1)
      return c @ th[1:]

    return ref

  def points_ref(n, gap):
    def ref(th):
      k = len(th) - 1
      last = k - k % gap
      return np.mean([th[t] for t in range(last, -1, -gap)][:n], axis=0)

    return ref

  profiles = averaging.make_profiles(
    ({"method": "power_ema", "gamma": 6.94}, {"method": "ema", "decay": 1e-4})
  )
  return {
    "ema(1e-4)": (averaging.ema(sgd(), 1e-4), ema_ref(1e-4), None),
    "ema(1e-4, debias)": (averaging.ema(sgd(), 1e-4, debias=True), ema_ref(1e-4, True), None),
    "swa": (averaging.swa(sgd()), lambda th: th[1:].mean(0), None),
    "power_ema(6.94)": (averaging.power_ema(sgd(), 6.94), power_ref(6.94), None),
    "multi_point(n=4, gap=100)": (
      averaging.multi_point(sgd(), n=4, gap=100),
      points_ref(4, 100),
      None,
    ),
    "profile power_ema(6.94)": (averaging.with_profiles(sgd(), profiles), power_ref(6.94), 0),
    "profile ema(1e-4)": (averaging.with_profiles(sgd(), profiles), ema_ref(1e-4), 1),
  }


def _run_wrapper(opt, thetas, profile):
  """a_T of ``opt`` fed θ_0 … θ_T (``thetas``: (T+1, d) or (d,) for a constant), in one fori_loop."""
  constant = thetas.ndim == 1

  @functools.partial(jax.jit, static_argnums=1)
  def go(th, steps):
    p0 = th if constant else th[0]
    zeros = jnp.zeros_like(p0)

    def body(t, s):
      return opt.update(zeros, s, p0 if constant else th[t - 1])[1]

    s = jax.lax.fori_loop(1, steps + 1, body, opt.init(p0))
    last = p0 if constant else th[steps]
    if profile is None:
      return averaging.averaged_params(s, last)
    return averaging.profile_averages(s, last)[profile]

  steps = thetas.shape[0] - 1 if not constant else None
  return go, steps


def drift(args):
  base = np.linspace(0.5, 3.0, DRIFT_DIM)
  rng = np.random.default_rng(0)
  noisy = (base + 0.1 * rng.standard_normal((args.noisy_steps + 1, DRIFT_DIM))).astype(np.float32)
  print(f"float32 accuracy: constant {args.drift_steps} steps, noisy {args.noisy_steps} steps")
  print(f"{'method':<28}{'constant rel. err':>20}{'noisy rel. err':>18}")
  for name, (opt, ref, profile) in drift_variants().items():
    go, _ = _run_wrapper(opt, np.float32(base), profile)
    const = np.asarray(go(jnp.asarray(base, jnp.float32), args.drift_steps), np.float64)
    c_err = np.max(np.abs(const / np.float32(base).astype(np.float64) - 1))
    go, steps = _run_wrapper(opt, noisy, profile)
    got = np.asarray(go(jnp.asarray(noisy), steps), np.float64)
    want = ref(noisy.astype(np.float64))
    n_err = np.max(np.abs(got / want - 1))
    print(f"{name:<28}{c_err:>20.2e}{n_err:>18.2e}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--update-only", type=int, default=0, metavar="N")
  parser.add_argument("--drift", action="store_true")
  parser.add_argument("--drift-steps", type=int, default=1_000_000)
  parser.add_argument("--noisy-steps", type=int, default=100_000)
  args = parser.parse_args()
  if args.drift:
    drift(args)
    return

  inner = lambda: optax.sgd(0.05, momentum=0.9)
  variants = {
    "plain": inner(),
    "ema": averaging.ema(inner(), 1e-3),
    "ema_debias": averaging.ema(inner(), 1e-3, debias=True),
    "swa": averaging.swa(inner(), start_step=10),
    "two_point": averaging.two_point(inner(), gap=50),
    "multi_point(n=4)": averaging.multi_point(inner(), n=4, gap=25),
    "multi_point(n=16)": averaging.multi_point(inner(), n=16, gap=25),
    "power_ema": averaging.power_ema(inner(), 6.94),
    # The engine's layout with averaging.profiles (trajax.state.make_optimizer):
    # two power-function EMAs (Karras et al. 2024's σ_rel = 0.05, 0.10) for post-hoc EMAs.
    "two_point+2 profiles": averaging.two_point(
      averaging.with_profiles(inner(), averaging.make_profiles(PROFILES)), gap=50
    ),
  }
  if args.update_only:
    for n in (2, 8):
      variants[f"multi_point(n={n})"] = averaging.multi_point(inner(), n=n, gap=25)
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
