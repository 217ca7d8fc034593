r"""``make demo``: the paper's claims, measured as the paper measured them, over several seeds.

    python -m experiments.demo --workdir=workdirs/demo            # 3 seeds, 2 CPU cores
    python -m experiments.demo --workdir=workdirs/demo --seeds=0,1,2,3,4
    python -m experiments.demo --workdir=/tmp/d --tiny            # smoke size, 2 seeds

For every parent seed (``--seeds``, default 0, 1, 2), in ``WORKDIR/seed_<s>``:

1. trains the offline default config (``configs/mnist1d.py``: mnist1d with 30 %
   label noise, a 1-D CNN with BatchNorm, SGD + momentum at a constant rate,
   two-point averaging 1 000 steps apart) in ``parent/``, checkpointing at
   every step an experiment branches from -- or reuses it when finished (every
   stage is resumable);
2. runs on it Figs. 1/5 (two-point average vs the λ/2 side-trip, with λ/10 and
   3λ/4 controls), 2/12/13 (one step vs step size, position and batch size,
   held-out = disjoint training batches), 3 (fixed-batch side-trips, step from
   the batch's ε_max), 6/8 (weight-space distances, two batch orders), 7
   (fixed-batch gradient alignment), 14's top row = 5's SWA panel, and 5's EMA
   panel (whole-trajectory EMA vs the 3000-step side-trip);
3. trains a cosine-schedule parent in ``cosine/parent`` for Fig. 14's bottom row.

4. trains a clean-label parent (``dataset.label_noise = 0``) in
   ``clean_labels/parent`` and runs Figs. 1/5 on it: the setting control of
   the headline records (ids ``<claim>_clean_labels``).

Then every claim of :data:`experiments.claims.CLAIMS` is judged on every seed
(criteria fixed in code before the run; the Figs. 1/5 records pooled over
branch points × batch orders × horizons with bootstrap intervals,
:mod:`experiments.estimators`; a judged record's seed holds when its criterion
holds and its measured negative control fails), and ``WORKDIR/report.md`` and
its machine-readable twin ``WORKDIR/report.json`` are written: ``seeds``,
``parents``, ``settings`` (``noisy_labels``, ``clean_labels``, each with its
run label), ``claims`` records (``id, figure, quote, criterion, kind, metric,
setting, per_seed: [{seed, measured, holds, estimate: {value, ci,
n_replicates}, control: {value, holds}}], verdict``; ``estimate``/``control``
for judged records), ``tally`` (``reproduced, mixed, 'not reproduced', 'not
testable here', descriptive``: judged records once each, derived ones not at
all), the BatchNorm policy and its sensitivity rows.

Progress lines go to stderr. ``--tiny`` shrinks the config (60 steps, width-8
CNN, 1 000 examples) and every experiment so the pipeline runs in about a
minute per seed; its numbers exercise the code, not the paper's regime.

Length: about 660 lines, over the ~500 the house asks: running the stages
over seeds (~320 lines) and rendering their records into ``report.md``
(~330 lines, the table layout the report's readers rely on) are one
command's two halves.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

from experiments import batch_size_vs_decay as bs
from experiments import claims as claims_lib
from experiments import cli, curvature, parents, plotting
from experiments import fig1_averaging_vs_sidetrips as fig1
from experiments import fig2_single_step as fig2
from experiments import fig3_interpolation as fig3
from experiments import fig6_8_distances as fig6_8
from experiments import fig7_alignment as fig7
from experiments import fig14_cosine as fig14

DEFAULT_CONFIG = "configs/mnist1d.py"
DEFAULT_SEEDS = (0, 1, 2)
TINY_SEEDS = (0, 1)

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
  "fig1": {
    "branch_fractions": (0.5, 0.75),
    "horizons": (1, 5, 15),
    "replicates": 2,
    "train_eval_batches": 1,
    "noise_examples": 500,
  },
  "fig1_clean": {"branch_fractions": (0.5,), "horizons": (5, 15), "replicates": 2},
  "fig2": {
    # Few probe shapes: each new (batch size, held-out count) compiles the probe.
    "position_fractions": (0.5, 1.0),
    "main_fraction": 0.5,
    "sweep_fractions": (0.5,),
    "batch_sizes": (32, 64),
    "num_fine": 4,
    "num_coarse": 4,
    "num_heldout": 2,
    "noise_batches": 4,
    "chunk_size": 0,
  },
  "fig3": {"point_fractions": (0.5, 0.75), "num_steps": 3, "num_alphas": 5},
  "fig6_8": {"branch_fraction": 0.5, "burnin_fraction": 0.5, "points": 4, "train_eval_batches": 2},
  "fig7": {"branch_fraction": 0.5, "points": 3, "extra_batch_factors": (2,)},
  "fig14": {"branch_fractions": (0.25, 0.5), "train_eval_batches": 2},
  "fig5_ema": {"branch_fractions": (0.25,), "ema_window": 30, "ema_history": 20},
  "fig14_cosine": {"branch_fractions": (0.25, 0.5), "train_eval_batches": 2},
  "batch_size_vs_decay": {"branch_fractions": (0.5,), "horizon": 30, "train_eval_batches": 1},
  "curvature": {
    "every": 30,
    "window": 20,
    "k": 2,
    "lanczos_iters": 6,
    "probes": 3,
    "batches": 2,
    "shell_steps": 10,
    "shell_points": 4,
    "shell_k": 2,
    "shell_factors": (1.0, 0.5, 0.25),
    "drag_steps": 3,
  },
}
# Knobs the demo sets on top of each module's defaults (all sizes).
DEMO_EXP = {
  # The setting control (clean labels): the headline records only, two branch
  # points, no specificity factors and no label-noise record (nothing flipped).
  "fig1_clean": {
    "branch_fractions": (0.5, 0.75),
    "control_factors": (),
    "noise_examples": 0,
  },
  "fig14": {"train_eval_batches": 4},
  # EMA history 4800 (weight of older points e^-4.8 < 1 %) rather than 5/δ =
  # 5000: the replay then starts at a multiple of the parent's checkpoint
  # cadence (300), which 1000 would cut to 100.
  "fig5_ema": {
    "method": "ema",
    "branch_fractions": (0.5,),
    "ema_history": 4800,
    "train_eval_batches": 4,
  },
  "fig14_cosine": {"train_eval_batches": 4},
  # h = 1200 (not averaging.gap = 1000): S + h = 4200, 5700 are multiples of
  # the parent's checkpoint cadence (300), which S + 1000 would cut to 100.
  "batch_size_vs_decay": {"horizon": 1200},
  # Trajectory every 1500 steps and the window [5100, 6000]: checkpoints the
  # other stages keep anyway (cadence 300); 2 batches, 24 Lanczos steps and 10
  # Hutchinson probes per point; the shell's 900-step trips at f = 1 .. 1/8.
  "curvature": {"every": 1500, "window": 900, "batches": 2, "lanczos_iters": 24, "probes": 10},
}
# Stages on the constant-rate parent, in order; fig14 on it is Fig. 14's top
# row and Fig. 5's SWA panel, fig5_ema its EMA panel (same module, EMA knobs).
MODULES = (
  ("fig1", fig1),
  ("fig2", fig2),
  ("fig3", fig3),
  ("fig6_8", fig6_8),
  ("fig7", fig7),
  ("fig14", fig14),
  ("fig5_ema", fig14),
  ("batch_size_vs_decay", bs),
  ("curvature", curvature),
)
# Fig. 14's bottom row runs on a second, cosine-schedule parent per seed.
COSINE_MODULES = (("fig14_cosine", fig14),)
# The setting control: the Figs. 1/5 records on a clean-label parent per seed.
CLEAN_MODULES = (("fig1_clean", fig1),)
# Settings (claims.SETTINGS) -> the config overrides that make them.
SETTING_OVERRIDES = {"noisy_labels": {}, "clean_labels": {"dataset.label_noise": 0.0}}


def catalog() -> dict:
  """Every claim the demo can judge: :data:`experiments.claims.CLAIMS` and the stages' own ``CLAIMS``."""
  out = dict(claims_lib.CLAIMS)
  for _, module in MODULES + COSINE_MODULES:
    for cid, claim in getattr(module, "CLAIMS", {}).items():
      if out.setdefault(cid, claim) is not claim:
        raise KeyError(f"claim id {cid!r} defined twice ({module.__name__})")
  return out


