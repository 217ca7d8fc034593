"""Host-side pieces of a run: input prefetch, the preemption flag, metrics files, workdir checks.

Used by :func:`trajax.loop.fit` (and ``bench/``); no device computation here.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from trajax import state as state_lib

__all__ = ["Prefetch", "any_process", "check_workdir", "summarize", "truncate_jsonl"]


class Prefetch:
  """Yields ``(host_batch, device_batch)``; ``wait_s`` is the time the loop spent in it.

  ``threads=0`` (default): the next batch is built and transferred right after
  the previous step was dispatched, so it overlaps the (asynchronous) device
  step; the loop blocks only for host time that exceeds the step time.
  ``threads=1``: a background thread keeps ``size`` batches ready -- better
  when a batch takes longer to build than a step, but on few CPU cores the
  GIL hand-off costs more than it saves (``bench/bench_train.py`` measures both).
  """

  _END = object()

  def __init__(self, it: Iterator[dict], sharding, *, threads: int = 0, size: int = 2):
    self._it, self._sharding = it, sharding
    self.wait_s = 0.0
    self._thread = None
    if threads:
      self._q: queue.Queue = queue.Queue(maxsize=size)
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._run, daemon=True)
      self._thread.start()

  def _make(self, batch):
    return batch, state_lib.global_batch(batch, self._sharding)

  def _run(self):
    try:
      for batch in self._it:
        item = self._make(batch)
        while not self._stop.is_set():
          try:
            self._q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._q.put(self._END)
    except BaseException as e:  # re-raised in the consumer
      self._q.put(e)

  def __iter__(self):
    return self

  def __next__(self):
    t = time.perf_counter()
    try:
      if self._thread is None:
        return self._make(next(self._it))
      item = self._q.get()
      if item is self._END:
        raise StopIteration
      if isinstance(item, BaseException):
        raise item
      return item
    finally:
      self.wait_s += time.perf_counter() - t

  def close(self):
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._q.get(timeout=0.1)
      except queue.Empty:
        pass


class StopFlag:
  """SIGTERM -> flag; the loop saves a checkpoint at the current step and returns.

  Orbax's own preemption save needs ``jax.distributed``; this works on a
  single process too. The previous handler is restored on ``close``.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint at the current step, then exiting")
    self.requested = True

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def truncate_jsonl(path: str, last_step: int | None):
  """Drops lines with ``step > last_step``; a fresh start archives the old file.

  See :func:`trajax.metrics.rewind_jsonl`: an existing log is never emptied.
  """
  from trajax import metrics

  metrics.rewind_jsonl(path, last_step)


def summarize(window: list[dict]) -> dict[str, float]:
  """Means over the applied steps of a log window (``lr`` over all)."""
  ok = np.array([m["ok"] for m in window])
  out = {"train/lr": float(np.mean([m["lr"] for m in window]))}
  if ok.sum() > 0:
    for k in ("loss", "accuracy", "grad_norm"):
      vals = np.array([m[k] for m in window])
      out[f"train/{k}"] = float(np.sum(np.where(ok > 0, vals, 0.0)) / ok.sum())
  return out


def check_workdir(workdir) -> str:
  """The absolute workdir; refuses a missing parent directory or a checkpoints directory.

  An object-store workdir (``gs://bucket/run``, :func:`trajax.paths.check_path`)
  has no parent directory to check: its bucket must exist.
  """
  from trajax import checkpoint as ckpt_lib
  from trajax import paths

  if not workdir:
    raise state_lib.ResumeError(f"workdir must be a directory path, got {workdir!r}")
  remote = paths.is_remote(workdir)
  workdir = paths.absolute(workdir)
  parent = paths.dirname(workdir)
  if remote:
    try:
      paths.makedirs(workdir)  # creates nothing: the bucket must exist
    except paths.PathError as e:
      raise state_lib.ResumeError(str(e)) from None
  elif not os.path.isdir(parent):
    raise state_lib.ResumeError(
      f"workdir {workdir!r}: parent directory {parent!r} does not exist "
      "(create it first; a mistyped path must not start a fresh run)"
    )
  if paths.isfile(workdir) if remote else os.path.exists(workdir) and not os.path.isdir(workdir):
    raise state_lib.ResumeError(f"workdir {workdir!r} exists and is not a directory")
  for inner in (workdir, parent):
    # A run's checkpoints/ (or one of its step folders) given as the workdir
    # would start a fresh run inside the committed checkpoints.
    if paths.basename(inner) == "checkpoints" or ckpt_lib.committed_steps(inner):
      raise state_lib.ResumeError(
        f"workdir {workdir!r} lies in a checkpoints directory ({inner!r}); pass the run's "
        "WORKDIR (the directory that holds checkpoints/), not its checkpoints"
      )
  return workdir
