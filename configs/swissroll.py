"""swissroll: FFJORD's swiss roll: sklearn make_swiss_roll(noise=1.0)[:, [0, 2]] / 5.

Run (2 CPU cores):
  python scripts/train.py --config=configs/swissroll.py --workdir=runs/swissroll
  python scripts/sample.py --workdir=runs/swissroll --output=runs/swissroll/samples.npz
Expected: RESULT_swissroll
Smoke variant (tests): --config=configs/swissroll.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "swissroll"
    return default.apply_variant(c, variant)
