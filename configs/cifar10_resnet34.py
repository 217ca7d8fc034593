"""ResNet-34 (CIFAR stem) on CIFAR-10: the paper's Section 5 / Appendix setup.

Launch (TFDS ``cifar10`` prepared under DATA_DIR; never downloaded here):

  python -m trajax.main --config=configs/cifar10_resnet34.py \\
      --config.data_dir=DATA_DIR --workdir=workdirs/cifar10_r34

Identical setup to ImageNet (SGD momentum 0.9, batch 512, 100k steps, constant
lr or ``:cosine``), random crop + flip augmentation. Expected cost: ResNet-34
at 32² is ≈ 1.16 GFLOP forward per image, so 100k × 512 × 3 × 1.16 GFLOP ≈
1.8e17 FLOP: a few hours on one H100, far too slow on CPU (use ``:runlocal``).
"""

from configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, cosine=False, runlocal=False, averaging="none")
  c = common.base_config()
  c.total_steps = 100_000
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.log_every_steps = 500
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2500

  c.dataset.name = "cifar10"
  c.dataset.label_noise = 0.0
  c.dataset.augment = True

  c.model.name = "cifar_resnet34"
  c.model.width = 64
  c.model.dtype = "bfloat16"

  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine" if a["cosine"] else "constant"

  c.averaging.method = a["averaging"]
  c.averaging.gap = 5000
  c.averaging.decay = 1e-4
  c.averaging.bn_recompute_batches = 50

  c.checkpoint.max_to_keep = 2
  c.checkpoint.keep_period = 5000

  if a["runlocal"]:
    c.total_steps = 20
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.model.name = "cifar_resnet18"
    c.model.width = 8
    c.model.dtype = "float32"
    c.averaging.bn_recompute_batches = 2
  return c
