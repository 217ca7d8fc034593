"""Losses, batches and evaluation of the experiments' probes (paper Sec. 3 and the figures).

* :func:`make_loss_fn` -- ``loss_fn(params, batch)``, a closure over
  ``model.apply`` and the BatchNorm statistics (fixed running statistics, or
  the batch's own in training mode), one cached object per model so the
  probes compile once;
* the batches: the run's training stream (:func:`train_batch`), held-out
  *training* batches disjoint from the probed one (:func:`heldout_batches`,
  :func:`probe_batches`, the paper's "fixed batch different from the training
  mini-batch"), fixed batches for the training loss (:func:`train_eval_batches`);
* evaluation of a point (:func:`evaluate`, :func:`evaluate_point`) with the
  engine's :class:`trajax.train.Evaluator`, and BatchNorm statistics of
  averaged weights (:func:`free_variables`, the engine's policy);
* an average of given members (:func:`average_of`, the kernel of a
  :class:`trajax.averaging.Average`), small tree arithmetic (:func:`midpoint`, :func:`l2`, :func:`norm`) and the
  steps a window is evaluated at (:func:`trajectory_grid`, :func:`eval_points`).

``run`` arguments are :class:`trajax.runs.Run` (``trajax.runs.open_run``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
  "average_of",
  "eval_points",
  "evaluate",
  "evaluate_point",
  "evaluator",
  "free_variables",
  "heldout_batches",
  "l2",
  "make_loss_fn",
  "midpoint",
  "norm",
  "probe_batches",
  "stack_batches",
  "train_batch",
  "train_eval_batches",
  "trajectory_grid",
  "with_batch_stats",
]

_LOSS_FNS: dict = {}


def make_loss_fn(model, batch_stats=None, *, train: bool = False) -> Callable:
  """``loss_fn(params, batch) -> mean cross-entropy`` for the probes.

  ``train=False`` (default): BatchNorm uses fixed running statistics, so the
  loss is a deterministic function of the params alone -- what one step on a
  batch changes (paper Sec. 3). ``train=True``: BatchNorm normalises with the
  batch's own statistics, as the train step does.

  With ``batch_stats=None`` the statistics travel in the batch
  (``batch['batch_stats']``, see :func:`with_batch_stats`), and the function
  object is cached per (model, train): the probes take ``loss_fn`` as a
  static argument hashed by identity, so one object serves every checkpoint
  and compiles once per batch shape. Closing over ``batch_stats`` instead
  recompiles for every new closure.
  """
  if batch_stats is None:
    key = ("loss_fn", id(model), bool(train))
    if key not in _LOSS_FNS:
      _LOSS_FNS[key] = _loss_fn(model, None, train)
    return _LOSS_FNS[key]
  return _loss_fn(model, batch_stats, train)


def _loss_fn(model, batch_stats, train: bool) -> Callable:
  import jax.numpy as jnp

  from trajax.train import cross_entropy

  def loss_fn(params, batch):
    stats = batch["batch_stats"] if batch_stats is None else batch_stats
    variables = {"params": params, "batch_stats": stats}
    if train:
      logits, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    else:
      logits = model.apply(variables, batch["image"], train=False)
    return jnp.mean(cross_entropy(logits, batch["label"]))

  return loss_fn


def with_batch_stats(batch: dict, batch_stats, *, stacked: int | None = None) -> dict:
  """``batch`` plus ``'batch_stats'`` for :func:`make_loss_fn` with ``batch_stats=None``.

  ``stacked=N``: the batch is N batches stacked on a leading axis (held-out
  batches of the probes), so the statistics are broadcast to N copies.
  """
  import jax
  import jax.numpy as jnp

  out = {k: v for k, v in batch.items() if k in ("image", "label")}
  if stacked is None:
    out["batch_stats"] = batch_stats
  else:
    out["batch_stats"] = jax.tree.map(
      lambda x: jnp.broadcast_to(x, (int(stacked), *jnp.shape(x))), batch_stats
    )
  return out


def train_batch(dataset, step: int) -> dict:
  """Batch ``step`` of the training stream (``image``, ``label``) as the run saw it."""
  batch = next(iter(dataset.train_batches(int(step))))
  return {"image": np.asarray(batch["image"]), "label": np.asarray(batch["label"])}


def heldout_batches(
  dataset, n: int, batch_size: int, split: str = "train", *, offset: int = 0
) -> dict:
  """``n`` disjoint batches of ``batch_size`` from ``split``, stacked on a leading axis.

  The paper's held-out batch is "a *fixed* batch different from the training
  mini-batch" (Sec. 3), a *training* batch, not a validation one
  (Introduction): the default ``split='train'`` reads the training split with
  its noisy labels, as trained, through ``dataset.eval_batches('train')`` (the
  public interface; stored order, no augmentation). Batch ``i`` holds examples
  ``offset + i·B … offset + (i+1)·B − 1`` of the split, so batches taken at
  non-overlapping offsets are disjoint by construction. ``split='test'`` only
  where the paper says validation/test. Raises naming ``n``/``batch_size``/
  ``offset`` when the split is too small.
  """
  if n < 1 or batch_size < 1 or offset < 0:
    raise ValueError(
      f"n and batch_size must be >= 1 and offset >= 0, got n={n}, batch_size={batch_size}, "
      f"offset={offset}"
    )
  need = offset + n * batch_size
  images, labels, have = [], [], 0
  for b in dataset.eval_batches(split):
    keep = np.asarray(b["mask"]) > 0 if "mask" in b else slice(None)
    images.append(np.asarray(b["image"])[keep])
    labels.append(np.asarray(b["label"])[keep])
    have += len(labels[-1])
    if have >= need:
      break
  if have < need:
    raise ValueError(
      f"split {split!r} holds {have} examples: too few for n={n} batches of "
      f"batch_size={batch_size} from offset={offset}"
    )
  x = np.concatenate(images)[offset:need]
  y = np.concatenate(labels)[offset:need]
  return {"image": x.reshape(n, batch_size, *x.shape[1:]), "label": y.reshape(n, batch_size)}


def probe_batches(
  dataset, batch_size: int, num_heldout: int, *, offset: int = 0
) -> tuple[dict, dict, dict]:
  """``(probed, heldout, provenance)``: one training batch and ``num_heldout`` disjoint ones.

  All ``1 + num_heldout`` batches come from one :func:`heldout_batches` call
  on the training split (noisy labels, as trained): the probed batch is
  examples ``[offset, offset + B)``, held-out batch ``i`` the next ``B``
  examples after it, so none shares an example with the probed batch.
  ``provenance`` records the split and the example ranges, for the figure's
  JSON and for the criteria (``heldout_split``, ``heldout_disjoint``).
  """
  stacked = heldout_batches(dataset, 1 + int(num_heldout), int(batch_size), "train", offset=offset)
  probed = {k: v[0] for k, v in stacked.items()}
  held = {k: v[1:] for k, v in stacked.items()}
  b = int(batch_size)
  probed_range = [int(offset), int(offset) + b]
  held_ranges = [
    [int(offset) + i * b, int(offset) + (i + 1) * b] for i in range(1, num_heldout + 1)
  ]
  disjoint = all(r[0] >= probed_range[1] or r[1] <= probed_range[0] for r in held_ranges)
  provenance = {
    "probed_split": "train",
    "heldout_split": "train",
    "probed_examples": probed_range,
    "heldout_examples": held_ranges,
    "heldout_disjoint": bool(disjoint),
    "source": "dataset.eval_batches('train'): training split, noisy labels as trained, "
    "stored order, ranges are [first, last + 1) example positions",
  }
  return probed, held, provenance


def stack_batches(batches: Sequence[dict]) -> dict:
  """Batches of equal size -> one pytree stacked on a leading axis (``image``, ``label``)."""
  if not batches:
    raise ValueError("stack_batches needs at least one batch")
  return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in ("image", "label")}


def evaluator(run):
  """The engine's :class:`trajax.train.Evaluator` for ``run``'s model (cached: compiled once)."""
  from trajax import state, train

  return train.evaluator(run.model, state.make_mesh(run.config))


def evaluate(run, params, batch_stats, split: str = "test") -> dict:
  """``{'loss', 'accuracy'}`` of (params, batch_stats) over ``split`` of the run's data."""
  return evaluator(run).evaluate(params, batch_stats, run.dataset.eval_batches(split))


