"""Figures 6 and 8: how far apart trajectories end up in weight space (paper Sec. 5).

Figure 6 (two-point average vs the lambda/2 side-trip). From the branch point
S (paper: 75k of 100k steps) three runs leave the same state theta_S:

* theta^lambda_{S+j}: the main run, lr lambda, on the parent's batch stream
  (it replays the parent bit-for-bit; the JSON records the check);
* theta^{lambda/2}_{S+j}: the side-trip with every learning rate halved, same
  batches, same optimizer state (momentum trace included);
* theta''_{S+j}: lr lambda on a *different batch order*: the training stream read
  from position S + T + j instead of S + j (T = total_steps), batches the
  parent never saw in that order.

and, for j on a grid over the window k (default ``averaging.gap``: the span of
the paper's two-point average)::

    D_avg(j)    = || (theta^lambda_S + theta^lambda_{S+j})/2 - theta^{lambda/2}_{S+j} ||_2
    D_orders(j) = || theta^lambda_{S+j} - theta''_{S+j} ||_2
    D_travel(j) = || theta^lambda_{S+j} - theta^lambda_S ||_2     (the scale of the move)

By Lemma 2 / Table 1 the two-point average over j steps is the side-trip with
lambda/2 when fixed-batch gradients do not change; on a real network the two
land at distinct points (D_avg > 0) that are closer than two runs on
different batch orders (D_avg < D_orders), with matching losses. Losses and
accuracies of the average, the lambda/2 side-trip and the lambda run are
evaluated at j = 1, 10, 100, ... and k, all three with BatchNorm statistics
recomputed for their weights (as the engine does for averages): the running
statistics of a run lag its weights, and an average has none of its own, so
recomputing for every point makes each loss a function of the weights alone
and the three comparable (at tiny scale the lag alone moved the test loss by
more than the weights did).

Figure 8 (basins of attraction). From a burn-in point B a second run theta'
continues on a different batch order (stream position t + T) to T; then::

    d(t) = || theta_t - theta'_T ||_2,    t in [B, T],

along the main trajectory decreases and saturates at ||theta_T - theta'_T||,
the radius of the "sphere around a fixed minimum" the independent solutions
land on. Also recorded: ||theta'_t - theta_T|| (the symmetric curve),
||theta_t - theta'_t|| and ||theta_t - theta_T|| (-> 0, a replay check).

Usage (small scale, a few minutes on 2 CPU cores; the ImageNet/CIFAR configs
give the paper's scale, where k = 5000 and S = 75k)::

  python -m experiments.fig6_8_distances --config=configs/mnist1d.py --workdir=workdirs/fig6_8

Writes ``WORKDIR/fig6_distances.{json,png}`` and ``WORKDIR/fig8_basin.{json,png}``.

This module also holds :class:`Runner`, the lock-step driver the other
real-trajectory figures reuse: a copy of a restored state stepped with the
engine's own jitted ``trajax.train`` step, with a learning-rate factor and a
position in the training stream of its own.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import numpy as np

from experiments import common

NAME = "fig6_8_distances"


def experiment_defaults():
  """The experiment's knobs (``--exp.<field>``); None: derived from the config."""
  import ml_collections as mlc

  e = mlc.ConfigDict()
  # Fig. 6 branch point S = round(branch_fraction * total_steps) (paper 75k/100k).
  e.branch_fraction = 0.75
  # Fig. 6 window k; default averaging.gap (the two-point average's span).
  e.window = mlc.FieldReference(None, field_type=int)
  # Fig. 8 shared segment: the independent run leaves the main one at
  # B = round(burnin_fraction * total_steps).
  e.burnin_fraction = 0.5
  # Distance measurements per curve (plus j = 1, 10, 100, ... for Fig. 6).
  e.points = 20
  # Fixed training batches for the training loss (a full pass over ImageNet
  # at every evaluation point would dominate the cost).
  e.train_eval_batches = 10
  # Reuse an existing parent WORKDIR instead of training WORKDIR/parent.
  e.parent = ""
  return e


