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
      handler.addFilter(_quiet_filter)
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


def _quiet_filter(record) -> bool:
  return record.levelno >= 30 or not _is_third_party(record.pathname)


_quiet_filter._trajax_quiet = True  # type: ignore[attr-defined]


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
