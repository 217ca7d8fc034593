"""Train-state layouts written by older trajax, converted when they are restored.

The averaging wrapper's state changed with the exact optax face (issue 10,
item 5). Before, ``opt_state`` held ``AveragingState(inner_state, average)``
with ``average = AverageState(count, average, snapshots)``: the *complete*
average a_t, θ_t included. On disk (the plain nested dict of
:mod:`trajax.checkpoint`) a wrapper's node read::

  {"inner_state": ..., "average": {"count": t, "average": a_t, "snapshots": {...}}}

Now it is ``{"inner_state", "count", "partial", "partial_snapshots",
"newest_weight"}`` with the newest point kept apart. An old node is restored
into the old shapes (the same arrays under other names) and continued by
:func:`trajax.averaging.from_eager_state` (partial = a_t, weight 0 on θ_t),
which ``averaged_params`` and the next update continue exactly; the params,
the inner optimizer state and everything else are the stored arrays
unchanged. Any other difference between a checkpoint and the run's layout is
not a known old layout and is left to Orbax's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

__all__ = [
  "is_old_averaging_layout",
  "old_averaging_target",
  "stored_in_old_layout",
  "upgrade_averaging",
]

_NEW_KEYS = frozenset({"inner_state", "count", "partial", "partial_snapshots", "newest_weight"})
_OLD_KEYS = frozenset({"inner_state", "average"})
_OLD_AVERAGE_KEYS = frozenset({"count", "average", "snapshots"})


def _is_old(node) -> bool:
  return (
    isinstance(node, Mapping)
    and set(node) == _OLD_KEYS
    and isinstance(node["average"], Mapping)
    and set(node["average"]) <= _OLD_AVERAGE_KEYS
    and "count" in node["average"]
  )


def _is_new(node) -> bool:
  return isinstance(node, Mapping) and set(node) == _NEW_KEYS


def is_old_averaging_layout(stored) -> bool:
  """Whether a stored state tree (arrays or Orbax metadata) holds an old wrapper node."""
  if _is_old(stored):
    return True
  return isinstance(stored, Mapping) and any(is_old_averaging_layout(v) for v in stored.values())


def stored_in_old_layout(item: str) -> bool:
  """Whether the Orbax ``state`` item at ``item`` holds an averaging node of the old layout.

  Read from Orbax's tree metadata (no array is read).
  """
  import orbax.checkpoint as ocp

  try:
    with ocp.StandardCheckpointer() as ckptr:
      stored = ckptr.metadata(item).item_metadata
  except Exception:  # noqa: BLE001 -- unreadable metadata: the restore itself reports it
    return False
  stored = getattr(stored, "tree", stored)  # Orbax's tree metadata wraps the nested dict
  old = is_old_averaging_layout(stored)
  if old:
    logging.info("%s: averaging state of the old layout (complete average); converting", item)
  return old


def old_averaging_target(target: Any) -> Any:
  """``target`` (a state dict in the current layout) with every wrapper node in the old one.

  The old node holds the same arrays: ``average`` has ``partial``'s shapes,
  dtypes and shardings, ``snapshots`` those of ``partial_snapshots``.
  """
  if _is_new(target):
    average = {"count": target["count"], "average": target["partial"]}
    average["snapshots"] = target["partial_snapshots"]
    return {"inner_state": old_averaging_target(target["inner_state"]), "average": average}
  if isinstance(target, Mapping):
    return {k: old_averaging_target(v) for k, v in target.items()}
  return target


def upgrade_averaging(tree: Any, target: Any) -> Any:
  """A restored old-layout state dict in the current layout (``target``'s, a state dict).

  Each old wrapper node becomes :func:`trajax.averaging.from_eager_state`'s
  state; its new ``newest_weight`` is placed like ``target``'s.
  """
  from flax import serialization

  from trajax import averaging

  if _is_new(target) and _is_old(tree):
    old = tree["average"]
    snapshots = old.get("snapshots") or {}
    snapshots = tuple(snapshots[str(i)] for i in range(len(snapshots)))
    inner = upgrade_averaging(tree["inner_state"], target["inner_state"])
    state = averaging.from_eager_state(inner, (old["count"], old.get("average"), snapshots))
    out = serialization.to_state_dict(state)
    out["inner_state"] = inner  # already a state dict: kept as restored
    sharding = getattr(target["newest_weight"], "sharding", None)
    if sharding is not None:
      out["newest_weight"] = jax.device_put(out["newest_weight"], sharding)
    return out
  if isinstance(tree, Mapping) and isinstance(target, Mapping):
    return {k: upgrade_averaging(v, target[k]) if k in target else v for k, v in tree.items()}
  return tree
