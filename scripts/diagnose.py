"""Diagnostics of trained runs: exposure bias (and its corrections), coarse-to-fine spectra,
and the compute profile (roofline).

  python scripts/diagnose.py --workdir=runs/moons --output=runs/moons/diagnostics \\
      --analyses=exposure [--methods=euler,heun,rk4 --nfe=4,8,16,32,64 \\
      --corrections=time_shift,eps_scale=0.98,eps_scale=1.02]
  python scripts/diagnose.py --workdir=fm=runs/digits_fm,ddpm=runs/digits_ddpm \\
      --output=runs/digits_diag --analyses=spectra [--nfe=32 --fraction=0.9]
  python scripts/diagnose.py --output=runs/roofline --analyses=roofline \\
      [--roofline_configs=configs/moons.py,configs/digits.py --mlp_batches=1,256,65536]

Writes JSON + PNG per analysis into --output (see flowmatch/diagnostics/report.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_diagnose_flags()
    cli.run(cli.diagnose_main)
