"""spirals: FFJORD's two spirals ('2spirals').

Run (2 CPU cores):
  python scripts/train.py --config=configs/spirals.py --workdir=runs/spirals
  python scripts/sample.py --workdir=runs/spirals --output=runs/spirals/samples.npz
Expected: RESULT_spirals
Smoke variant (tests): --config=configs/spirals.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "spirals"
    return default.apply_variant(c, variant)