# ----------------------------------------------------------------------------
# the lock-step driver


_STEPPERS: dict = {}
_EVALUATORS: dict = {}


def _put(batch: dict, sharding) -> dict:
  import jax

  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in batch.items()
    if k in ("image", "label")
  }


def _stepper(restored, lr_factor: float):
  """The engine's jitted train step under ``optimizer.lr * lr_factor`` (cached).

  Scaling ``optimizer.lr`` scales every schedule (constant, cosine, linear,
  step, warm-up) by the factor: eta'_t = f * eta_t, the side-trip
  ``kind='schedule', schedule='config', lr_factor=f`` of :mod:`trajax.sidetrip`.
  """
  import jax

  from trajax import train

  config = restored.config
  key = (
    id(restored.model),
    float(lr_factor),
    json.dumps(config.to_dict(), sort_keys=True, default=str),
  )
  if key not in _STEPPERS:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.optimizer.lr = float(config.optimizer.lr) * float(lr_factor)
    shardings = jax.tree.map(lambda x: x.sharding, restored.state)
    mesh = train.make_mesh(cfg)
    _STEPPERS[key] = (
      train.make_train_step(cfg, restored.model, mesh, shardings),
      train.batch_sharding(mesh),
    )
  return _STEPPERS[key]


def evaluator(restored):
  """A cached :class:`trajax.train.Evaluator` for the restored run's model."""
  from trajax import train

  key = id(restored.model)
  if key not in _EVALUATORS:
    _EVALUATORS[key] = train.Evaluator(restored.model, train.make_mesh(restored.config))
  return _EVALUATORS[key]


class Runner:
  """One copy of a restored state, stepped by the engine's own train step.

  Args:
    restored: :class:`experiments.common.Restored` (its state is copied, never
      donated).
    lr_factor: f in eta'_t = f * eta_t (the config's schedule, absolute step t).
    stream_offset: reads training batch ``t + stream_offset`` at step t; 0 is
      the parent's batch order, ``total_steps`` a different order on the same
      data (positions the parent never reached).
  """

  def __init__(self, restored, *, lr_factor: float = 1.0, stream_offset: int = 0):
    import jax
    import jax.numpy as jnp

    if not lr_factor > 0:
      raise ValueError(f"lr_factor must be > 0, got {lr_factor!r}")
    if int(stream_offset) < 0:
      raise ValueError(f"stream_offset must be >= 0, got {stream_offset!r}")
    self.state = jax.tree.map(jnp.copy, restored.state)
    self.step = int(restored.step)
    self._fn, self._sharding = _stepper(restored, lr_factor)
    self._batches = restored.dataset.train_batches(self.step + int(stream_offset))

  @property
  def params(self):
    return self.state.params

  def advance_to(self, step: int) -> None:
    """Takes steps until the state is at absolute step ``step``."""
    if step < self.step:
      raise ValueError(f"cannot go back from step {self.step} to {step}")
    while self.step < step:
      self.state, _ = self._fn(self.state, _put(next(self._batches), self._sharding))
      self.step += 1


def grid(k: int, points: int, *, log_points: bool = True) -> list[int]:
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
    batch_stats = common.recompute_batch_stats(restored, params, batch_stats)
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
    have = common.committed_steps(exp.parent)
    missing = [s for s in keep_steps if s not in have]
    if missing:
      raise FileNotFoundError(
        f"exp.parent={exp.parent!r} lacks committed checkpoints at {missing} (has {have})"
      )
    return os.path.abspath(exp.parent)
  return common.ensure_parent(config, workdir, keep_steps)


# ----------------------------------------------------------------------------
# Figure 6


