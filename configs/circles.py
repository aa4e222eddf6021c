"""circles: FFJORD's circles: sklearn make_circles(factor=0.5, noise=0.08) * 3.

Run (2 CPU cores):
  python scripts/train.py --config=configs/circles.py --workdir=runs/circles
  python scripts/sample.py --workdir=runs/circles --output=runs/circles/samples.npz
Expected: tv 0.081 (floor 0.070), w2 0.170 with sample.py's default sampler (heun, 50
steps). Runtime: about 2.5 minutes on a quiet 2-core CPU (the checkerboard run: 145 s including
evaluation); this run took 411 s on 2 cores shared with other jobs.
Smoke variant (tests): --config=configs/circles.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "circles"
    return default.apply_variant(c, variant)
