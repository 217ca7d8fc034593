"""Train-state layouts written by older trajax, converted when they are restored.

The averaging wrapper's state (:class:`trajax.averaging.AveragingState`) has
had three layouts. On disk (the plain nested dict of :mod:`trajax.checkpoint`)
a wrapper's node read:

1. before issue 10, the complete average a_t (θ_t included)::

     {"inner_state", "average": {"count": t, "average": a_t, "snapshots": {"0": …}}}

2. from issue 10 to issue 23, the average without its newest point,
   a_t = partial + w_t·θ_t, multi-point snapshots a shift register (newest
   first, each without its θ_t part); profiles (issue 13) likewise, less
   ``inner_state``::

     {"inner_state", "count", "partial", "partial_snapshots", "newest_weight"}

3. now (issue 23): the lerp form and multi-point's ring buffer::

     {"inner_state", "count", "previous", "snapshots", "ring_position", "weights"}

An old node is restored into its own shapes (the same arrays under their old
names; the target is derived from the current one) and continued by
:func:`trajax.averaging.from_eager_state` from the complete state it stands
for: layout 1 holds it; layout 2 is completed with the params restored beside
it (``partial + w·θ_t`` per tree, the very sum its own ``averaged_params``
formed), so the stored average keeps its meaning exactly. The params, the
inner optimizer state and everything else are the stored arrays unchanged.
Any other difference between a checkpoint and the run's layout is not a known
old layout and is left to Orbax's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

__all__ = [
  "is_old_averaging_layout",
  "old_averaging_target",
  "stored_in_old_layout",
  "upgrade_averaging",
]

_NEW_KEYS = frozenset({"inner_state", "count", "previous", "snapshots", "ring_position", "weights"})
_NEW_PROFILE_KEYS = _NEW_KEYS - {"inner_state"}
_PARTIAL_KEYS = frozenset({"inner_state", "count", "partial", "partial_snapshots", "newest_weight"})
_PARTIAL_PROFILE_KEYS = _PARTIAL_KEYS - {"inner_state"}
_OLD_KEYS = frozenset({"inner_state", "average"})
_OLD_AVERAGE_KEYS = frozenset({"count", "average", "snapshots"})


def _is_complete(node) -> bool:
  """Layout 1: the complete average."""
  return (
    isinstance(node, Mapping)
    and set(node) == _OLD_KEYS
    and isinstance(node["average"], Mapping)
    and set(node["average"]) <= _OLD_AVERAGE_KEYS
    and "count" in node["average"]
  )


def _is_partial(node) -> bool:
  """Layout 2: the average without its newest point (a wrapper or a profile)."""
  return isinstance(node, Mapping) and set(node) in (_PARTIAL_KEYS, _PARTIAL_PROFILE_KEYS)


def _is_new(node) -> bool:
  return isinstance(node, Mapping) and set(node) in (_NEW_KEYS, _NEW_PROFILE_KEYS)


def is_old_averaging_layout(stored) -> bool:
  """Whether a stored state tree (arrays or Orbax metadata) holds a node of layout 1 or 2."""
  if _is_complete(stored) or _is_partial(stored):
    return True
  return isinstance(stored, Mapping) and any(is_old_averaging_layout(v) for v in stored.values())


def stored_in_old_layout(item: str):
  """The Orbax ``state`` item's tree metadata when it holds an averaging node of an
  old layout (truthy; pass it to :func:`old_averaging_target`), else None.

  Read from Orbax's tree metadata (no array is read).
  """
  import orbax.checkpoint as ocp

  try:
    with ocp.StandardCheckpointer() as ckptr:
      stored = ckptr.metadata(item).item_metadata
  except Exception:  # noqa: BLE001 -- unreadable metadata: the restore itself reports it
    return None
  stored = getattr(stored, "tree", stored)  # Orbax's tree metadata wraps the nested dict
  if not is_old_averaging_layout(stored):
    return None
  logging.info("%s: averaging state of an older layout; converting", item)
  return stored


def _slot(ring_leaf):
  """The abstract array of one ring slot: the leading axis dropped, sharding alike."""
  sharding = getattr(ring_leaf, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(ring_leaf.shape) - len(sharding.spec))
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
  return jax.ShapeDtypeStruct(ring_leaf.shape[1:], ring_leaf.dtype, sharding=sharding)


def _old_trees(target):
  """(average, snapshots dict, number of weights) of an old node, from a new one."""
  if target["ring_position"] is None:
    return target["previous"], {}, 1
  slot = jax.tree.map(_slot, target["snapshots"])
  n = jax.tree.leaves(target["snapshots"])[0].shape[0]
  return slot, {str(i): slot for i in range(n - 1)}, n


def old_averaging_target(target: Any, stored: Any = None) -> Any:
  """``target`` (a state dict in the current layout) with every wrapper node in the
  layout ``stored`` (:func:`stored_in_old_layout`) has there; without ``stored``,
  layout 1.

  The old node holds the same kind of arrays: its averages have the shapes,
  dtypes and shardings of the params (a ring slot's), its weights one per tree.
  """
  if _is_new(target):
    average, snapshots, size = _old_trees(target)
    inner = target.get("inner_state")
    sub = stored.get("inner_state") if isinstance(stored, Mapping) else None
    if _is_partial(stored):
      weights = target["weights"]
      out = {
        "count": target["count"],
        "partial": average,
        "partial_snapshots": snapshots,
        "newest_weight": jax.ShapeDtypeStruct(
          (size,), weights.dtype, sharding=getattr(weights, "sharding", None)
        ),
      }
      if inner is not None:
        out["inner_state"] = old_averaging_target(inner, sub)
      return out
    if inner is None:  # a profile: no layout-1 form; left to Orbax
      return target
    old = {"count": target["count"], "average": average, "snapshots": snapshots}
    return {"inner_state": old_averaging_target(inner, sub), "average": old}
  if isinstance(target, Mapping):
    return {
      k: old_averaging_target(v, stored.get(k) if isinstance(stored, Mapping) else None)
      for k, v in target.items()
    }
  return target


def _complete(partial, weight, params):
  """partial + w·θ on float leaves, θ's own leaf on the others (layout 2's reading)."""

  def leaf(p, x):
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating):
      return np.asarray(x, p.dtype)
    return p + np.asarray(weight, p.dtype) * np.asarray(x, p.dtype)

  try:
    return jax.tree.map(leaf, partial, params)
  except ValueError as e:
    raise ValueError(
      "an averaging state of layout 2 (partial + w·θ) does not match the params restored "
      f"beside it, so it cannot be completed: {e}"
    ) from None


def _place_like(out, target):
  """Every array of the converted node on the target's sharding (inner_state kept)."""

  def leaf(x, t):
    sharding = getattr(t, "sharding", None)
    return x if sharding is None else jax.device_put(x, sharding)

  return {k: v if k == "inner_state" else jax.tree.map(leaf, v, target[k]) for k, v in out.items()}


