"""``python -m trajax.posthoc``: an average chosen after training, written and evaluated.

  python -m trajax.posthoc --workdir=RUN --method=ema --decay=0.001 --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=ema --sweep --out=DIR
  python -m trajax.posthoc --workdir=RUN --method=swa --window=2000 --out=DIR --compare_sidetrip
  python -m trajax.posthoc --workdir=RUN --method=ema --sweep --decays=1e-4,3e-4,1e-3 --out=DIR
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
Without ``--decays`` / ``--gammas`` the grid is the candidates (10 per decade
of δ, 4 per octave of γ) that the run's snapshots rebuild with kernel residual
at most ``--threshold`` (:func:`trajax.posthoc.representable`).

Approximate averages: every output gives each average's kernel residual
‖Bx − c‖₁ and ``approximate`` (residual > ``--threshold``, default
:data:`trajax.posthoc.RESIDUAL_THRESHOLD` = 0.05); the plot draws them as a
separate series of hollow markers, the threshold in its legend, and the
console says once what to save next time (:func:`trajax.posthoc.save_next_time`).

The console: one table line per average (label, test loss, accuracy, kernel
residual, whether its equivalent side-trip is exact; a sweep sorted by the
swept value, the best -- lowest test loss among the non-approximate -- marked),
then the side-trip command of the (best) average where it is exact, else one
line saying why not and how. Third-party INFO logging is off unless
``--verbose_libs``. Every error is one line on stderr, exit 1, no traceback
(``--traceback`` shows it).

Where it writes: only into ``--out``, which must be a new or empty directory,
outside every run's directory (none of its ancestors may hold a
``.trajax.lock`` or a ``checkpoints/`` with step directories), with neither
``--out`` nor ``--workdir`` reaching its target through a symlink. All of that, and every flag, is checked
before the run is read; files are created exclusively (never through a
symlink, never over an existing file). The run's directory is never written.
The run's config goes to DIR/run_config.json (data); DIR/run_config.py, the
side-trip's ``--config``, is fixed text that loads that JSON: no path or value
is ever put into generated code.

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
_DECAYS = flags.DEFINE_list(
  "decays",
  None,
  "Sweep: EMA decays (default: those the run's snapshots rebuild within --threshold).",
)
_WINDOWS = flags.DEFINE_list("windows", None, "Sweep: SWA windows.")
_GAMMAS = flags.DEFINE_list(
  "gammas", None, "Sweep: power_ema exponents (default: those the run rebuilds within --threshold)."
)
_GAPS = flags.DEFINE_list("gaps", None, "Sweep: two_point / multi_point gaps.")
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "Kernel residual ‖Bx − c‖₁ above which an average is flagged approximate "
  "(default trajax.posthoc.RESIDUAL_THRESHOLD = 0.05).",
)
_VERBOSE_LIBS = flags.DEFINE_bool(
  "verbose_libs", False, "Show third-party INFO logging (Orbax, absl, TensorFlow notices)."
)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of an error.")

# The parameter --sweep varies per method: (name, its grid flag, type, candidates or None).
# Without a grid flag the sweep evaluates the candidates the run's snapshots rebuild within
# --threshold (trajax.posthoc.representable): 10 per decade of δ, 4 per octave of γ.
SWEPT = {
  "ema": ("decay", _DECAYS, float, (1e-4, 0.1, 31)),
  "power_ema": ("gamma", _GAMMAS, float, (1.0, 64.0, 25)),
  "swa": ("window", _WINDOWS, int, None),
  "two_point": ("gap", _GAPS, int, None),
  "multi_point": ("gap", _GAPS, int, None),
}
# The flags holding a method parameter: (flag, parameter name).
PARAM_FLAGS = (
  (_DECAY, "decay"),
  (_WINDOW, "window"),
  (_GAP, "gap"),
  (_N, "n"),
  (_GAMMA, "gamma"),
  (_START, "start_step"),
)


def _threshold(posthoc) -> float:
  import math

  t = posthoc.RESIDUAL_THRESHOLD if _THRESHOLD.value is None else _THRESHOLD.value
  if not (math.isfinite(t) and 0 <= t < 2):
    raise ValueError(f"--threshold = {t!r}: must be a finite kernel residual in [0, 2)")
  return float(t)


def _check_value(method: str, name: str, value, flag: str):
  """``value`` of ``method``'s parameter ``name`` checked by the method's own record."""
  from trajax import averaging

  if name == "window" or name == "start_step":
    if isinstance(value, bool) or not isinstance(value, int) or value < (name == "window"):
      raise ValueError(f"{flag} = {value!r}: must be an integer >= {int(name == 'window')}")
    return value
  try:
    averaging.check_params(method, {name: value})
  except (TypeError, ValueError) as e:
    raise ValueError(f"{flag} = {value!r}: {e}") from None
  return value


def _check_flags(posthoc) -> None:
  """Every flag checked before the run is opened: one line naming the flag, value and rule."""
  from trajax import averaging

  if not _WORKDIR.value or not _OUT.value:
    raise ValueError("--workdir and --out are required")
  method = _METHOD.value
  try:
    m = averaging.get_method(method)
  except ValueError as e:
    raise ValueError(f"--method = {method!r}: {e}") from None
  if _SWEEP.value and method not in SWEPT:
    raise ValueError(f"--sweep supports --method in {sorted(SWEPT)}, got {method!r}")
  for flag, name in PARAM_FLAGS:
    if flag.value is None:
      continue
    if name not in ("window", "start_step") and m.param(name) is None:
      raise ValueError(f"--{flag.name} = {flag.value!r}: --method={method} takes no {name}")
    _check_value(method, name, flag.value, f"--{flag.name}")
  if _SWEEP.value and SWEPT[method][1].value is not None:
    name, flag, kind, _ = SWEPT[method]
    _grid_values(flag, kind, method, name)
  _threshold(posthoc)


def _grid_values(flag, kind, method: str | None, name: str) -> list:
  """The values of a grid flag (``--decays=1e-4,3e-4``), each checked."""
  out = []
  for text in flag.value:
    try:
      v = kind(text)
    except ValueError:
      what = "an integer" if kind is int else "a number"
      raise ValueError(f"--{flag.name}: {text!r} is not {what}") from None
    out.append(_check_value(method, name, v, f"--{flag.name}") if method else v)
  if not out:
    raise ValueError(f"--{flag.name} is empty: give V1,V2,...")
  return out


def _grid(posthoc, run, end: int, given: dict, threshold: float) -> tuple[list, bool]:
  """``(values, chosen)``: the swept values of the method's parameter (:data:`SWEPT`).

  A grid flag is taken as given (values beyond what the run supports are
  evaluated and flagged approximate). Without one: the candidates whose
  average the run's snapshots rebuild within ``threshold``; if none, all the
  candidates (every one then flagged approximate).
  """
  import numpy as np

  method = _METHOD.value
  name, flag, kind, default = SWEPT[method]
  if flag.value:
    return _grid_values(flag, kind, method, name), False
  if default is None:
    raise ValueError(f"--sweep with --method={method} needs --{flag.name}=V1,V2,... ({name}s)")
  candidates = sorted({float(f"{x:.3g}") for x in np.geomspace(*default)})
  params = {k: v for k, v in given.items() if k != name and v is not None}
  ok = posthoc.representable(
    run, method, name, candidates, end=end, threshold=threshold,
    sources=_SOURCES.value or None, **params,
  )  # fmt: skip
  return ([v for v, _ in ok] or candidates), bool(ok)


def _targets(posthoc, run, end: int, threshold: float) -> tuple[list, bool]:
  """``([(swept value, (label, kernel), method, params)], grid chosen from the run)``."""
  method = _METHOD.value
  given = {name: flag.value for flag, name in PARAM_FLAGS}
  values, chosen = _grid(posthoc, run, end, given, threshold) if _SWEEP.value else ([None], False)
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
  return out, chosen


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


def _plot(path, rows, xlabel, reference, method, threshold) -> list[str]:
  """Test loss and accuracy against the swept value; returns the legend's labels.

  Averages rebuilt within ``threshold`` are one filled series; approximate
  ones (kernel residual above it: not the average their value names) a
  separate series of hollow markers, not joined to the first.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  good = [r for r in rows if not r["approximate"]]
  approx = [r for r in rows if r["approximate"]]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
    if good:
      ax.plot(
        [r["value"] for r in good], [r[key] for r in good], "o-", color="C0",
        label=f"post-hoc (kernel residual ≤ {threshold:g})",
      )  # fmt: skip
    if approx:
      ax.plot(
        [r["value"] for r in approx], [r[key] for r in approx], "o", mfc="none", color="C1",
        label=f"approximate (kernel residual > {threshold:g})",
      )  # fmt: skip
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
    ax.legend(fontsize=8)
  labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return labels