def free_variables(run, params, batch_stats) -> tuple:
  """``(params, batch_stats)`` to evaluate free parameters (an average, a replay) of ``run``.

  The engine's one BatchNorm policy for free parameters
  (:func:`trajax.train.evaluation_variables`) under 'recompute': the
  cumulative mean over ``averaging.bn_recompute_batches`` fixed training
  batches of each batch's statistics under ``params`` -- statistics of
  averaged weights are not the average of the statistics. ``batch_stats``
  gives the tree; a model without BatchNorm is returned as is.
  """
  import jax

  from trajax import train

  if not jax.tree.leaves(batch_stats):
    return params, batch_stats
  return train.evaluation_variables(
    params,
    batch_stats,
    config=run.config,
    evaluator=evaluator(run),
    dataset=run.dataset,
    policy="recompute",
  )


def trajectory_grid(k: int, points: int, *, log_points: bool = True) -> list[int]:
  """0, about ``points`` evenly spaced steps up to k, and 1, 10, 100, ... <= k."""
  if k < 1 or points < 1:
    raise ValueError(f"window k and points must be >= 1, got k={k}, points={points}")
  out = {int(round(x)) for x in np.linspace(0, k, points + 1)}
  if log_points:
    p = 1
    while p <= k:
      out.add(p)
      p *= 10
  return sorted(out)


