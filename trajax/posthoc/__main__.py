"""``python -m trajax.posthoc``: an average chosen after training, written and evaluated.

  python -m trajax.posthoc --workdir=RUN --average='ema(decay=0.001)' --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=ema --param=decay=0.001 --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=ema --sweep --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=swa --window=2000 --out=DIR --compare_sidetrip
  python -m trajax.posthoc --workdir=RUN --method=ema --sweep --grid=1e-4,3e-4,1e-3 --out=DIR
  python -m trajax.posthoc --workdir=RUN --average='kernel(0.25, 0.25, 0.5)' --out=DIR

Which average: the flags of :mod:`trajax.posthoc.cli`, generated from the
averaging registry (every method, parameter and sweep of
:data:`trajax.averaging.METHODS`; today's ``--decay``, ``--decays``, ... are
deprecated spellings of ``--param`` and ``--grid``, noted once on stderr).

One average: DIR/averaged is a plain Orbax checkpoint ``{'params',
'batch_stats'}`` (BatchNorm statistics by the run's ``averaging.batch_norm``,
:func:`trajax.train.evaluation_variables`: 'recompute' over its
``bn_recompute_batches`` fixed training batches; 'average': the snapshots'
statistics combined with the params' coefficients), DIR/posthoc.json the plan
(kernel residual, coefficients), test metrics and the equivalent side-trip.
``--sweep``: the method's sweep parameter (its record's ``sweep``: ema's
decay, swa's window, power_ema's γ, the gap of two_point / multi_point, a
registered method's own) over ``--grid`` or the record's default grid, every
value planned, the checkpoints read once (:func:`trajax.posthoc.combine`),
each average evaluated; DIR/sweep.json and DIR/sweep.png (test loss and
accuracy against the swept value, the run's in-training average marked).
Without ``--grid`` the values are those of the default grid that the run's
snapshots rebuild with kernel residual at most ``--threshold``.

Approximate averages: every output gives each average's kernel residual
‖Bx − c‖₁ and ``approximate`` (residual > ``--threshold``, default
:data:`trajax.posthoc.RESIDUAL_THRESHOLD` = 0.05); the plot draws them as a
separate series of hollow markers, the threshold in its legend, and the
console says once what to save next time (:func:`trajax.posthoc.save_next_time`).

The console (:mod:`trajax.posthoc.report`): one table line per average
(label, test loss, accuracy, kernel residual, whether its equivalent
side-trip is exact; a sweep sorted by the swept value, the best -- lowest
test loss among the non-approximate -- marked), then the side-trip command of
the (best) average where it is exact, else one line saying why not.
Third-party INFO logging is off unless ``--verbose_libs``. Every error is one
line on stderr, exit 1, no traceback (``--traceback`` shows it).

Where it writes (:mod:`trajax.posthoc.outputs`): only into ``--out``, a
local directory or ``gs://BUCKET/NAME`` (every file through
:mod:`trajax.paths`, the averaged params through Orbax), which must be a new
or empty directory, outside every run's directory (none of its ancestors may
hold a ``.trajax.lock`` -- in a bucket the run's lease -- or a
``checkpoints/`` with step directories), with neither ``--out`` nor
``--workdir`` reaching its target through a symlink. All of that, and every flag, is checked before the run is
read; files are created exclusively (never through a symlink, never over an
existing file). The run's directory is never written. The run's config goes
to DIR/run_config.json (data) and each side-trip's section (the post-hoc
kernel, :func:`trajax.posthoc.sidetrip_command`) to DIR/sidetrip-*.json;
DIR/run_config.py, the side-trip's ``--config`` (``run_config.py:NAME`` adds
section NAME), is fixed text that loads them: no path or value is ever put
into generated code. With DIR in a bucket (where ml_collections cannot load a
``--config`` file from) the printed side-trip names its section with
``--sidetrip_section=DIR/sidetrip-*.json`` and takes the parent's stored config.

The snapshots: the params at every committed step, the run's in-training
average and its profiles (``averaging.profiles``), all by default
(``--sources`` restricts them). ``--compare_sidetrip`` runs each exact
side-trip in DIR and writes its test metrics beside the average's
(``sidetrip.result``; BatchNorm by the same policy).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

from trajax.posthoc import cli, outputs, report

FLAGS = flags.FLAGS
cli.define_flags(FLAGS)


def _threshold() -> float:
  import math

  from trajax.posthoc import RESIDUAL_THRESHOLD

  t = RESIDUAL_THRESHOLD if FLAGS.threshold is None else FLAGS.threshold
  if not (math.isfinite(t) and 0 <= t < 2):
    raise ValueError(f"--threshold = {t!r}: must be a finite kernel residual in [0, 2)")
  return float(t)


def _check_flags() -> cli.Request:
  """Every flag checked before the run is opened: one line naming the flag, value and rule."""
  if not FLAGS.workdir or not FLAGS.out:
    raise ValueError("--workdir and --out are required")
  req = cli.request(FLAGS)
  _threshold()
  return req


def run_cli() -> dict:
  import numpy as np

  from trajax import paths, posthoc, runs
  from trajax import state as state_lib
  from trajax.posthoc.evaluation import Evaluator, in_training

  req = _check_flags()
  threshold = _threshold()
  outputs.check_paths(FLAGS.workdir, FLAGS.out)
  run = runs.open_run(FLAGS.workdir)
  out = outputs.check_paths(FLAGS.workdir, FLAGS.out, run.directory)
  end = run.steps[-1] if FLAGS.end is None else FLAGS.end
  sources = FLAGS.sources or None
  targets, chosen = cli.targets(req, run, end, threshold, sources)
  t0 = time.perf_counter()
  plans = posthoc.plans(run, [tgt for _, tgt, _, _ in targets], sources=sources, exact=FLAGS.exact)
  averages = posthoc.combine(run, plans)
  t_pass = time.perf_counter() - t0
  evaluate = Evaluator(run)
  base = state_lib.make_schedule(run.config.optimizer, run.config.total_steps)
  # Everything is checked and computed: only now is anything created.
  if paths.is_remote(out):
    paths.makedirs(out)  # no directories in a bucket: it must exist
  else:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not os.path.isdir(out):
      os.mkdir(out)
  config_file = outputs.write_run_config(run, out)
  rows = []
  for (value, _, method, mparams), avg in zip(targets, averages, strict=True):
    params, stats = evaluate.variables(avg.params, avg.batch_stats)
    slug = _slug(method, value)
    trip = posthoc.sidetrip_command(
      run,
      avg.plan,
      out=out,
      name=f"sidetrip-{slug}.json",
      config_file=config_file,
      workdir=paths.join(out, f"sidetrip-{slug}"),
    )
    start, window, sched = posthoc.equivalent_schedule(avg.plan, base, start=trip["start"])
    if FLAGS.compare_sidetrip:
      trip["result"] = _run_sidetrip(run, trip, evaluate)
    rows.append(
      {
        "label": avg.plan.label,
        "value": value,
        "method": method,
        "params": mparams,
        "residual": avg.plan.residual,
        "approximate": avg.plan.residual > threshold,
        "schedule_residual": avg.plan.schedule_residual,
        "exact": avg.plan.exact,
        "coefficients": {f"{t}:{src}": x for (t, src), x in avg.plan.coefficients.items()},
        "equivalent_schedule": {
          "start": start,
          "window": window,
          "lr": [float(v) for v in np.asarray(sched(np.arange(window)))][:10_000],
        },
        "sidetrip": {k: v for k, v in trip.items() if k != "fields"},
        **evaluate(params, stats),
      }
    )
    if not FLAGS.sweep:
      import orbax.checkpoint as ocp

      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(paths.join(out, "averaged"), {"params": params, "batch_stats": stats})
  if FLAGS.sweep:
    rows.sort(key=lambda r: r["value"])
  approx = [r for r in rows if r["approximate"]]
  result = {
    "workdir": run.directory,
    "end": end,
    "sources": sources or "all",
    "profiles": [{"method": m, **p} for m, p in posthoc.run_profiles(run)],
    "threshold": threshold,
    "grid": ("chosen from the run" if chosen else "given") if FLAGS.sweep else None,
    "approximate": [r["label"] for r in approx],
    "save_next_time": (
      posthoc.save_next_time(run, [(r["method"], r["params"]) for r in approx]) if approx else None
    ),
    "pass_seconds": t_pass,
    "averages": rows,
  }
  if FLAGS.sweep:
    result["sweep"] = req.sweep
    result["in_training"] = in_training(run, evaluate, end)
    result["plot_legend"] = report.plot(
      paths.join(out, "sweep.png"), rows, req.sweep, result["in_training"], req.method, threshold
    )
  result["out"] = out
  name = "sweep.json" if FLAGS.sweep else "posthoc.json"
  outputs.write_new(paths.join(out, name), json.dumps(result, indent=1))
  return result


def _run_sidetrip(run, trip: dict, evaluate) -> dict:
  """Runs ``trip`` (a :func:`trajax.posthoc.sidetrip_command`) and evaluates its end point.

  Evaluated as the averages are (:class:`trajax.posthoc.evaluation.Evaluator`: BatchNorm statistics by
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


def _slug(method: str, value) -> str:
  """The side-trip's file names: the method, and the swept value in a sweep."""
  return f"{method}-{value:g}" if isinstance(value, (int, float)) else method


def _parse_flags(argv):
  """absl's flag parsing, its errors as one line (no usage text)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments: {argv[1:]}")
  from trajax import metrics

  metrics.configure_console(verbose_libs=FLAGS.verbose_libs)  # before TensorFlow is imported
  try:
    from trajax import posthoc

    # Bad flags and unsafe paths are refused in a second, before TensorFlow or
    # any checkpoint is touched.
    req = _check_flags()
    outputs.check_paths(FLAGS.workdir, FLAGS.out)
    for note in req.notes:  # deprecated spellings, once every flag is checked
      print(note, file=sys.stderr)
    # As trajax.main: tf.data must not take accelerator memory.
    try:
      tf = metrics.import_tensorflow(verbose_libs=FLAGS.verbose_libs)
      tf.config.set_visible_devices([], "GPU")
    except ImportError:
      pass
    result = run_cli()
  except Exception as e:  # noqa: BLE001 -- every CLI error is one line unless --traceback
    if FLAGS.traceback:
      raise
    from trajax import posthoc

    known = (ValueError, FileNotFoundError, posthoc.MissingSnapshotsError)
    text = str(e) if isinstance(e, known) else f"{type(e).__name__}: {e} (--traceback shows where)"
    raise SystemExit("error: " + " ".join(text.splitlines())) from None
  print("\n".join(report.console(result, FLAGS.sweep)))


def run_main() -> None:
  """``python -m trajax.posthoc``: parse ``sys.argv`` and run (a method registered before
  this module is imported gets its flags too)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run_main()
