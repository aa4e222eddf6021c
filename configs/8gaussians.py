"""8gaussians: torchcfm's 8 Gaussians: centres at radius 5, std 0.1**0.25 (about 0.562).

Run (2 CPU cores):
  python scripts/train.py --config=configs/8gaussians.py --workdir=runs/8gaussians
  python scripts/sample.py --workdir=runs/8gaussians --output=runs/8gaussians/samples.npz
Expected: RESULT_8gaussians
Smoke variant (tests): --config=configs/8gaussians.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "8gaussians"
    return default.apply_variant(c, variant)