def build(config_path: str = DEFAULT_CONFIG, tiny: bool = False):
  """``(config, {name: exp})`` for the demo; ``tiny`` applies the smoke size."""
  config = cli.load_config(config_path, TINY_CONFIG if tiny else None)
  exps = {}
  for name, module in MODULES + COSINE_MODULES + CLEAN_MODULES:
    exp = cli.apply_overrides(module.experiment_defaults(), DEMO_EXP.get(name, {}))
    if tiny:
      exp = cli.apply_overrides(exp, TINY_EXP[name])
    exps[name] = exp
  return config, exps


def seed_dir(workdir: str, seed: int) -> str:
  """Where one parent seed's run and figures live: ``WORKDIR/seed_<seed>``."""
  return os.path.join(os.path.abspath(workdir), f"seed_{int(seed)}")


def run_seed(config, exps: dict, workdir: str, seed: int) -> dict:
  """Parent + every figure for one seed in ``seed_dir``; ``{parent, measured, bn, figures, timings}``."""
  config = cli.apply_overrides(config, {"seed": int(seed)})
  sdir = seed_dir(workdir, seed)
  os.makedirs(sdir, exist_ok=True)
  timings, measured, bn, figures, results = {}, {}, {}, {}, {}

  def stages(cfg, modules, directory, what):
    """Trains (or reopens) ``cfg``'s parent in ``directory``, then runs ``modules`` on it."""
    keep = sorted({s for name, m in modules for s in m.branch_steps(cfg, exps[name])})
    t = time.perf_counter()
    parent = parents.ensure_parent(cfg, directory, keep)
    timings[what] = time.perf_counter() - t
    out = {}
    for name, module in modules:
      cli.log(f"demo seed {seed}: stage {module.NAME} ({what})")
      t = time.perf_counter()
      res = out[name] = results[name] = module.run(cfg, exps[name], directory, parent=parent)
      timings[name] = time.perf_counter() - t
      cli.log(f"demo seed {seed}: stage {module.NAME} done in {timings[name]:.0f}s")
      figures[name] = os.path.relpath(res["png"], os.path.abspath(workdir))
      for extra, path in res.get("extra_pngs", {}).items():
        figures[extra] = os.path.relpath(path, os.path.abspath(workdir))
    return parent, out

  cli.log(f"demo seed {seed}: {plotting.run_label(config)}")
  parent, out = stages(config, MODULES, sdir, "parent")
  for res in out.values():
    measured |= res["measured"]
    for policy, m in res.get("bn_sensitivity", {}).items():
      bn.setdefault(policy, {}).update(m)
  # Fig. 14's bottom row: the same config under the cosine schedule, its own parent.
  cos_config = cli.apply_overrides(config, {"optimizer.schedule": "cosine"})
  cos_parent, out = stages(
    cos_config, COSINE_MODULES, os.path.join(sdir, "cosine"), "cosine parent"
  )
  for res in out.values():
    measured |= res["measured"]
  # The setting control: the same config with clean labels, its own parent.
  clean_config = cli.apply_overrides(config, SETTING_OVERRIDES["clean_labels"])
  clean_parent, out = stages(
    clean_config, CLEAN_MODULES, os.path.join(sdir, "clean_labels"), "clean-label parent"
  )
  for res in out.values():
    measured |= {
      claims_lib.setting_id(cid, "clean_labels"): m
      for cid, m in res["measured"].items()
      if cid in claims_lib.CLEAN_VARIANTS
    }
  return {
    "parent": parent,
    "cosine_parent": cos_parent,
    "clean_parent": clean_parent,
    "clean_label": plotting.run_label(clean_config),
    "measured": measured,
    "bn_sensitivity": bn,
    "figures": figures,
    "timings_s": timings,
    "results": results,
    "label": plotting.run_label(config),
  }


