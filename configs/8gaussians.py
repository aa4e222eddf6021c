"""8gaussians: torchcfm's 8 Gaussians: centres at radius 5, std 0.1**0.25 (about 0.562).

Run (2 CPU cores):
  python scripts/train.py --config=configs/8gaussians.py --workdir=runs/8gaussians
  python scripts/sample.py --workdir=runs/8gaussians --output=runs/8gaussians/samples.npz
Expected: tv 0.079 (floor 0.055), w2 0.447 with sample.py's default sampler (heun, 50
steps). Runtime: about 2.5 minutes on a quiet 2-core CPU (the checkerboard run: 145 s including
evaluation); this run took 185 s on 2 cores shared with other jobs.
Smoke variant (tests): --config=configs/8gaussians.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "8gaussians"
    return default.apply_variant(c, variant)
