"""Flow matching vs DDPM at equal network, data and budget, over an NFE grid.

  python scripts/benchmark_ddpm.py --config=configs/benchmark/moons.py --workdir=runs/bench_moons
  python scripts/benchmark_ddpm.py --config=configs/benchmark/moons.py:smoke --workdir=/tmp/bench

Trains (or resumes) WORKDIR/fm and WORKDIR/ddpm, then writes benchmark.json / .csv / .png and
benchmark_reference.json (the floors) into --workdir.  Kept short on purpose: the logic lives in
flowmatch.experiments.fm_vs_ddpm.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "A configs/benchmark/*.py file (append ':smoke' for the tiny test variant).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for both runs and the benchmark files.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    from flowmatch.experiments import fm_vs_ddpm  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    fm_vs_ddpm.run_benchmark(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