def figure6(parent: str, S: int, k: int, points: int, n_train_eval: int) -> dict:
  """The Fig. 6 measurements from the parent's state at S over k steps."""
  r = common.restore(parent, S)
  T = int(r.config.total_steps)
  theta_S = r.state.params
  lam = Runner(r)
  half = Runner(r, lr_factor=0.5)
  other = Runner(r, stream_offset=T)
  tr_batches = train_eval_batches(r, n_train_eval)
  evals_at = set(eval_points(k))
  steps = grid(k, points)
  out: dict[str, Any] = {
    "j": [],
    "dist_avg_vs_half": [],
    "dist_batch_orders": [],
    "dist_travel_lambda": [],
    "dist_travel_half": [],
    "evals": {},
  }
  t0 = time.perf_counter()
  for j in steps:
    for run in (lam, half, other):
      run.advance_to(S + j)
    avg = midpoint(theta_S, lam.params)
    out["j"].append(j)
    out["dist_avg_vs_half"].append(l2(avg, half.params))
    out["dist_batch_orders"].append(l2(lam.params, other.params))
    out["dist_travel_lambda"].append(l2(lam.params, theta_S))
    out["dist_travel_half"].append(l2(half.params, theta_S))
    if j in evals_at:
      out["evals"][str(j)] = {
        "average": evaluate_point(r, avg, lam.state.batch_stats, tr_batches, recompute_bn=True),
        "half": evaluate_point(
          r, half.params, half.state.batch_stats, tr_batches, recompute_bn=True
        ),
        "lambda": evaluate_point(
          r, lam.params, lam.state.batch_stats, tr_batches, recompute_bn=True
        ),
      }
      common.log(
        f"fig6 j={j}: |avg - half| {out['dist_avg_vs_half'][-1]:.4g}, "
        f"|theta' - theta''| {out['dist_batch_orders'][-1]:.4g}, test loss avg "
        f"{out['evals'][str(j)]['average']['test_loss']:.4f} / half "
        f"{out['evals'][str(j)]['half']['test_loss']:.4f} / lambda "
        f"{out['evals'][str(j)]['lambda']['test_loss']:.4f}"
      )
  out["seconds"] = time.perf_counter() - t0
  # The lambda run must be the parent itself (same step, same batches).
  if S + k in common.committed_steps(parent):
    ref = common.restore(parent, S + k).state.params
    out["replay_vs_parent_l2"] = l2(lam.params, ref)
  out["norm_theta_S"] = norm(theta_S)
  out["lr"] = float(r.config.optimizer.lr)
  return out


def _plot6(res: dict, path: str, label: str) -> None:
  fig, ax = common.new_figure(1, 3, width=4.6)
  j = np.asarray(res["j"])
  a = ax[0][0]
  a.plot(
    j,
    res["dist_avg_vs_half"],
    "C0-o",
    ms=3,
    label=r"$\|avg_2(\theta^\lambda_S,\theta^\lambda_{S+j}) - \theta^{\lambda/2}_{S+j}\|$",
  )
  a.plot(
    j,
    res["dist_batch_orders"],
    "C1-s",
    ms=3,
    label=r"$\|\theta'_{S+j} - \theta''_{S+j}\|$ (two batch orders, $\lambda$)",
  )
  a.plot(
    j,
    res["dist_travel_lambda"],
    "0.5",
    ls="--",
    label=r"$\|\theta^\lambda_{S+j} - \theta_S\|$ (distance travelled)",
  )
  a.set_xlabel(f"side-trip step j (steps after S = {res['branch_step']})")
  a.set_ylabel("L2 distance in weight space (all params)")
  a.set_title(f"Fig. 6: distances over k = {res['window']} steps")
  a.legend(fontsize=7)
  ev = res["evals"]
  js = sorted(int(x) for x in ev)
  for col, key, title in (
    (1, "test_loss", "test loss (nats)"),
    (2, "train_loss", "training loss on fixed batches (nats)"),
  ):
    a = ax[0][col]
    for name, style, lab in (
      ("average", "C0-o", r"two-point average ($\lambda$)"),
      ("half", "C3--^", r"side-trip $\lambda/2$"),
      ("lambda", "0.4", r"$\lambda$ run $\theta^\lambda_{S+j}$"),
    ):
      a.plot(js, [ev[str(x)][name][key] for x in js], style, ms=4, label=lab)
    a.set_xscale("symlog", linthresh=1)
    a.set_xlabel("side-trip step j (log)")
    a.set_ylabel(title)
    a.set_title(title.split(" (")[0])
    a.legend(fontsize=7)
  common.save_figure(fig, path, label)