def _check_paths(run_directory: str | None = None) -> str:
  """The absolute --out, refused unless posthoc may write there; nothing is created.

  Refused, before anything is read or written: a --workdir or --out that
  reaches its target through a symlink (so the directory written is the one
  named), an --out inside the run's directory or inside any run's (a
  directory holding a ``.trajax.lock``, or another run's workdir), and an
  existing --out that is not an empty directory (the user's files, or an
  earlier output, are never overwritten).
  """
  from trajax import paths

  # A gs:// --out: one line (a --workdir in a bucket is only read).
  paths.check_local_path(_OUT.value, "--out")
  for flag in (_WORKDIR, _OUT):
    given = os.path.abspath(flag.value)
    real = os.path.realpath(given)
    if real != given:
      raise ValueError(
        f"--{flag.name} = {flag.value!r} reaches {real!r} through a symlink; give the real "
        "path (posthoc writes only where it is told)"
      )
  out = os.path.abspath(_OUT.value)
  if run_directory is not None:
    run_root = os.path.dirname(os.path.abspath(run_directory))
    for root in (run_root, os.path.abspath(run_directory)):
      if out == root or out.startswith(root + os.sep):
        raise ValueError(f"--out = {_OUT.value!r} lies inside the run directory {run_root!r}")
  here = out
  while True:
    if _is_run(here):
      raise ValueError(
        f"--out = {_OUT.value!r} lies inside the run directory {here!r}; give a new directory "
        "outside every run"
      )
    parent = os.path.dirname(here)
    if parent == here:
      break
    here = parent
  if os.path.lexists(out):
    if not os.path.isdir(out):
      raise ValueError(f"--out = {_OUT.value!r} exists and is not a directory")
    held = sorted(os.listdir(out))
    if held:
      shown = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
      raise ValueError(
        f"--out = {_OUT.value!r} already holds {len(held)} entries ({shown}); posthoc writes "
        "only into a new or empty directory (give another --out, or remove it)"
      )
  return out


