"""What ``python -m trajax.posthoc`` shows: the console table and a sweep's plot.

The console: one line per average (label, test loss, accuracy, kernel
residual, whether its equivalent side-trip is exact; a sweep's best marked),
then what the reader needs once. The plot: test loss and accuracy against
the swept value, approximate averages a separate hollow series.
"""

from __future__ import annotations

import io

__all__ = ["console", "plot"]


def plot(path, rows, xlabel, reference, method, threshold) -> list[str]:
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
  buffer = io.BytesIO()  # then one new file, local or in a bucket (never over one)
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  from trajax.posthoc.outputs import write_new

  write_new(path, buffer.getvalue())
  return labels


def console(report: dict, sweep: bool) -> list[str]:
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
