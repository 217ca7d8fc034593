"""trajax.theory performance (issue 3, section 4), in one process.

(a) ``simulate`` against drawing its random numbers alone: d diagonal modes,
    S seeds, T steps. The floor is a jitted scan that draws exactly the same
    normals (per-seed key, ``fold_in`` per step) and only sums them; a
    vectorized NumPy loop (one (S, d) ``standard_normal`` per step, the same
    update and per-seed loss) is the other reference. Targets: simulate ≤ 1.2×
    the floor and no slower than NumPy.
(b) ``expected_loss`` against Monte Carlo at matched accuracy: the number of
    seeds N for a 1 % standard error on the loss curve is measured from a
    pilot of S seeds (worst recorded point, N = S·(SE_S / 1 %)²), then
    ``simulate`` with N seeds is timed against ``expected_loss``. Target ≥ 100×.

(c) ``expected_loss`` with multi-point averaging against n (issue 23): d
    distinct modes, ``--mp-steps`` steps, n = 2, 4, 8, 16 points ``--mp-gap``
    apart; target: n = 16 within 3× of n = 2 (``--only-multi-point`` runs
    this part alone).

Compiled functions are cached per structure, so every timing below is the
median of ``--repeats`` warm calls with the variants interleaved (machine noise
hits all alike); first calls (with compilation) are printed separately.

    .venv/bin/python -m bench.bench_theory [--dim 1000] [--seeds 64] [--steps 10000] [--repeats 3]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from trajax import theory


def timed(fn):
  t = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t, out


def rng_floor(key, num_seeds, dim, num_steps):
  """The same normals simulate draws (fold_in(key, s), then fold_in(·, t)), summed."""
  seed_keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_seeds))

  @jax.jit
  def run(seed_keys):
    def step(acc, t):
      noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), (dim,)))(seed_keys)
      return acc + noise, None

    acc, _ = jax.lax.scan(step, jnp.zeros((num_seeds, dim)), jnp.arange(num_steps))
    return acc

  return lambda: run(seed_keys)


def numpy_loop(kappa, lr, theta0, num_seeds, num_steps, seed=0):
  """Vectorized NumPy reference of simulate's plain-SGD run (float32)."""
  rng = np.random.default_rng(seed)
  kappa = kappa.astype(np.float32)
  half_kappa = 0.5 * kappa
  lr = np.float32(lr)
  theta = np.full((num_seeds, kappa.size), theta0, np.float32)
  loss = np.empty((num_steps + 1, num_seeds), np.float32)
  loss[0] = (half_kappa * theta * theta).sum(-1)
  for t in range(num_steps):
    noise = rng.standard_normal(theta.shape, dtype=np.float32)
    theta -= lr * (kappa * theta - noise)
    loss[t + 1] = (half_kappa * theta * theta).sum(-1)
  return loss


def median(xs):
  return float(np.median(xs))


def bench_a(args, kappa, groups):
  key = jax.random.key(0)
  floor = rng_floor(key, args.seeds, args.dim, args.steps)
  sim = lambda: (
    theory.simulate(
      key,
      kappa,
      lr=args.lr,
      num_steps=args.steps,
      theta0=1.0,
      num_seeds=args.seeds,
      dof_groups=groups,
      record_every=args.record_every,
    ).loss
  )
  first_floor, _ = timed(floor)
  first_sim, _ = timed(sim)
  t_floor, t_sim = [], []
  for _ in range(args.repeats):
    t_floor.append(timed(floor)[0])
    t_sim.append(timed(sim)[0])
  t_np, _ = timed(lambda: numpy_loop(kappa, args.lr, 1.0, args.seeds, args.steps))
  out = {
    "rng_floor_s": median(t_floor),
    "simulate_s": median(t_sim),
    "numpy_s": t_np,
    "simulate_over_floor": median(t_sim) / median(t_floor),
    "simulate_over_numpy": median(t_sim) / t_np,
    "first_call_floor_s": first_floor,
    "first_call_simulate_s": first_sim,
    "all_floor_s": t_floor,
    "all_simulate_s": t_sim,
  }
  return out