def _upgrade_node(tree, target, params):
  from flax import serialization

  from trajax import averaging

  ring = target["ring_position"] is not None
  inner = None
  if "inner_state" in target:
    inner = upgrade_averaging(tree["inner_state"], target["inner_state"], params=params)
  if _is_complete(tree):
    old = tree["average"]
    count, average = old["count"], old.get("average")
    snapshots = old.get("snapshots") or {}
    snapshots = [snapshots[str(i)] for i in range(len(snapshots))]
  else:
    w = np.asarray(tree["newest_weight"])
    count, average, snapshots = tree["count"], None, []
    if tree["partial"] is not None:
      if params is None:
        raise ValueError("an averaging state of layout 2 needs the params beside it to convert")
      average = _complete(tree["partial"], w[0], params)
      stored = tree.get("partial_snapshots") or {}
      snapshots = [_complete(stored[str(i)], w[1 + i], params) for i in range(len(stored))]
  if inner is None:
    state = averaging.profile_from_eager_state((count, average, snapshots), ring=ring)
  else:
    state = averaging.from_eager_state(inner, (count, average, snapshots), ring=ring)
  out = serialization.to_state_dict(state)
  if inner is not None:
    out["inner_state"] = inner  # already a state dict: kept as restored
  return _place_like(out, target)


def upgrade_averaging(tree: Any, target: Any, *, params: Any = None) -> Any:
  """A restored old-layout state dict in the current layout (``target``'s, a state dict).

  Each old wrapper (or profile) node becomes the state
  :func:`trajax.averaging.from_eager_state` gives for the complete averager
  state it stands for; layout 2 is completed with ``params`` (default: the
  ``params`` entry of the top-level ``tree``, a train state's). New arrays
  are placed like ``target``'s.
  """
  if params is None and isinstance(tree, Mapping):
    params = tree.get("params")
  if _is_new(target) and (_is_complete(tree) or _is_partial(tree)):
    return _upgrade_node(tree, target, params)
  if isinstance(tree, Mapping) and isinstance(target, Mapping):
    return {
      k: upgrade_averaging(v, target[k], params=params) if k in target else v
      for k, v in tree.items()
    }
  return tree
