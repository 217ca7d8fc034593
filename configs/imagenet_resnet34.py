"""The paper's main setup: ResNet-34 on ImageNet, SGD momentum 0.9, batch 512.

Launch (TFDS ``imagenet2012`` prepared under DATA_DIR; never downloaded here):

  python -m trajax.main --config=configs/imagenet_resnet34.py \\
      --config.data_dir=DATA_DIR --workdir=gs://BUCKET/imagenet_r34

Cosine variant: ``--config=configs/imagenet_resnet34.py:cosine``. On a pod add
``--jax_distributed`` (or let the environment trigger it); the global batch is
split over processes and devices.

Expected cost: 100k steps × 512 images × 3 × 3.6 GFLOP ≈ 5.5e17 FLOP, i.e.
about 12 h on one H100 at 15 % bf16 MFU, or a few hours on a v4-32.

Paper (Sec. 3): ResNet-34, standard SGD with momentum 0.9, batch 512, 100k
steps, side-trips from mid-training (e.g. step 75k). Weight decay and the
augmentation are not given in the paper; 1e-4 and random-resized-crop + flip
are the standard ResNet recipe.
"""

from configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, cosine=False, runlocal=False, averaging="none")
  c = common.base_config()
  c.seed = 0
  c.total_steps = 100_000
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.log_every_steps = 500
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2500

  c.dataset.name = "imagenet2012"
  c.dataset.label_noise = 0.0
  c.dataset.augment = True

  c.model.name = "resnet34"
  c.model.width = 64
  c.model.dtype = "bfloat16"

  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
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
    c.model.name = "resnet18"
    c.model.width = 8
    c.model.dtype = "float32"
    c.averaging.bn_recompute_batches = 2
  return c
