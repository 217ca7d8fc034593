"""Shared defaults: every config in ``configs/`` starts from :func:`base_config`.

Configs only override values, never add fields, so one command-line override
(``--config.optimizer.lr=0.1``) means the same thing for every config, and
``trajax.config_validation`` knows every field. The field list is the contract
in ``docs/architecture.md``.

A config file's ``get_config(arg)`` receives the text after ``:`` in
``--config=configs/x.py:arg``; :func:`parse_arg` reads it as comma-separated
``key=value`` pairs or bare words (``cosine,runlocal``).
"""

from __future__ import annotations


def base_config():
  """The full field set with neutral defaults (a config sets the rest)."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  # TFDS data root; required (and must exist) for TFDS datasets so that a
  # training run never downloads or silently reads ~/tensorflow_datasets.
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Append one "step fingerprint" line per training batch to
  # WORKDIR/batch_fingerprints.jsonl (reliability tests; costs a hash per step).
  c.log_batch_fingerprints = False

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist1d"
  c.dataset.label_noise = 0.0
  c.dataset.num_train = 40_000
  c.dataset.augment = False

  c.model = ml_collections.ConfigDict()
  c.model.name = "cnn1d"
  c.model.width = 64
  c.model.dtype = "float32"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.step_boundaries = ()
  c.optimizer.step_factor = 0.1

  c.averaging = ml_collections.ConfigDict()
  c.averaging.method = "none"
  c.averaging.decay = 0.001
  c.averaging.start_step = 0
  c.averaging.every = 1
  c.averaging.gap = 1000
  c.averaging.n = 2
  c.averaging.debias = False
  # BatchNorm statistics for the averaged params. 'recompute' (default): a
  # cumulative pass over `bn_recompute_batches` fixed training batches, as
  # torch.optim.swa_utils.update_bn does -- BN statistics of averaged weights
  # are not the average of the statistics. 'average': the running statistics
  # are averaged with the same Averager as the params (free, approximate).
  c.averaging.batch_norm = "recompute"
  c.averaging.bn_recompute_batches = 20

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 3
  c.checkpoint.keep_period = ml_collections.FieldReference(None, field_type=int)
  c.checkpoint.async_save = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis; -1 = all
  # Shard params/optimizer state over the data axis (ZeRO-3/FSDP style: each
  # leaf's largest dimension divisible by the axis size); off = replicated.
  c.mesh.shard_params = False

  c.nonfinite = ml_collections.ConfigDict()
  # False: the first non-finite loss/grad/BN statistic freezes the state and
  # the run stops at the next log or checkpoint boundary with an error.
  # True: such steps are no-ops (params, optimizer and averaging state do not
  # move); more than `max_consecutive_skips` in a row stops the run.
  c.nonfinite.skip = False
  c.nonfinite.max_consecutive_skips = 10
  return c


def parse_arg(arg: str | None, **defaults) -> dict:
  """``'cosine,steps=200'`` -> ``{'cosine': True, 'steps': '200'}`` over ``defaults``.

  Values are converted to the type of the default where one is given.
  Unknown keys are an error naming the key and the allowed ones.
  """
  out = dict(defaults)
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    key, sep, value = part.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} unknown; allowed: {sorted(defaults)}")
    if not sep:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif defaults[key] is not None:
      out[key] = type(defaults[key])(value)
    else:
      out[key] = value
  return out


def paper_resnet_config(arg: str | None, *, dataset: str, model: str, weight_decay: float):
  """The paper's real-data setup (Sec. 3, 5): SGD momentum 0.9, batch 512, 100k steps.

  Constant lr 0.05 (``:cosine`` for the cosine variant), bf16 compute, standard
  augmentation, a 5k-step checkpoint kept for side-trips. ``:runlocal`` is a
  20-step ResNet-18 at width 8 for smoke tests. Shared by the ImageNet and
  CIFAR configs, which set only what differs.
  """
  a = parse_arg(arg, cosine=False, runlocal=False, averaging="none")
  c = base_config()
  c.seed = 0
  c.total_steps = 100_000
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.log_every_steps = 500
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2500

  c.dataset.name = dataset
  c.dataset.label_noise = 0.0
  c.dataset.augment = True

  c.model.name = model
  c.model.width = 64
  c.model.dtype = "bfloat16"

  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = weight_decay
  c.optimizer.schedule = "cosine" if a["cosine"] else "constant"
  c.optimizer.warmup_steps = 0

  c.averaging.method = a["averaging"]
  c.averaging.gap = 5000
  c.averaging.decay = 1e-4
  c.averaging.bn_recompute_batches = 50

  # Side-trips branch from the trajectory: keep every 5k-step checkpoint.
  c.checkpoint.max_to_keep = 2
  c.checkpoint.keep_period = 5000

  if a["runlocal"]:
    c.total_steps = 20
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.model.name = "resnet18" if model.startswith("resnet") else "cifar_resnet18"
    c.model.width = 8
    c.model.dtype = "float32"
    c.averaging.bn_recompute_batches = 2
  return c
