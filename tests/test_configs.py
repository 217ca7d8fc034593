"""configs/, trajax.config and trajax.config_validation: the one declaration, named errors,
the entry point, one run per family."""

from __future__ import annotations

import ast
import glob
import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import common
from tests.small_training import CACHE_DIR  # (importing it also sets the compilation cache)
from trajax import config as config_lib
from trajax import config_validation as cv
from trajax import data, loop, models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["mnist1d", "digits", "cifar10_resnet34", "cifar100_resnet34", "imagenet_resnet34"]
VARIANTS = [None, "runlocal", "cosine", "averaging=ema", "cosine,runlocal"]


def load(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_and_variant_is_valid_with_the_shared_fields(name, tmp_path):
  module = importlib.import_module(f"configs.{name}")
  assert (
    f"--config=configs/{name}.py" in module.__doc__ and "python -m trajax.main" in module.__doc__
  )
  for arg in VARIANTS:
    c = module.get_config(arg)
    c.data_dir = str(tmp_path)
    assert tuple(sorted(cv.flatten(c))) == config_lib.field_names(), arg
    assert c.is_locked, arg
    cv.validate(c, num_devices=1, process_count=1)
    assert (c.optimizer.schedule == "cosine") == ("cosine" in (arg or ""))
  with pytest.raises(ValueError, match="unknown"):
    module.get_config("nosuchvariant")


def test_paper_setup_in_imagenet_config():
  c = load("imagenet_resnet34")
  assert (c.model.name, c.batch_size, c.total_steps) == ("resnet34", 512, 100_000)
  assert c.optimizer.momentum == 0.9 and c.optimizer.schedule == "constant"
  assert load("imagenet_resnet34", "cosine").optimizer.schedule == "cosine"
  m = load("mnist1d")
  assert (m.dataset.num_train, m.dataset.label_noise, m.batch_size) == (40_000, 0.3, 64)
  assert (m.optimizer.lr, m.optimizer.momentum) == (0.05, 0.9)


def _with(flat_changes, *, name="mnist1d"):
  d = load(name).to_dict()
  for key, value in flat_changes.items():
    node = d
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return d


@pytest.mark.parametrize(
  "changes,field,value,allowed,devices",
  [
    ({"optimizer.lrr": 0.1}, "optimizer.lrr", "0.1", "unknown field", 1),
    ({"optimizer.lr": "fast"}, "optimizer.lr", "'fast'", "finite number > 0", 1),
    ({"optimizer.lr": -0.1}, "optimizer.lr", "-0.1", "> 0", 1),
    ({"optimizer.lr": 0.0}, "optimizer.lr", "0.0", "> 0", 1),
    ({"batch_size": 60}, "batch_size", "60", "divisible by the 8 devices", 8),
    ({"dataset.name": "mnist2d"}, "dataset.name", "'mnist2d'", "must be one of", 1),
    (
      {"dataset.name": "cifar10", "model.name": "cifar_resnet18"},
      "data_dir",
      "None",
      "training never downloads",
      1,
    ),
    (
      {"dataset.name": "cifar10", "model.name": "cifar_resnet18", "data_dir": "/nonexistent/x"},
      "data_dir",
      "'/nonexistent/x'",
      "existing directory",
      1,
    ),
    ({"averaging.method": "ema", "averaging.decay": 1.5}, "averaging.decay", "1.5", "(0, 1]", 1),
    ({"averaging.method": "multi_point", "averaging.n": 1}, "averaging.n", "1", ">= 2", 1),
    ({"averaging.method": "multi_point", "averaging.n": 1001}, "averaging.n", "1001", "<= 1000", 1),
    ({"averaging.method": "ema", "averaging.every": 0}, "averaging.every", "0", "integer >= 1", 1),
    (
      {"averaging.method": "ema", "averaging.debias": 1},
      "averaging.debias",
      "1",
      "True or False",
      1,
    ),
    ({"averaging.gap": 10**6}, "averaging.gap", "1000000", "<= total_steps", 1),
    ({"averaging.batch_norm": "none"}, "averaging.batch_norm", "'none'", "recompute", 1),
    ({"mesh.data": 3}, "mesh.data", "3", "divide the 8 devices", 8),
    ({"optimizer.momentum": 1.0}, "optimizer.momentum", "1.0", "[0, 1)", 1),
    ({"total_steps": 0}, "total_steps", "0", "integer > 0", 1),
    ({"optimizer.schedule": "step"}, "optimizer.step_boundaries", "()", "needs >= 1", 1),
    ({"seed": True}, "seed", "True", "integer", 1),
    ({"seed": 2**32}, "seed", "4294967296", "[0, 2**32)", 1),
    ({"seed": -1}, "seed", "-1", "[0, 2**32)", 1),
    ({"dataset.seed": 2**32}, "dataset.seed", "4294967296", "[0, 2**32)", 1),
    ({"dataset.num_eval": 0}, "dataset.num_eval", "0", "None or an integer > 0", 1),
    ({"dataset.augment": True}, "dataset.augment", "True", "must be False for mnist1d", 1),
    ({"model.name": "resnet18"}, "model.name", "'resnet18'", "mnist1d needs a 1-D", 1),
    ({"model.name": "resnet99"}, "model.name", "'resnet99'", "cifar_resnet50", 1),
    ({"checkpoint.max_to_keep": 0}, "checkpoint.max_to_keep", "0", "None or an integer > 0", 1),
    ({"optimizer.schedule": "exp"}, "optimizer.schedule", "'exp'", "'cosine'", 1),
    ({"averaging.method": "lookahead"}, "averaging.method", "'lookahead'", "'multi_point'", 1),
  ],
)
def test_bad_config_error_names_field_value_and_allowed(changes, field, value, allowed, devices):
  with pytest.raises(cv.ConfigError) as e:
    cv.validate(_with(changes), num_devices=devices, process_count=1)
  line = next((x for x in str(e.value).splitlines() if x.strip().startswith(field + " =")), None)
  assert line is not None, str(e.value)
  assert f"{field} = {value}" in line and allowed in line, line


def test_all_problems_are_reported_together():
  with pytest.raises(cv.ConfigError) as e:
    cv.validate(
      _with({"optimizer.lr": -1.0, "batch_size": 63, "dataset.label_noise": 2.0}),
      num_devices=2,
      process_count=1,
    )
  assert len(e.value.problems) == 3
  assert str(e.value).startswith("3 problems in the config:")


# --------------------------------------------------------------------------- the one declaration


def test_base_config_is_the_schema_typed_and_locked():
  assert common.base_config is config_lib.base_config
  assert not hasattr(cv, "SCHEMA")  # no second list of fields
  c = config_lib.base_config()
  assert c.is_locked
  with pytest.raises(AttributeError):
    c.optimizer.lrr = 0.1
  with pytest.raises(TypeError):
    c.optimizer.lr = "fast"
  with pytest.raises(TypeError):
    c.total_steps = 1.5
  # Typed placeholders: None or a value of their type, nothing else.
  for field, value in [("checkpoint.max_to_keep", 5), ("dataset.num_eval", 100)]:
    section, name = field.split(".")
    c[section][name] = value
    c[section][name] = None
    with pytest.raises(TypeError):
      c[section][name] = "x"


def _reads(path: str) -> set[str]:
  """Dotted run-config fields a module reads, found in its syntax tree.

  ``config.<section>.<field>`` (and ``cfg``/``base``/``parent_config``) for
  every section of base_config(); ``<x>.<field>`` at the top level; and the
  ``field(config.dataset, "name")`` / ``_field(model_config, "name")`` reads
  of trajax.data and trajax.models.
  """
  names = {"config", "cfg", "base", "parent_config"}
  sections = {k.split(".")[0] for k in config_lib.field_names() if "." in k}
  import ml_collections

  methods = set(dir(ml_collections.ConfigDict)) | {"sidetrip"}
  out = set()
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      chain, x = [], node
      while isinstance(x, ast.Attribute):
        chain.append(x.attr)
        x = x.value
      chain.reverse()
      if not (isinstance(x, ast.Name) and x.id in names):
        continue
      if chain[0] in sections and len(chain) > 1 and chain[1] not in methods:
        out.add(f"{chain[0]}.{chain[1]}")
      elif chain[0] not in sections and chain[0] not in methods:
        out.add(chain[0])
    elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("field", "_field"):
      target, key = node.args[0], node.args[1] if len(node.args) > 1 else None
      if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
        continue
      if isinstance(target, ast.Attribute) and target.attr in sections:
        out.add(f"{target.attr}.{key.value}")
      elif isinstance(target, ast.Name) and target.id == "model_config":
        out.add(f"model.{key.value}")
      elif isinstance(target, ast.Name) and target.id == "config":
        out.add(key.value)
  return out


def test_every_field_an_owner_reads_is_declared():
  """The drift issue 10 found (dataset.num_eval, dataset.seed read but undeclared) cannot recur."""
  files = sorted(glob.glob(os.path.join(REPO, "trajax", "**", "*.py"), recursive=True))
  # The synthetic experiments have their own small ConfigDict, not a run config.
  files += [
    f
    for f in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
    if not os.path.basename(f).startswith("synthetic_")
  ]
  declared = set(config_lib.field_names())
  reads = {f: _reads(f) for f in files}
  seen = set().union(*reads.values())
  # The scan finds what it should (it is not vacuous) ...
  assert {"dataset.num_eval", "dataset.seed", "model.dtype", "checkpoint.max_to_keep"} <= seen
  assert {"seed", "total_steps", "data_dir"} <= seen
  # ... and every read is a declared field.
  undeclared = {os.path.relpath(f, REPO): sorted(r - declared) for f, r in reads.items()}
  assert not {f: r for f, r in undeclared.items() if r}


class _Strict:
  """A read-only view of a config dict that records every field read, found or not."""

  def __init__(self, d, prefix="", log=None):
    self._d, self._prefix, self._log = d, prefix, set() if log is None else log

  def __getattr__(self, name):
    field = self._prefix + name
    if name not in self._d:
      self._log.add(field)
      raise AttributeError(field)
    value = self._d[name]
    if isinstance(value, dict):
      return _Strict(value, field + ".", self._log)
    self._log.add(field)
    return value


def test_owners_read_only_declared_fields_at_run_time(tmp_path):
  """trajax.data and trajax.models, driven through a view that records misses too
  (``data.field`` turns a missing field into its default, which hid the drift)."""
  declared = set(config_lib.field_names())
  for name in ("digits", "mnist1d"):
    c = load(name).to_dict()
    c["data_dir"] = str(tmp_path)
    c["dataset"]["num_train"] = 200
    view = _Strict(c)
    ds = data.get_dataset(view, local_device_count=1)
    next(ds.train_batches(0))
    models.create_model(view.model, num_classes=ds.info.num_classes)
    assert {"dataset.seed", "dataset.name", "model.width"} <= view._log
    assert view._log <= declared, sorted(view._log - declared)


def _registered_config(model: str):
  """A valid config for ``model``: mnist1d for 1-D models, digits for the image models."""
  one_d = models.MODELS[model].spatial_dims == 1
  c = load("mnist1d" if one_d else "digits")
  c.model.name = model
  return c


@pytest.mark.parametrize("model", list(models.MODELS))
def test_every_registered_model_is_accepted_and_takes_its_registered_input(model):
  import jax
  import jax.numpy as jnp

  c = _registered_config(model)
  cv.validate(c, num_devices=1, process_count=1)
  # The registry's spatial_dims is the input the module really takes.
  shape = (1, 40, 1) if models.MODELS[model].spatial_dims == 1 else (1, 8, 8, 1)
  c.model.width = 4
  net = models.create_model(c.model, num_classes=3)
  out = jax.eval_shape(
    lambda x: net.apply(net.init(jax.random.key(0), x, train=False), x, train=False),
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )
  assert out.shape == (1, 3)


def test_cifar_resnet50_num_eval_and_data_seed_are_accepted_and_used(tmp_path):
  c = load("cifar10_resnet34")
  c.model.name, c.data_dir = "cifar_resnet50", str(tmp_path)
  cv.validate(c, num_devices=1, process_count=1)
  m = load("mnist1d")
  m.dataset.num_train, m.dataset.num_eval, m.dataset.seed, m.data_dir = 400, 120, 7, str(tmp_path)
  cv.validate(m, num_devices=1, process_count=1)
  assert data.get_dataset(m, local_device_count=1).info.num_eval == 120
  # dataset.seed, not seed, draws the data; the run seed still draws nothing else there.
  d = load("digits")
  batch = lambda cfg: next(data.get_dataset(cfg, local_device_count=1).train_batches(0))["label"]
  d.dataset.seed = 7
  first = batch(d)
  d.seed = 3
  np.testing.assert_array_equal(batch(d), first)
  d.dataset.seed = None
  d.seed = 7
  np.testing.assert_array_equal(batch(d), first)


def test_every_dataset_source_is_accepted_with_a_model_of_its_dims(tmp_path):
  from trajax.data import tfds_source

  for name, source in data.SOURCES.items():
    c = load("digits")
    c.dataset.name, c.data_dir = name, str(tmp_path)
    c.model.name = next(
      m for m, s in models.MODELS.items() if s.spatial_dims == source.spatial_dims
    )
    c.dataset.augment = source.augment
    cv.validate(c, num_devices=1, process_count=1)
    # The registry agrees with the source modules: TFDS names and input ranks.
    assert source.tfds == (name in tfds_source.SPECS)
    if source.tfds:
      assert len(tfds_source.SPECS[name].input_shape) - 1 == source.spatial_dims
  assert cv.TFDS_DATASETS == tuple(n for n, s in data.SOURCES.items() if s.tfds)


def test_schedule_registry_is_what_make_schedule_builds():
  """Every name in SCHEDULES is built by train.make_schedule, and ``horizon`` says
  exactly whether η_t moves when total_steps does (check_resume relies on it)."""
  opt = load("mnist1d").optimizer
  opt.step_boundaries, opt.warmup_steps = (30, 60), 5
  for name, spec in config_lib.SCHEDULES.items():
    opt.schedule = name
    etas = [
      np.array([train.make_schedule(opt, total)(t) for t in range(0, 90, 7)])
      for total in (100, 200)
    ]
    assert np.all(np.isfinite(etas[0])) and etas[0][0] == 0.0  # warmup starts at 0
    assert (not np.array_equal(*etas)) == spec.horizon, name
  opt.schedule = "exp"
  with pytest.raises(ValueError, match="exp"):
    train.make_schedule(opt, 100)


# --------------------------------------------------------------------------- stored configs


def _stored(config) -> dict:
  """The config as checkpoint metadata holds it (plain JSON)."""
  from trajax import checkpoint as ckpt_lib

  return json.loads(json.dumps(ckpt_lib.make_metadata(config, step=0)["config"]))


def test_stored_config_round_trips_typed_and_locked():
  c = load("imagenet_resnet34", "cosine")
  c.checkpoint.max_to_keep, c.dataset.seed, c.optimizer.step_boundaries = None, 5, (10, 20)
  back = config_lib.from_dict(_stored(c))
  assert back.is_locked and cv.flatten(back) == cv.flatten(c)
  assert back.optimizer.step_boundaries == (10, 20)  # JSON's list is a tuple again
  assert cv.diff(c, back) == []
  with pytest.raises(TypeError):
    back.optimizer.lr = "fast"
  with pytest.raises(AttributeError):
    back.optimizer.lrr = 0.1
  # A side-trip's config keeps its section, typed.
  from trajax import sidetrip

  s = sidetrip.with_sidetrip(c, kind="equivalent", method="swa", window=50)
  back = config_lib.from_dict(_stored(s))
  assert back.is_locked and cv.flatten(back) == cv.flatten(s)
  with pytest.raises(TypeError):
    back.sidetrip.window = "x"


def test_a_section_is_rebuilt_by_the_package_that_registers_it():
  from trajax import sidetrip

  # trajax.config imports no side-trip code: the side-trip package registers its section.
  assert "sidetrip" in config_lib.registered_sections()
  stored = _stored(sidetrip.with_sidetrip(load("mnist1d"), kind="schedule", lr_factor=0.5))
  assert config_lib.from_dict(stored).sidetrip.lr_factor == 0.5
  stored["toy"] = {"knob": 1}  # a section nobody registered: named, with what is registered
  with pytest.raises(cv.ConfigError, match=r"toy.knob = 1: unknown section.*'sidetrip'"):
    config_lib.from_dict(stored)
  with pytest.raises(ValueError, match="'optimizer' is declared by base_config"):
    config_lib.register_section("optimizer", lambda c, s: c)


def test_old_stored_config_loads_with_defaults_and_resumes_without_a_difference():
  c = load("mnist1d")
  old = _stored(c)
  del old["dataset"]["num_eval"], old["dataset"]["seed"]  # written before they were declared
  back = config_lib.from_dict(old)
  assert back.dataset.num_eval is None and back.dataset.seed is None and back.is_locked
  # Before: "dataset.num_eval = None: differs from the checkpoint's value None".
  assert cv.check_resume(old, c) == []
  c.dataset.seed = 3
  with pytest.raises(cv.ConfigError) as e:
    cv.check_resume(old, c)
  assert str(e.value).splitlines()[1].strip().startswith("dataset.seed = 3: differs from")


def test_stored_config_with_unknown_or_mistyped_fields_is_refused_by_name():
  old = _stored(load("mnist1d"))
  old["optimizer"]["lrr"] = 0.1
  old["seed"] = "zero"
  with pytest.raises(cv.ConfigError) as e:
    config_lib.from_dict(old)
  assert sorted(p.field for p in e.value.problems) == ["optimizer.lrr", "seed"]
  assert "unknown field" in str(e.value) and "'zero'" in str(e.value)


def test_no_resume_message_reads_none_differs_from_none():
  """issue 11: resuming a side-trip's workdir as a main run printed one
  ``sidetrip.<field> = None: differs from the checkpoint's value None`` per field."""
  from trajax import sidetrip

  main = load("mnist1d")
  trip = sidetrip.with_sidetrip(main, kind="schedule", steps=10)
  messages = []
  for stored, new in [(trip, main), (main, trip), (_stored(trip), main)]:
    with pytest.raises(cv.ConfigError) as e:
      cv.check_resume(stored, new)
    assert [p.field for p in e.value.problems] == ["sidetrip"], str(e.value)
    messages.append(str(e.value))
  assert "resume it with python -m trajax.sidetrip" in messages[0]
  assert "has no 'sidetrip' section" in messages[1]
  for text in messages:
    assert "None: differs from the checkpoint's value None" not in text
  # Fields (not sections) only one side has are named once with <absent>.
  stored = _stored(main)
  stored["dataset"]["extra"] = None
  with pytest.raises(cv.ConfigError) as e:
    cv.check_resume(stored, main)
  assert str(e.value.problems[0]) == (
    "dataset.extra = <absent>: the checkpoint's config has it (= None); this config lacks it"
  )


def test_resume_diff_names_fields_and_allow_list():
  old = load("mnist1d")
  new = load("mnist1d")
  new.optimizer.momentum = 0.8
  new.log_every_steps = 7
  assert cv.diff(old, new) == [("log_every_steps", 200, 7), ("optimizer.momentum", 0.9, 0.8)]
  with pytest.raises(cv.ConfigError) as e:
    cv.check_resume(old, new)
  assert [p[0] for p in e.value.problems] == ["optimizer.momentum"]
  assert "0.9" in str(e.value)


def test_parse_arg():
  assert common.parse_arg("cosine,steps=20", cosine=False, steps=5) == {"cosine": True, "steps": 20}
  with pytest.raises(ValueError, match="'x'"):
    common.parse_arg("x=1", cosine=False)


def _main(args, tmp_path, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE_DIR)
  return subprocess.run(
    [sys.executable, "-m", "trajax.main", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_main_rejects_misspelt_field_and_missing_workdir(tmp_path):
  wd = tmp_path / "wd"
  proc = _main(
    ["--config=configs/mnist1d.py:runlocal", "--config.optimizer.lrr=0.1", f"--workdir={wd}"],
    tmp_path,
  )
  assert proc.returncode != 0 and "lrr" in proc.stderr
  proc = _main(["--config=configs/mnist1d.py:runlocal"], tmp_path)
  assert proc.returncode != 0 and "workdir" in proc.stderr
  assert not wd.exists()


def test_main_mnist1d_short_run_and_resume(tmp_path):
  """The offline default end to end through the real entry point (mnist1d family)."""
  wd = tmp_path / "wd"
  args = [
    "--config=configs/mnist1d.py:runlocal",
    f"--workdir={wd}",
    "--config.total_steps=30",
    "--config.log_every_steps=10",
    "--config.eval_every_steps=30",
    "--config.checkpoint_every_steps=15",
    "--config.averaging.gap=10",
    f"--config.data_dir={tmp_path}",
  ]
  proc = _main(args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(x) for x in open(wd / "metrics.jsonl")]
  assert [r["step"] for r in records if "train/loss" in r] == [10, 20, 30]
  assert any("eval_avg/accuracy" in r for r in records)
  # Same command with a changed lr is refused and names the field.
  proc = _main([*args, "--config.optimizer.lr=0.1"], tmp_path)
  assert proc.returncode != 0 and "optimizer.lr = 0.1" in proc.stderr


def test_digits_family_short_run(tmp_path):
  c = load("digits", "runlocal")
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 4, 2, 4, 4
  c.batch_size, c.averaging.gap, c.averaging.batch_norm = 16, 2, "average"
  result = loop.train_and_evaluate(c, str(tmp_path / "digits"))
  assert result.step == 4
  assert set(result.eval) == {"raw", "avg"}
  assert 0.0 <= result.eval["raw"]["accuracy"] <= 1.0 and result.eval["raw"]["loss"] > 0


@pytest.mark.parametrize(
  "name,model",
  [
    ("cifar10_resnet34", "cifar_resnet18"),
    # A 224² ResNet compile costs minutes on 2 shared cores: make test-slow.
    pytest.param("imagenet_resnet34", "resnet18", marks=pytest.mark.slow),
  ],
)
def test_tfds_family_short_run_under_mock_data(name, model, tmp_path):
  """The TFDS path (CIFAR in memory, ImageNet streamed) end to end on mock examples."""
  from trajax.data import tfds_source

  c = load(name, "runlocal")
  c.data_dir = str(tmp_path)
  c.model.name, c.model.width = model, 4
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 3, 3, 3, 3
  c.batch_size, c.eval_batch_size = 8, 8
  # 'average' BN statistics: the averaged model reuses the compiled eval step.
  c.averaging.method, c.averaging.gap, c.averaging.batch_norm = "two_point", 2, "average"
  with tfds_source.mock_prepared_tfds(num_examples=16):
    result = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert result.step == 3 and set(result.eval) == {"raw", "avg"}
  assert np.isfinite(result.eval["raw"]["loss"]) and np.isfinite(result.eval["avg"]["loss"])
  records = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  assert any(r.get("step") == 3 and "train/loss" in r for r in records)


def test_none_overrides_parse_for_typed_placeholders():
  """``--config.checkpoint.max_to_keep=None`` ("keep all") parses; a non-None
  value of the wrong type is still refused by the flag parser."""
  from absl import flags
  from ml_collections import config_flags

  def parse(*overrides):
    argv = ["prog", "--config=configs/mnist1d.py", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
      "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config

  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    c = parse("--config.checkpoint.max_to_keep=None", "--config.dataset.num_eval=300")
    assert c.checkpoint.max_to_keep is None and c.dataset.num_eval == 300
    c = parse("--config.dataset.num_eval=300", "--config.dataset.num_eval=None")
    assert c.dataset.num_eval is None
    assert parse("--config.checkpoint.max_to_keep=7").checkpoint.max_to_keep == 7
    with pytest.raises(flags.IllegalFlagValueError, match="max_to_keep"):
      parse("--config.checkpoint.max_to_keep=all")
  finally:
    os.chdir(cwd)


def test_main_refuses_bad_seed_fast_before_tensorflow_with_max_to_keep_none(tmp_path):
  """Through the CLI: ``max_to_keep=None`` parses (it is not among the problems),
  the out-of-range seed is refused by name, before TensorFlow or the engine
  is imported, with nothing written."""
  wd = tmp_path / "wd"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPROFILEIMPORTTIME="1")
  t0 = time.perf_counter()
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "trajax.main",
      "--config=configs/mnist1d.py:runlocal",
      "--config.checkpoint.max_to_keep=None",
      f"--config.seed={2**32}",
      f"--workdir={wd}",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  elapsed = time.perf_counter() - t0
  assert proc.returncode != 0
  errors = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
  assert any("seed = 4294967296: must be an integer in [0, 2**32)" in x for x in errors), errors
  assert not any("max_to_keep" in x for x in errors), errors
  imported = {
    x.split("|")[-1].strip() for x in proc.stderr.splitlines() if x.startswith("import time:")
  }
  assert "trajax.config_validation" in imported
  assert not {"tensorflow", "trajax.train", "orbax.checkpoint"} & imported
  assert not wd.exists()
  print(f"bad config refused in {elapsed:.1f} s")


def test_main_on_a_side_trip_workdir_names_the_section_once(tmp_path):
  """issue 11's "None differs from None", through the CLI: a main run started on
  a side-trip's workdir is refused with one line saying what to run instead."""
  from trajax import sidetrip

  wd = tmp_path / "trip"
  step = wd / "checkpoints" / "6"
  (step / "meta").mkdir(parents=True)
  (step / "state").mkdir()  # a committed step as trajax.checkpoint lists it
  (step / "commit_success.txt").write_text("Checkpoint commit was successful to 6")
  trip = sidetrip.with_sidetrip(load("mnist1d", "runlocal"), kind="schedule", steps=10)
  trip.data_dir = str(tmp_path)
  (step / "meta" / "metadata").write_text(json.dumps({"step": 6, "config": _stored(trip)}))
  before = sorted(str(p) for p in wd.rglob("*"))
  proc = _main(
    ["--config=configs/mnist1d.py:runlocal", f"--config.data_dir={tmp_path}", f"--workdir={wd}"],
    tmp_path,
  )
  assert proc.returncode != 0
  assert "1 problem in the config" in proc.stderr, proc.stderr[-2000:]
  assert "sidetrip = <absent>: the checkpoint was written by a side-trip" in proc.stderr
  assert "differs from the checkpoint's value None" not in proc.stderr
  assert sorted(str(p) for p in wd.rglob("*")) == before
