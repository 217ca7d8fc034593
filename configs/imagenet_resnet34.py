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
  return common.paper_resnet_config(
    arg, dataset="imagenet2012", model="resnet34", weight_decay=1e-4
  )
