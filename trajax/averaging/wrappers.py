"""The optax face of the averagers: wrappers whose state carries the average.

Exact in any chain position. A wrapper sees the real params θ_{t−1} in its
t-th ``update`` call, but not θ_t: a transform after it in ``optax.chain``
(``optax.scale``, ``contrib.reduce_on_plateau``, …) may still change the
update. So the state holds the average up to θ_{t−1} and the weight θ_t will
get, and the average is completed with θ_t where it is read
(:func:`averaged_params` ``(state, params)``) and in the next update:

* lerp-form methods (EMA, SWA, power EMA; ``Averager.weight``):
  ``a_t = previous + w_t·(θ_t − previous)`` with ``previous = a_{t−1}`` and
  ``(w_t, 1) = weights`` (:func:`trajax.averaging.averagers.lerp`: the weights
  sum to one in floating point, so float32 does not drift; issue 23);
* multi-point (``Averager.points``): a ring buffer of n snapshots, each leaf
  stacked on a leading axis of n; an update writes one slot (one snapshot
  per ``gap`` steps: θ_t, once it is seen), so its cost does not depend on n;
  the average ``a_t = weights[0]·θ_t + Σ_i weights[1+i]·snapshots[i]`` is
  formed only where it is read;
* any other single-tree linear averager: ``a_t = u_t·(previous + w_t·(θ_t −
  previous))``, ``weights = (w_t, u_t)`` probed from the averager (by
  linearity, a_t = α a_{t−1} + β θ_t with u = α + β, w = β/u).

Without ``params`` :func:`averaged_params` answers only where that is exact
(no weight on θ_t). Plain-checkpoint readers use the formulas above (non-float
leaves: the params' own). States of older layouts continue through
:func:`from_eager_state` (:mod:`trajax.checkpoint_layout` converts them).

Why one module of over 500 lines: the generic wrapper, one named constructor
per method and the state readers (``averaged_params``, profiles, older
layouts) all rest on the state's invariants written at the top; they change
together.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.transforms import _masking

from trajax.averaging import averagers
from trajax.averaging.averagers import FLOAT32, Averager, AverageState, is_concrete, is_float

PyTree = Any
_MaskedNode = _masking.MaskedNode
_is_masked = lambda x: isinstance(x, _MaskedNode)


class AveragingState(NamedTuple):
  """State of an averaging optax wrapper after t updates.

  Attributes:
    inner_state: the inner optimizer's state.
    count: int32 t, the number of updates.
    previous: lerp-form and other single-tree methods: the average before θ_t
      (a_{t−1}, or a_t itself where ``weights[0]`` is 0), float leaves in the
      accumulator dtype, non-float leaves as last seen. None for 'none' and
      multi-point.
    snapshots: multi-point: the ring buffer, each leaf stacked (n, …); ``()``
      otherwise.
    ring_position: multi-point: int32 (2,), the slot the next snapshot goes to
      and 1 if θ_t is a snapshot not yet written; None otherwise.
    weights: float32 (float64 with a float64 accumulator): ``(w_t, u_t)``
      for single-tree methods (u = 1 for the lerp-form ones), (1 + n,) for
      multi-point (θ_t's weight, then each slot's); 'none': (1,) ones.
  """

  inner_state: optax.OptState
  count: jax.Array
  previous: PyTree
  snapshots: Any
  ring_position: jax.Array | None
  weights: jax.Array


class _Face(NamedTuple):
  """The averaging part of a wrapper's state (AveragingState less inner_state)."""

  count: jax.Array
  previous: PyTree
  snapshots: Any
  ring_position: jax.Array | None
  weights: jax.Array


def _leaves_map(fn, tree, params):
  """fn(leaf, param) over ``tree``'s leaves; masked partitions stay masked."""

  def leaf(a, x):
    if _is_masked(a) or _is_masked(x):
      return a
    return fn(a, x)

  return jax.tree.map(leaf, tree, params, is_leaf=_is_masked)


def _weight_dtype(tree: PyTree):
  """float32, or the accumulator's dtype where wider (float64)."""
  floats = [x for x in jax.tree.leaves(tree) if is_float(x)]
  return jnp.promote_types(floats[0].dtype, jnp.float32) if floats else FLOAT32