def bench_b(args, kappa, groups, method, params, label):
  key = jax.random.key(1)
  common = dict(
    lr=args.lr,
    num_steps=args.steps,
    theta0=1.0,
    dof_groups=groups,
    record_every=args.record_every,
    method=method,
    **params,
  )
  pilot = theory.simulate(key, kappa, num_seeds=args.seeds, **common)
  loss = np.asarray(pilot.loss)[:, 1:]  # t = 0 is deterministic
  rel_se = loss.std(0, ddof=1) / loss.mean(0) / np.sqrt(args.seeds)
  seeds_needed = max(2, int(np.ceil(args.seeds * (rel_se.max() / 0.01) ** 2)))
  mc = lambda: theory.simulate(key, kappa, num_seeds=seeds_needed, **common).loss
  ex = lambda: theory.expected_loss(kappa, **common).loss
  first_mc, mc_loss = timed(mc)
  first_ex, ex_loss = timed(ex)
  t_mc, t_ex = [], []
  for _ in range(args.repeats):
    t_mc.append(timed(mc)[0])
    t_ex.append(timed(ex)[0])
  mc_mean = np.asarray(mc_loss).mean(0)
  ex_loss = np.asarray(ex_loss)
  return {
    "case": label,
    "method": method,
    **params,
    "distinct_modes": int(len(np.unique(kappa))),
    "pilot_worst_relative_se": float(rel_se.max()),
    "seeds_for_1pct_se": seeds_needed,
    "monte_carlo_s": median(t_mc),
    "expected_loss_s": median(t_ex),
    "speedup": median(t_mc) / median(t_ex),
    "first_call_monte_carlo_s": first_mc,
    "first_call_expected_loss_s": first_ex,
    "max_relative_gap_mc_vs_exact": float(np.max(np.abs(mc_mean / ex_loss - 1))),
  }


def bench_c(args, kappa):
  """Multi-point expected_loss for n = 2 … 16, interleaved; ratio to n = 2 paired per round."""
  groups = (kappa > 0.03).astype(int)
  ns = (2, 4, 8, 16)
  runs, first = {}, {}
  for n in ns:
    common = dict(
      lr=args.lr,
      num_steps=args.mp_steps,
      theta0=1.0,
      dof_groups=groups,
      record_every=args.record_every,
      method="multi_point",
      n=n,
      gap=args.mp_gap,
    )
    runs[n] = lambda common=common: theory.expected_loss(kappa, **common).loss
    first[n] = timed(runs[n])[0]
  times = {n: [] for n in ns}
  for _ in range(args.repeats):
    for n in ns:
      times[n].append(timed(runs[n])[0])
  base = np.asarray(times[2])
  out = []
  for n in ns:
    r = {
      "n": n,
      "gap": args.mp_gap,
      "first_call_s": first[n],
      "expected_loss_s": median(times[n]),
      "paired_ratio_to_n2": median(np.asarray(times[n]) / base),
    }
    print("(c)", json.dumps(r))
    out.append(r)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dim", type=int, default=1000)
  p.add_argument("--seeds", type=int, default=64)
  p.add_argument("--steps", type=int, default=10_000)
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--record-every", type=int, default=10, dest="record_every")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--skip-a", action="store_true")
  p.add_argument("--only-multi-point", action="store_true", dest="only_mp")
  p.add_argument("--mp-steps", type=int, default=20_000, dest="mp_steps")
  p.add_argument("--mp-gap", type=int, default=10, dest="mp_gap")
  args = p.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")

  # A spectrum of distinct curvatures (the hard case for expected_loss: no
  # two modes alike), split in two groups at κ = 0.03.
  spectrum = np.geomspace(1e-3, 1.0, args.dim)
  # The Fig. 9 model: half fast (κ = 1), half slow (κ = 0.015).
  fig9 = np.where(np.arange(args.dim) < args.dim // 2, 1.0, 0.015)
  results = {"args": vars(args)}
  if args.only_mp:
    results["c"] = bench_c(args, spectrum)
    print(json.dumps(results))
    return
  if not args.skip_a:
    results["a"] = bench_a(args, spectrum, (spectrum > 0.03).astype(int))
    print("(a)", json.dumps(results["a"], indent=1))
  results["b"] = []
  for kappa, label in ((spectrum, "spectrum"), (fig9, "fig9")):
    groups = (kappa > 0.03).astype(int)
    for method, params in (("none", {}), ("ema", {"decay": 0.01})):
      r = bench_b(args, kappa, groups, method, params, label)
      print("(b)", json.dumps(r))
      results["b"].append(r)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
