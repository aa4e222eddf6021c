"""Compare integrators on a trained run: sample quality and integration error against NFE.

  python scripts/compare_integrators.py --workdir=runs/checkerboard \
      --output=runs/checkerboard/integrators [--methods=euler,heun,rk4,dopri5 \
      --nfe=2,4,8,16,32,64,128 --tolerances=1e-1,1e-2,1e-3,1e-4,1e-5 --num_samples=N --seed=0 \
      --nll]

Writes integrators.json, integrators.csv and integrators.png into --output.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_compare_flags()
    cli.run(cli.compare_main)
