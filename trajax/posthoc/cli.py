"""The ``python -m trajax.posthoc`` flags, generated from the averaging registry.

Which average, spelled once for every method (:data:`trajax.averaging.METHODS`):

  --average='ema(decay=0.01, start_step=2)'     the average's string spelling
  --method=ema --param=decay=0.01 --param=start_step=2   the same, one flag per parameter
  --window=K     the average over the last K steps before --end (start_step = end − K;
                 the method's window parameters from its record, ``params_for_window``)
  --sweep        vary the method's sweep parameter (its record's ``sweep``: which
                 parameter and its default grid) ...
  --grid=V1,V2   ... over these values instead of the default grid

No method, parameter or grid is named here: the parameters and their types
are the records' :class:`trajax.averaging.Param`\\ s, the swept parameter and
its grid the records' ``sweep``. A method registered later (a toy in a test)
gets all of it.

Today's per-parameter flags (``--decay``, ``--gap``, ``--n``, ``--gamma``,
``--start_step``, ...) and grid flags (``--decays``, ``--gammas``,
``--gaps``, ``--windows``) keep working as deprecated spellings of
``--param=NAME=V`` and ``--grid`` (a grid flag also picks the swept
parameter): they are generated from the union of the registered parameters
and sweeps (:func:`deprecated_flags`), and each one used prints a one-line
note on stderr once every flag has been checked.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from absl import flags

from trajax import averaging
from trajax.averaging.averagers import param_error

__all__ = [
  "Request",
  "default_grid",
  "define_flags",
  "deprecated_flags",
  "parse_value",
  "request",
  "sweep_values",
  "targets",
  "target_params",
]

# Parameter kinds a flag can spell (a dtype is not a command-line choice).
_FLAG_KINDS = ("int", "float", "bool")
# The pseudo-parameter "the average over the last K steps": --window, and the
# sweep parameter of a method whose record sweeps its window (SWA).
WINDOW = "window"


class Request(NamedTuple):
  """What the flags ask for, checked against the method's record.

  Attributes:
    method: the registered method.
    params: its parameters given (None never stored).
    window: the last ``window`` steps before the end step (None: not given).
    sweep: the swept parameter (a parameter of the method, or 'window');
      None: one average.
    grid: the swept values given (None: the record's default grid, or the
      values the run rebuilds).
    grid_flag: the flag the grid came from (for messages).
    notes: one line per deprecated flag used.
    kernel: ``--average='kernel(c_0, …, c_k)'``: the average of θ_{end−k} …
      θ_end with these weights (``method`` is then 'none').
  """

  method: str
  params: dict
  window: int | None = None
  sweep: str | None = None
  grid: list | None = None
  grid_flag: str = "--grid"
  notes: tuple = ()
  kernel: averaging.Kernel | None = None


# --------------------------------------------------------------------------- definitions


def _registered_params() -> dict[str, averaging.Param]:
  """Every registered parameter a flag can spell, by name (the first record's, in order)."""
  out: dict[str, averaging.Param] = {}
  for m in averaging.METHODS.values():
    for p in m.params:
      if p.kind in _FLAG_KINDS:
        out.setdefault(p.name, p)
  return out


def _sweep_names() -> list[str]:
  """The parameters some registered method sweeps (its record's ``sweep``)."""
  names = [m.sweep.param for m in averaging.METHODS.values() if m.sweep is not None]
  return list(dict.fromkeys(names))


def deprecated_flags() -> dict[str, tuple[str, str]]:
  """``{flag name: ('param' or 'grid', parameter)}``: the old spellings, from the registry.

  ``--NAME`` for each registered parameter NAME (of kind int, float or bool)
  is ``--param=NAME=V``; ``--NAMEs`` for each parameter some method sweeps is
  ``--grid`` with that parameter swept.
  """
  out = {name: ("param", name) for name in _registered_params() if name != WINDOW}
  for name in _sweep_names():
    out.setdefault(name + "s", ("grid", name))
  return out


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the posthoc flags in ``fv``: the run and output, which average, the old spellings."""
  flags.DEFINE_string(
    "workdir", None, "The finished run (WORKDIR or WORKDIR/checkpoints).", flag_values=fv
  )
  flags.DEFINE_string("out", None, "Output directory (outside the run's).", flag_values=fv)
  flags.DEFINE_string(
    "average",
    None,
    "The average, as its string spelling: METHOD(NAME=VALUE, ...), e.g. 'ema(decay=0.01)' "
    f"(methods: {', '.join(averaging.METHODS)}).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "method", "ema", f"Averaging method: {', '.join(averaging.METHODS)}.", flag_values=fv
  )
  flags.DEFINE_multi_string(
    "param", [], "A parameter of --method: NAME=VALUE (repeat the flag for more).", flag_values=fv
  )
  flags.DEFINE_integer(
    WINDOW,
    None,
    "The average over the last WINDOW steps before --end (start_step = end - WINDOW).",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "sweep",
    False,
    "Evaluate a grid of the method's sweep parameter (its record's sweep) and plot it.",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "grid",
    None,
    "Sweep: the values (default: the record's grid, those the run rebuilds within --threshold).",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "sources",
    None,
    "Snapshots to use: params,average,profiles (or profiles[i]); default all.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "end", None, "The step the average is taken at (default: last).", flag_values=fv
  )
  flags.DEFINE_bool(
    "exact", False, "Fail unless the average is exact from saved steps.", flag_values=fv
  )
  flags.DEFINE_bool(
    "compare_sidetrip",
    False,
    "Also run each average's equivalent side-trip (where it is exact) and evaluate it "
    "beside the average, BatchNorm statistics by the same policy (Fig. 1 on this run).",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "threshold",
    None,
    "Kernel residual ‖Bx − c‖₁ above which an average is flagged approximate "
    "(default trajax.posthoc.RESIDUAL_THRESHOLD = 0.05).",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "verbose_libs",
    False,
    "Show third-party INFO logging (Orbax, absl, TensorFlow notices).",
    flag_values=fv,
  )
  flags.DEFINE_bool("traceback", False, "Show the full traceback of an error.", flag_values=fv)
  params = _registered_params()
  for name, (what, param) in deprecated_flags().items():
    if name in fv:
      continue  # a parameter named like a flag: --param=NAME=V spells it
    if what == "param":
      help_ = f"Deprecated: --param={name}=V ({params[name].allowed})."
      flags.DEFINE_string(name, None, help_, flag_values=fv)
    else:
      flags.DEFINE_list(name, None, f"Deprecated: --sweep --grid=... of {param}.", flag_values=fv)


# --------------------------------------------------------------------------- values


def parse_value(kind: str, text: str, flag: str):
  """``text`` as a value of ``kind`` ('int', 'float', 'bool'); a one-line error names ``flag``."""
  text = text.strip()
  if kind == "bool":
    if text.lower() in ("true", "1"):
      return True
    if text.lower() in ("false", "0"):
      return False
    raise ValueError(f"{flag}: {text!r} is not True or False")
  try:
    return int(text) if kind == "int" else float(text)
  except ValueError:
    what = "an integer" if kind == "int" else "a number"
    raise ValueError(f"{flag}: {text!r} is not {what}") from None


def _given(value: averaging.Average) -> dict:
  """The parameters of a value that differ from the record's defaults (the required ones kept)."""
  out = {}
  for name, v in value.params:
    p = value.record.param(name)
    if p is None or p.required or v != p.default:
      out[name] = v
  return out


def _check_value(method: str, name: str, value, flag: str):
  """``value`` of ``method``'s parameter ``name`` checked by the method's own record."""
  if name == WINDOW:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{flag} = {value!r}: must be an integer >= 1")
    return value
  p = averaging.get_method(method).param(name)
  if p is None:
    raise ValueError(f"{flag} = {value!r}: --method={method} takes no {name}")
  error = param_error(p, value)
  if error is not None:
    raise ValueError(f"{flag} = {value!r}: {name} {error}")
  return value


def _kind(method: str, name: str) -> str:
  if name == WINDOW:
    return "int"
  p = averaging.get_method(method).param(name)
  if p is None:
    p = _registered_params().get(name)
  return p.kind if p is not None else "float"


# --------------------------------------------------------------------------- the request


def request(fv: flags.FlagValues = flags.FLAGS) -> Request:
  """The parsed flags, every value checked by its method's record; one-line errors.

  Deprecated spellings are mapped onto the new ones, each noted in
  :attr:`Request.notes` (the caller prints them once everything is checked).
  """
  notes, kernel = [], None
  if fv["average"].value is not None:
    if fv["method"].present or fv["param"].value:
      raise ValueError("give --average, or --method with --param, not both")
    try:
      value = averaging.Average.parse(fv["average"].value)
    except (TypeError, ValueError) as e:
      raise ValueError(f"--average = {fv['average'].value!r}: {e}") from None
    if isinstance(value, averaging.Kernel):
      kernel, method, given = value, "none", {}
    else:
      method, given = value.method, _given(value)
    flag_of = {k: "--average" for k in given}
  else:
    method, given, flag_of = fv["method"].value, {}, {}
    for entry in fv["param"].value:
      name, eq, text = entry.partition("=")
      name = name.strip()
      if not eq or not name:
        raise ValueError(f"--param = {entry!r}: must be NAME=VALUE")
      given[name], flag_of[name] = text, f"--param={name}"
  try:
    averaging.get_method(method)
  except ValueError as e:
    raise ValueError(f"--method = {method!r}: {e}") from None
  deprecated = deprecated_flags()
  grid_flag, grid, sweep = "--grid", fv["grid"].value, None
  for name, (what, param) in deprecated.items():
    if name not in fv or fv[name].value is None:
      continue
    shown = ",".join(fv[name].value) if what == "grid" else fv[name].value
    if what == "param":
      if param in given:
        raise ValueError(f"--{name} and {flag_of[param]} both set {param}: give one")
      given[param], flag_of[param] = fv[name].value, f"--{name}"
      notes.append(f"note: --{name} is deprecated: use --param={param}={shown}")
    else:
      if not fv["sweep"].value or sweep not in (None, param):
        continue  # as before: a grid flag counts only for its method's sweep
      if averaging.get_method(method).param(param) is None and param != WINDOW:
        continue
      sweep, grid, grid_flag = param, fv[name].value, f"--{name}"
      notes.append(f"note: --{name} is deprecated: use --sweep --grid={shown}")
  params = {}
  for name, value in given.items():
    if isinstance(value, str) and flag_of[name] != "--average":
      value = parse_value(_kind(method, name), value, flag_of[name])
    params[name] = _check_value(method, name, value, flag_of[name])
  window = fv[WINDOW].value
  if WINDOW in params:
    window = params.pop(WINDOW)
  if window is not None:
    _check_value(method, WINDOW, window, f"--{WINDOW}")
  if fv["sweep"].value:
    m = averaging.get_method(method)
    if sweep is None:
      if m.sweep is None:
        raise ValueError(f"--sweep: --method={method} has no sweep (its record's sweep is None)")
      sweep = m.sweep.param
    if grid is not None:
      if not grid:
        raise ValueError(f"{grid_flag} is empty: give V1,V2,...")
      kind = _kind(method, sweep)
      grid = [_check_value(method, sweep, parse_value(kind, t, grid_flag), grid_flag) for t in grid]
  elif grid is not None:
    raise ValueError("--grid needs --sweep")
  if kernel is not None and (sweep is not None or window is not None or params):
    raise ValueError(
      "--average=kernel(...) is the whole average: no --sweep, --window or parameter"
    )
  return Request(method, params, window, sweep, grid, grid_flag, tuple(notes), kernel)


def target_params(req: Request, end: int, value: Any = None) -> dict:
  """The method's parameters of one average at step ``end`` (``value``: the swept one's).

  A window K (``--window``, or swept) is the average of the last K steps:
  ``start_step = end − K`` and the record's ``params_for_window`` (e.g.
  two_point's gap = K).
  """
  params, window = dict(req.params), req.window
  if req.sweep == WINDOW:
    window = value
  elif req.sweep is not None:
    params[req.sweep] = value
  if window is not None:
    if not 1 <= window <= end:
      raise ValueError(f"--window = {window!r}: --method={req.method} needs a window in 1 … {end}")
    params = averaging.get_method(req.method).params_for_window(window, params)
    params["start_step"] = end - window
  m = averaging.get_method(req.method)
  for p in m.params:
    if p.required and params.get(p.name) is None:
      swept = m.sweep is not None and m.sweep.param == p.name
      raise ValueError(
        f"--method={req.method} needs {p.name}: --param={p.name}=V"
        + (" (or --sweep)" if swept else "")
      )
  return params


def default_grid(req: Request) -> list:
  """The record's default grid of the swept parameter (``[]``: it has none)."""
  m = averaging.get_method(req.method)
  if m.sweep is None or m.sweep.param != req.sweep:
    return []
  return list(m.sweep.grid)


def sweep_values(req: Request, run, end: int, threshold: float, sources) -> tuple[list, bool]:
  """``(values, chosen)``: the swept values of ``req`` (``[None]``, False without a sweep).

  A given grid is taken as it is (values beyond what the run supports are
  evaluated and flagged approximate). Without one: the record's default
  grid's values whose average the run's snapshots rebuild within
  ``threshold`` (:func:`trajax.posthoc.representable`); if none, the whole
  default grid (every value then flagged approximate).
  """
  from trajax import posthoc

  if req.sweep is None:
    return [None], False
  if req.grid is not None:
    return list(req.grid), False
  candidates = default_grid(req)
  if not candidates:
    raise ValueError(
      f"--sweep with --method={req.method} needs --grid=V1,V2,... ({req.sweep} values; "
      "its record's sweep has no default grid)"
    )
  kernels = [posthoc.target(req.method, end=end, **target_params(req, end, v)) for v in candidates]
  got = posthoc.plans(run, kernels, sources=sources)
  ok = [v for v, p in zip(candidates, got, strict=True) if p.residual <= threshold]
  return (ok or candidates), bool(ok)


def targets(req: Request, run, end: int, threshold: float, sources) -> tuple[list, bool]:
  """``([(swept value, (label, kernel), method, params)], grid chosen from the run)``.

  One target per swept value (one without a sweep): the method's kernel at
  ``end`` (:func:`trajax.posthoc.target`), or the given kernel on the last
  steps up to ``end``.
  """
  import numpy as np

  from trajax import posthoc

  if req.kernel is not None:
    k = req.kernel.window
    if k > end:
      raise ValueError(f"--average: the kernel covers {k} steps, more than the {end} up to --end")
    c = np.concatenate([np.zeros(end - k), req.kernel.kernel()])
    return [(None, (f"kernel(on steps {end - k} … {end})", c), "kernel", {})], False
  values, chosen = sweep_values(req, run, end, threshold, sources)
  out = []
  for v in values:
    params = target_params(req, end, v)
    out.append((v, posthoc.target(req.method, end=end, **params), req.method, params))
  return out, chosen
