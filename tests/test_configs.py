"""configs/ and trajax.config_validation: field contract, named errors, the entry point, one run per family."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train import CACHE_DIR  # (importing it also sets the compilation cache)

from configs import common
from trajax import config_validation as cv
from trajax import train

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
    assert set(cv.flatten(c)) == set(cv.SCHEMA), arg
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
    ({"averaging.gap": 10**6}, "averaging.gap", "1000000", "<= total_steps", 1),
    ({"averaging.batch_norm": "none"}, "averaging.batch_norm", "'none'", "recompute", 1),
    ({"mesh.data": 3}, "mesh.data", "3", "divide the 8 devices", 8),
    ({"optimizer.momentum": 1.0}, "optimizer.momentum", "1.0", "[0, 1)", 1),
    ({"total_steps": 0}, "total_steps", "0", "integer > 0", 1),
    ({"optimizer.schedule": "step"}, "optimizer.step_boundaries", "()", "needs >= 1", 1),
    ({"seed": True}, "seed", "True", "integer", 1),
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
  result = train.train_and_evaluate(c, str(tmp_path / "digits"))
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
    result = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert result.step == 3 and set(result.eval) == {"raw", "avg"}
  assert np.isfinite(result.eval["raw"]["loss"]) and np.isfinite(result.eval["avg"]["loss"])
  records = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  assert any(r.get("step") == 3 and "train/loss" in r for r in records)
