"""Real 8×8 handwritten digits offline: scikit-learn's ``load_digits``.

Launch (a few minutes on 2 CPU cores, no download):

  python -m trajax.main --config=configs/digits.py --workdir=workdirs/digits

1 797 images, a small CIFAR-style ResNet-18 (width 16). The set is memorized
within a few hundred steps without label noise, so the default adds 30 %
symmetric noise on the training split to stay in the paper's regime (training
loss well above zero). Variants: ``:runlocal``, ``:cosine``, ``:averaging=ema``.
"""

from configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, runlocal=False, cosine=False, averaging="two_point")
  c = common.base_config()
  c.total_steps = 3000
  c.batch_size = 64
  c.eval_batch_size = 256
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500

  c.dataset.name = "digits"
  c.dataset.label_noise = 0.3
  c.dataset.augment = False

  c.model.name = "cifar_resnet18"
  c.model.width = 16

  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine" if a["cosine"] else "constant"

  c.averaging.method = a["averaging"]
  c.averaging.gap = 500
  c.averaging.decay = 0.002

  if a["runlocal"]:
    c.total_steps = 60
    c.log_every_steps = 20
    c.eval_every_steps = 30
    c.checkpoint_every_steps = 30
    c.averaging.gap = 20
    c.model.width = 8
  return c
