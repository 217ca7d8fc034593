"""8 simulated CPU devices vs 1: same parameters, state really sharded, checkpoints portable.

``--xla_force_host_platform_device_count`` must be set before JAX initialises,
so the checks run in a fresh interpreter; it prints one JSON line that the
test asserts on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    sys.path[:0] = [os.path.join(REPO, "tests"), REPO]
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from tests.small_training import FakeDataset, small_config
    from trajax import averaging, loop, models, train
    from trajax import checkpoint as ckpt_lib

    out = {"devices": jax.device_count()}
    c1 = small_config(**{"averaging.method": "ema", "averaging.decay": 0.1,
                         "optimizer.weight_decay": 1e-3})
    c8 = small_config(**{"averaging.method": "ema", "averaging.decay": 0.1,
                         "optimizer.weight_decay": 1e-3, "mesh.shard_params": True})
    model = models.create_model(c1.model, num_classes=10)
    data = FakeDataset(batch_size=32)
    runs = {}
    for name, cfg, devs in (("one", c1, jax.devices()[:1]), ("eight", c8, jax.devices())):
        mesh = Mesh(np.asarray(devs), ("data",))
        state, shardings = train.create_train_state(cfg, model, (40, 1), mesh)
        step = train.make_train_step(cfg, model, mesh, shardings)
        bsh = train.batch_sharding(mesh)
        for i in range(8):
            batch = {k: jax.device_put(v, bsh) for k, v in data.batch(i).items()}
            state, metrics = step(state, batch)
        runs[name] = state
        if name == "eight":
            out["batch_shard_rows"] = int(batch["image"].addressable_shards[0].data.shape[0])
            kernel = state.params["Conv_1"]["kernel"]
            out["kernel_shape"] = list(kernel.shape)
            out["kernel_shard_shape"] = list(kernel.addressable_shards[0].data.shape)
            out["kernel_devices"] = len(kernel.sharding.device_set)
            mom = state.opt_state.inner_state
            leaves = [x for x in jax.tree.leaves(state) if x.ndim > 0]
            out["sharded_leaves"] = sum(
                x.addressable_shards[0].data.size < x.size for x in leaves)
            out["leaves"] = len(leaves)
    a, b = jax.device_get(runs["one"]), jax.device_get(runs["eight"])
    diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))]
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a.params))
    out["max_param_diff"] = max(diffs)
    out["param_scale"] = scale
    avg_a = averaging.averaged_params(a.opt_state, a.params)
    avg_b = averaging.averaged_params(b.opt_state, b.params)
    out["max_avg_diff"] = max(float(np.max(np.abs(x - y)))
                              for x, y in zip(jax.tree.leaves(avg_a), jax.tree.leaves(avg_b)))
    out["max_bn_diff"] = max(float(np.max(np.abs(x - y))) for x, y in
                             zip(jax.tree.leaves(a.batch_stats), jax.tree.leaves(b.batch_stats)))
    out["steps"] = [int(a.step), int(b.step)]

    # A full run on 8 devices, its checkpoint restored onto one device.
    workdir = os.path.join(TMP, "run8")
    res = loop.train_and_evaluate(c8, workdir, dataset=FakeDataset(batch_size=32))
    mesh1 = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    target, _ = train.create_train_state(c1, model, (40, 1), mesh1)
    restored, meta = ckpt_lib.restore_readonly(workdir, target=target)
    out["restored_device_count"] = len(restored.params["Conv_1"]["kernel"].sharding.device_set)
    out["restore_max_diff"] = max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(jax.device_get(res.state)),
                        jax.tree.leaves(jax.device_get(restored))))
    out["meta_device_count"] = meta["device_count"]

    # An unchanged side-trip from step 20 on 8 devices (FSDP-sharded state)
    # reproduces the parent's final checkpoint bit for bit, through the loop.
    from trajax import sidetrip
    trip = sidetrip.run_sidetrip(sidetrip.with_sidetrip(c8, kind="schedule"), workdir, 20,
                                 os.path.join(TMP, "trip8"), dataset=FakeDataset(batch_size=32))
    want, _ = ckpt_lib.restore_readonly(workdir, step=40)
    got, _ = ckpt_lib.restore_readonly(os.path.join(TMP, "trip8"), step=40)
    out["sidetrip_resumed_from"] = trip.resumed_from
    out["sidetrip_leaves"] = len(jax.tree.leaves(want))
    out["sidetrip_identical_leaves"] = sum(
        bool(np.array_equal(np.asarray(x), np.asarray(y)))
        for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    out["sidetrip_kernel_devices"] = len(
        trip.state.params["Conv_1"]["kernel"].sharding.device_set)
    print("RESULT " + json.dumps(out))
""")


def test_eight_devices_match_one_and_state_is_sharded():
  with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault(
      "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "trajax-test-jax-cache")
    )
    code = f"REPO = {REPO!r}\nTMP = {tmp!r}\n" + SCRIPT
    proc = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])

  assert out["devices"] == 8
  assert out["steps"] == [8, 8]
  # Same maths on 1 and 8 devices (global-batch BatchNorm, all-reduced gradients);
  # only the summation order differs.
  assert out["max_param_diff"] <= 1e-5 * max(out["param_scale"], 1.0), out
  assert out["max_avg_diff"] <= 1e-5 * max(out["param_scale"], 1.0), out
  assert out["max_bn_diff"] <= 1e-4, out
  # The batch is split 32 -> 8 × 4 and the FSDP rule shards kernels over the 8 devices.
  assert out["batch_shard_rows"] == 4
  assert out["kernel_devices"] == 8
  assert out["kernel_shard_shape"] != out["kernel_shape"]
  assert out["sharded_leaves"] >= out["leaves"] // 2, out
  # An 8-device checkpoint restores exactly onto one device.
  assert out["meta_device_count"] == 8
  assert out["restored_device_count"] == 1
  assert out["restore_max_diff"] == 0.0
  # The unchanged side-trip equals the parent bit for bit on 8 devices too.
  assert out["sidetrip_resumed_from"] == "parent:20"
  assert out["sidetrip_kernel_devices"] == 8
  assert out["sidetrip_identical_leaves"] == out["sidetrip_leaves"] > 0, out
