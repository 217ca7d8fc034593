"""``python -m trajax.posthoc``: an average chosen after training, written and evaluated.

  python -m trajax.posthoc --workdir=RUN --method=ema --decay=0.001 --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=swa --window=2000 --out=DIR --compare_sidetrip
  python -m trajax.posthoc --workdir=RUN --method=ema --sweep --decays=1e-4,3e-4,1e-3 --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=power_ema --gamma=10 --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=power_ema --sweep --gammas=2,5,10,20 --out=DIR

One average: DIR/averaged is a plain Orbax checkpoint ``{'params',
'batch_stats'}`` (BatchNorm statistics by the run's ``averaging.batch_norm``:
'recompute' over its ``bn_recompute_batches`` fixed training batches, as
:func:`trajax.train.averaged_variables`; 'average': the snapshots' statistics
combined with the params' coefficients), DIR/posthoc.json the plan (kernel
residual, coefficients), test metrics and the equivalent side-trip schedule.
``--sweep``: one parameter per method is swept (:data:`SWEPT`: ema's decay,
swa's window, power_ema's γ, the gap of two_point / multi_point), every
value planned, the checkpoints read once (:func:`trajax.posthoc.combine`),
each average evaluated; DIR/sweep.json and DIR/sweep.png (test loss and
accuracy against the swept value, the run's in-training average marked).
The run's directory is never written.

The snapshots: the params at every committed step, the run's in-training
average and its profiles (``averaging.profiles``), all by default
(``--sources`` restricts them). Beside each average, posthoc.json / sweep.json
give its equivalent side-trip schedule and the exact ``python -m
trajax.sidetrip ...`` command that runs it from S on the real network (Fig. 1),
with DIR/run_config.py, the run's own config, as its ``--config`` (printed too).
``--compare_sidetrip`` runs each exact one in DIR and writes its test metrics
beside the average's (``sidetrip.result``; BatchNorm by the same policy).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "The finished run (WORKDIR or WORKDIR/checkpoints)."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (outside the run's).")
_METHOD = flags.DEFINE_string(
  "method", "ema", "Averaging method: ema, swa, two_point, multi_point, power_ema."
)
_DECAY = flags.DEFINE_float("decay", None, "EMA decay δ.")
_WINDOW = flags.DEFINE_integer("window", None, "SWA: average the last WINDOW steps.")
_GAP = flags.DEFINE_integer("gap", None, "two_point / multi_point gap.")
_N = flags.DEFINE_integer("n", None, "multi_point: number of points.")
_GAMMA = flags.DEFINE_float("gamma", None, "power_ema: the profile exponent γ > 0.")
_SOURCES = flags.DEFINE_list(
  "sources", None, "Snapshots to use: params,average,profiles (or profiles[i]); default all."
)
_START = flags.DEFINE_integer("start_step", None, "Averaging start step (ema, two_point, ...).")
_END = flags.DEFINE_integer("end", None, "The step the average is taken at (default: last).")
_EXACT = flags.DEFINE_bool("exact", False, "Fail unless the average is exact from saved steps.")
_COMPARE = flags.DEFINE_bool(
  "compare_sidetrip",
  False,
  "Also run each average's equivalent side-trip (where its command is exact) and evaluate it "
  "beside the average, BatchNorm statistics by the same policy (Fig. 1 on this run).",
)
_SWEEP = flags.DEFINE_bool(
  "sweep", False, "Evaluate a grid (--decays, --windows, --gammas or --gaps) and plot it."
)
_DECAYS = flags.DEFINE_list("decays", None, "Sweep: EMA decays (default 20 log-spaced).")
_WINDOWS = flags.DEFINE_list("windows", None, "Sweep: SWA windows.")
_GAMMAS = flags.DEFINE_list("gammas", None, "Sweep: power_ema exponents (default 13 log-spaced).")
_GAPS = flags.DEFINE_list("gaps", None, "Sweep: two_point / multi_point gaps.")

# The parameter --sweep varies per method: (name, its grid flag, type, default grid or None).
SWEPT = {
  "ema": ("decay", _DECAYS, float, (1e-4, 0.1, 20)),
  "power_ema": ("gamma", _GAMMAS, float, (1.0, 64.0, 13)),
  "swa": ("window", _WINDOWS, int, None),
  "two_point": ("gap", _GAPS, int, None),
  "multi_point": ("gap", _GAPS, int, None),
}


def _grid(method: str) -> list:
  """The swept values of ``method``'s parameter (:data:`SWEPT`)."""
  import numpy as np

  if method not in SWEPT:
    raise ValueError(f"--sweep supports --method in {sorted(SWEPT)}, got {method!r}")
  name, flag, kind, default = SWEPT[method]
  if flag.value:
    return [kind(x) for x in flag.value]
  if default is None:
    raise ValueError(f"--sweep with --method={method} needs --{flag.name}=V1,V2,... ({name}s)")
  return [float(x) for x in np.geomspace(*default)]


