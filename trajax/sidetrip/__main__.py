"""``python -m trajax.sidetrip``: the side-trip command line (one-line errors, SIGTERM exits 0)."""

from __future__ import annotations

from absl import logging

from trajax import state as state_lib
from trajax.sidetrip import SidetripError, check_step, run_sidetrip
from trajax.sidetrip.spec import define_config_flag, resolve, with_sidetrip, without_sidetrip


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
  flags.DEFINE_string(
    "sidetrip_section",
    None,
    "A JSON file (a local path or gs://...) holding the side-trip section's fields, e.g. "
    "the sidetrip-*.json that trajax.posthoc writes; its fields go over --config's section. "
    "With it --config may be left out: the config is then the parent's stored one.",
  )
  for name in ("parent", "step", "workdir"):
    flags.mark_flag_as_required(name)

  define_config_flag()
  return flags.FLAGS


def _section(path: str) -> dict:
  """The side-trip fields stored in the JSON object at ``path`` (read through trajax.paths)."""
  import json

  from trajax import paths

  try:
    fields = json.loads(paths.read_bytes(paths.check_path(path, "--sidetrip_section")))
  except json.JSONDecodeError as e:
    raise SidetripError(f"--sidetrip_section = {path!r} is not JSON ({e})") from None
  if not isinstance(fields, dict):
    raise SidetripError(
      f"--sidetrip_section = {path!r} must hold a JSON object of side-trip fields"
    )
  return fields


def _parent_config(parent: str, step: int, workdir: str):
  """The parent's training config: the one its lineage recorded when the side-trip has
  checkpoints of its own (a restart needs no parent step), else the one stored at ``step``."""
  from trajax import checkpoint as ckpt_lib
  from trajax import loop, paths
  from trajax.sidetrip.lineage import fresh_parent

  own = paths.join(paths.absolute(workdir), "checkpoints")
  meta = ckpt_lib.newest_good_metadata(own, ckpt_lib.committed_steps(own))
  recorded = ((meta or {}).get("lineage") or {}).get("parent_config")
  if recorded:
    return loop.stored_config({"config": recorded})
  return loop.stored_config(fresh_parent(parent, step)[1])


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
    if FLAGS.sidetrip_section is not None:
      # A section stored as data (posthoc's, possibly in a bucket, where no
      # --config file can be loaded from): over --config's, or the parent's config.
      fields = _section(FLAGS.sidetrip_section)
      if config is None:
        config = _parent_config(FLAGS.parent, check_step(FLAGS.step), FLAGS.workdir)
      given = config.sidetrip.to_dict() if "sidetrip" in config else {}
      config = with_sidetrip(config, **{**given, **fields})
    elif config is None:
      raise SidetripError("--config is required (or --sidetrip_section=FILE.json)")
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