def run(config, exps: dict, workdir: str, seeds=DEFAULT_SEEDS) -> dict:
  """Every stage for every seed in ``workdir``; writes report.md and report.json; returns the report."""
  t_start = time.perf_counter()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
    raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}")
  per_seed = {s: run_seed(config, exps, workdir, s) for s in seeds}
  records = claims_lib.judge_all({s: r["measured"] for s, r in per_seed.items()}, catalog=catalog())
  sensitivity = bn_sensitivity(per_seed)
  first = per_seed[seeds[0]]
  settings = {
    "noisy_labels": {
      "label": first["label"],
      "description": claims_lib.SETTINGS["noisy_labels"],
      "overrides": SETTING_OVERRIDES["noisy_labels"],
    },
    "clean_labels": {
      "label": first["clean_label"],
      "description": claims_lib.SETTINGS["clean_labels"],
      "overrides": SETTING_OVERRIDES["clean_labels"],
      "parents": {str(s): r["clean_parent"] for s, r in per_seed.items()},
    },
  }
  timings = {f"seed {s}": sum(r["timings_s"].values()) for s, r in per_seed.items()}
  timings["total"] = time.perf_counter() - t_start
  report = {
    "seeds": seeds,
    "parents": {str(s): r["parent"] for s, r in per_seed.items()},
    "cosine_parents": {str(s): r["cosine_parent"] for s, r in per_seed.items()},
    "settings": settings,
    "claims": records,
    "tally": claims_lib.tally(records),
    "bn_policy": fig1.BN_POLICY,
    "bn_sensitivity": sensitivity,
    "config": config.to_dict(),
    "label": per_seed[seeds[0]]["label"],
    "figures": {str(s): r["figures"] for s, r in per_seed.items()},
    "numbers": measured_numbers(per_seed),
    "timings_s": timings,
    "stage_timings_s": {str(s): r["timings_s"] for s, r in per_seed.items()},
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "python": sys.version.split()[0],
    },
  }
  cli.write_json(os.path.join(workdir, "report.json"), report, allow_nan=True)
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write(render(report))
  cli.log(
    f"demo: {headline(records)} over seeds {seeds}; report at {path} ({timings['total']:.0f}s)"
  )
  return report


