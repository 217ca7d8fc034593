"""The optax face of the averagers: wrappers whose state carries the average.

Exact in any chain position. A wrapper sees the real params θ_{t−1} in its
t-th ``update`` call, but not θ_t: a transform after it in ``optax.chain``
(``optax.scale``, ``contrib.reduce_on_plateau``, …) may still change the
update. So the state holds the average *without* its newest point,

    a_t = partial_t + w_t · θ_t          (float leaves; w_t = newest_weight[0]),

which is exact because every averager is linear in θ (``trajax.averaging``).
In call t + 1 the wrapper completes a_t with the θ_t it receives and
advances to ``partial_{t+1}`` (the averager run on a zero tree) and w_{t+1}
(the averager run on the scalar 1). :func:`averaged_params` ``(state,
params)`` completes it the same way; without ``params`` it answers only
where that is exact (w_t = 0: at init, or between the points of an average).
Plain-checkpoint readers: the average is ``partial + newest_weight[0] *
params`` on float leaves, the params themselves on the others. A state that
holds the complete average (the layout before this one) continues through
:func:`from_eager_state`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.transforms import _masking

from trajax.averaging import averagers
from trajax.averaging.averagers import _FLOAT32, Averager, AverageState, _is_concrete, _is_float

PyTree = Any
_MaskedNode = _masking.MaskedNode


class AveragingState(NamedTuple):
  """State of an averaging optax wrapper after t updates.

  Attributes:
    inner_state: the inner optimizer's state.
    count: int32 t, the number of updates.
    partial: a_t − w_t·θ_t for float leaves (the accumulator dtype); for
      non-float leaves the params of the previous update. None for 'none'.
    partial_snapshots: the averager's other trees (multi-point's snapshots),
      likewise without their θ_t part.
    newest_weight: (1 + len(partial_snapshots),) w_t, the weight of θ_t in
      the average and in each snapshot (float32; float64 with a float64
      accumulator).
  """

  inner_state: optax.OptState
  count: jax.Array
  partial: PyTree
  partial_snapshots: tuple
  newest_weight: jax.Array


def _complete_tree(partial: PyTree, weight: jax.Array, params: PyTree) -> PyTree:
  """partial + w·θ on float leaves; θ's leaf where the leaf is not a float."""

  def leaf(p, x):
    if isinstance(p, _MaskedNode) or isinstance(x, _MaskedNode):
      return p
    if not _is_float(p):
      return jnp.asarray(x, dtype=jnp.result_type(p))
    return p + weight.astype(p.dtype) * x.astype(p.dtype)

  return jax.tree.map(leaf, partial, params, is_leaf=lambda x: isinstance(x, _MaskedNode))


def _averager_state(state: AveragingState, params: PyTree) -> AverageState:
  """The averager's full state after t updates (θ_t = ``params``)."""
  average = _complete_tree(state.partial, state.newest_weight[0], params)
  snaps = tuple(
    _complete_tree(s, state.newest_weight[1 + i], params)
    for i, s in enumerate(state.partial_snapshots)
  )
  return AverageState(state.count, average, snaps)


def _weight_dtype(average: PyTree):
  """float32, or the accumulator's dtype where wider (float64)."""
  floats = [x for x in jax.tree.leaves(average) if _is_float(x)]
  return jnp.promote_types(floats[0].dtype, jnp.float32) if floats else _FLOAT32


def _newest_weight(averager: Averager, count: jax.Array, full: AverageState) -> jax.Array:
  """The weight of the next θ in each tree of the next state: the averager run
  on θ = 1 from a zero state of scalars (linearity)."""
  dtype = _weight_dtype(full.average)
  zero = jnp.zeros((), dtype)
  probe = AverageState(count, zero, tuple(zero for _ in full.snapshots))
  out = averager.update(jnp.ones((), dtype), probe)
  return jnp.stack([out.average, *out.snapshots]).astype(dtype)


