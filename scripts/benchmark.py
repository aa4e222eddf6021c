"""Speed figures: train steps/s of the 2-D MLPs, of the OT-coupled train step (exact and Sinkhorn
couplings vs the uncoupled step, at torchcfm's OT-CFM setting) and the integrators' overhead over
the network.

  python scripts/benchmark.py [--config=configs/checkerboard.py] [--quick] [--output=bench.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_benchmark_flags()
    cli.run(cli.benchmark_main)
