"""Metric writers: TensorBoard (clu) + ``WORKDIR/metrics.jsonl`` + progress.

``metrics.jsonl`` has one JSON object per write, ``{"step": s, "<name>": v}``,
flushed at once so experiments can read a run while it trains; a resumed run
first drops the lines after its checkpoint (:func:`rewind_jsonl`), so each step
appears at most once per name. A run that starts from step 0 in a workdir that
holds an earlier run's lines never truncates them: the old file is archived
beside it (``metrics.jsonl.<time>.bak``) and a log line says so. Only process 0 writes files; other processes
log only. clu and TensorFlow are imported inside the functions.

In an object store (``gs://``) every file goes through :mod:`trajax.paths`
(etils ``epath``): ``metrics.jsonl`` is rewritten whole at most every 30 s
and at every checkpoint (:class:`trajax.paths.Appender`: objects cannot be
appended to), and TensorBoard's event file is written by
:class:`EventFileWriter` -- TensorBoard's own record format and protos, through
the same path layer -- instead of ``tf.summary``, whose GCS client has no
setting for another endpoint (so a GCS emulator could not test it).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from absl import logging

# --- the console -----------------------------------------------------------------------

VERBOSE_LIBS_HELP = (
  "Show third-party INFO logging (Orbax, clu, TensorFlow's C++ notices such as oneDNN). "
  "Off by default: the console shows trajax's own lines (one progress line per log step) "
  "and every library's warnings and errors."
)


def _trajax_dir() -> str:
  return os.path.dirname(os.path.abspath(__file__))


def _is_third_party(path: str) -> bool:
  path = os.path.abspath(path or "")
  if path.startswith(_trajax_dir() + os.sep):
    return False
  parts = path.split(os.sep)
  return "site-packages" in parts or "dist-packages" in parts


def configure_console(verbose_libs: bool = False) -> None:
  """Third-party INFO off (default) or on; call before TensorFlow is imported.

  Quiet (``verbose_libs=False``): records below WARNING whose source file lies
  in an installed package (``site-packages``/``dist-packages``, trajax itself
  excepted) are dropped from the console handlers -- Orbax's per-save INFO
  lines, clu's per-write logging of every scalar and its progress notes --
  and ``TF_CPP_MIN_LOG_LEVEL`` defaults to 1 (TensorFlow's C++ INFO notices
  such as oneDNN's; its warnings and errors stay). trajax's own INFO lines,
  and WARNING and above from anyone, always show. The metrics files are
  written by writers, not by logging, and do not change. Idempotent.
  """
  import logging as std_logging

  from absl import logging as absl_logging

  handlers = [absl_logging.get_absl_handler(), *std_logging.getLogger().handlers]
  for handler in {id(h): h for h in handlers}.values():
    for f in [f for f in handler.filters if getattr(f, "_trajax_quiet", False)]:
      handler.removeFilter(f)
    if not verbose_libs:
      handler.addFilter(quiet_filter)
  if verbose_libs:
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "1" and _SET_TF_LEVEL[0]:
      del os.environ["TF_CPP_MIN_LOG_LEVEL"]
    _SET_TF_LEVEL[0] = False
  elif "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    _SET_TF_LEVEL[0] = True


_SET_TF_LEVEL = [False]
# TensorFlow's native INFO lines ("I0000 00:00:... port.cc:153] oneDNN custom
# operations are on ...") and absl's pre-initialisation banner. TensorFlow
# 2.21 logs these through absl C++ logging, which TF_CPP_MIN_LOG_LEVEL does
# not reach, so they are filtered out of what the import writes to stderr.
_NATIVE_INFO = re.compile(r"^I\d{4} |^WARNING: All log messages before absl::InitializeLog\(\)")


def import_tensorflow(verbose_libs: bool = False):
  """``import tensorflow``; unless ``verbose_libs``, its native INFO notices are dropped.

  The file descriptor 2 is captured while the import runs (the notices come
  from C++), and every captured line that is not an INFO line (``I....``) or
  absl's "before InitializeLog" banner -- warnings (``W....``), errors
  (``E....``), anything else -- is written back to stderr.
  """
  import sys

  if verbose_libs or "tensorflow" in sys.modules:
    import tensorflow as tf

    return tf
  import tempfile

  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      import tensorflow as tf
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
        if not _NATIVE_INFO.match(line):
          sys.stderr.write(line)
      sys.stderr.flush()
  return tf


def quiet_filter(record) -> bool:
  """The console filter of ``configure_console(verbose_libs=False)``: warnings, or our own records."""
  return record.levelno >= 30 or not _is_third_party(record.pathname)


quiet_filter._trajax_quiet = True  # type: ignore[attr-defined]


def _float(v) -> float | None:
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


class JsonlWriter:
  """Appends scalars as JSON lines (non-finite values are written as null)."""

  def __init__(self, path: str):
    from trajax import paths

    self.path = path
    self._file = paths.Appender(path)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    record.update({k: _float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")

  def _not_scalars(self, *args, **kwargs):
    """JSON lines hold scalars only: summaries, images, videos, audio, text,
    histograms and point clouds go to the TensorBoard writer beside it."""
    del args, kwargs

  write_summaries = write_images = write_videos = write_audios = _not_scalars
  write_texts = write_histograms = write_pointcloud = _not_scalars

  def write_hparams(self, hparams: Mapping[str, Any]):
    record = {"step": 0, "hparams": {k: v for k, v in hparams.items()}}
    self._file.write(json.dumps(record, default=str) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class EventFileWriter:
  """TensorBoard scalars in an event file under ``logdir``, through :mod:`trajax.paths`.

  What ``tf.summary`` writes for a scalar (an ``Event`` holding a
  ``Summary.Value`` with ``simple_value``, framed as TFRecords), written with
  TensorBoard's own protos and record writer onto a
  :class:`trajax.paths.Appender`, so it reaches any path ``epath`` reaches.
  Used for object-store workdirs; local ones keep clu's writer.
  """

  def __init__(self, logdir: str):
    import socket

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    from trajax import paths

    self._pb = event_pb2
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.trajax"
    self.path = paths.join(logdir, name)
    self._records = RecordWriter(paths.Appender(self.path, binary=True))
    self._event(file_version="brain.Event:2")

  def _event(self, **fields):
    event = self._pb.Event(wall_time=time.time(), **fields)
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    from tensorboard.compat.proto import summary_pb2

    values = [
      summary_pb2.Summary.Value(tag=k, simple_value=float(v))
      for k, v in scalars.items()
      if _float(v) is not None
    ]
    self._event(step=int(step), summary=summary_pb2.Summary(value=values))

  def _not_scalars(self, *args, **kwargs):
    """Scalars only (what a run writes); hyperparameters are in ``metrics.jsonl``."""
    del args, kwargs

  write_summaries = write_images = write_videos = write_audios = _not_scalars
  write_texts = write_histograms = write_pointcloud = write_hparams = _not_scalars

  def flush(self):
    self._records.flush()

  def close(self):
    self._records.close()


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
  from trajax import paths

  if not paths.isfile(path) or not paths.read_bytes(path):
    return None
  if last_step is None or last_step < 0:
    archive = f"{path}.{time.strftime('%Y%m%dT%H%M%S')}.bak"
    n = 0
    while paths.exists(archive):  # two restarts in one second
      n += 1
      archive = f"{path}.{time.strftime('%Y%m%dT%H%M%S')}-{n}.bak"
    if paths.is_remote(path):
      paths.write_bytes(archive, paths.read_bytes(path))  # an object store: copy, delete
      paths.remove(path)
    else:
      os.replace(path, archive)
    logging.warning(
      "%s held lines of an earlier run and this run starts from step 0: archived it to %s",
      path,
      archive,
    )
    return archive
  keep, dropped = [], 0
  for line in paths.read_bytes(path).decode(errors="replace").splitlines(keepends=True):
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
    paths.write_bytes(path, "".join(keep).encode())
    logging.info(
      "%s: dropped %d line(s) after step %d (the resumed run writes them again)",
      path,
      dropped,
      last_step,
    )
  return None


def read_jsonl(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` (for experiments and tests)."""
  from trajax import paths

  lines = paths.read_bytes(path).decode().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


def create_writer(workdir: str, *, process_index: int = 0):
  """clu ``MultiWriter``: TensorBoard + logging + JSON lines (process 0 only)."""
  from clu import metric_writers

  from trajax import paths

  if process_index != 0:
    return metric_writers.LoggingWriter()
  jsonl = JsonlWriter(paths.join(workdir, "metrics.jsonl"))
  if paths.is_remote(workdir):
    return metric_writers.MultiWriter(
      [metric_writers.LoggingWriter(), EventFileWriter(workdir), jsonl]
    )
  tb = metric_writers.create_default_writer(workdir, asynchronous=True)
  return metric_writers.MultiWriter([tb, jsonl])


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(step: int, end: int, summary: Mapping[str, float], steps_per_s: float) -> str:
  """The console's one line per log step: step, loss, accuracy, lr, |g|, rate, ETA, input wait.

  ``summary`` holds the ``train/*`` means of the log window (``host.summarize``
  plus ``train/input_wait_fraction``); ETA = (end − step) / rate.
  """
  eta = (end - step) / steps_per_s if steps_per_s > 0 else math.inf
  return (
    f"step {step}/{end}  loss {summary.get('train/loss', math.nan):.4f}  "
    f"acc {summary.get('train/accuracy', math.nan):.3f}  "
    f"lr {summary.get('train/lr', math.nan):.4g}  |g| {summary.get('train/grad_norm', math.nan):.3g}  "
    f"{steps_per_s:.1f} steps/s  ETA {_duration(eta)}  "
    f"input wait {100 * summary.get('train/input_wait_fraction', math.nan):.1f}%"
  )


def progress_reporter(total_steps: int, writer, every_steps: int):
  """clu ``ReportProgress`` (steps/s, ETA): call ``reporter(step)`` every step.

  It only reads the clock between its reports, so it adds no device sync.
  """
  from clu import periodic_actions

  return periodic_actions.ReportProgress(
    num_train_steps=total_steps, writer=writer, every_steps=every_steps
  )
