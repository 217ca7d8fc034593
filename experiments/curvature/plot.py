"""The curvature figure: one row for the trajectory, one for the window and the shell."""

from __future__ import annotations

import numpy as np

from experiments import plotting

__all__ = ["plot"]


def _factor_ticks(a, f) -> None:
  a.set_xticks(list(f))
  a.set_xticklabels([f"{x:g}" for x in f])
  a.minorticks_off()


def plot(res: dict, path: str, label: str) -> None:
  """``curvature.png``: the trajectory, the window's points, the shell law and the midpoint drop."""
  sh = res.get("shell")
  fig, ax = plotting.new_figure(2, 3, width=4.8, height=3.9)
  tr = res["trajectory"]
  s = np.asarray([t["step"] for t in tr])
  lam = np.asarray([np.mean(t["eigenvalues"], axis=0) for t in tr])
  a = ax[0][0]
  for i in range(lam.shape[1]):
    a.plot(s, lam[:, i], f"C{i}-o", ms=3, label=rf"$\lambda_{i + 1}$")
  a.set_xlabel("training step s")
  a.set_ylabel("Hessian eigenvalue (nats per unit parameter$^2$)")
  a.set_title("top eigenvalues of the training-batch Hessian")
  a.legend(fontsize=7)
  a = ax[0][1]
  a.errorbar(
    s,
    [t["trace_mean"] for t in tr],
    yerr=[3 * t["trace_mean_stderr"] for t in tr],
    fmt="C3-o",
    ms=3,
    label="Hutchinson trace (±3 SE)",
  )
  a.set_xlabel("training step s")
  a.set_ylabel("tr H (nats per unit parameter$^2$)")
  a.set_title("Hessian trace")
  a.legend(fontsize=7)
  a = ax[0][2]
  a.semilogy(s, [t["lr"] for t in tr], "k-", label=r"learning rate $\eta_s$")
  a.semilogy(s, [t["eff_lr"] for t in tr], "k:", label=r"effective rate $\eta_s/(1-\beta)$")
  a.semilogy(s, [t["gd_edge"] for t in tr], "C0-o", ms=3, label=r"$2/\lambda_{max}$ (GD edge)")
  a.semilogy(
    s,
    [t["momentum_edge"] for t in tr],
    "C0--",
    label=rf"$2(1+\beta)/\lambda_{{max}}$, β={res['momentum']:g}",
  )
  a.semilogy(s, [t["eps_max_mean"] for t in tr], "C2-s", ms=3, label=r"$\epsilon_{max}$ (batch)")
  pts = list(res["points"].values())
  a.plot(
    [res["total_steps"]] * len(pts),
    [2.0 / p["lambda_max"] for p in pts],
    "C3^",
    ms=4,
    label=r"$2/\lambda_{max}$ at the window's 8 points",
  )
  a.set_xlabel("training step s")
  a.set_ylabel("step size")
  a.set_title("learning rate vs curvature references")
  a.legend(fontsize=6)

  # The last window's points: raw, averages, side-trips, on the same batches.
  a = ax[1][0]
  names = list(res["points"])
  colours = {"raw": "k", "average": "C0", "sidetrip": "C3"}
  x = np.arange(len(names))
  pts = [res["points"][n] for n in names]
  for i, p in enumerate(pts):
    a.errorbar(
      [x[i]],
      [p["trace_mean"]],
      yerr=[2 * p["trace_mean_stderr"]],
      fmt="o",
      color=colours[p["kind"]],
      ms=5,
    )
  a.set_xticks(x)
  a.set_xticklabels([n.replace("_", " ") for n in names], rotation=35, ha="right", fontsize=6)
  a.set_ylabel("tr H (±2 SE), dots")
  b = a.twinx()
  b.plot(x, [p["lambda_max"] for p in pts], "s", mfc="none", color="C1", ms=7)
  b.set_ylabel(r"$\lambda_{max}$ (open squares)", color="C1")
  a.set_title(
    f"window [{res['branch_step']}, {res['total_steps']}]: raw (black), averages (blue), "
    "side-trips (red)",
    fontsize=8,
  )
  if not sh:
    for a in (ax[1][1], ax[1][2]):
      a.axis("off")
    plotting.save_figure(fig, path, label)
    return
  a = ax[1][1]
  f = np.asarray(sh["factors"])
  series = [
    ("total", "pair_distance", "k-o", "pair distance"),
    ("fast", "pair_distance_fast", "C0-o", f"pair distance, top-{sh['fast_k']} dirs"),
    ("slow", "pair_distance_slow", "C1-o", "pair distance, other dirs"),
    ("centre_fast", "centre_distance_fast", "C0:^", "distance to centre, top dirs"),
  ]
  for d, key_, style, name in series:
    fit = sh["fit"][d]
    y = [np.mean(t[key_]) for t in sh["trips"]]
    a.loglog(f, y, style, ms=3, label=f"{name}: p = {fit['exponent']:.2f} ± {fit['stderr']:.2f}")
  if "drag" in sh["fit"]:
    for d, key_, style in (("drag", "mean_abs_drag", "C2--s"), ("drift", "mean_drift", "C3--s")):
      fit = sh["fit"][d]
      y = [t["drift_drag"][key_] for t in sh["trips"]]
      a.loglog(
        f, y, style, ms=3, label=f"|{d}| per step: p = {fit['exponent']:.2f} ± {fit['stderr']:.2f}"
      )
  for t in sh["trips"]:
    if not t["stationary"]:
      a.axvline(t["factor"], color="r", lw=0.6, ls=":")
  _factor_ticks(a, f)
  a.set_xlabel(r"learning-rate factor f (side-trip at f$\eta$; red dotted: not stationary)")
  a.set_ylabel("L2 distance (parameter units)")
  a.set_title(f"shell law from step {sh['branch_step']} ({sh['steps']} steps)")
  a.legend(fontsize=6)
  a = ax[1][2]
  gap = np.asarray([t["midpoint"]["gap"] for t in sh["trips"]])
  quad = np.asarray([t["midpoint"]["quadratic"] for t in sh["trips"]])
  a.loglog(f, np.abs(gap), "k-o", ms=4, label=r"$|(L(a)+L(c))/2 - L(\frac{a+c}{2})|$ measured")
  a.loglog(f, np.abs(quad), "C0--s", ms=4, label=r"$\frac{1}{8}(a-c)^T H (a-c)$ at midpoint")
  for fi, g in zip(f, gap, strict=True):
    if g <= 0:
      a.plot([fi], [abs(g)], "rx", ms=8)
  _factor_ticks(a, f)
  a.set_xlabel("learning-rate factor f")
  a.set_ylabel("loss drop (nats, training batches)")
  a.set_title("midpoint drop vs quadratic model (x: gap <= 0)", fontsize=10)
  a.legend(fontsize=6)
  plotting.save_figure(fig, path, label)