def _targets(posthoc, end: int) -> list[tuple[float | None, tuple, str, dict]]:
  """``(swept value, (label, kernel), method, params)`` per average asked for."""
  method = _METHOD.value
  values = _grid(method) if _SWEEP.value else [None]
  given = {
    "decay": _DECAY.value,
    "window": _WINDOW.value,
    "gap": _GAP.value,
    "n": _N.value,
    "gamma": _GAMMA.value,
    "start_step": _START.value,
  }
  out = []
  for v in values:
    p = dict(given) if v is None else {**given, SWEPT[method][0]: v}
    if method == "ema" and p["decay"] is None:
      raise ValueError("--method=ema needs --decay (or --sweep)")
    if method == "swa":
      window = p["window"]
      if window is None or not 1 <= window <= end:
        raise ValueError(f"--window = {window!r}: --method=swa needs a window in 1 … {end}")
      params = {"start_step": end - window}
    else:
      m = posthoc.averaging.get_method(method)
      params = {k: x for k, x in p.items() if m.param(k) is not None}
    out.append((v, posthoc.target(method, end=end, **params), method, params))
  return out


class _Evaluator:
  """The run's evaluation and BatchNorm policy for averaged params."""

  def __init__(self, run):
    from trajax import state as state_lib
    from trajax import train

    self.run = run
    self.config = run.config
    self.ev = train.evaluator(run.model, state_lib.make_mesh(run.config))

  def variables(self, params, batch_stats):
    avg = self.config.averaging
    if avg.batch_norm == "recompute":
      n = int(avg.bn_recompute_batches)
      batches = (self.run.dataset.fixed_train_batch(i) for i in range(n))
      batch_stats = self.ev.recompute_batch_stats(params, batch_stats, batches)
    return params, batch_stats

  def __call__(self, params, batch_stats) -> dict:
    return self.ev.evaluate(params, batch_stats, self.run.dataset.eval_batches("test"))


def _in_training(run, evaluate, end: int) -> dict | None:
  """The run's own average at ``end`` (None: it did not average, or ``end`` is not saved)."""
  from trajax import train

  config = run.config
  if config.averaging.method == "none" or end not in run.steps:
    return None
  state = run.state_at(end)
  params, stats = train.averaged_variables(state, config, evaluate.ev, run.dataset)
  return {
    "method": config.averaging.method,
    "params": averaging_params(config),
    **evaluate(params, stats),
  }


def averaging_params(config) -> dict:
  from trajax import averaging

  return averaging.method_params(config.averaging.method, config.averaging)


