"""circles: FFJORD's circles: sklearn make_circles(factor=0.5, noise=0.08) * 3.

Run (2 CPU cores):
  python scripts/train.py --config=configs/circles.py --workdir=runs/circles
  python scripts/sample.py --workdir=runs/circles --output=runs/circles/samples.npz
Expected: RESULT_circles
Smoke variant (tests): --config=configs/circles.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "circles"
    return default.apply_variant(c, variant)
