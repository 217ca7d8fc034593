"""Main runs over several processes on one host: ports, environments, the command line.

Shared by the multi-process tests and the reliability tests that start a
two-process run (``tests/test_multiprocess.py``, ``tests/test_one_writer_per_workdir.py``).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

# The kill tests' cache: a process killed with SIGKILL must not leave a
# half-written entry in the cache the other test files share.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "trajax-reliability-jax-cache")
TOTAL = 300


def free_port() -> int:
  """A TCP port free on this host now (the coordinator's)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(*, devices=1, process=None, num_processes=None, port=None):
  """A CPU process's environment: ``devices`` host devices; process ``process`` of ``num_processes``."""
  env = dict(os.environ)
  env.update(
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
    TF_CPP_MIN_LOG_LEVEL="2",
    XLA_FLAGS=(env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"),
  )
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  if process is not None:
    env.update(
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES=str(num_processes),
      JAX_PROCESS_ID=str(process),
      # Cross-process collectives on CPU (the default in this jax, set
      # explicitly because nothing else works for CPU all-reduces).
      JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
  return env


def command(workdir, data_dir, total=TOTAL):
  """``python -m trajax.main`` on mnist1d at its runlocal size, ``total`` steps."""
  return [
    sys.executable,
    "-m",
    "trajax.main",
    "--config=configs/mnist1d.py:runlocal",
    f"--config.data_dir={data_dir}",
    f"--config.total_steps={total}",
    f"--workdir={workdir}",
  ]