def _plot(path, xs, rows, xlabel, reference, method):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
    ax.plot(xs, [r[key] for r in rows], "o-", label="post-hoc")
    if reference is not None:
      x_ref = reference["params"].get(xlabel) if reference["method"] == method else None
      if x_ref is not None:
        ax.plot(
          [x_ref], [reference[key]], "r*", ms=14, label=f"in training ({reference['method']})"
        )
      else:
        ax.axhline(reference[key], color="r", ls="--", label=f"in training ({reference['method']})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {key}")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run_cli() -> dict:
  import numpy as np

  from trajax import posthoc, runs
  from trajax import state as state_lib

  if not _WORKDIR.value or not _OUT.value:
    raise ValueError("--workdir and --out are required")
  run = runs.open_run(_WORKDIR.value)
  out = os.path.abspath(_OUT.value)
  run_root = os.path.abspath(os.path.dirname(run.directory))
  if out == run_root or out.startswith(run_root + os.sep):
    raise ValueError(f"--out = {_OUT.value!r} lies inside the run's directory {run_root!r}")
  end = run.steps[-1] if _END.value is None else _END.value
  targets = _targets(posthoc, end)
  t0 = time.perf_counter()
  sources = _SOURCES.value or None
  plans = [posthoc.plan(run, tgt, sources=sources, exact=_EXACT.value) for _, tgt, _, _ in targets]
  averages = posthoc.combine(run, plans)
  t_pass = time.perf_counter() - t0
  evaluate = _Evaluator(run)
  base = state_lib.make_schedule(run.config.optimizer, run.config.total_steps)
  os.makedirs(out, exist_ok=True)
  config_file = _write_run_config(run, os.path.join(out, "run_config.py"))
  rows = []
  for (value, _, method, mparams), avg in zip(targets, averages, strict=True):
    params, stats = evaluate.variables(avg.params, avg.batch_stats)
    start, window, sched = posthoc.method_equivalent_schedule(avg.plan, base, mparams)
    trip = posthoc.sidetrip_command(
      run,
      avg.plan,
      method,
      mparams,
      config_file=config_file,
      workdir=os.path.join(out, f"sidetrip-{method}-{_slug(value, start, window)}"),
    )
    if _COMPARE.value:
      trip["result"] = _run_sidetrip(run, trip, evaluate)
    rows.append(
      {
        "label": avg.plan.label,
        "value": value,
        "residual": avg.plan.residual,
        "schedule_residual": avg.plan.schedule_residual,
        "exact": avg.plan.exact,
        "coefficients": {f"{t}:{src}": x for (t, src), x in avg.plan.coefficients.items()},
        "equivalent_schedule": {
          "start": start,
          "window": window,
          "lr": [float(v) for v in np.asarray(sched(np.arange(window)))][:10_000],
        },
        "sidetrip": trip,
        **evaluate(params, stats),
      }
    )
    if not _SWEEP.value:
      import orbax.checkpoint as ocp

      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out, "averaged"), {"params": params, "batch_stats": stats})
  report = {
    "workdir": run.directory,
    "end": end,
    "sources": sources or "all",
    "profiles": [{"method": m, **p} for m, p in posthoc.run_profiles(run)],
    "pass_seconds": t_pass,
    "averages": rows,
  }
  if _SWEEP.value:
    report["in_training"] = _in_training(run, evaluate, end)
    _plot(
      os.path.join(out, "sweep.png"),
      [r["value"] for r in rows],
      rows,
      SWEPT[_METHOD.value][0],
      report["in_training"],
      _METHOD.value,
    )
  with open(os.path.join(out, "sweep.json" if _SWEEP.value else "posthoc.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def _run_sidetrip(run, trip: dict, evaluate) -> dict:
  """Runs ``trip`` (a :func:`trajax.posthoc.sidetrip_command`) and evaluates its end point.

  Evaluated as the averages are (:class:`_Evaluator`: BatchNorm statistics by
  the run's ``averaging.batch_norm`` policy), so "this average" and "this
  schedule from S" compare like for like. A command that is not exact is not
  run: ``{'skipped': why}``. The side-trip's workdir is the printed
  command's, so running that command afterwards finds it done.
  """
  from trajax import sidetrip

  if not trip["exact"]:
    return {"skipped": trip["note"]}
  config = sidetrip.with_sidetrip(run.config, **trip["fields"], eval_at=())
  res = sidetrip.run_sidetrip(
    config, run.directory, trip["start"], trip["workdir"], dataset=run.dataset, model=run.model
  )
  params, stats = evaluate.variables(res.state.params, res.state.batch_stats)
  return {"step": int(res.step), **evaluate(params, stats)}


def _slug(value, start: int, window: int) -> str:
  return f"{value:g}" if isinstance(value, (int, float)) else f"S{start}-k{window}"


def _write_run_config(run, path: str) -> str:
  """A config file (``get_config()``) returning the run's own stored config, for the side-trip."""
  text = json.dumps(run.config.to_dict(), sort_keys=True, default=list)
  with open(path, "w") as f:
    f.write(
      f'"""The config of the run {run.directory} (written by python -m trajax.posthoc):\n'
      "pass it as --config to python -m trajax.sidetrip, which needs the parent's own config.\n"
      '"""\n\nimport json\n\nfrom trajax import config as config_lib\n\n'
      f"CONFIG = json.loads({text!r})\n\n\n"
      "def get_config():\n  return config_lib.from_dict(CONFIG)\n"
    )
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # As trajax.main: tf.data must not take accelerator memory.
  try:
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass
  from trajax import posthoc

  try:
    report = run_cli()
  except (ValueError, FileNotFoundError, posthoc.MissingSnapshotsError) as e:
    raise SystemExit(f"error: {e}") from None
  for r in report["averages"]:
    print(
      f"{r['label']}: test loss {r['loss']:.4f} accuracy {r['accuracy']:.4f} "
      f"(kernel residual {r['residual']:.3g}, schedule residual {r['schedule_residual']:.3g}"
      f"{', exact' if r['exact'] else ''})"
    )
    trip = r["sidetrip"]
    print(f"  equivalent side-trip from step {trip['start']} over {trip['window']} steps:")
    print(f"    {trip['command']}")
    if trip["note"]:
      print(f"    (not exact: {trip['note']})")
    res = trip.get("result", {})
    if "loss" in res:
      print(
        f"  side-trip at step {res['step']}: test loss {res['loss']:.4f} "
        f"accuracy {res['accuracy']:.4f}"
      )
  if report.get("in_training"):
    it = report["in_training"]
    print(f"in training ({it['method']}): test loss {it['loss']:.4f} accuracy {it['accuracy']:.4f}")


if __name__ == "__main__":
  app.run(main)