def _is_run(path: str) -> bool:
  """A run's directory: it holds the workdir lock, or checkpoints/ with a step directory."""
  from trajax import workdir_lock

  if os.path.lexists(os.path.join(path, workdir_lock.LOCK_NAME)):
    return True
  ckpts = os.path.join(path, "checkpoints")
  try:
    return os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts))
  except OSError:
    return True  # unreadable: not ours to write into


def _write_new(path: str, text: str) -> None:
  """Creates ``path`` (never an existing file, never through a symlink) holding ``text``."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
  with os.fdopen(fd, "w") as f:
    f.write(text)


def run_cli() -> dict:
  import numpy as np

  from trajax import posthoc, runs
  from trajax import state as state_lib

  _check_flags(posthoc)
  threshold = _threshold(posthoc)
  _check_paths()
  run = runs.open_run(_WORKDIR.value)
  out = _check_paths(run.directory)
  end = run.steps[-1] if _END.value is None else _END.value
  targets, chosen = _targets(posthoc, run, end, threshold)
  t0 = time.perf_counter()
  sources = _SOURCES.value or None
  plans = posthoc.plans(run, [tgt for _, tgt, _, _ in targets], sources=sources, exact=_EXACT.value)
  averages = posthoc.combine(run, plans)
  t_pass = time.perf_counter() - t0
  evaluate = _Evaluator(run)
  base = state_lib.make_schedule(run.config.optimizer, run.config.total_steps)
  # Everything is checked and computed: only now is anything created.
  os.makedirs(os.path.dirname(out), exist_ok=True)
  if not os.path.isdir(out):
    os.mkdir(out)
  config_file = _write_run_config(run, out)
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
        "sidetrip": trip,
        **evaluate(params, stats),
      }
    )
    if not _SWEEP.value:
      import orbax.checkpoint as ocp

      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out, "averaged"), {"params": params, "batch_stats": stats})
  if _SWEEP.value:
    rows.sort(key=lambda r: r["value"])
  approx = [r for r in rows if r["approximate"]]
  report = {
    "workdir": run.directory,
    "end": end,
    "sources": sources or "all",
    "profiles": [{"method": m, **p} for m, p in posthoc.run_profiles(run)],
    "threshold": threshold,
    "grid": ("chosen from the run" if chosen else "given") if _SWEEP.value else None,
    "approximate": [r["label"] for r in approx],
    "save_next_time": (
      posthoc.save_next_time(run, [(r["method"], r["params"]) for r in approx]) if approx else None
    ),
    "pass_seconds": t_pass,
    "averages": rows,
  }
  if _SWEEP.value:
    report["in_training"] = _in_training(run, evaluate, end)
    report["plot_legend"] = _plot(
      os.path.join(out, "sweep.png"),
      rows,
      SWEPT[_METHOD.value][0],
      report["in_training"],
      _METHOD.value,
      threshold,
    )
  report["out"] = out
  name = "sweep.json" if _SWEEP.value else "posthoc.json"
  _write_new(os.path.join(out, name), json.dumps(report, indent=1))
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


# The config file handed to the side-trip (--config): fixed text, no path or
# value in it; it reads the run's config from the JSON data file beside it.
RUN_CONFIG_PY = '''"""The config of the run post-hoc averaged here (written by python -m trajax.posthoc).