def bn_sensitivity(per_seed: dict) -> list[dict]:
  """Rows ``{policy, claim, per_seed: [{seed, holds}], verdict}`` for the headline claims."""
  rows = []
  policies = sorted({p for r in per_seed.values() for p in r["bn_sensitivity"]})
  for policy in policies:
    ids = sorted({c for r in per_seed.values() for c in r["bn_sensitivity"].get(policy, {})})
    for cid in ids:
      claim = catalog()[cid]
      have = [
        (s, r["bn_sensitivity"][policy][cid])
        for s, r in per_seed.items()
        if cid in r["bn_sensitivity"].get(policy, {})
      ]
      rec = claims_lib.judge(claim, have)
      rows.append(
        {
          "policy": policy,
          "claim": cid,
          "metric": rec["metric"],
          "per_seed": [
            {"seed": x["seed"], "holds": x["holds"], "estimate": x.get("estimate")}
            for x in rec["per_seed"]
          ],
          "effect": rec.get("effect"),
          "verdict": rec["verdict"],
        }
      )
  return rows


def verdict_counts(records: list[dict]) -> dict:
  """The tally (:func:`experiments.claims.tally`): judged records once each, derived not at all."""
  return claims_lib.tally(records)


def counts_line(counts: dict) -> str:
  return ", ".join(
    f"{n} {'not testable' if v == 'not testable here' else v}" for v, n in counts.items()
  )


