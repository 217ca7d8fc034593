"""The curvature studies' claims: criteria and thresholds (fixed before any run), and records.

:data:`CLAIMS` holds one :class:`experiments.claims.Claim` per claim of the
studies (``curv.contracting``, ``curv.sqrt_lambda_shell``,
``curv.drift_drag``, ``curv.average_inside_shell``, ``curv.average_flatter``,
``curv.swa_flatter``; their wording in :mod:`experiments.curvature`);
:func:`measured` turns one seed's result into the record each criterion
reads, and :func:`experiments.curvature.run_seeds` judges them over seeds.
"""

from __future__ import annotations

import numpy as np

__all__ = [
  "CLAIMS",
  "CONTRACTION",
  "FLAT_SE",
  "QUADRATIC_MATCH",
  "SHELL_TOLERANCE",
  "measured",
  "not_stationary_note",
]

SHELL_TOLERANCE = 0.15  # |fitted exponent - predicted| allowed by "proportional to sqrt" / "to λ"
FLAT_SE = 2.0  # the average's trace must sit this many SE of the difference below
CONTRACTION = 1.0  # Appendix A: eigenvalues of I - lambda Omega in (0, 1)
# "by the amount the quadratic model predicts": the measured drop within 50 % of
# (1/8) d^T H d -- the band in which experiments.claims reads "match"
# (claims.MATCH_TOLERANCE, recovered fraction 50 %-150 %).
QUADRATIC_MATCH = 0.5


def _contracting(m: dict) -> bool:
  return m["max_eff_lr_times_lambda_max"] < CONTRACTION


def _join(*parts: str) -> str:
  return "; ".join(p for p in parts if p)


def _fit_text(fit: dict, name: str) -> str:
  return f"{name} {fit['exponent']:.2f} ± {fit['stderr']:.2f}"


def not_stationary_note(factors, flags, what: str) -> str:
  bad = [f for f, ok in zip(factors, flags, strict=True) if not ok]
  return f"not quasi-stationary ({what}) at f = {', '.join(f'{f:g}' for f in bad)}" if bad else ""


def _shell(m: dict) -> bool:
  return bool(m["all_stationary_fast"]) and abs(m["exponent_fast"] - 0.5) <= SHELL_TOLERANCE


def _drift_drag_claim(m: dict) -> bool:
  return (
    bool(m["all_stationary"])
    and abs(m["exponent_drag"] - 0.5) <= SHELL_TOLERANCE
    and abs(m["exponent_drift"] - 1.0) <= SHELL_TOLERANCE
  )


def _inside_shell(m: dict) -> bool:
  rows = m["factors"]
  return (
    bool(rows)
    and bool(m["all_stationary"])
    and all(
      r["gap"] > 0 and r["ratio"] is not None and abs(r["ratio"] - 1.0) <= QUADRATIC_MATCH
      for r in rows
    )
  )


def _flatter(m: dict) -> bool:
  return (
    m["lambda_max_average"] < min(m["lambda_max_endpoints"]) and m["trace_margin_in_se"] > FLAT_SE
  )


_IZMAILOV = (
  "observe that the solutions found by SWA are broader in the sense that even if the training "
  "loss might be slightly higher, the model is not as sensitive to perturbations of the parameters"
)


