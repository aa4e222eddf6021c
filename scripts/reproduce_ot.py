"""Plain flow matching vs minibatch-OT flow matching on 8gaussians -> moons, over several seeds:
W2 after one Euler step and after an adaptive solve (Cheng & Schwing 2025, Fig. 1).

  python scripts/reproduce_ot.py --config=configs/ot_8gaussians_moons.py --workdir=runs/ot_8g_moons
      [--config.reproduce.seeds=0,1,2 --config.num_train_steps=...]

Writes ot_reproduction.json and ot_reproduction.md (the table) into --workdir; each run's
checkpoints and figures are in --workdir/<coupling>/seed_<seed>/ (running again resumes).
Kept short on purpose: the logic lives in flowmatch.experiments.reproduce_ot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "configs/ot_8gaussians_moons.py (its `reproduce` block lists the couplings "
    "and seeds; ':smoke' for the tiny variant).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for every run and ot_reproduction.{json,md}; "
                    "running again resumes and skips finished runs.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    from flowmatch.experiments import reproduce_ot  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    reproduce_ot.reproduce(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
