r"""Ahead-of-time compilation of the engine's steps for a TPU pod, on a CPU-only host.

  python -m trajax.aot --config=configs/imagenet_resnet34.py --topology=v5e:16x16 \
      [--config.<field>=...] [--out=FILE.json]

Before a pod-day is spent: does the paper-scale step compile for the pod, does
it fit in each chip's HBM, and what does XLA expect it to cost? With
``libtpu`` installed (``pip install 'trajax-sgd[tpu]'``, which pins
``jax[tpu]`` to the installed jax), :func:`jax.experimental.topologies.get_topology_desc`
describes a TPU topology's devices without any TPU attached, and ``jax.jit``
lowers and compiles for them (as MaxText's ``train_compile.py`` and axlearn's
``run_aot_compilation`` do).

What is compiled is the engine itself, not a copy: :func:`trajax.state.make_mesh`
over the topology's devices, :func:`trajax.state.abstract_state` (shapes,
dtypes and shardings, nothing allocated), and the jitted steps

* ``train`` -- :func:`trajax.train.make_step`, the main run's step with the
  config's averaging wrapper, at the global batch ``batch_size``;
* ``sidetrip`` -- the same ``make_step`` under the side-trip's learning-rate
  rule :class:`trajax.sidetrip.SidetripRate` with the branch step S, f·η_S and
  k *traced* (kind 'equivalent' of the config's averaging method, or
  two-point averaging over ``averaging.gap`` when the run does not average;
  ``--config.sidetrip.*`` changes it);
* ``eval`` -- :class:`trajax.train.Evaluator`'s jitted ``eval_step`` on the
  raw parameters at ``eval_batch_size`` (rounded up to whole rows per device
  when it does not split; ``problems`` then says the engine would refuse it).

Per step, XLA's compiled memory analysis gives the bytes each device holds,

    bytes_per_device = arguments + outputs + temporaries − aliased (donated state),

and its cost analysis the per-device flops, bytes accessed and an estimated
step time ``optimal_seconds``. From the train step:

    flops_per_step               = per-device flops × devices,
    estimated_images_per_second  = global batch / estimated_step_seconds,
    estimated_mfu                = 3 · F_fwd · B / (estimated_step_seconds · devices · peak),

(where XLA gives no usable estimate -- a negative ``optimal_seconds`` was seen
for v4:2x2x4 and v5e:16x16 -- the rates use ``roofline_step_seconds`` =
max(per-device flops / peak, per-device bytes accessed / HBM bandwidth), and
``rate_basis`` says which), with F_fwd the model's analytic forward FLOPs per example
(:func:`trajax.models.model_flops_per_example`, 2 per multiply-add; ×3 for the
forward and the two backward products) and ``peak`` the chip's published bf16
peak. ``estimated_100k_steps_hours`` is the paper's 100k-step run at that rate.
These are the compiler's estimates, not measurements: the input pipeline and
host overheads are not in them, and the chip's real step time may differ from
XLA's cost model. The step is compiled with the host-batch input (a streamed
source's path): an in-memory source (CIFAR) keeps its normalised training pool
on every device as well during a run (:mod:`trajax.data.device`; about
0.6 GiB for CIFAR-10), which these figures leave out.

``fits`` is False when a step needs more than a device's HBM (XLA's own
out-of-memory refusal included) or the global batch does not split into whole
rows over the devices and hosts; ``problems`` lists every reason the engine
would refuse the run on that topology. A step that fails to compile for any
other reason is an :class:`AotError` naming the step and XLA's message.

Why one module of over 500 lines: the topologies, the step's lowering and
the fit/memory report form one command whose pieces nothing else uses.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import NamedTuple

__all__ = [
  "CHIPS",
  "STEPS",
  "AotError",
  "Chip",
  "TABLE_HEADER",
  "compile_for",
  "format_table",
  "parse_topology",
]

GiB = 1 << 30


class Chip(NamedTuple):
  """A TPU generation as JAX names it (``family:AxB[xC]``), one JAX device per chip.

  hbm_bytes: HBM per chip; bf16_flops: published peak dense bf16 FLOP/s per
  chip; hbm_bandwidth: published HBM bytes/s per chip; chip_config: libtpu's ``chip_config_name`` (megacore: the chip's two
  TensorCores are one device, as on a real v4/v5p host); host_bounds: chips
  per host (libtpu's default ``chips_per_host_bounds``).
  """

  device_kind: str
  hbm_bytes: int
  bf16_flops: float
  hbm_bandwidth: float
  chip_config: str = "default"
  host_bounds: tuple = (2, 2, 1)


# Google Cloud's published per-chip figures.
CHIPS = {
  "v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9, "megacore"),
  "v5e": Chip("TPU v5 lite", 16 * GiB, 197e12, 819e9),
  "v5p": Chip("TPU v5", 95 * GiB, 459e12, 2765e9, "megacore"),
  "v6e": Chip("TPU v6 lite", 32 * GiB, 918e12, 1640e9),
}
# The steps compile_for compiles (see the module docstring).
STEPS = ("train", "sidetrip", "eval")
# The paper's run (Sec. 3): 100k steps.
PAPER_STEPS = 100_000


class AotError(ValueError):
  """A topology, install or compilation problem, as one line for the command line."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """``'v5e:16x16'`` -> ``('v5e', (16, 16))``; anything else is an :class:`AotError`."""
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", str(name))
  if not m or m.group(1) not in CHIPS:
    raise AotError(
      f"topology {name!r} is not a TPU topology this tool knows; allowed: "
      f"{', '.join(f'{f}:AxB' + ('xC' if CHIPS[f].chip_config == 'megacore' else '') for f in CHIPS)}"
      " (JAX's names, e.g. v4:2x2x4, v5e:16x16, v5p:4x4x4, v6e:8x8)"
    )
  dims = tuple(int(d) for d in m.group(2).split("x"))
  if min(dims) < 1:
    raise AotError(f"topology {name!r}: every dimension must be >= 1")
  return m.group(1), dims


def require_libtpu() -> None:
  """Raises :class:`AotError` saying what to install when ``libtpu`` is missing."""
  if importlib.util.find_spec("libtpu") is None:
    import jax

    raise AotError(
      "compiling for a TPU topology needs libtpu, which is not installed: run "
      f"`pip install 'jax[tpu]=={jax.__version__}'` (or `pip install -e '.[tpu]'`); "
      "no TPU is needed"
    )


def topology_devices(name: str):
  """``(family, devices)`` of a topology: abstract TPU devices, none attached."""
  family, dims = parse_topology(name)
  require_libtpu()
  # Processes on this host that imported jax hold libtpu's one-process lock
  # though they use no TPU; compiling for a topology touches no chip.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies

  chip = CHIPS[family]
  bounds = tuple(
    min(d, b) for d, b in zip(dims + (1,) * (3 - len(dims)), chip.host_bounds, strict=True)
  )
  try:
    topo = topologies.get_topology_desc(
      name, "tpu", chip_config_name=chip.chip_config, chips_per_host_bounds=bounds
    )
  except Exception as e:  # libtpu's own refusal (e.g. a shape that does not tile hosts)
    raise AotError(f"topology {name!r} refused by libtpu: {str(e).splitlines()[0]}") from None
  return family, list(topo.devices)


class Engine(NamedTuple):
  """The run's pieces on a device list, built by the engine's own functions."""

  mesh: object
  model: object
  input_shape: tuple
  num_classes: int
  abstract: object
  shardings: object


def dataset_shape(config) -> tuple[tuple, int]:
  """``(input_shape, num_classes)`` without reading any data (TFDS sources: their spec)."""
  from trajax import data as data_lib

  name = config.dataset.name
  if name in data_lib.TFDS_NAMES:
    from trajax.data import tfds_source

    spec = tfds_source.SPECS[name]
    return tuple(spec.input_shape), int(spec.num_classes)
  small = copy.deepcopy(config)  # in-memory generators: build one on this host
  ds = data_lib.get_dataset(small, process_index=0, process_count=1, local_device_count=1)
  return tuple(ds.info.input_shape), int(ds.info.num_classes)


def engine_on(config, devices, *, optimizer: str = "config") -> Engine:
  """Mesh, model and abstract state exactly as :func:`trajax.loop.fit` builds them."""
  from trajax import models
  from trajax import state as state_lib

  mesh = state_lib.make_mesh(config, devices)
  input_shape, num_classes = dataset_shape(config)
  model = models.create_model(config.model, num_classes=num_classes)
  abstract = state_lib.abstract_state(config, model, input_shape, mesh, optimizer=optimizer)
  return Engine(mesh, model, input_shape, num_classes, abstract, state_lib.shardings_of(abstract))


def _batch(mesh, rows: int, input_shape, *, mask: bool = False) -> dict:
  """An abstract host batch laid out as ``trajax.state.global_batch`` lays it out."""
  import jax
  import jax.numpy as jnp

  from trajax import state as state_lib

  sharding = state_lib.batch_sharding(mesh)
  out = {
    "image": jax.ShapeDtypeStruct((rows, *input_shape), jnp.float32, sharding=sharding),
    "label": jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding),
  }
  if mask:
    out["mask"] = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=sharding)
  return out


def _hyper(mesh, hyper: dict) -> dict:
  """Abstract traced scalars, as :func:`trajax.train.hyper_arrays` types them, replicated."""
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from trajax import train

  rep = NamedSharding(mesh, P())
  return {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rep)
    for k, v in train.hyper_arrays(hyper).items()
  }


def sidetrip_config(config):
  """The config with a ``sidetrip`` section: its own, else an equivalent side-trip.

  The default side-trip is 'equivalent' to the run's averaging method, and to
  two-point averaging over ``averaging.gap`` steps when the run does not
  average (the paper's Fig. 5 comparison).
  """
  from trajax.sidetrip.spec import parent_average, with_sidetrip

  if "sidetrip" not in config:
    config = with_sidetrip(config, kind="equivalent")
  trip = config.sidetrip
  if trip.kind == "equivalent" and trip.method is None and trip.average is None:
    if config.averaging.method == "none":
      config = copy.deepcopy(config)
      with config.unlocked():
        config.sidetrip.average = str(parent_average(config.averaging, "two_point"))
  return config


def _compile(name: str, jitted, args, hbm: int) -> tuple[dict, object]:
  """Lower and compile one step: ``(its memory and XLA's cost analysis, the executable)``.

  XLA's own out-of-memory refusal is an entry with ``fits`` False (and no
  executable); any other compile error is an :class:`AotError` naming the step.
  """
  import jax

  t = time.perf_counter()
  # A topology's executable cannot be loaded back from JAX's persistent cache
  # (no client to deserialize it into): writing tens of MB there per step would
  # only fill it.
  min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e12)
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:
    msg = str(e)
    if "RESOURCE_EXHAUSTED" in msg or "Ran out of memory" in msg:
      first = msg.splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")
      return {
        "fits": False,
        "error": "out of HBM: " + first[:300],
        "compile_seconds": time.perf_counter() - t,
      }, None
    raise AotError(f"step {name!r} does not compile: {msg.splitlines()[0][:1000]}") from None
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
  seconds = time.perf_counter() - t
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )
  return {
    "bytes_per_device": int(total),
    "argument_bytes": int(mem.argument_size_in_bytes),
    "output_bytes": int(mem.output_size_in_bytes),
    "temp_bytes": int(mem.temp_size_in_bytes),
    "alias_bytes": int(mem.alias_size_in_bytes),
    "generated_code_bytes": int(mem.generated_code_size_in_bytes),
    "fits": bool(total <= hbm),
    "flops_per_device": float(cost.get("flops", 0.0)),
    "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
    "estimated_seconds": float(cost.get("optimal_seconds", float("nan"))),
    "compile_seconds": seconds,
  }, compiled


def _spec(sharding) -> str:
  """A sharding as its partition spec, trailing unsharded dimensions dropped."""
  spec = list(getattr(sharding, "spec", ()))
  while spec and spec[-1] is None:
    spec.pop()
  return "P(" + ", ".join(repr(a) for a in spec) + ")"


def _count(tree) -> dict:
  import jax

  out: dict = {}
  for leaf in jax.tree.leaves(tree):
    out[_spec(leaf)] = out.get(_spec(leaf), 0) + 1
  return dict(sorted(out.items()))


def sharding_summary(state_shardings, batch_shardings=None) -> dict:
  """``{part: {spec: leaves}}`` of a train state's (and batch's) shardings.

  Parts: ``params``, ``batch_stats``, ``opt_state`` (the momentum and the
  averaging state), ``average`` (the averaging wrappers' stored trees alone),
  ``bn_average``; ``batch`` when given.
  """
  from trajax import averaging

  found = averaging.find_states(state_shardings.opt_state)
  out = {
    "params": _count(state_shardings.params),
    "batch_stats": _count(state_shardings.batch_stats),
    "opt_state": _count(state_shardings.opt_state),
    "average": _count([(st.previous, st.snapshots) for _, st in found]),
    "bn_average": _count(state_shardings.bn_average),
  }
  if batch_shardings is not None:
    out["batch"] = _count(batch_shardings)
  return out


def _round_up(n: int, unit: int) -> int:
  return -(-int(n) // unit) * unit


def compile_for(
  config, topology: str, *, branch_step: int | None = None, steps: tuple = STEPS
) -> dict:
  """Compiles the train, side-trip and eval steps of ``config`` for ``topology``.

  Args:
    config: a training config (``configs/*.py``'s ``get_config``), optionally
      with a ``sidetrip`` section (:func:`trajax.sidetrip.with_sidetrip`).
    topology: JAX's TPU topology name, e.g. ``'v5e:16x16'`` (see :data:`CHIPS`).
    branch_step: the side-trip's branch step S (traced: any S gives the same
      program); default 3/4 of ``total_steps`` (the paper branches at 75k).
    steps: which of :data:`STEPS` to compile ('train' always: the report's
      rates are the train step's); default all.

  Returns:
    The report (see the module docstring): plain JSON types.

  Raises:
    AotError: an unknown topology, no libtpu, a config the engine refuses, or
      a step that does not compile for a reason other than memory.
  """
  import jax

  from trajax import config_validation as cv
  from trajax import data as data_lib
  from trajax import models, train
  from trajax import state as state_lib
  from trajax.sidetrip import spec as spec_lib

  wanted = tuple(steps)
  if "train" not in wanted or not set(wanted) <= set(STEPS):
    raise AotError(f"steps = {wanted!r}: must include 'train', from {list(STEPS)}")
  family, devices = topology_devices(topology)
  chip = CHIPS[family]
  with_trip = sidetrip_config(config)
  base = spec_lib.without_sidetrip(with_trip)
  t_start = time.perf_counter()
  hosts = len({d.process_index for d in devices})
  per_host = len(devices) // hosts
  problems = []
  try:
    cv.validate(base, num_devices=len(devices), process_count=hosts)
  except cv.ConfigError as e:
    # No data is read here (data_dir is the launch's business); the batch
    # sizes are the topology's findings, checked below as the input pipeline
    # checks them. Anything else is a config the engine refuses anywhere.
    fatal = [p for p in e.problems if p.field not in ("data_dir", "batch_size", "eval_batch_size")]
    if fatal:
      raise AotError(f"config error: {cv.ConfigError(fatal)}") from None
  n = len(devices) if base.mesh.data == -1 else int(base.mesh.data)
  try:
    data_lib.check_batch_sizes(
      base, process_index=0, process_count=hosts, local_device_count=per_host
    )
  except ValueError as e:
    problems.append(f"{e} ({hosts} hosts x {per_host} devices)")
  batch = int(base.batch_size)
  unit = math.lcm(n, hosts)  # whole rows per device and per host
  batch_splits = batch % unit == 0
  if not batch_splits:
    problems.append(f"batch_size={batch} does not split into whole rows over {n} devices")

  engine = engine_on(base, devices)
  mesh = engine.mesh
  steps = {}
  if batch_splits:
    train_fn = train.make_step(base, engine.model, mesh, engine.shardings)
    args = (engine.abstract, _batch(mesh, batch, engine.input_shape), _hyper(mesh, {}))
    entry, compiled = _compile("train", train_fn, args, chip.hbm_bytes)
    if compiled is not None:
      # What the executable takes, against what the engine declares.
      (state_in, batch_in, _), _ = compiled.input_shardings
      declared = jax.tree.leaves(engine.shardings)
      entry["shardings"] = sharding_summary(state_in, batch_in)
      entry["shardings_as_declared"] = all(
        c.is_equivalent_to(d, len(a.shape))
        for c, d, a in zip(
          jax.tree.leaves(state_in), declared, jax.tree.leaves(engine.abstract), strict=True
        )
      )
    steps["train"] = {"global_batch_size": batch, **entry}
  else:
    steps["train"] = {"global_batch_size": batch, "fits": False, "error": problems[-1]}

  if "sidetrip" in wanted:
    # The side-trip: its kind's rule, layout and batch, S, f·η_S and k traced.
    S = int(base.total_steps) * 3 // 4 if branch_step is None else int(branch_step)
    try:
      trip = spec_lib.resolve(with_trip, S)
    except cv.ConfigError as e:
      raise AotError(f"config error: {e}") from None
    rate = spec_lib.SidetripRate.of(trip)
    hyper = rate.hyper(trip, state_lib.make_schedule(base.optimizer, base.total_steps), S)
    fixed = trip.kind == "fixed_batch"
    trip_engine = engine_on(base, devices, optimizer="fixed_batch_gd") if fixed else engine
    trip_batch = (
      trip.fixed_batch_size
      if fixed
      else max(b for _, b in trip.batch_sizes)
      if trip.batch_sizes
      else batch
    )
    trip_fn = train.make_step(
      base,
      engine.model,
      mesh,
      trip_engine.shardings,
      rule=rate,
      optimizer="fixed_batch_gd" if fixed else "config",
    )
    info = {
      "kind": trip.kind,
      "method": trip.method,
      "branch_step": S,
      "global_batch_size": trip_batch,
    }
    if trip_batch % unit:
      msg = f"side-trip batch {trip_batch} does not split into whole rows over {n} devices"
      problems.append(msg)
      steps["sidetrip"] = {**info, "fits": False, "error": msg}
    else:
      args = (
        trip_engine.abstract,
        _batch(mesh, trip_batch, engine.input_shape),
        _hyper(mesh, hyper),
      )
      steps["sidetrip"] = {**info, **_compile("sidetrip", trip_fn, args, chip.hbm_bytes)[0]}

  if "eval" in wanted:
    # Evaluation of the raw parameters, as fit's run_eval calls it.
    evaluator = train.Evaluator(engine.model, mesh)
    eval_rows = _round_up(base.eval_batch_size, unit)
    args = (
      engine.abstract.params,
      engine.abstract.batch_stats,
      _batch(mesh, eval_rows, engine.input_shape, mask=True),
    )
    entry = _compile("eval", evaluator.eval_batch, args, chip.hbm_bytes)[0]
    steps["eval"] = {"global_batch_size": eval_rows, **entry}

  for name, s in steps.items():
    if "bytes_per_device" in s and not s["fits"]:
      problems.append(
        f"step {name!r} needs {s['bytes_per_device'] / GiB:.2f} GiB per device, "
        f"HBM is {chip.hbm_bytes / GiB:.0f} GiB"
      )
    elif "out of HBM" in s.get("error", ""):
      problems.append(f"step {name!r}: {s['error']}")
  tr = steps["train"]
  step_s = tr.get("estimated_seconds")
  fwd = models.model_flops_per_example(base.model, engine.input_shape, engine.num_classes)
  model_flops = 3.0 * fwd * batch
  compiled_bytes = [s["bytes_per_device"] for s in steps.values() if "bytes_per_device" in s]
  ok_time = step_s is not None and math.isfinite(step_s) and step_s > 0
  # The roofline of the same step from XLA's own counts: the slower of the
  # chip's bf16 peak and its HBM bandwidth, per device.
  roofline = None
  if "flops_per_device" in tr:
    roofline = max(
      tr["flops_per_device"] / chip.bf16_flops, tr["bytes_accessed_per_device"] / chip.hbm_bandwidth
    )
  notes = []
  if step_s is not None and not ok_time:
    # Seen for v4:2x2x4 and v5e:16x16 with libtpu 0.0.42: a negative
    # optimal_seconds. The rates then come from the roofline.
    notes.append(
      f"XLA gave no usable step-time estimate (optimal_seconds = {step_s:.4g}): "
      "images/s, MFU and time use the roofline of XLA's flops and bytes"
    )
  basis = "xla" if ok_time else "roofline" if roofline else None
  rate_s = step_s if ok_time else roofline
  report = {
    "topology": topology,
    "device_kind": devices[0].device_kind,
    "num_devices": len(devices),
    "num_hosts": hosts,
    "devices_per_host": per_host,
    "mesh": {k: int(v) for k, v in mesh.shape.items()},
    "global_batch_size": batch,
    "per_device_batch_size": batch / n,
    "bytes_per_device": max(compiled_bytes) if compiled_bytes else None,
    "hbm_bytes_per_device": chip.hbm_bytes,
    "fits": all(s["fits"] for s in steps.values()) and batch_splits,
    "flops_per_step": tr["flops_per_device"] * n if "flops_per_device" in tr else None,
    "bytes_accessed_per_step": (
      tr["bytes_accessed_per_device"] * n if "bytes_accessed_per_device" in tr else None
    ),
    "model_flops_per_step": model_flops,
    "estimated_step_seconds": step_s if ok_time else None,
    "roofline_step_seconds": roofline,
    "rate_basis": basis,
    "estimated_images_per_second": batch / rate_s if basis else None,
    "peak_bf16_flops_per_device": chip.bf16_flops,
    "hbm_bandwidth_per_device": chip.hbm_bandwidth,
    "estimated_mfu": model_flops / (rate_s * n * chip.bf16_flops) if basis else None,
    "estimated_100k_steps_hours": PAPER_STEPS * rate_s / 3600 if basis else None,
    "problems": problems,
    "notes": notes,
    "steps_compiled": steps,
    "config": {
      "model": base.model.name,
      "dtype": base.model.dtype,
      "dataset": base.dataset.name,
      "input_shape": list(engine.input_shape),
      "schedule": base.optimizer.schedule,
      "averaging": base.averaging.method,
      "shard_params": bool(base.mesh.shard_params),
    },
    "versions": {"jax": jax.__version__, "libtpu": _libtpu_version()},
    "compile_seconds": time.perf_counter() - t_start,
    "note": "XLA compiler estimates for the topology, not measurements",
  }
  return report


def _libtpu_version() -> str | None:
  try:
    from importlib.metadata import version

    return version("libtpu")
  except Exception:
    return None


def _gib(x) -> str:
  return "-" if x is None else f"{x / GiB:.2f}"


def _ms(seconds) -> str:
  ok = seconds is not None and math.isfinite(seconds) and seconds > 0
  return f"{seconds * 1e3:.2f} ms" if ok else "n/a"


def _hours(h) -> str:
  if h is None:
    return "-"
  return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d"


TABLE_HEADER = (
  f"{'config':<28} {'topology':<10} {'chips':>5} {'hosts':>5} {'B/chip':>6} "
  f"{'GiB/chip':>8} {'HBM':>4} {'fits':>4} {'TFLOP/step':>10} {'est s/step':>10} "
  f"{'img/s':>9} {'MFU':>6} {'100k steps':>10}"
)


def format_row(report: dict, label: str = "") -> str:
  """One line of the table (see :data:`TABLE_HEADER`)."""
  r = report
  f = r["flops_per_step"]
  s = r["estimated_step_seconds"]
  if s is None and r.get("rate_basis") == "roofline":
    s = r["roofline_step_seconds"]
  mark = "*" if r.get("rate_basis") == "roofline" else ""
  ips = r["estimated_images_per_second"]
  mfu = r["estimated_mfu"]
  return (
    f"{label[:28]:<28} {r['topology']:<10} {r['num_devices']:>5} {r['num_hosts']:>5} "
    f"{r['per_device_batch_size']:>6g} {_gib(r['bytes_per_device']):>8} "
    f"{r['hbm_bytes_per_device'] // GiB:>4} {'yes' if r['fits'] else 'NO':>4} "
    f"{'-' if f is None else f'{f / 1e12:.1f}':>10} {'-' if s is None else f'{s:.4f}{mark}':>10} "
    f"{'-' if ips is None else f'{ips:,.0f}':>9} {'-' if mfu is None else f'{mfu:.1%}':>6} "
    f"{_hours(r['estimated_100k_steps_hours']):>10}"
  )


def format_table(report: dict, label: str = "", *, header: bool = True) -> str:
  """The human-readable report: the summary row, the per-step lines and the problems."""
  lines = [TABLE_HEADER] if header else []
  lines.append(format_row(report, label))
  for name, s in report["steps_compiled"].items():
    if "bytes_per_device" in s:
      lines.append(
        f"  {name:<9} B={s['global_batch_size']:<6} {_gib(s['bytes_per_device'])} GiB/device "
        f"(args {_gib(s['argument_bytes'])}, temp {_gib(s['temp_bytes'])}, donated "
        f"{_gib(s['alias_bytes'])}), {s['flops_per_device'] * report['num_devices'] / 1e12:.2f} "
        f"TFLOP, est {_ms(s['estimated_seconds'])}, compiled in {s['compile_seconds']:.0f} s"
      )
    else:
      lines.append(f"  {name:<9} B={s['global_batch_size']:<6} not compiled: {s['error']}")
  for p in report["problems"]:
    lines.append(f"  problem: {p}")
  for p in report.get("notes", ()):
    lines.append(f"  note: {p}")
  lines.append("  (XLA compiler estimates for the topology, not measurements)")
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# command line


def _define_flags():
  from absl import flags

  from trajax.sidetrip.spec import define_config_flag

  flags.DEFINE_string("topology", None, "JAX's TPU topology name, e.g. v5e:16x16.")
  flags.DEFINE_string("out", None, "Also write the JSON report to this file.")
  flags.DEFINE_string("label", "", "Row label in the table (default: the config path).")
  flags.DEFINE_bool("print_json", True, "Print the JSON report after the table.")
  flags.DEFINE_bool("header", True, "Print the table's header line.")
  flags.DEFINE_list("steps", list(STEPS), "Steps to compile ('train' always).")
  # The side-trip section (equivalent by default) before the --config.*
  # overrides, as trajax.sidetrip's CLI (None fields: see sidetrip_config).
  define_config_flag(kind="equivalent")
  flags.mark_flags_as_required(["config", "topology"])
  return flags.FLAGS


def _main(argv):
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ml_collections import config_flags

  FLAGS = flags.FLAGS
  _check_out(FLAGS.out)
  try:
    report = compile_for(FLAGS.config, FLAGS.topology, steps=tuple(FLAGS.steps))
  except AotError as e:
    raise SystemExit(f"aot error: {e}") from None
  label = FLAGS.label or config_flags.get_config_filename(FLAGS["config"])
  print(format_table(report, label, header=FLAGS.header))
  text = json.dumps(report, indent=2, sort_keys=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
  if FLAGS.print_json:
    print(text)


def _check_out(out: str | None) -> None:
  """Refuses an ``--out`` whose directory does not exist, before anything compiles."""
  if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise SystemExit(
      f"aot error: out = {out!r}: its directory does not exist (nothing was compiled)"
    )


def main():
  from absl import app

  # Refuse a bad --out, a bad topology or a missing libtpu in a second, before
  # the config loads (in that order: the user's own input first).
  for arg in sys.argv[1:]:
    if arg.startswith("--out="):
      _check_out(arg.split("=", 1)[1])
  for arg in sys.argv[1:]:
    if arg.startswith("--topology="):
      try:
        parse_topology(arg.split("=", 1)[1])
        require_libtpu()
      except AotError as e:
        raise SystemExit(f"aot error: {e}") from None
  # Compiling for a topology needs no accelerator of this host's (and must not
  # take one another process uses).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  _define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
