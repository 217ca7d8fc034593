"""Metric writers: TensorBoard (clu) + ``WORKDIR/metrics.jsonl`` + progress.

``metrics.jsonl`` has one JSON object per write, ``{"step": s, "<name>": v}``,
flushed at once so experiments can read a run while it trains; a resumed run
first drops the lines after its checkpoint (:func:`rewind_jsonl`), so each step
appears at most once per name. A run that starts from step 0 in a workdir that
holds an earlier run's lines never truncates them: the old file is archived
beside it (``metrics.jsonl.<time>.bak``) and a log line says so. Only process 0 writes files; other processes
log only. clu and TensorFlow are imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from absl import logging


def _float(v) -> float | None:
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


class JsonlWriter:
  """Appends scalars as JSON lines (non-finite values are written as null)."""

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    record.update({k: _float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def _not_scalars(self, *args, **kwargs):
    """JSON lines hold scalars only: summaries, images, videos, audio, text,
    histograms and point clouds go to the TensorBoard writer beside it."""
    del args, kwargs

  write_summaries = write_images = write_videos = write_audios = _not_scalars
  write_texts = write_histograms = write_pointcloud = _not_scalars

  def write_hparams(self, hparams: Mapping[str, Any]):
    record = {"step": 0, "hparams": {k: v for k, v in hparams.items()}}
    self._file.write(json.dumps(record, default=str) + "\n")
    self._file.flush()

  def flush(self):
    self._file.flush()

  def close(self):
    if not self._file.closed:
      self._file.close()


def rewind_jsonl(path: str, last_step: int | None) -> str | None:
  """Prepares a JSON-lines log for a run that continues after ``last_step``.

  A resume (``last_step >= 0``) drops the lines with ``step > last_step``:
  the resumed run writes those steps again, bit-identically (a line cut by a
  kill is dropped too); one log line gives the count. A fresh start
  (``last_step`` None or < 0: nothing of the old run continues) never
  empties the file: it is renamed to ``<path>.<time>.bak`` beside it and the
  new run starts a new file.

  Returns:
    The archive's path, or None when nothing was archived.
  """
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return None
  if last_step is None or last_step < 0:
    archive = f"{path}.{time.strftime('%Y%m%dT%H%M%S')}.bak"
    n = 0
    while os.path.exists(archive):  # two restarts in one second
      n += 1
      archive = f"{path}.{time.strftime('%Y%m%dT%H%M%S')}-{n}.bak"
    os.replace(path, archive)
    logging.warning(
      "%s held lines of an earlier run and this run starts from step 0: archived it to %s",
      path,
      archive,
    )
    return archive
  keep, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a kill
        dropped += 1
        continue
      if record.get("step", 0) <= last_step:
        keep.append(line)
      else:
        dropped += 1
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
    logging.info(
      "%s: dropped %d line(s) after step %d (the resumed run writes them again)",
      path,
      dropped,
      last_step,
    )
  return None


def read_jsonl(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` (for experiments and tests)."""
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        out.append(json.loads(line))
  return out


def create_writer(workdir: str, *, process_index: int = 0):
  """clu ``MultiWriter``: TensorBoard + logging + JSON lines (process 0 only)."""
  from clu import metric_writers

  if process_index != 0:
    return metric_writers.LoggingWriter()
  tb = metric_writers.create_default_writer(workdir, asynchronous=True)
  return metric_writers.MultiWriter([tb, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def progress_reporter(total_steps: int, writer, every_steps: int):
  """clu ``ReportProgress`` (steps/s, ETA): call ``reporter(step)`` every step.

  It only reads the clock between its reports, so it adds no device sync.
  """
  from clu import periodic_actions

  return periodic_actions.ReportProgress(
    num_train_steps=total_steps, writer=writer, every_steps=every_steps
  )