def _claims():
  from experiments import claims

  return {
    c.id: c
    for c in (
      claims.Claim(
        "curv.contracting",
        "Appendix A",
        "assuming that all eigenvalues κ_k of Γ are characterized by $0 < \\kappa_k < 1$",
        "at every probed checkpoint of the parent trajectory, eta/(1 - beta) * lambda_max < 1 "
        "(lambda_max: mean over the probed training batches of the batch Hessian's top "
        "eigenvalue, Lanczos; eta/(1 - beta) the paper's lambda for SGD with momentum beta)",
        _contracting,
        control="a trajectory point with eta_eff * lambda_max = 1.05 fails "
        "(tests/test_curvature.py)",
        effect="max_eff_lr_times_lambda_max",
      ),
      claims.Claim(
        "curv.sqrt_lambda_shell",
        "Lemma 1",
        "the trajectory will stabilize at an ellipsoid of a fixed size proportional to the "
        "square root of the learning rate",
        "pairs of constant-rate side-trips from theta_{T-k} at f * eta, f in exp.shell_factors, "
        "on two batch orders, every trip quasi-stationary in the fast directions (the later half "
        "of the sampling times within 10 % or 3 SE of the earlier, and half the trip >= 3 "
        "relaxation times): the least-squares exponent p of pair distance ~ f^p, in the span "
        f"of the top exp.shell_k Hessian eigenvectors at theta_{{T-k}}, has |p - 1/2| <= "
        f"{SHELL_TOLERANCE:g}",
        _shell,
        control="the same fit in the remaining (slow) directions, in total and for the distance "
        "to the centre is reported beside it; an exponent of 1 or a non-stationary trip fails "
        "(tests/test_curvature.py)",
        effect="exponent_fast",
      ),
      claims.Claim(
        "curv.drift_drag",
        "Fig. 4a",
        "The magnitude of the drag component changes as $\\sqrt{\\lambda}$, while the magnitude "
        "of the drift component is proportional to λ",
        "over exp.drag_steps updates after each quasi-stationary constant-rate side-trip at "
        "f * eta, the mean |component toward the running-average centre| (drag) and mean "
        f"orthogonal remainder (drift) fit f^p with |p_drag - 1/2| <= {SHELL_TOLERANCE:g} and "
        f"|p_drift - 1| <= {SHELL_TOLERANCE:g}",
        _drift_drag_claim,
        control="the update norm and the signed mean drag are reported beside them; a "
        "non-stationary trip fails (tests/test_curvature.py)",
        effect="exponent_drag",
      ),
      claims.Claim(
        "curv.average_inside_shell",
        "Sec. 4, Fig. 4b",
        "Geometrically, the interpolation between two points on a random trajectory results in "
        "a point inside the sphere (Figure 4b), which translates to a lower loss.",
        "for every f, the pair (a, c) of quasi-stationary constant-rate side-trips at f * eta "
        "after L steps, on fresh training batches: gap = (L(a) + L(c))/2 - L((a+c)/2) > 0, and "
        "gap matches the quadratic model's (1/8) (a-c)^T H (a-c) (H: the same batches' Hessian "
        f"at the midpoint, HVPs): |gap / prediction - 1| <= {QUADRATIC_MATCH:g}",
        _inside_shell,
        control="a quartic loss (no quadratic term at the midpoint) and a Hessian of another "
        "batch fail (tests/test_curvature.py)",
        effect="max_ratio_deviation",
      ),
      claims.Claim(
        "curv.average_flatter",
        "companion notes (Izmailov et al.)",
        "Averaging Weights Leads to Wider Optima and Better Generalization.",
        "the two-point average (theta_{T-k} + theta_T)/2 has a smaller lambda_max than both raw "
        f"endpoints and a trace smaller than both by more than {FLAT_SE:g} standard errors of the "
        "difference, on the same training batches",
        _flatter,
        control="the raw endpoints themselves, on the same batches (their difference is reported)",
        effect="trace_drop_fraction",
        source="notes",
      ),
      claims.Claim(
        "curv.swa_flatter",
        "companion notes (Izmailov et al.)",
        _IZMAILOV,
        "the SWA average (1/k) sum_{j=1..k} theta_{T-k+j} (replayed) has a smaller lambda_max "
        f"than both raw endpoints theta_{{T-k}}, theta_T and a trace smaller than both by more "
        f"than {FLAT_SE:g} standard errors of the difference, on the same training batches",
        _flatter,
        control="the raw endpoints themselves, and the SWA side-trip (Table 1), on the same "
        "batches (reported)",
        effect="trace_drop_fraction",
        source="notes",
      ),
    )
  }


def _flat_record(points: dict, name: str, ends: list[dict]) -> dict:
  avg = points[name]
  margins = [
    (e["trace_mean"] - avg["trace_mean"])
    / np.hypot(e["trace_mean_stderr"], avg["trace_mean_stderr"])
    for e in ends
  ]
  lowest = min(e["trace_mean"] for e in ends)
  out = {
    "point": name,
    "lambda_max_average": avg["lambda_max"],
    "lambda_max_endpoints": [e["lambda_max"] for e in ends],
    "trace_average": avg["trace_mean"],
    "trace_endpoints": [e["trace_mean"] for e in ends],
    "trace_margin_in_se": float(min(margins)),
    "trace_drop_fraction": float((lowest - avg["trace_mean"]) / lowest),
  }
  trip = points.get(name.replace("_average", "_sidetrip"))
  if trip is not None:
    out["lambda_max_sidetrip"] = trip["lambda_max"]
    out["trace_sidetrip"] = trip["trace_mean"]
  out["note"] = _join(
    f"λ_max {avg['lambda_max']:.3g} vs endpoints "
    + ", ".join(f"{e['lambda_max']:.3g}" for e in ends)
    + f"; trace margin {out['trace_margin_in_se']:.2g} SE",
    f"side-trip λ_max {trip['lambda_max']:.3g}" if trip is not None else "",
  )
  return out


