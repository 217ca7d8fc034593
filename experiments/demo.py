r"""``make demo``: the paper's Secs. 3 and 5 on a real, offline run, as one report.

    python -m experiments.demo --workdir=workdirs/demo            # ~5-10 min, 2 CPU cores
    python -m experiments.demo --workdir=/tmp/d --tiny            # < 1 min smoke size

On a machine with no accelerator and no download:

1. trains the offline default config (``configs/mnist1d.py``: mnist1d with 30 %
   label noise, a 1-D CNN, SGD + momentum at a constant rate, two-point
   averaging 1 000 steps apart) in ``WORKDIR/parent``, checkpointing at every
   step an experiment branches from -- or reuses it when it is already
   finished (the demo is resumable: every stage reuses what a previous
   invocation finished);
2. runs :mod:`experiments.fig1_averaging_vs_sidetrips` (two-point average vs.
   the λ/2 side-trip at three branch points, horizons 1, 10, 100, 1000 steps),
   :mod:`experiments.fig2_single_step` (one-step loss vs step size, drops vs
   batch size and position, ε_max, noise scale) and
   :mod:`experiments.fig3_interpolation` (fixed-batch side-trips and their
   interpolation) on that one parent;
3. writes ``WORKDIR/report.md`` (figures embedded by relative path, a table of
   measured numbers, and for each of the paper's claims the number that
   decides it, the stated criterion and the verdict, all computed -- nothing
   in the verdicts is fixed text) and ``WORKDIR/report.json`` (the same numbers).

Progress lines go to stderr. ``--tiny`` shrinks the config (60 steps, width-8
CNN, 1 000 examples) and every experiment so the whole pipeline runs in well
under a minute; its numbers exercise the code, not the paper's regime.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

from experiments import common
from experiments import fig1_averaging_vs_sidetrips as fig1
from experiments import fig2_single_step as fig2
from experiments import fig3_interpolation as fig3

DEFAULT_CONFIG = "configs/mnist1d.py"

# The smoke size: every stage runs, on a model and run small enough for CI.
TINY_CONFIG = {
  "total_steps": 60,
  "dataset.num_train": 1000,
  "model.width": 8,
  "eval_every_steps": 30,
  "checkpoint_every_steps": 30,
  "log_every_steps": 30,
  "averaging.gap": 20,
  "averaging.bn_recompute_batches": 4,
}
TINY_EXP = {
  "fig1": {"branch_fractions": (0.5,), "horizons": (1, 15)},
  "fig2": {
    "position_fractions": (0.5, 1.0),
    "batch_sizes": (32, 64),
    "num_step_sizes": 9,
    "num_heldout": 2,
    "noise_batches": 4,
    "chunk_size": 0,
  },
  "fig3": {"point_fractions": (0.5, 0.75), "num_steps": 3, "num_alphas": 5},
}
MODULES = (("fig1", fig1), ("fig2", fig2), ("fig3", fig3))


def build(config_path: str = DEFAULT_CONFIG, tiny: bool = False):
  """``(config, {name: exp})`` for the demo; ``tiny`` applies the smoke size."""
  config = common.load_config(config_path, TINY_CONFIG if tiny else None)
  exps = {}
  for name, module in MODULES:
    exp = module.experiment_defaults()
    if tiny:
      exp = common.apply_overrides(exp, TINY_EXP[name])
    exps[name] = exp
  return config, exps


def _main_run_claim(config, parent: str) -> tuple[dict, dict]:
  """Final raw vs averaged test metrics of the parent (its metrics.jsonl)."""
  records = common.read_metrics(parent)
  out = {}
  for key in ("eval/loss", "eval/accuracy", "eval_avg/loss", "eval_avg/accuracy"):
    steps, values = common.metric_series(records, key)
    if not len(steps):
      raise ValueError(f"parent run {parent!r} has no {key!r} in metrics.jsonl")
    out[key] = float(values[-1])
    out["step"] = int(steps[-1])
  claim = {
    "id": "main_run_average_beats_raw",
    "claim": f"at the end of the main run the {config.averaging.method} average has lower test "
    "loss than the raw weights (Secs. 4-5, Fig. 5)",
    "measured": out,
    "criterion": "final test loss(average) < final test loss(raw)",
    "reproduced": bool(out["eval_avg/loss"] < out["eval/loss"]),
    "text": f"step {out['step']}: test loss {out['eval_avg/loss']:.4f} (average) vs "
    f"{out['eval/loss']:.4f} (raw); accuracy {out['eval_avg/accuracy']:.4f} vs "
    f"{out['eval/accuracy']:.4f}",
  }
  return claim, out


def run(config, exps: dict, workdir: str) -> dict:
  """Runs every stage in ``workdir``; writes report.md and report.json; returns the summary."""
  t_start = time.perf_counter()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings = {}
  keep = sorted({s for name, m in MODULES for s in m.branch_steps(config, exps[name])})
  common.log(f"demo: {common.run_label(config)}")
  t = time.perf_counter()
  parent = common.ensure_parent(config, workdir, keep)
  timings["parent"] = time.perf_counter() - t
  results = {}
  for name, module in MODULES:
    common.log(f"demo: stage {module.NAME}")
    t = time.perf_counter()
    results[name] = module.run(config, exps[name], workdir, parent=parent)
    timings[name] = time.perf_counter() - t
    common.log(f"demo: stage {module.NAME} done in {timings[name]:.0f}s")
  main_claim, main_numbers = _main_run_claim(config, parent)
  claims = [main_claim]
  for name, _ in MODULES:
    claims += results[name]["claims"]
  timings["total"] = time.perf_counter() - t_start
  numbers = measured_numbers(main_numbers, results)
  report = {
    "config": config.to_dict(),
    "label": common.run_label(config),
    "parent": parent,
    "claims": claims,
    "numbers": numbers,
    "figures": {name: os.path.relpath(results[name]["png"], workdir) for name, _ in MODULES},
    "timings_s": timings,
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "python": sys.version.split()[0],
    },
  }
  common.write_json(os.path.join(workdir, "report.json"), report)
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write(render(report))
  n_ok = sum(c["reproduced"] for c in claims)
  common.log(
    f"demo: {n_ok} of {len(claims)} claims reproduced; report at {path} ({timings['total']:.0f}s)"
  )
  return report


def measured_numbers(main: dict, results: dict) -> list[dict]:
  """The table of measured numbers: ``{name, value, unit, source}`` rows, each checked finite."""
  out = []

  def add(name, value, unit, source):
    for v in value if isinstance(value, list) else [value]:
      if not math.isfinite(float(v)):
        raise ValueError(f"measured number {name!r} is not finite: {value}")
    out.append({"name": name, "value": value, "unit": unit, "source": source})

  add("main run: final test loss, raw", main["eval/loss"], "nats", "parent")
  add("main run: final test loss, average", main["eval_avg/loss"], "nats", "parent")
  add("main run: final test accuracy, raw", main["eval/accuracy"], "fraction", "parent")
  add("main run: final test accuracy, average", main["eval_avg/accuracy"], "fraction", "parent")
  for r in fig1._longest({"rows": results["fig1"]["rows"]}):
    tag = f"fig1 S={r['branch']}, h={r['horizon']}"
    add(
      f"{tag}: test accuracy raw / average / side-trip",
      [r["raw"]["accuracy"], r["average"]["accuracy"], r["sidetrip"]["accuracy"]],
      "fraction",
      "fig1",
    )
    add(
      f"{tag}: test loss raw / average / side-trip",
      [r["raw"]["loss"], r["average"]["loss"], r["sidetrip"]["loss"]],
      "nats",
      "fig1",
    )
    add(
      f"{tag}: L2 ‖average − side-trip‖ / ‖average − raw‖",
      [r["dist_avg_sidetrip"], r["dist_avg_raw"]],
      "parameter units",
      "fig1",
    )
  m = results["fig2"]["main"]
  tag = f"fig2 step {m['step']}, B={m['batch_size']}"
  add(
    f"{tag}: training-batch loss before / after the best single step",
    [m["train_loss0"], m["train_best_loss"]],
    "nats",
    "fig2",
  )
  add(
    f"{tag}: held-out mean loss before / at the training batch's best step",
    [m["heldout_loss0"], m["heldout_loss0"] + m["heldout_change_at_train_best"]],
    "nats",
    "fig2",
  )
  add(
    f"{tag}: best step on the grid / ε_max of the batch",
    [m["train_best_step"], m["eps_max"]],
    "step size",
    "fig2",
  )
  add(
    f"{tag}: largest drop, training batch / held-out mean",
    [m["train_largest_drop"], m["heldout_largest_drop"]],
    "nats",
    "fig2",
  )
  ns = m.get("noise_scale")
  if ns:
    add(f"{tag}: gradient noise scale B_simple", ns["b_simple"], "examples", "fig2")
    add(
      f"{tag}: ε_max of the true gradient / ε_opt(B)",
      [ns["eps_max_true_gradient"], ns["eps_opt"]],
      "step size",
      "fig2",
    )
  for c in results["fig3"]["claims"]:
    for k, v in c["measured"].items():
      add(f"fig3 {c['id']}: {k}", v, "steps" if k == "k" else "nats", "fig3")
  return out


def _fmt(v) -> str:
  if isinstance(v, list):
    return " / ".join(_fmt(x) for x in v)
  if isinstance(v, int):
    return str(v)
  return f"{float(v):.4g}"


def _cell(text: str) -> str:
  # A bare "|" (as in |g|² or |a − b|) would end a Markdown table cell.
  return str(text).replace("|", "\\|")


def render(report: dict) -> str:
  """``report.md`` from the report dict (verdicts and numbers come from it only)."""
  claims = report["claims"]
  n_ok = sum(c["reproduced"] for c in claims)
  lines = [
    "# trajax demo: training trajectories, mini-batch losses and the learning rate",
    "",
    f"Run: {report['label']}.",
    f"Parent run: `{report['parent']}`. Machine: {report['machine']['cpus']} CPUs, "
    f"{report['machine']['platform']}. Wall time: {report['timings_s']['total']:.0f} s "
    "("
    + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items() if k != "total")
    + ").",
    "",
    f"**{n_ok} of {len(claims)} claims reproduced** by the criteria below "
    "(each criterion is stated in advance and applied to the numbers this run measured).",
    "",
    "## Claims",
    "",
    "| claim | measured | criterion | verdict |",
    "|---|---|---|---|",
  ]
  for c in claims:
    verdict = "**reproduced**" if c["reproduced"] else "**not reproduced**"
    cells = (c["claim"], c["text"], c["criterion"], verdict)
    lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
  lines += ["", "Reproduced:", ""]
  lines += [f"- {c['claim']}: {c['text']}." for c in claims if c["reproduced"]] or ["- none"]
  lines += ["", "Not reproduced:", ""]
  lines += [
    f"- {c['claim']}: {c['text']} (criterion: {c['criterion']})."
    for c in claims
    if not c["reproduced"]
  ] or ["- none"]
  lines += ["", "## Measured numbers", "", "| quantity | value | unit |", "|---|---|---|"]
  for r in report["numbers"]:
    lines.append(f"| {_cell(r['name'])} | {_fmt(r['value'])} | {r['unit']} |")
  titles = {
    "fig1": "Figures 1, 5, 6, 10: averaging vs equivalent side-trips",
    "fig2": "Figures 2, 12, 13: one step vs step size, batch size and position",
    "fig3": "Figure 3: fixed-batch side-trips and their interpolation",
  }
  lines += ["", "## Figures", ""]
  for name, rel in report["figures"].items():
    lines += [f"### {titles.get(name, name)}", "", f"![{name}]({rel})", ""]
  lines += [
    "All numbers are also in `report.json` and in each experiment's JSON next to its figure.",
    "",
  ]
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdirs/demo", help="output folder (resumable)")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="training config file")
  parser.add_argument("--tiny", action="store_true", help="smoke size (< 1 min)")
  args = parser.parse_args(argv)
  config, exps = build(args.config, args.tiny)
  return run(config, exps, args.workdir)


if __name__ == "__main__":
  main()
