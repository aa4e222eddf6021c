"""checkerboard: FFJORD's checkerboard: 8 squares of side 2 on [-4, 4]^2.

Run (2 CPU cores):
  python scripts/train.py --config=configs/checkerboard.py --workdir=runs/checkerboard
  python scripts/sample.py --workdir=runs/checkerboard --output=runs/checkerboard/samples.npz
Expected: RESULT_checkerboard
Smoke variant (tests): --config=configs/checkerboard.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "checkerboard"
    return default.apply_variant(c, variant)
