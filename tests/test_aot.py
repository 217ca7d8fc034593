"""trajax.aot: the engine's steps compiled for a TPU topology on this CPU host.

The fast tests check the refusals (an unknown topology, no libtpu) without
compiling anything. The slow ones (``make test-slow``, which installs the
``tpu`` extra) compile the ImageNet ResNet-34 config at its real batch (512)
and image size (224²) for a 4-chip v5e (``v5e:2x2``), once for the module,
and check the report against numbers written here:

* XLA's flops per step against the textbook count: ResNet-34 at 224² is
  3.6 G multiply-adds forward (He et al. 2016, Table 1), a training step
  ≈ 3 × forward (the backward pass has two products per forward one), so
  ≈ 512 · 3 · 2 · 3.6e9 ≈ 1.1e13 FLOP (2 FLOPs per multiply-add);
* the layout: the state's shardings in the compiled executable are those
  :func:`trajax.state.abstract_state` declares (replicated by default), the
  batch split over ``data``;
* a topology too small for the batch or its memory reported as not fitting.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from trajax import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = "v5e:2x2"  # 4 chips, one host
# ResNet-34 at 224x224: 3.6e9 multiply-adds forward per image (He et al. 2016, Table 1).
R34_MACS = 3.6e9


def _imagenet(arg=None, **overrides):
  from configs import imagenet_resnet34

  c = imagenet_resnet34.get_config(arg)
  for dotted, value in overrides.items():
    section, _, name = dotted.rpartition("__")
    (c[section] if section else c)[name] = value
  return c


def _cifar_small(**overrides):
  # The CIFAR ResNet-18 at width 8 (':runlocal'): compiles in seconds.
  from configs import cifar10_resnet34

  c = cifar10_resnet34.get_config("runlocal")
  for name, value in overrides.items():
    c[name] = value
  return c


# ----------------------------------------------------------------------------
# refusals (no compilation)


@pytest.mark.parametrize("name", ["v9z:4x4", "v5e", "v5e:4", "tpu:2x2", "v5e:4x4x4x4", ""])
def test_unknown_topology_is_refused_with_the_families_allowed(name):
  with pytest.raises(aot.AotError) as e:
    aot.parse_topology(name)
  msg = str(e.value)
  assert repr(name) in msg
  for family in aot.CHIPS:
    assert f"{family}:" in msg


def test_topology_names_parse():
  assert aot.parse_topology("v5e:16x16") == ("v5e", (16, 16))
  assert aot.parse_topology("v4:2x2x4") == ("v4", (2, 2, 4))


def test_without_libtpu_it_says_what_to_install(monkeypatch):
  import jax

  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
  )
  with pytest.raises(aot.AotError) as e:
    aot.compile_for(_imagenet(), "v5e:2x2")
  assert f"pip install 'jax[tpu]=={jax.__version__}'" in str(e.value)


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "trajax.aot", "--config=configs/imagenet_resnet34.py", *args],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO},
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_refuses_a_bad_topology_in_a_line():
  proc = _cli("--topology=v9:2")
  assert proc.returncode != 0
  assert "aot error: topology 'v9:2'" in proc.stderr and "v5e:AxB" in proc.stderr


def test_cli_refuses_an_out_file_in_a_missing_directory(tmp_path):
  out = tmp_path / "missing" / "report.json"
  proc = _cli("--topology=v5e:2x2", f"--out={out}")
  assert proc.returncode != 0
  assert f"out = {str(out)!r}: its directory does not exist" in proc.stderr
  assert not out.parent.exists()


# ----------------------------------------------------------------------------
# compiled for a topology (libtpu: make test-slow installs the tpu extra first)


@pytest.fixture(scope="module")
def r34():
  """ImageNet ResNet-34 (two-point averaging on) compiled for v5e:2x2, with its engine."""
  config = _imagenet("averaging=two_point")
  report = aot.compile_for(config, SMALL)
  _, devices = aot.topology_devices(SMALL)
  return config, report, aot.engine_on(config, devices)


@pytest.mark.slow
def test_train_sidetrip_and_eval_compile_at_the_real_batch_and_image(r34):
  _, r, _ = r34
  assert r["topology"] == SMALL and r["num_devices"] == 4 and r["num_hosts"] == 1
  assert r["mesh"] == {"data": 4}
  assert r["global_batch_size"] == 512 and r["per_device_batch_size"] == 128
  assert r["config"]["input_shape"] == [224, 224, 3]
  steps = r["steps_compiled"]
  assert {"train", "sidetrip", "eval"} <= set(steps)
  for name in ("train", "sidetrip", "eval"):
    s = steps[name]
    assert s["bytes_per_device"] > 0 and s["flops_per_device"] > 0, (name, s)
    assert s["bytes_per_device"] == (
      s["argument_bytes"] + s["output_bytes"] + s["temp_bytes"] - s["alias_bytes"]
    )
  assert steps["sidetrip"]["kind"] == "equivalent" and steps["sidetrip"]["method"] == "two_point"
  assert steps["train"]["global_batch_size"] == steps["sidetrip"]["global_batch_size"] == 512
  assert steps["eval"]["global_batch_size"] == 1024  # configs/common.py: a power of two
  # The donated state is aliased in the train step: its bytes are counted once.
  assert steps["train"]["alias_bytes"] > 0
  assert r["fits"] is True and r["problems"] == []
  assert r["bytes_per_device"] <= r["hbm_bytes_per_device"] == 16 << 30
  json.dumps(r)  # plain JSON types


@pytest.mark.slow
def test_flops_per_step_match_the_analytic_count(r34):
  _, r, _ = r34
  analytic = 512 * 3 * 2 * R34_MACS  # batch x (fwd + 2 bwd products) x FLOPs/MAC x MACs
  assert r["flops_per_step"] == pytest.approx(analytic, rel=0.3)
  assert r["flops_per_step"] == pytest.approx(r["steps_compiled"]["train"]["flops_per_device"] * 4)
  # The forward pass alone (eval, 1024 images): a third of a train step per image.
  eval_flops = r["steps_compiled"]["eval"]["flops_per_device"] * 4
  assert eval_flops / 1024 == pytest.approx(2 * R34_MACS, rel=0.3)
  # The roofline of XLA's counts on a v5e chip (197 TFLOP/s bf16, 819 GB/s HBM).
  train = r["steps_compiled"]["train"]
  roof = max(train["flops_per_device"] / 197e12, train["bytes_accessed_per_device"] / 819e9)
  assert r["roofline_step_seconds"] == pytest.approx(roof)
  # The derived rates follow from XLA's step time (else the roofline's).
  assert r["rate_basis"] in ("xla", "roofline")
  s = r["estimated_step_seconds"] if r["rate_basis"] == "xla" else roof
  assert s > 0
  assert r["estimated_images_per_second"] == pytest.approx(512 / s)
  assert r["estimated_mfu"] == pytest.approx(r["model_flops_per_step"] / (s * 4 * 197e12))
  assert 0 < r["estimated_mfu"] <= 1
  assert r["estimated_100k_steps_hours"] == pytest.approx(1e5 * s / 3600)


@pytest.mark.slow
def test_compiled_layout_is_the_engines_declared_one(r34):
  import jax
  from jax.sharding import PartitionSpec as P

  from trajax import averaging

  config, r, engine = r34
  train = r["steps_compiled"]["train"]
  assert train["shardings_as_declared"] is True
  got = train["shardings"]
  # mesh.shard_params=False: the engine declares every state leaf replicated.
  assert not config.mesh.shard_params
  declared = engine.shardings
  n_params = len(jax.tree.leaves(declared.params))
  assert all(s.spec == P() for s in jax.tree.leaves(declared))
  assert got["params"] == {"P()": n_params}
  assert got["opt_state"] == {"P()": len(jax.tree.leaves(declared.opt_state))}
  # Two-point averaging keeps one stored tree per parameter, replicated like them.
  (_, avg), *_ = averaging.find_states(declared.opt_state)
  assert got["average"] == {"P()": len(jax.tree.leaves((avg.previous, avg.snapshots)))}
  assert got["average"]["P()"] >= n_params
  # The batch (images and labels) is split over the data axis.
  assert got["batch"] == {"P('data')": 2}


@pytest.mark.slow
def test_a_topology_too_small_for_the_batch_does_not_fit():
  # 8 images over 16 chips (4 hosts): no whole rows per chip. Reported, not raised.
  r = aot.compile_for(_cifar_small(batch_size=8, eval_batch_size=8), "v5e:4x4")
  assert r["fits"] is False
  assert r["num_devices"] == 16 and r["num_hosts"] == 4
  assert "bytes_per_device" not in r["steps_compiled"]["train"]
  assert any("batch_size=8" in p for p in r["problems"])


@pytest.mark.slow
def test_a_topology_too_small_for_the_memory_does_not_fit():
  # The small CIFAR net at 2^20 images per step (2^18 per chip): far over a
  # v5e chip's 16 GiB of HBM. Reported as not fitting, not raised.
  big = 1 << 20
  r = aot.compile_for(_cifar_small(batch_size=big, eval_batch_size=4), SMALL)
  assert r["fits"] is False
  train = r["steps_compiled"]["train"]
  assert train["fits"] is False
  over = train.get("bytes_per_device", 0) > 16 << 30 or "out of HBM" in train.get("error", "")
  assert over, train
  assert any("'train'" in p for p in r["problems"])
  # The eval step at its own small batch still fits.
  assert r["steps_compiled"]["eval"]["fits"] is True
