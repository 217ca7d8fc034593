"""Study 2: the last window [S, T]: raw endpoints, averages and their equivalent side-trips.

The same probes (:func:`experiments.curvature.shared.measure`), on the same
training batches T, T+1, ..., at the raw endpoints theta_S, theta_T
(S = T - k), at the averages :mod:`trajax.averaging` started at S reaches at
T (``exp.averages``: two-point (theta_S + theta_T)/2 (paper Sec. 4), SWA
(1/k) sum_{j=1..k} theta_{S+j}, EMA with the config's decay, pinned at
theta_S; one replay of the parent's steps S..T with the engine's step,
:func:`experiments.parents.replay_averages`, whose distance to the parent's
theta_T is recorded: 0 is a bit-exact replay), and at their equivalent
side-trips (``exp.sidetrips``: :func:`experiments.parents.equivalent_sidetrip`
of kind 'equivalent' from S for k steps under the Table 1 schedule). Claims
``curv.average_flatter``, ``curv.swa_flatter``.
"""

from __future__ import annotations

import os

from experiments import cli, evaluation, parents
from experiments.curvature.shared import measure

__all__ = ["window_points"]


def window_points(config, exp, run, parent: str, states: dict, loss_fn, key, batches, workdir):
  """``(points, replay_vs_parent_l2, sidetrip_dirs)`` of the window [S, T].

  ``states``: ``{S: theta_S's state, T: theta_T's}`` of the parent ``run``
  (in ``parent``); ``batches``: training batches T, T+1, ...; side-trips live
  in ``workdir/curvature_trips/<method>_S<S>_k<k>``.
  """
  from trajax import runs

  S, T = min(states), max(states)
  k = T - S
  a, b = states[S], states[T]
  named = {f"raw_{S}": (a.params, "raw"), f"raw_{T}": (b.params, "raw")}
  replay_l2 = None
  methods = tuple(exp.averages)
  averages = {meth: parents.window_average(config, meth, k) for meth in methods}
  if methods:
    replay, avgs = parents.replay_averages(run, a, T, averages)
    replay_l2 = evaluation.l2(replay.params, b.params)
    for meth in methods:
      named[f"{meth}_average"] = (avgs[meth], "average")
  trip_dirs = {}
  if exp.sidetrips:
    for meth in methods:
      tdir = parents.equivalent_sidetrip(
        parent,
        run.config_at(S),
        S,
        os.path.join(workdir, "curvature_trips", f"{meth}_S{S}_k{k}"),
        average=averages[meth],
        window=k,
        eval_at=(k,),
      )
      trip_dirs[meth] = tdir
      named[f"{meth}_sidetrip"] = (runs.open_run(tdir).state_at(T).params, "sidetrip")
  # BN in training mode normalises with each batch's own statistics, so the
  # running statistics do not enter the loss; theta_T's are passed along.
  points = {}
  for name, (params, kind) in named.items():
    points[name] = measure(loss_fn, params, b.batch_stats, batches, exp, key) | {"kind": kind}
    cli.log(
      f"curvature {name}: lambda_max {points[name]['lambda_max']:.4g} trace "
      f"{points[name]['trace_mean']:.4g} +- {points[name]['trace_mean_stderr']:.2g}"
    )
  return points, replay_l2, trip_dirs