def _read(face: _Face, params: PyTree) -> PyTree:
  """a_t from the stored face and θ_t = ``params`` (module docstring)."""
  if face.ring_position is not None:
    c = face.weights

    def leaf(ring, x):
      if not is_float(ring):
        return jnp.asarray(x, dtype=ring.dtype)
      w = c.astype(ring.dtype)
      return jnp.tensordot(w[1:], ring, axes=1) + w[0] * x.astype(ring.dtype)

    return _leaves_map(leaf, face.snapshots, params)
  w, u = face.weights[0], face.weights[1]

  def leaf(a, x):
    if not is_float(a):
      return jnp.asarray(x, dtype=a.dtype)
    # u = 1 exactly for lerp-form methods: the product is exact.
    return u.astype(a.dtype) * averagers.lerp(a, x.astype(a.dtype), w.astype(a.dtype))

  return _leaves_map(leaf, face.previous, params)


def _check_averager(averager: Averager):
  if averager.weight is None and averager.points is None:
    probe = averager.init(jnp.zeros(()))
    if probe.snapshots:
      raise ValueError(
        "trajax.averaging.wrap: an averager with snapshots needs Averager.points (the ring "
        "buffer's schedule); only single-tree averagers work without it"
      )


def _face_init(averager: Averager, params: PyTree) -> _Face:
  full = averager.init(params)
  if full.average is None:
    # a_t = θ_t: weight 1 on the newest params (a non-empty array: Orbax
    # refuses zero-size ones).
    return _Face(full.count, None, (), None, jnp.ones((1,)))
  # a_0 = θ_0 held with weight 0 on θ_0 (so it reads without params); for
  # multi-point θ_0 is also every snapshot slot, which the snapshot count
  # keeps out of the average until they are filled.
  return _eager_face(full.count, full.average, full.snapshots, ring=averager.points is not None)


def _face_update(averager: Averager, face: _Face, params: PyTree) -> _Face:
  """The face after the (t+1)-th update, given θ_t = ``params`` (face: after t)."""
  count = face.count + 1
  if face.ring_position is not None:
    n = averager.points.n
    head, pending = face.ring_position[0], face.ring_position[1] > 0

    def write(ring, x):
      # One slot read and written (in place when the state is donated).
      x = jnp.asarray(x, ring.dtype)
      return ring.at[head].set(jnp.where(pending, x, ring[head]))

    ring = _leaves_map(write, face.snapshots, params)
    c0, slots = face.weights[0], face.weights[1:]
    slots = jnp.where(pending, slots.at[head].set(c0), slots)
    head = jnp.where(pending, (head + 1) % n, head)
    # The weights of a_{t+1}: follow θ_{t+1}; or, at a snapshot, the mean of
    # θ_{t+1} and the m − 1 newest slots; or the average held.
    follow, snap, taken = averager.points.schedule(count)
    m = jnp.clip(taken, 1, n)
    wdt = face.weights.dtype
    inv_m = (1.0 / m.astype(wdt)).astype(wdt)
    age = (head - 1 - jnp.arange(n)) % n
    fresh = jnp.concatenate([inv_m[None], jnp.where(age < m - 1, inv_m, 0.0).astype(wdt)])
    held = jnp.concatenate([jnp.zeros((1,), wdt), slots])
    following = jnp.zeros((1 + n,), wdt).at[0].set(1.0)
    weights = jnp.where(follow, following, jnp.where(snap, fresh, held))
    position = jnp.stack([head.astype(jnp.int32), snap.astype(jnp.int32)])
    return _Face(count, None, ring, position, weights)
  if face.previous is None:  # 'none'
    return face._replace(count=count)
  average = _read(face, params)  # a_t, θ_t = params
  wdt = face.weights.dtype
  if averager.weight is not None:
    weights = jnp.stack([averager.weight(count).astype(wdt), jnp.ones((), wdt)])
  else:
    # a_{t+1} = α a_t + β θ_{t+1}, α and β read off the averager (linearity).
    prev = AverageState(face.count, jnp.ones((), wdt))
    alpha = averager.update(jnp.zeros((), wdt), prev).average
    beta = averager.update(jnp.ones((), wdt), prev._replace(average=jnp.zeros((), wdt))).average
    u = alpha + beta
    w = jnp.where(u == 0, 0.0, beta / jnp.where(u == 0, 1.0, u))
    weights = jnp.stack([w, u]).astype(wdt)
  return _Face(count, average, (), None, weights)


