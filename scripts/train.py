"""Train (or resume) a flow model.

  python scripts/train.py --config=configs/checkerboard.py --workdir=runs/checkerboard
  python scripts/train.py --config=configs/digits.py:smoke --workdir=/tmp/d --config.seed=1
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_train_flags()
    cli.run(cli.train_main)
