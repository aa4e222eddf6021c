"""Reference floors of the 2-D metrics: tv and w2 between two fresh samples of each data set.

  python scripts/floors_2d.py [--data=checkerboard,moons --blur=0.1]
"""
import json

from absl import app
from absl import flags

from flowmatch import data
from flowmatch import evaluation

flags.DEFINE_list("data", list(data.toy2d.TOY_DATASETS), "2-D data sets.")
flags.DEFINE_float("blur", 0.0, "Std of Gaussian noise added to one sample (a blurred model).")


def main(_):
    for name in flags.FLAGS.data:
        print(json.dumps(evaluation.reference_floors(name, blur=flags.FLAGS.blur)), flush=True)


if __name__ == "__main__":
    app.run(main)