# ----------------------------------------------------------------------------
# Figure 8


def figure8(parent: str, B: int, points: int) -> dict:
  """The Fig. 8 measurements: main run vs an independent one from B to T."""
  import jax

  rB = common.restore(parent, B)
  T = int(rB.config.total_steps)
  theta_T = common.restore(parent, T).state.params
  main = Runner(rB)
  alt = Runner(rB, stream_offset=T)
  ts = [B + j for j in grid(T - B, points, log_points=False)]
  snapshots = {}
  out: dict[str, Any] = {
    "t": ts,
    "dist_alt_to_main_final": [],
    "dist_parallel": [],
    "dist_main_to_main_final": [],
  }
  t0 = time.perf_counter()
  for t in ts:
    main.advance_to(t)
    alt.advance_to(t)
    snapshots[t] = jax.device_get(main.params)
    out["dist_alt_to_main_final"].append(l2(alt.params, theta_T))
    out["dist_parallel"].append(l2(main.params, alt.params))
    out["dist_main_to_main_final"].append(l2(main.params, theta_T))
  theta_alt_T = alt.params
  out["dist_main_to_alt_final"] = [l2(jax.device_put(snapshots[t]), theta_alt_T) for t in ts]
  out["seconds"] = time.perf_counter() - t0
  out["replay_vs_parent_l2"] = out["dist_main_to_main_final"][-1]
  ev = evaluator(rB)
  out["final_test"] = {
    "main": ev.evaluate(main.params, main.state.batch_stats, rB.dataset.eval_batches("test")),
    "independent": ev.evaluate(alt.params, alt.state.batch_stats, rB.dataset.eval_batches("test")),
  }
  out["norm_theta_T"] = norm(theta_T)
  return out


def saturation_summary(t, d) -> dict:
  """How a decreasing curve saturates: total drop, share of it in the last quarter, monotonicity."""
  t, d = np.asarray(t, float), np.asarray(d, float)
  drop = d[0] - d[-1]
  last_q = t >= t[0] + 0.75 * (t[-1] - t[0])
  tail = d[last_q]
  return {
    "start": float(d[0]),
    "end": float(d[-1]),
    "min": float(d.min()),
    "total_drop": float(drop),
    "drop_in_last_quarter_fraction": float((tail[0] - tail[-1]) / drop)
    if drop > 0
    else float("nan"),
    "fraction_of_decreasing_steps": float(np.mean(np.diff(d) < 0)) if len(d) > 1 else float("nan"),
  }


def _plot8(res: dict, path: str, label: str) -> None:
  fig, ax = common.new_figure(1, 1, width=6.5, height=4.2)
  a = ax[0][0]
  t = np.asarray(res["t"])
  a.plot(
    t, res["dist_main_to_alt_final"], "C0-o", ms=3, label=r"$\|\theta_t - \theta'_T\|$ (Fig. 8)"
  )
  a.plot(t, res["dist_alt_to_main_final"], "C2--", label=r"$\|\theta'_t - \theta_T\|$ (symmetric)")
  a.plot(t, res["dist_parallel"], "C1:", label=r"$\|\theta_t - \theta'_t\|$ (same step)")
  a.plot(
    t,
    res["dist_main_to_main_final"],
    "0.6",
    ls="-.",
    label=r"$\|\theta_t - \theta_T\|$ (own end point)",
  )
  a.set_xlabel(
    f"training step t (shared burn-in to B = {res['burnin_step']}, T = {res['total_steps']})"
  )
  a.set_ylabel("L2 distance in weight space (all params)")
  a.set_title("Fig. 8: distance to an independently trained solution")
  a.legend(fontsize=8)
  common.save_figure(fig, path, label)