def _face_of(state) -> _Face:
  return _Face(state.count, state.previous, state.snapshots, state.ring_position, state.weights)


def wrap(inner: optax.GradientTransformation, averager: Averager):
  """Runs ``inner`` unchanged and keeps ``averager``'s average of the params.

  The wrapper needs ``params`` in ``update``: the real θ_{t−1}, wherever it
  sits in a chain (module docstring). Nested in ``optax.MultiSteps`` it sees
  one update per real step; inside ``optax.apply_if_finite`` a skipped step
  leaves the average where it was. Read the average with
  :func:`averaged_params` ``(state, params)``.
  """
  inner = optax.with_extra_args_support(inner)
  _check_averager(averager)

  def init_fn(params):
    return AveragingState(inner.init(params), *_face_init(averager, params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("trajax.averaging wrappers need params: call update(updates, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    return updates, AveragingState(inner_state, *_face_update(averager, _face_of(state), params))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ProfileState(NamedTuple):
  """One profile's averager state after t updates, without θ_t (as
  :class:`AveragingState`, less the inner state; the same formulas)."""

  count: jax.Array
  previous: PyTree
  snapshots: Any
  ring_position: jax.Array | None
  weights: jax.Array


class ProfilesState(NamedTuple):
  """State of :func:`with_profiles`: the inner state and one :class:`ProfileState` per averager.

  Deliberately not an :class:`AveragingState`: :func:`find_states` and
  :func:`averaged_params` (the run's own average) do not see the profiles;
  :func:`profile_averages` reads them.
  """

  inner_state: optax.OptState
  profiles: tuple


def _profile_init(averager: Averager, params: PyTree) -> ProfileState:
  if averager.init(jnp.zeros(())).average is None:
    raise ValueError("a profile needs an averager that keeps an average (not 'none')")
  _check_averager(averager)
  return ProfileState(*_face_init(averager, params))


def _profile_update(averager: Averager, state: ProfileState, params: PyTree) -> ProfileState:
  return ProfileState(*_face_update(averager, _face_of(state), params))


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
  return tuple(_read(_face_of(p), params) for p in state.profiles)


def ema(inner, decay, *, start_step=0, every=1, debias=False, accumulator_dtype=FLOAT32):
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


def power_ema(inner, gamma, *, start_step=0, every=1, accumulator_dtype=FLOAT32):
  """``inner`` plus a power-function EMA of its params, profile ∝ t^γ (Karras et al. 2024;
  see :func:`trajax.averaging.power_ema_averager`)."""
  return wrap(
    inner,
    averagers.power_ema_averager(
      gamma, start_step=start_step, every=every, accumulator_dtype=accumulator_dtype
    ),
  )


def swa(inner, *, start_step=0, every=1, accumulator_dtype=FLOAT32):
  """``inner`` plus SWA of its params (see :func:`trajax.averaging.swa_averager`)."""
  return wrap(
    inner,
    averagers.swa_averager(start_step=start_step, every=every, accumulator_dtype=accumulator_dtype),
  )


def two_point(inner, *, gap, start_step=0, accumulator_dtype=FLOAT32):
  """``inner`` plus the two-point average ``gap`` steps apart (paper Sec. 4)."""
  return wrap(
    inner,
    averagers.two_point_averager(
      gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype
    ),
  )


def multi_point(inner, *, n, gap, start_step=0, accumulator_dtype=FLOAT32):
  """``inner`` plus the n-point average, points ``gap`` apart (paper A.4)."""
  return wrap(
    inner,
    averagers.multi_point_averager(
      n=n, gap=gap, start_step=start_step, accumulator_dtype=accumulator_dtype
    ),
  )


def _eager_face(count, avg, snapshots, *, ring: bool | None = None) -> _Face:
  """The face holding a complete averager state (a_t, snapshots newest first);
  ``ring``: multi-point (default: when there are snapshots)."""
  count = jnp.asarray(count, jnp.int32)
  if avg is None:
    return _Face(count, None, (), None, jnp.ones((1,)))
  snapshots = tuple(snapshots)
  wdt = _weight_dtype(avg)
  if not (snapshots if ring is None else ring):
    return _Face(count, avg, (), None, jnp.array([0.0, 1.0], wdt))
  # Multi-point, n = len(snapshots) + 1: slot 0 holds a_t with weight 1 (it
  # is the oldest slot, overwritten by the next snapshot, which averages the
  # n − 1 newest: s_0 in slot n − 1, s_1 in slot n − 2, …).
  trees = (avg, *reversed(snapshots))
  ring = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
  weights = jnp.zeros((1 + len(trees),), wdt).at[1].set(1.0)
  return _Face(count, None, ring, jnp.zeros((2,), jnp.int32), weights)


def from_eager_state(
  inner_state, average: AverageState, *, ring: bool | None = None
) -> AveragingState:
  """The wrapper state holding a complete averager state a_t (count t).

  For states written before the wrappers kept the newest point apart (an
  old checkpoint's ``opt_state`` = ``(inner_state, (count, average,
  snapshots))``, whose average already included θ_t), and, completed with
  the params, for those of the layout before the lerp form and the ring
  (:mod:`trajax.checkpoint_layout`): the result reads a_t with weight 0 on
  θ_t, so ``averaged_params`` and the next update continue exactly. For
  multi-point the n − 1 snapshots (newest first) go into the ring and a_t
  into the slot the next snapshot takes. ``average`` may be any (count,
  average, snapshots) triple, e.g. the restored dict's values; ``ring``
  says it is multi-point (needed for n = 1, which has no snapshots).
  """
  count, avg, snapshots = average
  return AveragingState(inner_state, *_eager_face(count, avg, snapshots, ring=ring))


def profile_from_eager_state(average: AverageState, *, ring: bool | None = None) -> ProfileState:
  """:func:`from_eager_state` for one profile of :func:`with_profiles`."""
  count, avg, snapshots = average
  return ProfileState(*_eager_face(count, avg, snapshots, ring=ring))


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
  if all(_is_none(state) for _, state in states):
    return params  # 'none' keeps no copy: the average is the params
  is_masked = lambda x: isinstance(x, _MaskedNode)
  leaves, treedef = jax.tree.flatten(params)
  out, owner = list(leaves), [None] * len(leaves)
  for path, state in states:
    if _is_none(state):
      continue
    average = _read(_face_of(state), params)
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


def _is_none(state) -> bool:
  return state.previous is None and state.ring_position is None


def _without_params(states) -> PyTree:
  if len(states) != 1:
    raise ValueError(
      f"opt_state holds {len(states)} averaging wrappers: pass params to merge them, "
      "or where= to pick one (paths: find_states)"
    )
  state = states[0][1]
  trees = state.snapshots if state.ring_position is not None else state.previous
  reason = None
  if _is_none(state):
    reason = "the 'none' averaging method keeps no copy"
  elif not all(is_concrete(x) for x in (state.count, state.weights)):
    reason = "under jit the weight of the newest point cannot be read"
  elif any(_is_masked(x) for x in jax.tree.leaves(trees, is_leaf=_is_masked)):
    reason = "other partitions come from params"
  elif float(state.weights[0]) != 0.0:
    reason = (
      f"the newest params θ_t carry weight {float(state.weights[0]):.4g} in the "
      "average and the wrapper has not seen them"
    )
  elif int(state.count) > 0 and not all(is_float(x) for x in jax.tree.leaves(trees)):
    reason = "non-float leaves follow the newest params"
  if reason is not None:
    raise ValueError(f"averaged_params needs params ({reason}): pass params=")
  if state.ring_position is None:
    return jax.tree.map(lambda a: state.weights[1].astype(a.dtype) * a, state.previous)
  c = state.weights[1:]
  return jax.tree.map(lambda r: jnp.tensordot(c.astype(r.dtype), r, axes=1), state.snapshots)
