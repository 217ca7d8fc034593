"""Shared helpers for the real-trajectory experiments (paper Secs. 3, 5; Figs. 1-3, 5-8, 10, 12-14).

Every figure module is ``python -m experiments.<name> --config=configs/x.py
[--config.field=...] [--exp.field=...] --workdir=DIR`` and follows one shape:

1. :func:`ensure_parent` trains the main trajectory in ``DIR/parent`` with
   checkpoints at the steps the experiment branches from, or reuses a finished
   one (resumable: a killed run continues from its own latest checkpoint);
2. :func:`restore` reads a parent (or side-trip) state at a step read-only
   (:func:`trajax.checkpoint.restore_readonly`, never a ``CheckpointManager``
   on another run's directory) together with its model and data;
3. probes get a ``loss_fn(params, batch)`` from :func:`make_loss_fn`, a
   closure over ``model.apply`` and the state's BatchNorm statistics;
4. results go to ``DIR/<name>.json`` (:func:`write_json`, NaN refused) and
   ``DIR/<name>.png`` (:func:`new_figure` / :func:`save_figure`), every plot
   carrying :func:`run_label` (dataset, model, batch size, lr, seed, label noise).

The experiment's own knobs live in a second ConfigDict (``--exp.<field>``),
built by the module's ``experiment_defaults()``; fields left ``None`` are
derived from the training config (:func:`scaled_points`), so one module runs
at paper scale from the ImageNet/CIFAR configs and at small scale offline.

Heavy packages (ml_collections, absl flags, matplotlib, orbax via
``trajax.checkpoint``) are imported inside the functions that use them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
  "Runner",
  "trajectory_grid",
  "eval_points",
  "train_eval_batches",
  "evaluate_point",
  "midpoint",
  "l2",
  "norm",
  "branch_step",
  "window",
  "parent_dir",
  "evaluator",
  "Restored",
  "cli",
  "committed_steps",
  "ensure_parent",
  "evaluate",
  "final_step",
  "heldout_batches",
  "load_config",
  "log",
  "make_loss_fn",
  "metric_series",
  "new_figure",
  "apply_overrides",
  "parent_config",
  "probe_batches",
  "read_metrics",
  "recompute_batch_stats",
  "restore",
  "run_label",
  "save_figure",
  "scaled_points",
  "stack_batches",
  "to_jsonable",
  "train_batch",
  "with_batch_stats",
  "write_json",
]

PARENT_SUBDIR = "parent"


# ----------------------------------------------------------------------------
# progress and JSON


def log(message: str) -> None:
  """One progress line on stderr with wall-clock time (the demo's terminal output)."""
  sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
  sys.stderr.flush()


def to_jsonable(x):
  """NumPy / JAX scalars, arrays, NamedTuples and dicts -> plain Python for ``json``."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, tuple) and hasattr(x, "_fields"):
    return {k: to_jsonable(v) for k, v in x._asdict().items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if x is None or isinstance(x, (bool, str)):
    return x
  if isinstance(x, (int, np.integer)):
    return int(x)
  arr = np.asarray(x)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


def _check_finite(x, where: str):
  if isinstance(x, dict):
    for k, v in x.items():
      _check_finite(v, f"{where}.{k}")
  elif isinstance(x, list):
    for i, v in enumerate(x):
      _check_finite(v, f"{where}[{i}]")
  elif isinstance(x, float) and not math.isfinite(x):
    raise ValueError(f"non-finite value {x} at {where}: refusing to write it as a result")


def write_json(path: str, payload, *, allow_nan: bool = False) -> str:
  """Writes ``payload`` (converted by :func:`to_jsonable`) to ``path``.

  Non-finite numbers are refused with the key path that holds them, unless
  ``allow_nan`` (then they are written as ``null``, never as invalid JSON).
  """
  data = to_jsonable(payload)
  if allow_nan:
    data = _nan_to_none(data)
  else:
    _check_finite(data, "payload")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, allow_nan=False)
  os.replace(tmp, path)
  return path


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_nan_to_none(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


# ----------------------------------------------------------------------------
# configs and the command line


def load_config(path: str, overrides: dict | None = None):
  """``configs/x.py[:arg]`` -> its ``get_config(arg)``, with dotted ``overrides`` applied.

  ``overrides`` maps ``'optimizer.lr'`` style names to values; an unknown name
  is an error naming it (ml_collections' own check).
  """
  import importlib.util

  file, _, arg = path.partition(":")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"config file {file!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_trajax_cfg_{abs(hash(file))}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  return apply_overrides(config, overrides or {})


def apply_overrides(config, overrides: dict):
  """A copy of ``config`` with ``{'a.b': value}`` set (field must exist)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for name, value in overrides.items():
      node = config
      parts = name.split(".")
      for p in parts[:-1]:
        if p not in node:
          raise KeyError(f"config field {name!r} does not exist (no section {p!r})")
        node = node[p]
      if parts[-1] not in node:
        raise KeyError(f"config field {name!r} does not exist")
      node[parts[-1]] = value
  return config


def cli(
  name: str,
  run: Callable[[Any, Any, str], dict],
  experiment_defaults: Callable[[], Any],
  argv: Sequence[str] | None = None,
) -> dict:
  """The command line of a figure module.

  ``--config=configs/x.py[:arg]`` (training config, ``--config.<field>``
  overrides), ``--exp.<field>`` (the module's experiment knobs from
  ``experiment_defaults()``) and ``--workdir``; then ``run(config, exp,
  workdir)``, whose summary is printed as JSON and returned.
  """
  from absl import flags
  from ml_collections import config_flags

  full_argv = list(sys.argv if argv is None else [name, *argv])
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", "configs/mnist1d.py", "training config file", flag_values=values, lock_config=False
  )
  config_flags.DEFINE_config_dict(
    "exp", experiment_defaults(), "experiment knobs", flag_values=values, lock_config=False
  )
  flags.DEFINE_string(
    "workdir", None, "output folder (parent run + JSON + PNG)", flag_values=values
  )
  values(full_argv)
  if not values.workdir:
    raise ValueError(f"{name}: --workdir is required (got {values.workdir!r})")
  summary = run(values.config, values.exp, values.workdir)
  print(json.dumps(to_jsonable(summary), indent=2))
  return summary


def scaled_points(total_steps: int, fractions: Iterable[float], *, minimum: int = 1) -> list[int]:
  """Steps at the given fractions of ``total_steps`` (sorted, unique, >= ``minimum``)."""
  total = int(total_steps)
  if total < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  out = set()
  for f in fractions:
    if not 0 <= f <= 1:
      raise ValueError(f"fractions must lie in [0, 1], got {f}")
    out.add(max(int(minimum), int(round(f * total))))
  return sorted(out)


def run_label(config, extra: str = "") -> str:
  """One line naming the run in every plot: data, model, batch, lr, schedule, seed, noise."""
  parts = [
    f"{config.dataset.name} (label noise {float(config.dataset.label_noise):g})",
    f"{config.model.name} w{config.model.width}",
    f"B={config.batch_size}",
    f"lr={float(config.optimizer.lr):g} {config.optimizer.schedule}, mom {float(config.optimizer.momentum):g}",
    f"{config.total_steps} steps",
    f"seed {config.seed}",
  ]
  if extra:
    parts.append(extra)
  return " | ".join(parts)


# ----------------------------------------------------------------------------
# the parent run


def committed_steps(workdir: str) -> list[int]:
  """Committed checkpoint steps of a run (``[]`` when there is none)."""
  from trajax import checkpoint as ckpt_lib

  return ckpt_lib.committed_steps(os.path.join(workdir, "checkpoints"))


def final_step(workdir: str) -> int | None:
  steps = committed_steps(workdir)
  return steps[-1] if steps else None


def parent_config(config, keep_steps: Iterable[int] = ()):
  """The parent's config: checkpoints kept at every step in ``keep_steps``.

  Side-trips and probes restore the parent at branch points, so the parent
  must keep those checkpoints: the cadence becomes the gcd of the branch
  points (the config's own cadence when there are none) and retention
  unlimited. Both are cadence /
  retention fields, allowed to change on resume.
  """
  config = copy.deepcopy(config)
  every = 0
  for s in keep_steps:
    s = int(s)
    if s < 0 or s > int(config.total_steps):
      raise ValueError(f"keep_steps: step {s} outside [0, total_steps={config.total_steps}]")
    every = math.gcd(every, s)
  # No branch points: the config's own cadence. (The final step is always saved.)
  every = every or int(config.checkpoint_every_steps)
  with config.unlocked():
    config.checkpoint_every_steps = every
    config.checkpoint.max_to_keep = None
    config.checkpoint.async_save = False
  return config


def ensure_parent(
  config, workdir: str, keep_steps: Iterable[int] = (), *, quiet: bool = False
) -> str:
  """Trains (or reuses) the main trajectory in ``workdir/parent``; returns that path.

  A parent whose latest committed checkpoint is ``total_steps`` and which
  holds every step of ``keep_steps`` is reused as is (no model is built). A
  partial one resumes from its latest checkpoint (``train_and_evaluate``
  refuses a resume under a config that changes the trajectory, naming the
  fields). A finished parent lacking a branch point is an error: it cannot be
  recreated without retraining into a fresh workdir.
  """
  from trajax import train

  keep = sorted({int(s) for s in keep_steps})
  pdir = os.path.join(os.path.abspath(workdir), PARENT_SUBDIR)
  os.makedirs(pdir, exist_ok=True)
  pconfig = parent_config(config, keep)
  steps = committed_steps(pdir)
  total = int(config.total_steps)
  if steps and steps[-1] >= total:
    missing = [s for s in keep if s > 0 and s not in steps]
    if missing:
      raise FileNotFoundError(
        f"parent run {pdir!r} is finished but lacks checkpoints at {missing} "
        f"(has {steps}); use a fresh --workdir"
      )
    if not quiet:
      log(f"reusing finished parent run {pdir} (checkpoints {steps})")
    return pdir
  start = steps[-1] if steps else 0
  if not quiet:
    log(
      f"training parent run {pdir}: steps {start} -> {total}, checkpoints every "
      f"{pconfig.checkpoint_every_steps}"
    )
  t0 = time.perf_counter()
  every = max(total // 10, 1)

  def progress(step):
    if not quiet and (step % every == 0 or step == total):
      rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
      log(f"  parent step {step}/{total} ({rate:.0f} steps/s)")

  train.train_and_evaluate(pconfig, pdir, callbacks=[progress])
  return pdir


# ----------------------------------------------------------------------------
# metrics


def read_metrics(workdir: str) -> list[dict]:
  """The records of ``workdir/metrics.jsonl`` (``[]`` when there is no file)."""
  from trajax import metrics

  path = os.path.join(workdir, "metrics.jsonl")
  return metrics.read_jsonl(path) if os.path.exists(path) else []


def metric_series(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of every record holding ``key``, in step order (last write wins)."""
  by_step = {}
  for r in records:
    if key in r and r[key] is not None and "step" in r:
      by_step[int(r["step"])] = float(r[key])
  steps = np.array(sorted(by_step), dtype=np.int64)
  return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


# ----------------------------------------------------------------------------
# restoring states, data and losses


class Restored(NamedTuple):
  """A run's state at one step, with what it takes to use it.

  config: the run's training config (as stored in the checkpoint, without a
    ``sidetrip`` section); model; dataset; state: :class:`trajax.train.TrainState`;
    step; meta: the checkpoint metadata (lineage for side-trips).
  """

  config: Any
  model: Any
  dataset: Any
  state: Any
  step: int
  meta: dict


_MODEL_CACHE: dict = {}


def _model_and_data(config):
  """(model, dataset) for ``config``, cached by the fields that define them."""
  from trajax import runs

  return runs.model_and_data(config)


def _stored_config(meta: dict):
  from trajax import loop

  return loop.stored_config(meta)


def restore(run_dir: str, step: int | None = None) -> Restored:
  """The state of the run in ``run_dir`` at ``step`` (default latest), read-only.

  Works for a main run and for a side-trip's workdir (its stored config holds
  a ``sidetrip`` section, which is dropped). :func:`trajax.runs.open_run` does
  the work: the abstract target is :func:`trajax.state.abstract_state` of the
  config stored with that step (a fixed-batch side-trip's plain-GD layout
  included), so nothing is initialised.
  """
  from trajax import runs

  run = runs.open_run(run_dir)
  state = run.state_at(step)
  step = int(run.steps[-1] if step is None else step)
  meta = run.meta(step)
  config = _stored_config(meta)
  model, dataset = _model_and_data(config)
  return Restored(config, model, dataset, state, step, meta)


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
    if key not in _MODEL_CACHE:
      _MODEL_CACHE[key] = _loss_fn(model, None, train)
    return _MODEL_CACHE[key]
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


def _evaluator(restored: Restored):
  from trajax import state, train

  return train.evaluator(restored.model, state.make_mesh(restored.config))


def evaluate(restored: Restored, params, batch_stats, split: str = "test") -> dict:
  """``{'loss', 'accuracy'}`` of (params, batch_stats) over ``split`` of the run's data."""
  return _evaluator(restored).evaluate(params, batch_stats, restored.dataset.eval_batches(split))


def recompute_batch_stats(restored: Restored, params, batch_stats):
  """BatchNorm statistics for ``params`` (e.g. an average), as the engine computes them.

  The cumulative mean over ``averaging.bn_recompute_batches`` fixed training
  batches (:meth:`trajax.train.Evaluator.recompute_batch_stats`): statistics
  of averaged weights are not the average of the statistics.
  """
  n = int(restored.config.averaging.bn_recompute_batches)
  batches = (restored.dataset.fixed_train_batch(i) for i in range(n))
  return _evaluator(restored).recompute_batch_stats(params, batch_stats, batches)


# ----------------------------------------------------------------------------
# the lock-step driver (Figs. 6, 7, 8, 14)


_EVALUATORS: dict = {}


def evaluator(restored):
  """A cached :class:`trajax.train.Evaluator` for the restored run's model."""
  from trajax import train

  key = id(restored.model)
  if key not in _EVALUATORS:
    _EVALUATORS[key] = train.Evaluator(restored.model, train.make_mesh(restored.config))
  return _EVALUATORS[key]


def Runner(restored, *, lr_factor: float = 1.0, stream_offset: int = 0):
  """A copy of a restored state stepped by the engine's own step (:class:`trajax.runs.Stepper`).

  Args:
    restored: :class:`experiments.common.Restored` (its state is copied, never
      donated).
    lr_factor: f in eta'_t = f * eta_t (the config's schedule, absolute step t),
      the side-trip ``kind='schedule', schedule='config', lr_factor=f``.
    stream_offset: reads training batch ``t + stream_offset`` at step t; 0 is
      the parent's batch order, ``total_steps`` a different order on the same
      data (positions the parent never reached).

  Returns:
    The stepper (``.state``, ``.step``, ``.params``, ``.advance_to(step)``).
  """
  from trajax import runs

  return runs.Stepper(
    restored.config,
    restored.model,
    restored.dataset,
    restored.state,
    lr_factor=lr_factor,
    stream_offset=stream_offset,
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


def train_eval_batches(restored, n: int) -> list[dict]:
  """``n`` fixed training batches (indices 1000..; index 0 is Fig. 7's fixed batch)."""
  if n < 1:
    raise ValueError(f"train_eval_batches must be >= 1, got {n}")
  return [restored.dataset.fixed_train_batch(1000 + i) for i in range(n)]


def evaluate_point(restored, params, batch_stats, train_batches, *, recompute_bn: bool) -> dict:
  """Test loss/accuracy over the test split and training loss/accuracy on fixed batches.

  ``recompute_bn``: BatchNorm statistics recomputed for ``params`` (averaged
  weights), as :func:`trajax.train.averaged_variables` does.
  """
  import jax

  if recompute_bn and jax.tree.leaves(batch_stats):
    batch_stats = recompute_batch_stats(restored, params, batch_stats)
  ev = evaluator(restored)
  test = ev.evaluate(params, batch_stats, restored.dataset.eval_batches("test"))
  tr = ev.evaluate(params, batch_stats, train_batches)
  return {
    "test_loss": test["loss"],
    "test_accuracy": test["accuracy"],
    "train_loss": tr["loss"],
    "train_accuracy": tr["accuracy"],
  }


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


def branch_step(config, fraction: float, name: str) -> int:
  """round(fraction * total_steps), validated (named after the --exp field)."""
  if not 0 < fraction < 1:
    raise ValueError(f"exp.{name} must lie in (0, 1), got {fraction!r}")
  step = int(round(fraction * int(config.total_steps)))
  if not 0 < step < int(config.total_steps):
    raise ValueError(
      f"exp.{name}={fraction} gives step {step}, outside (0, total_steps={config.total_steps})"
    )
  return step


def window(config, exp) -> int:
  k = exp.window if exp.window is not None else int(config.averaging.gap)
  if not int(k) >= 1:
    raise ValueError(f"exp.window (default averaging.gap) must be >= 1, got {k!r}")
  return int(k)


def parent_dir(config, exp, workdir: str, keep_steps) -> str:
  """``exp.parent`` if given (must hold the steps), else ``ensure_parent``."""
  if exp.parent:
    have = committed_steps(exp.parent)
    missing = [s for s in keep_steps if s not in have]
    if missing:
      raise FileNotFoundError(
        f"exp.parent={exp.parent!r} lacks committed checkpoints at {missing} (has {have})"
      )
    return os.path.abspath(exp.parent)
  return ensure_parent(config, workdir, keep_steps)


# ----------------------------------------------------------------------------
# plotting


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 5.0, height: float = 3.8):
  """``(fig, axes[nrows][ncols])`` on the Agg backend (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def save_figure(fig, path: str, label: str) -> str:
  """Adds ``label`` (the run's :func:`run_label`) under the plots and writes a PNG."""
  import matplotlib.pyplot as plt

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.text(0.5, 0.005, label, ha="center", va="bottom", fontsize=7, color="0.3")
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