def eval_points(k: int) -> list[int]:
  """The paper's evaluation steps 1, 10, 100, 1000, ... <= k, and k itself."""
  out, p = {int(k)}, 1
  while p <= k:
    out.add(p)
    p *= 10
  return sorted(out)


def train_eval_batches(run, n: int) -> list[dict]:
  """``n`` fixed training batches (indices 1000..; index 0 is Fig. 7's fixed batch)."""
  if n < 1:
    raise ValueError(f"train_eval_batches must be >= 1, got {n}")
  return [run.dataset.fixed_train_batch(1000 + i) for i in range(n)]


def evaluate_point(run, params, batch_stats, train_batches, *, recompute_bn: bool) -> dict:
  """Test loss/accuracy over the test split and training loss/accuracy on fixed batches.

  ``recompute_bn``: BatchNorm statistics recomputed for ``params`` (averaged
  weights), by :func:`free_variables`.
  """
  if recompute_bn:
    params, batch_stats = free_variables(run, params, batch_stats)
  ev = evaluator(run)
  test = ev.evaluate(params, batch_stats, run.dataset.eval_batches("test"))
  tr = ev.evaluate(params, batch_stats, train_batches)
  return {
    "test_loss": test["loss"],
    "test_accuracy": test["accuracy"],
    "train_loss": tr["loss"],
    "train_accuracy": tr["accuracy"],
  }


def average_of(average, members: Mapping[int, Any], window: int | None = None):
  """sum_i c_i theta_{S+i}: the combination ``average`` makes of the members theta_{S+i}.

  c_0 .. c_window = ``average.kernel(window)`` (:class:`trajax.averaging.Average`
  or ``Kernel``; ``window`` default: the last member's offset), e.g. the
  two-point average with gap h: c_0 = c_h = 1/2, so (theta_S + theta_{S+h})/2
  from the members {0: theta_S, h: theta_{S+h}}. Every offset with c_i != 0
  must be a member (members with c_i = 0 are ignored). Leaf by leaf in the
  members' dtype, with the nonzero weights in offset order; one compiled call
  per set of weights.
  """
  import jax

  window = max(members) if window is None else int(window)
  c = np.asarray(average.kernel(window), np.float64)
  need = [i for i in range(len(c)) if c[i] != 0]
  missing = [i for i in need if i not in members]
  if missing:
    raise ValueError(
      f"average_of: {average} over {window} steps weighs steps {missing} after S, which are "
      f"not members (have {sorted(members)})"
    )
  weights = tuple(float(c[i]) for i in need)
  if weights not in _COMBINE:

    def combine(*trees):
      def leaf(*xs):
        out = None
        for w, x in zip(weights, xs, strict=True):
          term = jax.numpy.asarray(w, x.dtype) * x
          out = term if out is None else out + term
        return out

      return jax.tree.map(leaf, *trees)

    _COMBINE[weights] = jax.jit(combine)
  return _COMBINE[weights](*(members[i] for i in need))


_COMBINE: dict = {}


def midpoint(a, b):
  """(a + b)/2 leaf by leaf (the two-point average); one compiled call, not one per leaf."""
  import jax

  global _MIDPOINT
  if _MIDPOINT is None:
    _MIDPOINT = jax.jit(lambda a, b: jax.tree.map(lambda x, y: 0.5 * (x + y), a, b))
  return _MIDPOINT(a, b)


_MIDPOINT = None


def l2(a, b) -> float:
  from trajax import probes

  return float(probes.l2_distance(a, b))


def norm(a) -> float:
  from trajax import probes

  return float(probes.tree_norm(a))
