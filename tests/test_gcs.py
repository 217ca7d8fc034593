"""``gs://`` runs against a real bucket API: a GCS emulator on localhost (issue 20, item 7).

The emulator is the pure-Python ``gcp-storage-emulator`` (dev extra). Orbax's
own path layer reaches it: etils ``epath`` with ``EPATH_USE_TF=false`` (fsspec
and ``gcsfs``, which honour ``STORAGE_EMULATOR_HOST``) for files, and
TensorStore's GCS driver (``TENSORSTORE_GCS_HTTP_URL``) for the arrays. With
TensorFlow installed ``epath`` defaults to ``tf.io.gfile``, whose GCS client
always dials ``www.googleapis.com`` and has no emulator setting: that is why
these tests (and anyone pointing trajax at an emulator) set
``EPATH_USE_TF=false``.

What works on ``gs://`` today and is tested here: reading a run there --
``trajax.verify`` lists and checks every committed step (metadata digest,
array digests) and names a damaged one. Writing (``trajax.main``,
``trajax.sidetrip``) to a bucket is refused in one line that says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests import workdir_checks as wc

REPO = wc.REPO
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "trajax-gcs-jax-cache")
BUCKET = "trajax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """``(env, fs)``: the environment that points epath/TensorStore at it, a gcsfs client."""
  port = _free_port()
  url = f"http://localhost:{port}"
  exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
  log = open(tmp_path_factory.mktemp("emulator") / "log", "wb")
  proc = subprocess.Popen(
    [exe, "start", "--host=localhost", f"--port={port}", "--in-memory"],
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        socket.create_connection(("localhost", port), timeout=1).close()
        break
      except OSError:
        assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
        time.sleep(0.2)
    env = {
      # gcsfs >= 2025.9 first asks the (gRPC) storage-control API whether the
      # bucket is zonal, which the emulator does not serve: a 60 s timeout per bucket.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "EPATH_USE_TF": "false",
      "GOOGLE_CLOUD_PROJECT": "test",
    }
    os.environ.update(env)  # this process's gcsfs client too (read when it is imported)
    import gcsfs  # dev extra, with gcp-storage-emulator

    fs = gcsfs.GCSFileSystem(endpoint_url=url, token="anon", project="test")
    fs.mkdir(BUCKET)
    yield env, fs
  finally:
    proc.kill()
    proc.wait()
    log.close()


def _cli(module, args, env_extra, timeout=420):
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=wc.subprocess_env(CACHE_DIR, **env_extra),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run") / "run")
  data = str(tmp_path_factory.mktemp("data"))
  proc = _cli(
    "trajax.main",
    [
      "--config=configs/mnist1d.py:runlocal",
      "--config.total_steps=40",
      "--config.checkpoint_every_steps=20",
      "--config.averaging.gap=20",
      f"--config.data_dir={data}",
      f"--workdir={workdir}",
    ],
    {},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _upload(fs, local, name) -> str:
  fs.put(os.path.join(local, "checkpoints"), f"{BUCKET}/{name}/checkpoints", recursive=True)
  return f"gs://{BUCKET}/{name}"


def test_verify_reads_a_run_in_a_bucket_and_names_damaged_metadata(emulator, local_run, tmp_path):
  env, fs = emulator
  url = _upload(fs, local_run, "good")
  proc = _cli("trajax.verify", [url], env)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert f"{url}/checkpoints: 2 committed checkpoint(s)" in proc.stdout
  assert proc.stdout.rstrip().endswith("OK")

  # The same run with one digit of step 40's stored config changed.
  bad = str(tmp_path / "bad")
  shutil.copytree(local_run, bad)
  meta = os.path.join(bad, "checkpoints", "40", "meta", "metadata")
  text = open(meta).read()
  assert text.count('"lr": 0.05') == 1
  open(meta, "w").write(text.replace('"lr": 0.05', '"lr": 0.07'))
  url = _upload(fs, bad, "bad")
  proc = _cli("trajax.verify", [url], env)
  assert proc.returncode == 1, proc.stdout[-2000:]
  assert "ERROR step 40: metadata digest mismatch" in proc.stdout
  assert "ERROR step 20" not in proc.stdout


@pytest.mark.parametrize("module", ["trajax.main", "trajax.sidetrip"])
def test_writing_to_a_bucket_is_refused_in_one_line(emulator, local_run, module):
  env, fs = emulator
  args = ["--config=configs/mnist1d.py:runlocal", f"--workdir=gs://{BUCKET}/new"]
  if module == "trajax.sidetrip":
    args += [f"--parent={local_run}", "--step=20"]
  proc = _cli(module, args, env)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  (line,) = [x for x in proc.stderr.splitlines() if "object store" in x]
  assert f"gs://{BUCKET}/new" in line
  assert not fs.exists(f"{BUCKET}/new")


def test_open_run_reads_a_bucket_bit_for_bit(emulator, local_run):
  """What post-hoc averaging and the experiments read (trajax.runs) works on gs:// too.

  In a fresh process, as a user's would be: epath and gcsfs read the
  emulator's settings when first imported, which an earlier test of this
  session may already have done with the defaults.
  """
  env, fs = emulator
  url = _upload(fs, local_run, "read")
  code = (
    "import sys\n"
    "import numpy as np\n"
    "from tests.workdir_checks import leaves\n"
    "from trajax import runs\n"
    "remote, local = runs.open_run(sys.argv[1]), runs.open_run(sys.argv[2])\n"
    "assert remote.steps == local.steps == [20, 40], (remote.steps, local.steps)\n"
    "assert remote.meta(40) == local.meta(40)\n"
    "got, want = leaves(remote.state_at(40)), leaves(local.state_at(40))\n"
    "assert got.keys() == want.keys()\n"
    "for name in want:\n"
    "  assert got[name].dtype == want[name].dtype, name\n"
    "  assert np.array_equal(got[name], want[name]), name\n"
    "print('bit-identical leaves:', len(want))\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, url, local_run],
    cwd=REPO,
    env=wc.subprocess_env(CACHE_DIR, **env),
    capture_output=True,
    text=True,
    timeout=420,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bit-identical leaves:" in proc.stdout
