"""moons: torchcfm's two moons (torchdyn generate_moons(n, noise=0.2) * 3 - 1).

Run (2 CPU cores):
  python scripts/train.py --config=configs/moons.py --workdir=runs/moons
  python scripts/sample.py --workdir=runs/moons --output=runs/moons/samples.npz
Expected: tv 0.056 (floor 0.034), w2 0.227 with sample.py's default sampler (heun, 50
steps). Runtime: about 2.5 minutes on a quiet 2-core CPU (the checkerboard run: 145 s including
evaluation); this run took 210 s on 2 cores shared with other jobs.
Smoke variant (tests): --config=configs/moons.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "moons"
    return default.apply_variant(c, variant)
