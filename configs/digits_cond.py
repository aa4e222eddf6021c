"""digits_cond: the digits U-Net trained class-conditionally on the digit (labels 0-9), with
label dropout for classifier-free guidance.

Run (2 CPU cores):
  python scripts/train.py --config=configs/digits_cond.py --workdir=runs/digits_cond
  python scripts/sample.py --workdir=runs/digits_cond --output=runs/digits_cond/g2.npz \
      --guidance_scale=2
Expected: not measured yet (the effect of guidance on digits has not been run on this machine);
each guided evaluation costs 2 network passes (the npz's `passes`).
Smoke variant (tests): --config=configs/digits_cond.py:smoke
"""

from configs import default
from configs import digits


def get_config(variant=""):
    c = digits.get_config()
    c.model.num_classes = 10
    c.objective.label_dropout = 0.2
    return default.apply_variant(c, variant)