# ----------------------------------------------------------------------------
# driver


def run(config, exp, workdir: str) -> dict:
  """Figures 6 and 8 for ``config``; writes JSON + PNG into ``workdir``; returns a summary."""
  from trajax import config_validation

  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  T = int(config.total_steps)
  S = branch_step(config, float(exp.branch_fraction), "branch_fraction")
  B = branch_step(config, float(exp.burnin_fraction), "burnin_fraction")
  k = window(config, exp)
  if int(exp.points) < 1:
    raise ValueError(f"exp.points must be >= 1, got {exp.points!r}")
  parent = parent_dir(config, exp, workdir, sorted({S, B, T}))
  label = common.run_label(config, f"workdir {os.path.basename(workdir)}")

  common.log(f"fig6: branch at S={S}, window k={k}: lambda, lambda/2 and a second batch order")
  f6 = figure6(parent, S, k, int(exp.points), int(exp.train_eval_batches))
  f6.update(branch_step=S, window=k, total_steps=T, parent=parent, seed=int(config.seed))
  last = f6["evals"][str(k)]
  f6["summary"] = {
    "dist_avg_vs_half": f6["dist_avg_vs_half"][-1],
    "dist_batch_orders": f6["dist_batch_orders"][-1],
    "ratio_avg_half_over_orders": f6["dist_avg_vs_half"][-1] / f6["dist_batch_orders"][-1],
    "relative_dist_avg_vs_half": f6["dist_avg_vs_half"][-1] / f6["norm_theta_S"],
    "test_loss_average": last["average"]["test_loss"],
    "test_loss_half": last["half"]["test_loss"],
    "test_loss_lambda": last["lambda"]["test_loss"],
    "test_accuracy_average": last["average"]["test_accuracy"],
    "test_accuracy_half": last["half"]["test_accuracy"],
    "test_accuracy_lambda": last["lambda"]["test_accuracy"],
    "train_loss_average": last["average"]["train_loss"],
    "train_loss_half": last["half"]["train_loss"],
  }
  common.write_json(
    os.path.join(workdir, "fig6_distances.json"), {"config": config.to_dict(), **f6}
  )
  _plot6(f6, os.path.join(workdir, "fig6_distances.png"), label + f" | S={S}, k={k}")

  common.log(f"fig8: independent batch order from B={B} to T={T}")
  f8 = figure8(parent, B, int(exp.points))
  f8.update(burnin_step=B, total_steps=T, parent=parent, seed=int(config.seed))
  f8["summary"] = saturation_summary(f8["t"], f8["dist_main_to_alt_final"])
  common.write_json(
    os.path.join(workdir, "fig8_basin.json"), {"config": config.to_dict(), **f8}, allow_nan=True
  )
  _plot8(f8, os.path.join(workdir, "fig8_basin.png"), label + f" | B={B}")

  summary = {
    "fig6": {
      "branch_step": S,
      "window": k,
      **f6["summary"],
      "replay_vs_parent_l2": f6.get("replay_vs_parent_l2"),
    },
    "fig8": {"burnin_step": B, **f8["summary"], "replay_vs_parent_l2": f8["replay_vs_parent_l2"]},
    "files": ["fig6_distances.json", "fig6_distances.png", "fig8_basin.json", "fig8_basin.png"],
  }
  return summary


def main(argv=None):
  return common.cli(NAME, run, experiment_defaults, argv)


if __name__ == "__main__":
  main()
