r"""Engine vs a hand-written loop: steady-state steps/s, side by side in one process.

  PYTHONPATH=. python -m bench.bench_engine_vs_hand --segments=15 --segment=200

The same job twice (issue 12):

* **hand** -- what a JAX user writes: CNN1D (width 64) on mnist1d batches of
  64, ``trajax.averaging.two_point(optax.sgd(0.05, momentum=0.9), gap=1000)``,
  BatchNorm statistics updated, one jitted step with the carry donated, the
  batch gathered on the device from the resident training pool through the
  epoch's permutation, the loss read every 200 steps;
* **engine** -- :func:`trajax.loop.fit` on ``configs/mnist1d.py`` (the path
  ``train_and_evaluate`` takes), each round a fresh workdir, the steps timed
  by a callback.

The two alternate in segments of ``--segment`` steps inside one engine run
(the engine's callback runs the hand loop for a segment; see
:func:`interleaved`), so each pair of rates is measured seconds apart -- on a
shared, loaded machine a whole-run comparison swings by ±30 %. Compilation,
fit's restore and the first ``--warmup`` steps are excluded; the engine's log
points (metrics fetch, health check, progress line) are included, as is the
hand loop's loss read. The figure is the median over segments without a
checkpoint save of engine rate / hand rate. (The engine step in flight when a
segment closes finishes during the hand segment: a bias of at most one step
per segment in the engine's favour, 0.5 % at 200; the boundaries follow a
log point's sync so no more than that is queued.) The engine's
``train/input_wait_fraction`` (metrics.jsonl) is reported too: the share of
wall time the loop blocked on input.
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

  c = mnist1d.get_config()
  c.averaging.profiles = ()  # the hand loop keeps none: like for like (issue 24's defaults)
  return c


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


def interleaved(config, dataset, hand: HandLoop, segments: int, segment: int, warmup: int):
  """One :func:`trajax.loop.fit` run; every ``segment`` engine steps, ``segment`` hand steps.

  The callback of engine step ``warmup + k * segment`` closes engine segment
  k (host clock since the previous one) and runs the hand loop for
  ``segment`` steps (timed apart). Boundaries sit one step past a log point,
  where the engine has just read the log step's metrics, so at most one engine
  step is in flight (without that sync the host runs ahead of the device and
  the queued engine steps would be charged to the hand loop). A segment of 200 steps holds one log
  point of each loop. Segments that hold a checkpoint save are reported
  but left out of the median (steady state).
  """
  from trajax import loop, metrics

  if segment % config.log_every_steps or (warmup - 1) % config.log_every_steps:
    raise ValueError(
      f"segment={segment} must be a multiple of log_every_steps={config.log_every_steps} and "
      f"warmup={warmup} one past one, so that each boundary follows a log point's sync"
    )
  rows, last = [], {}

  def callback(step):
    if step < warmup or (step - warmup) % segment:
      return
    now = time.perf_counter()
    if "t" in last:
      engine = segment / (now - last["t"])
      hand_rate = 1 / hand.run(segment, 0)
      saves = any(s % config.checkpoint_every_steps == 0 for s in range(step - segment, step))
      rows.append(
        {
          "engine_steps_per_s": engine,
          "hand_steps_per_s": hand_rate,
          "ratio": engine / hand_rate,
          "save_in_segment": saves,
        }
      )
      print(json.dumps({"segment": len(rows) - 1, "end_step": step, **rows[-1]}), flush=True)
    else:
      hand.run(segment, 0)  # compile and warm the hand loop
    last["t"] = time.perf_counter()

  with tempfile.TemporaryDirectory() as root:
    workdir = os.path.join(root, "engine")
    end = warmup + (segments + 1) * segment
    loop.fit(config, workdir, end=end, eval_at=(), dataset=dataset, callbacks=[callback])
    waits = [
      rec["train/input_wait_fraction"]
      for rec in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
      if "train/input_wait_fraction" in rec and rec["step"] > warmup
    ]
  return rows, waits


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--segments", type=int, default=15)
  p.add_argument("--segment", type=int, default=200, help="steps per segment")
  p.add_argument(
    "--warmup", type=int, default=201, help="untimed engine steps (one past a log point)"
  )
  p.add_argument("--json", default=None, help="also write the result here")
  args = p.parse_args()

  from trajax import data

  config = _config()
  dataset = data.get_dataset(config)
  hand = HandLoop(config, dataset)
  rows, waits = interleaved(config, dataset, hand, args.segments, args.segment, args.warmup)
  steady = [r for r in rows if not r["save_in_segment"]]
  out = {
    "segments": len(rows),
    "steady_segments": len(steady),
    "segment_steps": args.segment,
    "median_ratio": statistics.median(r["ratio"] for r in steady),
    "median_ratio_all_segments": statistics.median(r["ratio"] for r in rows),
    "median_hand_steps_per_s": statistics.median(r["hand_steps_per_s"] for r in steady),
    "median_engine_steps_per_s": statistics.median(r["engine_steps_per_s"] for r in steady),
    "median_input_wait": statistics.median(waits),
    "device": jax.devices()[0].device_kind,
    "load_avg": os.getloadavg()[0],
  }
  print(json.dumps(out))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, **out}, f, indent=1)


if __name__ == "__main__":
  main()
