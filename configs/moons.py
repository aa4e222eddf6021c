"""moons: torchcfm's two moons (torchdyn generate_moons(n, noise=0.2) * 3 - 1).

Run (2 CPU cores):
  python scripts/train.py --config=configs/moons.py --workdir=runs/moons
  python scripts/sample.py --workdir=runs/moons --output=runs/moons/samples.npz
Expected: tv 0.056 (floor 0.034), w2 0.227 with sample.py's default sampler (heun, 50
steps). Runtime: not timed since the speed changes of 2026-12-03; configs/checkerboard.py, with
the same network, batch and steps, took 297 s then on 2 CPU cores.
Smoke variant (tests): --config=configs/moons.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "moons"
    return default.apply_variant(c, variant)