def headline(records: list[dict]) -> str:
  """'N claims: a reproduced, b mixed, c not reproduced, d not testable, e descriptive'."""
  counts = claims_lib.tally(records)
  derived = sum(r.get("kind") == "derived" for r in records)
  out = f"{sum(counts.values())} claims: {counts_line(counts)}"
  return out + (f" ({derived} derived, not counted)" if derived else "")


def measured_numbers(per_seed: dict) -> list[dict]:
  """The table of measured numbers: ``{name, seed, value, unit}`` rows, each checked finite."""
  out = []

  def add(name, seed, value, unit):
    for v in value if isinstance(value, list) else [value]:
      if not math.isfinite(float(v)):
        raise ValueError(f"measured number {name!r} (seed {seed}) is not finite: {value}")
    out.append({"name": name, "seed": int(seed), "value": value, "unit": unit})

  for seed, res in per_seed.items():
    for r in fig1.longest_rows({"rows": res["results"]["fig1"]["rows"]}):
      tag = f"fig1 S={r['branch']}, h={r['horizon']} (parent's batch order)"
      add(
        f"{tag}: test loss raw / average / side-trip",
        seed,
        [r["raw"]["test_loss"], r["average"]["test_loss"], r["sidetrip"]["test_loss"]],
        "nats",
      )
      add(
        f"{tag}: test accuracy raw / average / side-trip",
        seed,
        [r["raw"]["test_accuracy"], r["average"]["test_accuracy"], r["sidetrip"]["test_accuracy"]],
        "fraction",
      )
    m = res["results"]["fig2"]["main"]
    tag = f"fig2 step {m['step']}, B={m['batch_size']}"
    add(
      f"{tag}: training-batch loss before / after the best single step",
      seed,
      [m["train_loss0"], m["train_best_loss"]],
      "nats",
    )
    add(
      f"{tag}: largest drop, training batch / held-out mean",
      seed,
      [m["train_largest_drop"], m["heldout_largest_drop"]],
      "nats",
    )
    add(
      f"{tag}: best step on the grid / ε_max of the batch (not a paper claim)",
      seed,
      [m["train_best_step"], m["eps_max"]],
      "step size",
    )
  return out


def fmt_number(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, list):
    return " / ".join(fmt_number(x) for x in v)
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, int):
    return str(v)
  return f"{float(v):.4g}"


def _cell(text: str) -> str:
  # A bare "|" (as in |g|² or |a − b|) would end a Markdown table cell.
  return str(text).replace("|", "\\|")


def _effect_text(rec: dict) -> str:
  eff = rec.get("effect")
  if not eff or not eff.get("n"):
    return ""
  spread = f" ± {eff['std']:.3g}" if eff["n"] > 1 else ""
  return f"{eff['name']} = {eff['mean']:.4g}{spread} (min {eff['min']:.4g}, max {eff['max']:.4g})"


def _num(v) -> str:
  if v is None:
    return "–"
  v = float(v)
  return "∞" if math.isinf(v) and v > 0 else "−∞" if math.isinf(v) else f"{v:.3g}"


def _estimate_text(e: dict | None) -> str:
  """``0.93 [0.71, 1.2] (n=9)``; a single measurement shows no interval."""
  if not e:
    return ""
  ci = e.get("ci") or [None, None]
  interval = f" [{_num(ci[0])}, {_num(ci[1])}]" if ci[0] is not None or ci[1] is not None else ""
  return f"{_num(e.get('value'))}{interval} (n={e.get('n_replicates')})"


