"""Reference floors of the 2-D metrics: tv and w2 between two fresh samples of each data set.

  python scripts/floors_2d.py [--data=checkerboard,moons --blur=0.1]

Prints one JSON line per data set (mean and std over 5 seeds).  Kept short on purpose: the logic
lives in flowmatch.training.evaluation.reference_floors, where it is tested.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from flowmatch.data import toy2d  # noqa: E402
from flowmatch.experiments import cli  # noqa: E402

flags.DEFINE_list("data", list(toy2d.TOY_DATASETS), "2-D data sets.")
flags.DEFINE_float("blur", 0.0, "Std of Gaussian noise added to one sample (a blurred model).")
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv, "--data=moons")
    unknown = [name for name in FLAGS.data if name not in toy2d.TOY_DATASETS]
    if unknown:
        raise cli.ConfigError(f"unknown 2-D data set(s) {unknown}; choose from: "
                              f"{', '.join(toy2d.TOY_DATASETS)}")
    from flowmatch.training import evaluation  # pylint: disable=g-import-not-at-top
    for name in FLAGS.data:
        print(json.dumps(evaluation.reference_floors(name, blur=FLAGS.blur)), flush=True)


if __name__ == "__main__":
    cli.run(main)
