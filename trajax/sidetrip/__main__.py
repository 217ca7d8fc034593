"""``python -m trajax.sidetrip``: the side-trip command line (one-line errors, SIGTERM exits 0)."""

from __future__ import annotations

from absl import logging

from trajax import state as state_lib
from trajax.sidetrip import SidetripError, check_step, run_sidetrip
from trajax.sidetrip.spec import define_config_flag, resolve, without_sidetrip


def _define_flags():
  from absl import flags

  flags.DEFINE_string("parent", None, "The parent run's WORKDIR (or WORKDIR/checkpoints).")
  flags.DEFINE_integer("step", None, "A committed step of the parent to branch off.")
  flags.DEFINE_string(
    "workdir", None, "The side-trip's own directory (a local path or gs://BUCKET/NAME)."
  )
  flags.DEFINE_bool(
    "parent_moved",
    False,
    "Restart: the parent now lives at --parent (accepted once its config matches the one "
    "recorded in the side-trip's lineage).",
  )
  flags.DEFINE_bool(
    "verbose_libs",
    False,
    "Show third-party INFO logging (Orbax, clu, TensorFlow notices); off by default, "
    "warnings and errors always show (trajax.metrics.configure_console).",
  )
  flags.DEFINE_bool(
    "force_takeover",
    False,
    "Take the side-trip workdir's lock even though another process holds it: only for a "
    "holder that is dead on another host (a network-filesystem lock can outlive its host). "
    "It overrides the one-writer-per-workdir guarantee; a live holder and this run would "
    "destroy each other's checkpoints. Refused when the holder is alive on this host. "
    "(The parent is only read and never locked.)",
  )
  flags.DEFINE_bool(
    "traceback",
    False,
    "On an error, show the full Python traceback (default: one line naming the problem).",
  )
  for name in ("parent", "step", "workdir"):
    flags.mark_flag_as_required(name)

  define_config_flag()
  flags.mark_flag_as_required("config")
  return flags.FLAGS


def _main(argv):
  from absl import app, flags

  from trajax import checkpoint, paths, workdir_lock
  from trajax import config_validation as cv

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  from trajax import metrics

  metrics.configure_console(verbose_libs=FLAGS.verbose_libs)
  # TensorFlow comes in anyway (TensorBoard writer, tf.data): import it now,
  # with its native INFO notices dropped unless --verbose_libs.
  metrics.import_tensorflow(verbose_libs=FLAGS.verbose_libs)
  config = FLAGS.config
  try:
    # A path it would not write to (a backslash, a bucket) fails first.
    paths.check_path(FLAGS.workdir, "--workdir")
    # Bad configs fail here, in about a second, before TensorFlow is imported.
    cv.validate(without_sidetrip(config))
    resolve(config, check_step(FLAGS.step))
    if config.dataset.name in cv.TFDS_DATASETS:
      import tensorflow as tf  # tf.data must not take accelerator memory

      tf.config.set_visible_devices([], "GPU")
    if FLAGS.force_takeover:
      workdir_lock.request_takeover(FLAGS.workdir)
    result = run_sidetrip(
      config, FLAGS.parent, FLAGS.step, FLAGS.workdir, parent_moved=FLAGS.parent_moved
    )
  except cv.ConfigError as e:
    if FLAGS.traceback:
      raise
    raise SystemExit(f"config error: {' '.join(str(e).split())}") from None
  except (
    FileNotFoundError,
    SidetripError,
    paths.PathError,
    state_lib.ResumeError,
    state_lib.NonFiniteError,
    workdir_lock.WorkdirLockError,
    checkpoint.CheckpointCorruptError,
  ) as e:
    if FLAGS.traceback:
      raise
    raise SystemExit(f"side-trip error: {' '.join(str(e).split())}") from None
  except Exception as e:  # noqa: BLE001 -- every error reaches the user as one line
    if FLAGS.traceback or FLAGS.verbose_libs:
      raise
    raise SystemExit(
      f"side-trip error: {type(e).__name__}: {' '.join(str(e).split())}\n"
      "(rerun with --traceback for the full traceback)"
    ) from None
  if result.preempted:
    logging.info("preempted at step %d; checkpoint committed, exiting 0", result.step)
    return
  last = result.evals.get(result.sidetrip_steps, {})
  logging.info(
    "side-trip done at step %d (%d steps from %d): %s; timings %s",
    result.step,
    result.sidetrip_steps,
    result.parent_step,
    last,
    result.timings,
  )


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(_main)
