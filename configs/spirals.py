"""spirals: FFJORD's two spirals ('2spirals').

Run (2 CPU cores):
  python scripts/train.py --config=configs/spirals.py --workdir=runs/spirals
  python scripts/sample.py --workdir=runs/spirals --output=runs/spirals/samples.npz
Expected: tv 0.071 (floor 0.060), w2 0.195 with sample.py's default sampler (heun, 50
steps). Runtime: about 2.5 minutes on a quiet 2-core CPU (the checkerboard run: 145 s including
evaluation); this run took 416 s on 2 cores shared with other jobs.
Smoke variant (tests): --config=configs/spirals.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "spirals"
    return default.apply_variant(c, variant)
