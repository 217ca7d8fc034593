r"""Engine vs a hand-written loop: steady-state steps/s, side by side in one process.

  PYTHONPATH=. python -m bench.bench_engine_vs_hand --rounds=5 --steps=1000

The same job twice (issue 12):

* **hand** -- what a JAX user writes: CNN1D (width 64) on mnist1d batches of
  64, ``trajax.averaging.two_point(optax.sgd(0.05, momentum=0.9), gap=1000)``,
  BatchNorm statistics updated, one jitted step with the carry donated, the
  batch gathered on the device from the resident training pool through the
  epoch's permutation, the loss read every 200 steps;
* **engine** -- :func:`trajax.loop.fit` on ``configs/mnist1d.py`` (the path
  ``train_and_evaluate`` takes), each round a fresh workdir, the steps timed
  by a callback.

Rounds alternate hand, engine, hand, engine, ...; in each, the rate is taken
over the steps after ``--warmup`` (compilation and fit's restore excluded; the
engine's log points, whose metrics fetch and health check are part of its
cost, included; its end-of-run evaluation and save are after the last timed
step). The figure is the median over rounds of engine rate / hand rate of the
same round. The engine's ``train/input_wait_fraction`` (metrics.jsonl) is
reported too: the share of wall time the loop blocked on input.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _config():
  from configs import mnist1d

  return mnist1d.get_config()


class HandLoop:
  """The hand-written loop (see the module docstring); ``run(n)`` -> seconds per step."""

  def __init__(self, config, dataset):
    from trajax import averaging, models

    self.batch = int(config.batch_size)
    x = np.asarray(dataset._train_images)
    y = np.asarray(dataset._train_labels)
    self.n = x.shape[0]
    self.pool = (jax.device_put(x), jax.device_put(y))
    model = models.create_model(config.model, num_classes=10)
    variables = model.init(jax.random.key(0), x[:1], train=False)
    tx = averaging.two_point(optax.sgd(0.05, momentum=0.9), gap=1000)
    params = variables["params"]
    self.carry = (params, variables["batch_stats"], tx.init(params))
    self.rng = np.random.default_rng(0)
    self.epoch_steps = self.n // self.batch
    self.t = 0
    self.perm = None
    batch = self.batch

    @functools.partial(jax.jit, donate_argnums=0)
    def step(carry, pool, perm, offset):
      params, stats, opt_state = carry
      idx = jax.lax.dynamic_slice(perm, (offset * batch,), (batch,))
      images, labels = pool[0][idx], pool[1][idx]

      def loss_fn(p):
        logits, upd = model.apply(
          {"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, upd["batch_stats"]

      (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    self.step = step

  def run(self, steps: int, warmup: int) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` more."""
    t0 = None
    for i in range(warmup + steps):
      if i == warmup:
        t0 = time.perf_counter()
      epoch, offset = divmod(self.t, self.epoch_steps)
      if offset == 0 or self.perm is None:
        self.perm = jax.device_put(self.rng.permutation(self.n).astype(np.int32))
      self.carry, loss = self.step(self.carry, self.pool, self.perm, jnp.int32(offset))
      self.t += 1
      if self.t % 200 == 0:
        float(loss)
    float(loss)
    return (time.perf_counter() - t0) / steps


def engine_round(config, dataset, steps: int, warmup: int, root: str, r: int) -> dict:
  """One :func:`trajax.loop.fit` call of ``warmup + steps`` steps in a fresh workdir."""
  from trajax import loop, metrics

  stamps = {}

  def stamp(step):
    if step in (warmup, warmup + steps):
      stamps[step] = time.perf_counter()

  workdir = os.path.join(root, f"engine{r}")
  loop.fit(config, workdir, end=warmup + steps, eval_at=(), dataset=dataset, callbacks=[stamp])
  waits = [
    rec["train/input_wait_fraction"]
    for rec in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    if "train/input_wait_fraction" in rec and rec["step"] > warmup
  ]
  return {
    "s_per_step": (stamps[warmup + steps] - stamps[warmup]) / steps,
    "input_wait": statistics.median(waits) if waits else float("nan"),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=1000, help="timed steps per round")
  p.add_argument("--warmup", type=int, default=100)
  p.add_argument("--json", default=None, help="also write the result here")
  args = p.parse_args()

  from trajax import data

  config = _config()
  dataset = data.get_dataset(config)
  hand = HandLoop(config, dataset)
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for r in range(args.rounds):
      h = hand.run(args.steps, args.warmup)
      e = engine_round(config, dataset, args.steps, args.warmup, root, r)
      rows.append({"hand_steps_per_s": 1 / h, "engine_steps_per_s": 1 / e["s_per_step"]})
      rows[-1]["ratio"] = rows[-1]["engine_steps_per_s"] / rows[-1]["hand_steps_per_s"]
      rows[-1]["input_wait"] = e["input_wait"]
      print(json.dumps({"round": r, **rows[-1]}), flush=True)
  out = {
    "rounds": args.rounds,
    "steps": args.steps,
    "median_ratio": statistics.median(x["ratio"] for x in rows),
    "median_hand_steps_per_s": statistics.median(x["hand_steps_per_s"] for x in rows),
    "median_engine_steps_per_s": statistics.median(x["engine_steps_per_s"] for x in rows),
    "median_input_wait": statistics.median(x["input_wait"] for x in rows),
    "device": jax.devices()[0].device_kind,
    "load_avg": os.getloadavg()[0],
  }
  print(json.dumps(out))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, **out}, f, indent=1)


if __name__ == "__main__":
  main()
