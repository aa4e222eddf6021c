"""Coupled training speed: flowmatch's train step uncoupled, with the Sinkhorn and with the exact
coupling, against torchcfm's OT-CFM tutorial loop, interleaved in one process (torchcfm's row
only where torch, torchcfm and POT import).

  python scripts/coupling_speed.py [--config=configs/moons.py] [--rounds=30] [--repeats=3]
      [--steps_per_call=50]

Kept short on purpose: the logic lives in flowmatch.experiments.coupling_speed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", "configs/moons.py", "2-D config set to torchcfm's OT-CFM setting and timed.",
    lock_config=False)
flags.DEFINE_integer("rounds", 30, "Interleaved rounds: one timed call of every row each.")
flags.DEFINE_integer("repeats", 1, "Whole measurements in a row.")
flags.DEFINE_integer("steps_per_call", 50, "Train steps per compiled call (and per torchcfm "
                     "call).")
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv, example="--rounds=10")
    from flowmatch.experiments import coupling_speed  # pylint: disable=g-import-not-at-top
    coupling_speed.report(FLAGS.config, rounds=FLAGS.rounds, repeats=FLAGS.repeats,
                          steps_per_call=FLAGS.steps_per_call)


if __name__ == "__main__":
    cli.run(main)