def _seed_cell(rec: dict, row: dict) -> str:
  """``seed s: holds (estimate v [lo, hi]; control c fails; note)`` for one seed of a record."""
  out = f"seed {row['seed']}: {'holds' if row['holds'] else 'fails'}"
  extra = []
  if row.get("estimate"):
    extra.append("estimate " + _estimate_text(row["estimate"]))
  else:
    name = (rec.get("effect") or {}).get("name")
    value = row["measured"].get(name) if name else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      extra.append(f"{name} {value:.4g}")
  if row.get("control"):
    c = row["control"]
    extra.append(f"control {_num(c['value'])} {'passes (!)' if c['holds'] else 'fails'}")
  if row["measured"].get("note"):
    extra.append(str(row["measured"]["note"]))
  return out + (f" ({'; '.join(extra)})" if extra else "")


def _claim_rows(records: list[dict]) -> list[str]:
  lines = [
    "| id | figure | setting · metric | the paper says | criterion | per seed | verdict |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in records:
    if r["verdict"] == "not testable here":
      per = "not testable here: " + r["reason"]
    else:
      per = "; ".join(_seed_cell(r, x) for x in r["per_seed"])
    crit = r["criterion"] + (f" (control: {r['control']})" if r.get("control") else "")
    if r.get("rationale"):
      crit += f" — why: {r['rationale']}"
    cells = (
      r["id"],
      r["figure"],
      f"{r.get('setting', '')} · {r.get('metric') or '–'}",
      f"“{r['quote']}”",
      crit,
      per,
      f"**{r['verdict']}**",
    )
    lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
  return lines


def render(report: dict) -> str:
  """``report.md`` from the report dict (verdicts and numbers come from it only)."""
  records = report["claims"]
  seeds = report["seeds"]
  settings = report.get("settings", {})
  lines = [
    "# trajax demo: training trajectories, mini-batch losses and the learning rate",
    "",
    f"Run: {report['label']} (seed varies). Parent seeds: {', '.join(map(str, seeds))}.",
    "Parent runs: " + ", ".join(f"seed {s}: `{p}`" for s, p in report["parents"].items()) + ".",
    f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']}. Wall time: "
    f"{report['timings_s']['total']:.0f} s.",
    "",
    f"**Over {len(seeds)} seeds, {headline(records)}.** A judged record is *reproduced* when "
    "its criterion holds for every seed and its measured negative control fails, *mixed* when "
    "for some, *not reproduced* when for none. The Figs. 1/5 records are pooled over branch "
    "points × batch orders × horizons with bootstrap intervals (`experiments/estimators.py`), "
    "the paper's metric (test accuracy) first. *Descriptive* records have no measured control "
    "here and are not counted; *derived* ones repeat other records' measurements. Every "
    "criterion was fixed in code (`experiments/claims.py`) before the run, from the paper's "
    "wording; held-out batches are training batches disjoint from the probed batch.",
    "",
    "**Settings:** "
    + "; ".join(f"`{k}`: {v['description']} ({v['label']})" for k, v in settings.items())
    + ".",
    "",
    "**Assumption the paper leaves open (BatchNorm):** " + report["bn_policy"] + ". The "
    "sensitivity table below re-judges the headline claim with the average of the members' "
    "running statistics.",
  ]
  groups = (
    ("Judged claims (counted)", lambda r: r.get("kind", "judged") == "judged"),
    (
      "Descriptive records (no measured control here; not counted)",
      lambda r: r.get("kind") == "descriptive",
    ),
    (
      "Derived records (computed from other records; not counted)",
      lambda r: r.get("kind") == "derived",
    ),
  )
  for title, keep in groups:
    sub = [r for r in records if keep(r)]
    if sub:
      lines += ["", f"## {title}", ""] + _claim_rows(sub)
  paired = [
    (
      r,
      next((x for x in records if x["id"] == claims_lib.setting_id(r["id"], "clean_labels")), None),
    )
    for r in records
    if r["id"] in claims_lib.CLEAN_VARIANTS
  ]
  if any(c for _, c in paired):
    lines += [
      "",
      "## Settings side by side (Figs. 1/5 headline records)",
      "",
      "| claim | metric | noisy labels: estimate per seed | verdict | clean labels: estimate "
      "per seed | verdict |",
      "|---|---|---|---|---|---|",
    ]
    for r, c in paired:
      est = lambda rec: "; ".join(  # noqa: E731
        f"seed {x['seed']}: {_estimate_text(x.get('estimate'))}" for x in rec["per_seed"]
      )
      cells = (
        r["id"],
        r.get("metric", ""),
        est(r),
        f"**{r['verdict']}**",
        est(c) if c else "–",
        f"**{c['verdict']}**" if c else "–",
      )
      lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
  if report.get("bn_sensitivity"):
    lines += [
      "",
      "## BatchNorm sensitivity (headline claims)",
      "",
      "| BatchNorm statistics | claim | metric | per seed (holds, pooled estimate) | verdict |",
      "|---|---|---|---|---|",
    ]
    for row in report["bn_sensitivity"]:
      per = "; ".join(
        f"seed {x['seed']}: {'holds' if x['holds'] else 'fails'} "
        f"({_estimate_text(x.get('estimate'))})"
        for x in row["per_seed"]
      )
      cells = (row["policy"], row["claim"], row.get("metric", ""), per, f"**{row['verdict']}**")
      lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
  lines += [
    "",
    "## Measured numbers",
    "",
    "| quantity | seed | value | unit |",
    "|---|---|---|---|",
  ]
  for r in report["numbers"]:
    lines.append(f"| {_cell(r['name'])} | {r['seed']} | {fmt_number(r['value'])} | {r['unit']} |")
  titles = {
    "fig1": "Figures 1, 5: averaging vs equivalent side-trips",
    "fig2": "Figures 2, 12, 13: one step vs step size, batch size and position",
    "fig3": "Figure 3: fixed-batch side-trips and their interpolation",
    "fig6_8": "Figure 6: the average vs the λ/2 side-trip vs two batch orders in weight space",
    "fig8": "Figure 8: distance to an independently trained solution",
    "fig7": "Figure 7: fixed-batch gradient alignment along side-trips",
    "fig14": "Figures 14 (top row) and 5 (SWA): constant-rate run, SWA vs its side-trip",
    "fig5_ema": "Figure 5 (EMA): whole-trajectory EMA vs its 3000-step side-trip",
    "fig14_cosine": "Figure 14 (bottom row): cosine-schedule run, SWA vs its side-trip",
    "fig1_clean": "Setting control: Figures 1, 5 on a clean-label parent",
    "batch_size_vs_decay": "Beyond the paper: λ at batch kB vs λ/k at batch B (Smith et al. 2018)",
    "curvature": "Beyond the paper: curvature along the trajectory, the shell law, drift and drag",
  }
  lines += ["", "## Figures", ""]
  for seed, figs in report["figures"].items():
    for name, rel in figs.items():
      lines += [
        f"### {titles.get(name, name)} (seed {seed})",
        "",
        f"![{name} seed {seed}]({rel})",
        "",
      ]
  lines += [
    "Per-seed numbers (with the split and example ranges of every held-out batch) are in "
    "`report.json` and in each experiment's JSON next to its figure.",
    "",
  ]
  return "\n".join(lines)


def parse_seeds(text: str) -> tuple[int, ...]:
  try:
    out = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--seeds must be comma-separated ints, got {text!r}"
    ) from None
  if not out:
    raise argparse.ArgumentTypeError(f"--seeds names no seed: {text!r}")
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdirs/demo", help="output folder (resumable)")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="training config file")
  parser.add_argument("--tiny", action="store_true", help="smoke size (< 1 min per seed)")
  parser.add_argument(
    "--seeds",
    type=parse_seeds,
    default=None,
    help=f"parent seeds, comma-separated (default {','.join(map(str, DEFAULT_SEEDS))}; "
    f"--tiny: {','.join(map(str, TINY_SEEDS))})",
  )
  args = parser.parse_args(argv)
  config, exps = build(args.config, args.tiny)
  seeds = args.seeds or (TINY_SEEDS if args.tiny else DEFAULT_SEEDS)
  return run(config, exps, args.workdir, seeds)


if __name__ == "__main__":
  main()