Pass it as --config to python -m trajax.sidetrip, which needs the parent's own
config. The config itself is data: run_config.json beside this file.
"""

import json
import os

from trajax import config as config_lib


def get_config():
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_config.json")) as f:
    return config_lib.from_dict(json.load(f))
'''


def _write_run_config(run, out: str) -> str:
  """OUT/run_config.json (the run's stored config, data) and OUT/run_config.py (fixed code)."""
  _write_new(
    os.path.join(out, "run_config.json"),
    json.dumps(run.config.to_dict(), sort_keys=True, indent=1, default=list),
  )
  path = os.path.join(out, "run_config.py")
  _write_new(path, RUN_CONFIG_PY)
  return path


def _console(report: dict, sweep: bool) -> list[str]:
  """The console lines: one table line per average, then what the reader needs once."""
  rows = report["averages"]
  thr = report["threshold"]
  good = [r for r in rows if not r["approximate"]] or rows
  best = min(good, key=lambda r: r["loss"]) if sweep else rows[0]
  width = max(len("average"), *(len(r["label"]) for r in rows))
  lines = [f"{'average':<{width}}  test loss  accuracy  kernel residual  exact side-trip"]
  for r in rows:
    res = f"{r['residual']:.3g}" + (" approx." if r["approximate"] else "")
    mark = "  <- best" if sweep and r is best else ""
    trip = "yes" if r["sidetrip"]["exact"] else "no"
    lines.append(
      f"{r['label']:<{width}}  {r['loss']:>9.4f}  {r['accuracy']:>8.4f}  {res:<15}  {trip}{mark}"
    )
  if report.get("in_training"):
    it = report["in_training"]
    lines.append(
      f"in training ({it['method']}): test loss {it['loss']:.4f} accuracy {it['accuracy']:.4f}"
    )
  for r in rows:
    res = r["sidetrip"].get("result", {})
    if "loss" in res:
      lines.append(
        f"{r['label']}: side-trip at step {res['step']}: test loss {res['loss']:.4f} "
        f"accuracy {res['accuracy']:.4f}"
      )
  if report["approximate"]:
    n = len(report["approximate"])
    lines.append(
      f"approximate: {n} of {len(rows)} averages have kernel residual > {thr:g} (not the averages "
      f"their labels name; flagged in the JSON and drawn hollow); {report['save_next_time']}"
    )
  trip = best["sidetrip"]
  which = f" of {best['label']}" if sweep else ""
  if trip["exact"]:
    lines.append(f"side-trip{which} (exact): {trip['command']}")
  else:
    lines.append(f"side-trip{which}: no exact one: {trip['note']}")
  written = "sweep.json, sweep.png" if sweep else "posthoc.json, averaged/"
  lines.append(f"wrote {report['out']}: {written}, run_config.py")
  return lines


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

  metrics.configure_console(verbose_libs=_VERBOSE_LIBS.value)  # before TensorFlow is imported
  try:
    from trajax import posthoc

    # Bad flags and unsafe paths are refused in a second, before TensorFlow or
    # any checkpoint is touched.
    _check_flags(posthoc)
    _check_paths()
    # As trajax.main: tf.data must not take accelerator memory.
    try:
      tf = metrics.import_tensorflow(verbose_libs=_VERBOSE_LIBS.value)
      tf.config.set_visible_devices([], "GPU")
    except ImportError:
      pass
    report = run_cli()
  except Exception as e:  # noqa: BLE001 -- every CLI error is one line unless --traceback
    if _TRACEBACK.value:
      raise
    from trajax import posthoc

    known = (ValueError, FileNotFoundError, posthoc.MissingSnapshotsError)
    text = str(e) if isinstance(e, known) else f"{type(e).__name__}: {e} (--traceback shows where)"
    raise SystemExit("error: " + " ".join(text.splitlines())) from None
  print("\n".join(_console(report, _SWEEP.value)))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
