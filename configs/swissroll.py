"""swissroll: FFJORD's swiss roll: sklearn make_swiss_roll(noise=1.0)[:, [0, 2]] / 5.

Run (2 CPU cores):
  python scripts/train.py --config=configs/swissroll.py --workdir=runs/swissroll
  python scripts/sample.py --workdir=runs/swissroll --output=runs/swissroll/samples.npz
Expected: tv 0.060 (floor 0.053), w2 0.185 with sample.py's default sampler (heun, 50
steps). Runtime: about 2.5 minutes on a quiet 2-core CPU (the checkerboard run: 145 s including
evaluation); this run took 477 s on 2 cores shared with other jobs.
Smoke variant (tests): --config=configs/swissroll.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "swissroll"
    return default.apply_variant(c, variant)
