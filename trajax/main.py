r"""Launch a training run: ``python -m trajax.main --config=configs/X.py --workdir=DIR``.

  python -m trajax.main --config=configs/mnist1d.py --workdir=workdirs/mnist1d
  python -m trajax.main --config=configs/imagenet_resnet34.py:cosine \
      --config.data_dir=DATA --workdir=/mnt/runs/run --jax_distributed

The config is locked, so a misspelt ``--config.field`` is an error (the fields
are those of ``trajax.config.base_config()``; ``--config.<field>=None`` sets a
field where ``None`` means something, e.g. ``checkpoint.max_to_keep``). Running the
same command again resumes from the workdir's latest committed checkpoint
(``--resume=require`` makes "nothing to resume" an error, for restart
scripts). SIGTERM (preemption) saves a checkpoint at the current step and exits
0. One process writes a workdir: a second launch on a busy workdir is refused
naming the holder (``--force_takeover`` overrides a lock whose holder died on
another host; see :mod:`trajax.workdir_lock`). Multi-host: ``--jax_distributed``
or the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; or a TPU/SLURM cluster) calls ``jax.distributed.initialize()``
before anything touches the devices. The console shows one progress line per
log step (step, loss, accuracy, lr, |g|, steps/s, ETA, input wait) and every
warning; third-party INFO logging (Orbax, clu, TensorFlow's C++ notices) is
off unless ``--verbose_libs``.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_RESUME = flags.DEFINE_enum(
  "resume",
  "auto",
  ["auto", "require", "never"],
  "auto: continue if the workdir has a checkpoint; require: error if it has none; "
  "never: error if it has one.",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "jax_distributed",
  False,
  "Call jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set).",
)
_FORCE_TAKEOVER = flags.DEFINE_bool(
  "force_takeover",
  False,
  "Take the workdir's lock even though another process holds it: only for a holder that "
  "is dead on another host (a network-filesystem lock can outlive its host). It overrides "
  "the one-writer-per-workdir guarantee; a live holder and this run would destroy each "
  "other's checkpoints. Refused when the holder is alive on this host.",
)
_VERBOSE_LIBS = flags.DEFINE_bool(
  "verbose_libs",
  False,
  "Show third-party INFO logging (Orbax, clu, TensorFlow notices); off by default, "
  "warnings and errors always show (trajax.metrics.configure_console).",
)
_TRACEBACK = flags.DEFINE_bool(
  "traceback",
  False,
  "On an error, show the full Python traceback (default: one line naming the problem).",
)
flags.mark_flag_as_required("workdir")


def _config_flag():
  from ml_collections import config_flags

  return config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


_CONFIG = _config_flag()
flags.mark_flag_as_required("config")


def _maybe_initialize_distributed():
  import jax

  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not (_DISTRIBUTED.value or address):
    return
  kwargs = {}
  if address:
    kwargs["coordinator_address"] = address
    if "JAX_NUM_PROCESSES" in os.environ:
      kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
      kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from trajax import metrics

  metrics.configure_console(verbose_libs=_VERBOSE_LIBS.value)  # before TensorFlow is imported
  _maybe_initialize_distributed()
  from trajax import config_validation

  # A bad config fails here, in a second, before TensorFlow (or the training
  # engine) is even imported (train_and_evaluate validates again; that is cheap).
  try:
    config_validation.validate(_CONFIG.value)
  except config_validation.ConfigError as e:
    raise SystemExit(f"config error: {e}") from None
  # TensorFlow (tf.data, TFDS, TensorBoard) must not take GPU/TPU memory.
  tf = metrics.import_tensorflow(verbose_libs=_VERBOSE_LIBS.value)

  from trajax import loop

  tf.config.set_visible_devices([], "GPU")

  from trajax import workdir_lock

  if _FORCE_TAKEOVER.value:
    workdir_lock.request_takeover(_WORKDIR.value)
  try:
    workdir = _prepare_workdir(_WORKDIR.value, _RESUME.value)
    result = loop.train_and_evaluate(_CONFIG.value, workdir, resume=_RESUME.value)
  except Exception as e:  # noqa: BLE001 -- every error reaches the user as one line
    if _TRACEBACK.value or _VERBOSE_LIBS.value:
      raise
    raise SystemExit(one_line_error(e)) from None
  if result.preempted:
    logging.info("preempted at step %d; checkpoint committed, exiting 0", result.step)


def _prepare_workdir(workdir: str, resume: str) -> str:
  """The workdir, checked; a fresh start creates its missing parent directories.

  ``--resume=require`` (a restart script) never creates anything: a mistyped
  path is refused by :func:`trajax.host.check_workdir`.
  """
  from trajax import paths

  workdir = paths.check_local_path(workdir, "--workdir")
  parent = os.path.dirname(workdir)
  if resume != "require" and not os.path.exists(parent):
    os.makedirs(parent, exist_ok=True)
    logging.info("created the workdir's parent directory %s", parent)
  return workdir


def one_line_error(e: BaseException) -> str:
  """``error: <what>`` in one line (plus a hint): what a CLI prints instead of a traceback."""
  from trajax import checkpoint, config_validation, paths, state, workdir_lock

  known = (
    config_validation.ConfigError,
    state.ResumeError,
    state.NonFiniteError,
    workdir_lock.WorkdirLockError,
    checkpoint.CheckpointCorruptError,
    paths.PathError,
  )
  kind = "config error" if isinstance(e, config_validation.ConfigError) else "error"
  text = " ".join(str(e).split()) if str(e) else type(e).__name__
  if not isinstance(e, known):
    text = f"{type(e).__name__}: {text}"
  return f"{kind}: {text}\n(rerun with --traceback for the full traceback)"


def check_overrides(argv):
  """Unknown ``--config.<field>`` overrides name the dotted field and the value.

  ml_collections would raise a bare AttributeError deep in flag parsing. The
  known fields are those of ``trajax.config.base_config()``.
  """
  import difflib
  import re
  import sys

  from trajax.config import field_names

  known = field_names()
  sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
  for i, arg in enumerate(argv[1:], 1):
    m = re.match(r"^--config\.([^=]+)(?:=(.*))?$", arg)
    if not m:
      continue
    field, value = m.group(1), m.group(2)
    if value is None:
      value = argv[i + 1] if i + 1 < len(argv) else None
    if field in known or field in sections:
      continue
    close = difflib.get_close_matches(field, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    sys.exit(
      f"config error: {field} = {value!r}: unknown field{hint} (known fields: {list(known)})"
    )


if __name__ == "__main__":
  import sys

  check_overrides(sys.argv)
  app.run(main)
