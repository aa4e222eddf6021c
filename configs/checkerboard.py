"""checkerboard: FFJORD's checkerboard: 8 squares of side 2 on [-4, 4]^2.

Run (2 CPU cores):
  python scripts/train.py --config=configs/checkerboard.py --workdir=runs/checkerboard
  python scripts/sample.py --workdir=runs/checkerboard --output=runs/checkerboard/samples.npz
Expected: tv 0.090 (floor 0.067), w2 0.244 with sample.py's default sampler (heun, 50
steps). Runtime: 297 s on a 2-core CPU with a fresh compilation cache (16,000 steps at 37-70
steps/s, then a 49 s final evaluation; tv 0.086, measured 2026-12-03).
Smoke variant (tests): --config=configs/checkerboard.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "checkerboard"
    return default.apply_variant(c, variant)
