"""Sample a trained run with any integrator.

  python scripts/sample.py --workdir=runs/checkerboard --output=runs/checkerboard/samples.npz \
      [--num_samples=N --method=rk4 --steps=8 --seed=0]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_sample_flags()
    cli.run(cli.sample_main)
