r"""The data of a batch-size side-trip: the parent's stream read as one flat stream of examples.

The parent's stream fixes an order of examples: its batch t holds examples
[tB, (t+1)B) of a virtual flat stream (B its ``batch_size``). A 'batch_size'
side-trip from S reads that flat stream from example S·B on, so its batch at
side-trip step j holds the next b_j examples,

    examples [S·B + n_j, S·B + n_j + b_j),    n_j = Σ_{i<j} b_i,

(:func:`trajax.sidetrip.spec.examples_before`). For b_j = k·B this is the
concatenation of the parent's batches S + kj … S + kj + k − 1. So "λ at
batch kB for J steps" and "λ/k at batch B for kJ steps" (kind 'schedule',
``schedule='constant'``, ``lr_factor=1/k``) consume the same kJ·B examples in
the same order: a comparison per example seen compares the update rules alone.

Batch j is a pure function of (the parent's stream, S, the batch sizes, j):
a side-trip resumed at step S + j opens the parent's stream at batch
S + ⌊n_j/B⌋ and drops the n_j mod B examples before it, so it sees exactly the
batches an uninterrupted side-trip saw from there on.

Several processes: each process reads its own share of every parent batch
(``dataset.train_batches`` gives process p rows [p·B/P, (p+1)·B/P)) as its
local flat stream and takes b_j/P examples from it per step, so the global
batch j is process-major, as every global batch is. Whenever n_j is a
multiple of B the examples consumed are exactly the parent's batches
S … S + n_j/B − 1 (with one process, always exactly the flat stream above).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from trajax.sidetrip.spec import batch_size_at, examples_before

__all__ = ["flat_stream_batches"]


def flat_stream_batches(
  dataset,
  parent_step: int,
  batch_sizes: tuple,
  parent_batch: int,
  process_count: int = 1,
) -> Callable[[int], Iterator[dict]]:
  """``batches(t)``: this process's side-trip batches from absolute step t on.

  Args:
    dataset: the parent's dataset (its ``train_batches(step)``, this process's share).
    parent_step: S.
    batch_sizes: ``((j_0 = 0, b_0), (j_1, b_1), ...)``, global batch sizes
      (:attr:`trajax.sidetrip.SidetripSpec.batch_sizes`), each divisible by
      ``process_count``.
    parent_batch: B, the parent's global ``batch_size``.
    process_count: P.

  Returns:
    A function of the absolute step t >= S to an iterator of host batches
    (dicts of NumPy arrays with the parent's batch keys).
  """
  S, P = int(parent_step), int(process_count)
  if parent_batch % P or any(b % P for _, b in batch_sizes):
    raise ValueError(
      f"batch sizes {[b for _, b in batch_sizes]} and batch_size={parent_batch} must all be "
      f"divisible by the process count {P}"
    )
  local_parent = parent_batch // P

  def batches(t: int) -> Iterator[dict]:
    j = int(t) - S
    if j < 0:
      raise ValueError(f"a side-trip from step {S} has no batch at step {t}")
    offset = examples_before(batch_sizes, j) // P  # this process's flat position
    stream = dataset.train_batches(S + offset // local_parent)
    skip = offset % local_parent
    pending: list[dict] = []
    have = 0
    while True:
      need = batch_size_at(batch_sizes, j) // P
      while have < need:
        batch = {k: np.asarray(v) for k, v in next(stream).items()}
        if skip:
          batch = {k: v[skip:] for k, v in batch.items()}
          skip = 0
        pending.append(batch)
        have += len(next(iter(batch.values())))
      if len(pending) == 1 and have == need:
        out, pending = pending[0], []
      else:
        joined = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        out = {k: v[:need] for k, v in joined.items()}
        pending = [{k: v[need:] for k, v in joined.items()}] if have > need else []
      have -= need
      yield out
      j += 1

  return batches
