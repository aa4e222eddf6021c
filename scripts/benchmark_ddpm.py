"""Flow matching vs DDPM at equal network, data and budget, over an NFE grid.

  python scripts/benchmark_ddpm.py --config=configs/benchmark/moons.py --workdir=runs/bench_moons
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_benchmark_ddpm_flags()
    cli.run(cli.benchmark_ddpm_main)