def wrap(inner: optax.GradientTransformation, averager: Averager):
  """Runs ``inner`` unchanged and keeps ``averager``'s average of the params.

  The wrapper needs ``params`` in ``update``: the real θ_{t−1}, wherever it
  sits in a chain (module docstring). Nested in ``optax.MultiSteps`` it sees
  one update per real step; inside ``optax.apply_if_finite`` a skipped step
  leaves the average where it was. Read the average with
  :func:`averaged_params` ``(state, params)``.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    full = averager.init(params)
    if full.average is None:
      # a_t = θ_t: weight 1 on the newest params (and a non-empty array: Orbax
      # refuses zero-size ones).
      return AveragingState(inner.init(params), full.count, None, (), jnp.ones((1,)))
    weight = jnp.zeros((1 + len(full.snapshots),), _weight_dtype(full.average))
    return AveragingState(inner.init(params), full.count, full.average, full.snapshots, weight)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("trajax.averaging wrappers need params: call update(updates, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    if state.partial is None:  # 'none': nothing to keep
      return updates, state._replace(inner_state=inner_state, count=state.count + 1)
    full = _averager_state(state, params)  # a_{t−1}, exact: params is θ_{t−1}
    zeros = jax.tree.map(lambda x: jnp.zeros_like(x) if _is_float(x) else x, params)
    nxt = averager.update(zeros, full)
    weight = _newest_weight(averager, full.count, full)
    return updates, AveragingState(inner_state, nxt.count, nxt.average, nxt.snapshots, weight)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ProfileState(NamedTuple):
  """One profile's averager state after t updates, without its θ_t part (as
  :class:`AveragingState`, less the inner state): a_t = partial + w_t·θ_t."""

  count: jax.Array
  partial: PyTree
  partial_snapshots: tuple
  newest_weight: jax.Array


class ProfilesState(NamedTuple):
  """State of :func:`with_profiles`: the inner state and one :class:`ProfileState` per averager.

  Deliberately not an :class:`AveragingState`: :func:`find_states` and
  :func:`averaged_params` (the run's own average) do not see the profiles;
  :func:`profile_averages` reads them.
  """

  inner_state: optax.OptState
  profiles: tuple


def _profile_init(averager: Averager, params: PyTree) -> ProfileState:
  full = averager.init(params)
  if full.average is None:
    raise ValueError("a profile needs an averager that keeps an average (not 'none')")
  weight = jnp.zeros((1 + len(full.snapshots),), _weight_dtype(full.average))
  return ProfileState(full.count, full.average, full.snapshots, weight)


def _profile_update(averager: Averager, state: ProfileState, params: PyTree) -> ProfileState:
  full = _averager_state(state, params)  # a_{t−1}, exact: params is θ_{t−1}
  zeros = jax.tree.map(lambda x: jnp.zeros_like(x) if _is_float(x) else x, params)
  nxt = averager.update(zeros, full)
  weight = _newest_weight(averager, full.count, full)
  return ProfileState(nxt.count, nxt.average, nxt.snapshots, weight)


def with_profiles(inner: optax.GradientTransformation, averagers) -> optax.GradientTransformation:
  """Runs ``inner`` unchanged and keeps one average of the params per averager ("profiles").

  Extra in-training averages a post-hoc average is built from
  (:mod:`trajax.posthoc`; Karras et al. 2024 keep two power-function EMAs).
  Each is exact in any chain position, as :func:`wrap` (the module
  docstring): its state holds a_t without θ_t. Read them with
  :func:`profile_averages` ``(state, params)``. No averagers: ``inner`` itself
  (the state layout does not change).
  """
  averagers = tuple(averagers)
  if not averagers:
    return inner
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return ProfilesState(inner.init(params), tuple(_profile_init(a, params) for a in averagers))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("trajax.averaging profiles need params: call update(updates, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    profiles = tuple(
      _profile_update(a, p, params) for a, p in zip(averagers, state.profiles, strict=True)
    )
    return updates, ProfilesState(inner_state, profiles)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_profiles(opt_state) -> ProfilesState | None:
  """The :class:`ProfilesState` in ``opt_state`` (searched through nested states), or None."""
  is_state = lambda x: isinstance(x, ProfilesState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  if len(found) > 1:
    raise ValueError(f"opt_state holds {len(found)} profile states; expected at most one")
  return found[0] if found else None


def profile_averages(opt_state, params: PyTree) -> tuple:
  """The profiles' averages a^i_t held in ``opt_state``, with ``params`` = θ_t: one tree each.

  ``()`` when ``opt_state`` holds no profiles. Float leaves in the
  accumulator dtype; non-float leaves are ``params``' own.
  """
  state = find_profiles(opt_state)
  if state is None:
    return ()
  return tuple(_complete_tree(p.partial, p.newest_weight[0], params) for p in state.profiles)


def ema(inner, decay, *, start_step=0, every=1, debias=False, accumulator_dtype=_FLOAT32):
  """``inner`` plus an EMA of its params (see :func:`trajax.averaging.ema_averager`).

  The update needs ``params`` (the wrapper reads θ_t from them); the average
  a_t = (1 − δ) a_{t−1} + δ θ_t comes back from :func:`averaged_params`.

  Example:

    >>> import jax.numpy as jnp, optax
    >>> from trajax import averaging
    >>> opt = averaging.ema(optax.sgd(0.1), decay=0.5)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> for _ in range(2):  # θ_1 = 0.1, θ_2 = 0.2
    ...   updates, state = opt.update({"w": -jnp.ones(2)}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(averaging.averaged_params(state, params)["w"])  # ½·0.2 + ¼·0.1 + ¼·0
    [0.125 0.125]
  """
  return wrap(
    inner,
    averagers.ema_averager(
      decay,
      start_step=start_step,
      every=every,
      debias=debias,
      accumulator_dtype=accumulator_dtype,
    ),
  )


def power_ema(inner, gamma, *, start_step=0, every=1, accumulator_dtype=_FLOAT32):
  """``inner`` plus a power-function EMA of its params, profile ∝ t^γ (Karras et al. 2024;
  see :func:`trajax.averaging.power_ema_averager`)."""
  return wrap(
    inner,
    averagers.power_ema_averager(
      gamma, start_step=start_step, every=every, accumulator_dtype=accumulator_dtype
    ),
  )


def swa(inner, *, start_step=0, every=1, accumulator_dtype=_FLOAT32):
  """``inner`` plus SWA of its params (see :func:`trajax.averaging.swa_averager`)."""
  return wrap(
    inner,
    averagers.swa_averager(start_step=start_step, every=every, accumulator_dtype=accumulator_dtype),
  )


def two_point(inner, *, gap, start_step=0, accumulator_dtype=_FLOAT32):
  """``inner`` plus the two-point average ``gap`` steps apart (paper Sec. 4)."""
  return wrap(
    inner,
    averagers.two_point_averager(
      gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype
    ),
  )


def multi_point(inner, *, n, gap, start_step=0, accumulator_dtype=_FLOAT32):
  """``inner`` plus the n-point average, points ``gap`` apart (paper A.4)."""
  return wrap(
    inner,
    averagers.multi_point_averager(
      n=n, gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype
    ),
  )


def from_eager_state(inner_state, average: AverageState) -> AveragingState:
  """The wrapper state holding a complete averager state a_t (count t).

  For states written before the wrappers kept the newest point apart (an
  old checkpoint's ``opt_state`` = ``(inner_state, (count, average,
  snapshots))``, whose average already included θ_t): the result holds
  partial = a_t with weight 0 on θ_t, so ``averaged_params`` and the next
  update continue exactly. ``average`` may be any (count, average,
  snapshots) triple, e.g. the restored dict's values.
  """
  count, avg, snapshots = average
  if avg is None:
    return AveragingState(inner_state, jnp.asarray(count, jnp.int32), None, (), jnp.ones((1,)))
  snapshots = tuple(snapshots)
  weight = jnp.zeros((1 + len(snapshots),), _weight_dtype(avg))
  return AveragingState(inner_state, jnp.asarray(count, jnp.int32), avg, snapshots, weight)


def find_states(opt_state) -> list[tuple[str, AveragingState]]:
  """Every averaging wrapper's state in ``opt_state``, nested ones included,
  as ``(path, state)`` with the path written by ``jax.tree_util.keystr``."""
  found = []

  def visit(tree, prefix):
    is_state = lambda x: isinstance(x, AveragingState)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_state)[0]:
      if is_state(leaf):
        where = prefix + jax.tree_util.keystr(path)
        found.append((where, leaf))
        visit(leaf.inner_state, where + ".inner_state")

  if isinstance(opt_state, AveragingState):
    found.append(("", opt_state))
    visit(opt_state.inner_state, ".inner_state")
  else:
    visit(opt_state, "")
  return found


def averaged_params(opt_state, params: PyTree | None = None, *, where: str | None = None) -> PyTree:
  """The averaged params a_t held in ``opt_state`` with ``params`` = θ_t.

  ``params`` are the current params (after the t-th update). Float leaves
  come in the accumulator dtype (float32 by default); leaves no wrapper
  averages (other ``optax.multi_transform`` partitions, the 'none' method)
  are ``params``' own. Without ``params`` the stored state answers only where
  that is exact (no weight on θ_t, no masked partition, no non-float leaf
  moved since); otherwise it raises.

  Several wrappers: disjoint ones (e.g. one per ``optax.multi_transform``
  partition) are merged; overlapping ones (a wrapper inside another) raise
  unless ``where`` picks one by its path in :func:`find_states`, e.g.
  ``averaged_params(state, params, where=".inner_state")``.

  Example:

    >>> import jax.numpy as jnp, optax
    >>> from trajax import averaging
    >>> opt = averaging.two_point(optax.sgd(1.0), gap=1)
    >>> params = {"w": jnp.zeros(())}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": -jnp.ones(())}, state, params)
    >>> params = optax.apply_updates(params, updates)  # θ_1 = 1
    >>> print(averaging.averaged_params(state, params)["w"])  # (θ_0 + θ_1) / 2
    0.5
  """
  states = find_states(opt_state)
  if not states:
    raise ValueError(
      "no trajax averaging state in opt_state: wrap the optimizer with "
      "trajax.averaging.ema/swa/two_point/multi_point"
    )
  if where is not None:
    states = [(w, s) for w, s in states if w == where]
    if not states:
      paths = [w for w, _ in find_states(opt_state)]
      raise ValueError(f"where={where!r}: no averaging wrapper there; they are at {paths}")
  if params is None:
    return _without_params(states)
  if all(state.partial is None for _, state in states):
    return params  # 'none' keeps no copy: the average is the params
  is_masked = lambda x: isinstance(x, _MaskedNode)
  leaves, treedef = jax.tree.flatten(params)
  out, owner = list(leaves), [None] * len(leaves)
  for path, state in states:
    if state.partial is None:
      continue
    average = _complete_tree(state.partial, state.newest_weight[0], params)
    per_leaf = jax.tree.leaves(
      jax.tree.map(lambda p, a: a, params, average, is_leaf=is_masked), is_leaf=is_masked
    )
    for i, a in enumerate(per_leaf):
      if is_masked(a):
        continue
      if owner[i] is not None:
        raise ValueError(
          f"the averaging wrappers at {owner[i]!r} and {path!r} both average the same "
          "params: pick one with averaged_params(opt_state, params, where=<its path>)"
        )
      out[i], owner[i] = a, path
  return jax.tree.unflatten(treedef, out)


def _without_params(states) -> PyTree:
  if len(states) != 1:
    raise ValueError(
      f"opt_state holds {len(states)} averaging wrappers: pass params to merge them, "
      "or where= to pick one (paths: find_states)"
    )
  state = states[0][1]
  reason = None
  if state.partial is None:
    reason = "the 'none' averaging method keeps no copy"
  elif not all(_is_concrete(x) for x in (state.count, state.newest_weight)):
    reason = "under jit the weight of the newest point cannot be read"
  elif any(
    isinstance(x, _MaskedNode)
    for x in jax.tree.leaves(state.partial, is_leaf=lambda x: isinstance(x, _MaskedNode))
  ):
    reason = "other partitions come from params"
  elif float(state.newest_weight[0]) != 0.0:
    reason = (
      f"the newest params θ_t carry weight {float(state.newest_weight[0]):.4g} in the "
      "average and the wrapper has not seen them"
    )
  elif int(state.count) > 0 and not all(_is_float(x) for x in jax.tree.leaves(state.partial)):
    reason = "non-float leaves follow the newest params"
  if reason is not None:
    raise ValueError(f"averaged_params needs params ({reason}): pass params=")
  return state.partial
