"""Cost of the curvature probes on the mnist1d default model (issue 14).

Two targets:

1. A Hessian-vector product (``trajax.probes.hvp``, forward-over-reverse)
   costs at most 3x a gradient (``jax.grad``) of the same loss and batch.
   Both jitted, timed in one process, medians over interleaved repeats after a
   warm-up, each call synchronised with ``block_until_ready``.
2. Lanczos (``trajax.probes.hessian_top_eigs``) finds the k = 5 largest
   eigenvalues to 1 % in at most 30 Hessian-vector products. m Lanczos steps
   cost exactly m HVPs, and the first m steps of a longer run from the same
   start vector are the m-step run, so one run of ``--max-iters`` steps gives
   the Ritz values after every m <= max-iters (eigenvalues of the leading m x m
   block of T). The reference is the top-5 Ritz values at ``--max-iters``,
   whose residual bounds beta_m |s_m,i| are printed; the figure is the least
   m after which every later m keeps all five within 1 % of the reference,
   over ``--keys`` start vectors.

The point: the config's model (``configs/mnist1d.py``: CNN1D width 64, BN)
after ``--warmup-steps`` steps of the config's SGD + momentum from its init
(the spectrum at init is atypical), or the latest checkpoint of ``--workdir``.
The loss is the training loss on one training batch of ``batch_size`` (BN in
training mode, as the train step sees it).

  python -m bench.bench_curvature
  python -m bench.bench_curvature --workdir=workdirs/mnist1d --repeats=20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trajax import probes


def _config():
  from configs import mnist1d

  return mnist1d.get_config()


def _point(config, model, dataset, workdir: str | None, warmup_steps: int):
  """(params, batch_stats, description)."""
  if workdir:
    from trajax import runs

    run = runs.open_run(workdir)
    state = run.state_at(None)
    return state.params, state.batch_stats, f"{workdir} step {int(run.steps[-1])}"
  batch = dataset.fixed_train_batch(0)
  variables = model.init(jax.random.key(int(config.seed)), jnp.asarray(batch["image"]))
  params, stats = variables["params"], variables.get("batch_stats", {})
  opt = optax.sgd(float(config.optimizer.lr), momentum=float(config.optimizer.momentum))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, stats, opt_state, b):
    def loss(p):
      logits, upd = model.apply(
        {"params": p, "batch_stats": stats}, b["image"], train=True, mutable=["batch_stats"]
      )
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["label"])
      return jnp.mean(ce), upd["batch_stats"]

    (_, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  it = dataset.train_batches(0)
  for _ in range(warmup_steps):
    b = next(it)
    params, stats, opt_state = step(
      params, stats, opt_state, {"image": jnp.asarray(b["image"]), "label": b["label"]}
    )
  return params, stats, f"init + {warmup_steps} SGD steps (lr {config.optimizer.lr})"


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def ritz_prefix(alphas, betas, k: int) -> np.ndarray:
  """[m_max, k] top-k Ritz values after m = 1..m_max steps (NaN where m < k)."""
  a, b = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
  out = np.full((a.size, k), np.nan)
  for m in range(1, a.size + 1):
    t = np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
    w = np.sort(np.linalg.eigvalsh(t))[::-1][:k]
    out[m - 1, : w.size] = w
  return out


def hvps_to_tolerance(prefix: np.ndarray, reference: np.ndarray, rtol: float) -> int | None:
  """Least m such that for every m' >= m all top-k Ritz values are within rtol of reference."""
  err = np.max(np.abs(prefix - reference[None, :]) / np.abs(reference[None, :]), axis=1)
  ok = np.nan_to_num(err, nan=np.inf) <= rtol
  if not ok[-1]:
    return None
  bad = np.flatnonzero(~ok)
  return int(bad[-1] + 2) if bad.size else 1


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="", help="use this run's latest checkpoint")
  ap.add_argument("--warmup-steps", type=int, default=500)
  ap.add_argument("--k", type=int, default=5)
  ap.add_argument("--rtol", type=float, default=0.01)
  ap.add_argument("--max-iters", type=int, default=120)
  ap.add_argument("--keys", type=int, default=3, help="Lanczos start vectors tried")
  ap.add_argument("--repeats", type=int, default=20)
  args = ap.parse_args(argv)

  from trajax import runs
  from trajax.train import cross_entropy

  config = _config()
  model, dataset = runs.model_and_data(config)
  params, stats, where = _point(config, model, dataset, args.workdir, args.warmup_steps)
  b = dataset.train_batch(int(config.total_steps) + 1)
  batch = {"image": jnp.asarray(b["image"]), "label": jnp.asarray(b["label"])}

  def loss_fn(p, batch):
    logits, _ = model.apply(
      {"params": p, "batch_stats": stats}, batch["image"], train=True, mutable=["batch_stats"]
    )
    return jnp.mean(cross_entropy(logits, batch["label"]))

  n = probes.num_params(params)
  grad = jax.jit(jax.grad(loss_fn))
  hvp = jax.jit(lambda p, b, v: probes.hvp(loss_fn, p, b, v))
  v = jax.tree.map(lambda x: jnp.ones_like(x) / np.sqrt(n), params)
  cases = {"grad": lambda: grad(params, batch), "hvp": lambda: hvp(params, batch, v)}
  for fn in cases.values():
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  times = {name: [] for name in cases}
  for _ in range(args.repeats):
    for name, fn in cases.items():
      times[name].append(_median_time(fn, 1))
  med = {name: statistics.median(t) for name, t in times.items()}

  print(
    f"jax {jax.__version__} backend={jax.default_backend()} cpus={os.cpu_count()} "
    f"model={config.model.name} width={config.model.width} params={n} "
    f"batch={batch['label'].shape[0]} point: {where}"
  )
  print(f"  grad {1e3 * med['grad']:8.3f} ms   hvp {1e3 * med['hvp']:8.3f} ms")
  print(f"HVP / gradient time = {med['hvp'] / med['grad']:.2f}  (target <= 3)")

  needed = []
  for s in range(args.keys):
    t0 = time.perf_counter()
    res = probes.lanczos(loss_fn, params, batch, jax.random.key(s), args.max_iters)
    jax.block_until_ready(res)
    seconds = time.perf_counter() - t0
    prefix = ritz_prefix(res.alphas, res.betas, args.k)
    eig = probes.hessian_top_eigs(
      loss_fn, params, batch, args.k, key=jax.random.key(s), num_iters=args.max_iters
    )
    ref = np.asarray(eig.eigenvalues, np.float64)
    # Residual bounds beta_m |s_m,i| in float64 (in float32 they underflow to 0
    # once a Ritz pair has converged below the rounding level).
    a, bt = np.asarray(res.alphas, np.float64), np.asarray(res.betas, np.float64)
    theta, sv = np.linalg.eigh(np.diag(a) + np.diag(bt[:-1], 1) + np.diag(bt[:-1], -1))
    top = np.argsort(-theta)[: args.k]
    rel_res = np.abs(bt[-1] * sv[-1, top]) / np.abs(theta[top])
    np.testing.assert_allclose(theta[top], ref, rtol=1e-4)
    m = hvps_to_tolerance(prefix, ref, args.rtol)
    needed.append(m)
    print(
      f"key {s}: top-{args.k} = {np.array2string(ref, precision=4)} "
      f"(ref. residual bound/|lambda| <= {max(rel_res.max(), 1e-16):.0e}; {args.max_iters} steps {seconds:.1f} s); "
      f"HVPs to {100 * args.rtol:g} %: {m}"
    )
  worst = None if None in needed else max(needed)
  print(
    f"Lanczos HVPs for k={args.k} to {100 * args.rtol:g} %: worst over keys = {worst} "
    "(target <= 30)"
  )
  return {"hvp_over_grad": med["hvp"] / med["grad"], "lanczos_hvps": needed}


if __name__ == "__main__":
  main()