def measured(res: dict) -> dict:
  """``{claim id: measured}`` for :data:`CLAIMS` from one seed's result."""
  beta = float(res["momentum"])
  traj = res["trajectory"]
  pts = res["points"]
  ends = [p for p in pts.values() if p.get("kind", "raw") == "raw"]
  out = {
    "curv.contracting": {
      "steps": [t["step"] for t in traj],
      "eff_lr_times_lambda_max": [t["lr"] / (1 - beta) * t["lambda_max"] for t in traj],
      "max_eff_lr_times_lambda_max": max(t["lr"] / (1 - beta) * t["lambda_max"] for t in traj),
      "batches_per_point": len(traj[0]["trace"]),
      "note": "η/(1−β)·λ_max at steps "
      + ", ".join(f"{t['step']}: {t['lr'] / (1 - beta) * t['lambda_max']:.3g}" for t in traj),
    },
  }
  if "two_point_average" in pts:
    out["curv.average_flatter"] = _flat_record(pts, "two_point_average", ends)
  if "swa_average" in pts:
    out["curv.swa_flatter"] = _flat_record(pts, "swa_average", ends)
  if res.get("shell"):
    sh = res["shell"]
    f = sh["factors"]
    trips = sh["trips"]
    stat = [t["stationary"] for t in trips]
    stat_fast = [t["stationary_fast"] for t in trips]
    fit = sh["fit"]
    fast_name = f"top-{sh['fast_k']} Hessian directions"
    note = _join(
      f"p (fit SE): {_fit_text(fit['fast'], fast_name)}, "
      f"{_fit_text(fit['slow'], 'other directions')}, {_fit_text(fit['total'], 'all')}",
      not_stationary_note(f, stat_fast, "fast directions"),
    )
    out["curv.sqrt_lambda_shell"] = {
      "factors": f,
      "exponent_fast": sh["fit"]["fast"]["exponent"],
      "exponent_fast_stderr": sh["fit"]["fast"]["stderr"],
      "exponent_slow": sh["fit"]["slow"]["exponent"],
      "exponent_slow_stderr": sh["fit"]["slow"]["stderr"],
      "exponent_total": sh["fit"]["total"]["exponent"],
      "exponent_total_stderr": sh["fit"]["total"]["stderr"],
      "exponent_centre_fast": sh["fit"]["centre_fast"]["exponent"],
      "exponent_centre_fast_stderr": sh["fit"]["centre_fast"]["stderr"],
      "stationary_fast": stat_fast,
      "all_stationary_fast": all(stat_fast),
      "relative_change_fast": [t["stationarity_fast"]["relative_change"] for t in trips],
      "relaxation_steps_fast": [t["relaxation_steps_fast"] for t in trips],
      "fast_directions": sh["fast_directions"],
      "slow_directions": sh["slow_directions"],
      "note": note,
    }
    note = not_stationary_note(f, stat, "total pair distance")
    if "drag" in sh["fit"]:
      dd_note = _join(
        f"p (fit SE), all directions: {_fit_text(fit['drag'], 'drag')}, "
        f"{_fit_text(fit['drift'], 'drift')}",
        note,
      )
      out["curv.drift_drag"] = {
        "factors": f,
        "exponent_drag": sh["fit"]["drag"]["exponent"],
        "exponent_drag_stderr": sh["fit"]["drag"]["stderr"],
        "exponent_drift": sh["fit"]["drift"]["exponent"],
        "exponent_drift_stderr": sh["fit"]["drift"]["stderr"],
        "mean_signed_drag": [t["drift_drag"]["mean_drag"] for t in trips],
        "mean_update_norm": [t["drift_drag"]["mean_update_norm"] for t in trips],
        "stationary": stat,
        "all_stationary": all(stat),
        "relative_change": [t["relative_change"] for t in trips],
        "directions": "all parameters (centre: mean of the pair's samples over [L/2, L])",
        "note": dd_note,
      }
    rows = [
      {
        "factor": t["factor"],
        "gap": t["midpoint"]["gap"],
        "quadratic": t["midpoint"]["quadratic"],
        "ratio": t["midpoint"]["ratio"],
        "pair_distance": t["pair_distance"][-1],
      }
      for t in trips
    ]
    dev = [abs(r["ratio"] - 1.0) for r in rows if r["ratio"] is not None]
    out["curv.average_inside_shell"] = {
      "factors": rows,
      "stationary": stat,
      "all_stationary": all(stat),
      "max_ratio_deviation": max(dev) if len(dev) == len(rows) else None,
      "directions": "all parameters (d = a - c, the pair's full difference)",
      "note": _join(
        "gap / (1/8) dᵀHd at f = "
        + ", ".join(
          f"{r['factor']:g}: " + ("–" if r["ratio"] is None else f"{r['ratio']:.2f}") for r in rows
        ),
        note,
      ),
    }
  return out


CLAIMS = _claims()
