"""moons: torchcfm's two moons (torchdyn generate_moons(n, noise=0.2) * 3 - 1).

Run (2 CPU cores):
  python scripts/train.py --config=configs/moons.py --workdir=runs/moons
  python scripts/sample.py --workdir=runs/moons --output=runs/moons/samples.npz
Expected: RESULT_moons
Smoke variant (tests): --config=configs/moons.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "moons"
    return default.apply_variant(c, variant)
