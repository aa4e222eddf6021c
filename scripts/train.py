"""Train (or resume) a flow model.

  python scripts/train.py --config=configs/checkerboard.py --workdir=runs/checkerboard
  python scripts/train.py --config=configs/digits.py:smoke --workdir=/tmp/d --config.seed=1

Running the same command again resumes from the newest intact checkpoint, bit for bit.  SIGTERM
saves a checkpoint at the next step boundary and exits with status 0.  A workdir holding a run
with another config is refused unless --resume (continue it) or --overwrite (move it into
WORKDIR/previous_runs/ and start afresh) is given.  Exit status: 0 done or preempted, 2 bad
config or input, 1 stopped by non-finite steps or unusable checkpoints (one line, no traceback).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_train_flags()
    cli.run(cli.train_main)
