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
  return common.paper_resnet_config(
    arg, dataset="cifar10", model="cifar_resnet34", weight_decay=5e-4
  )
