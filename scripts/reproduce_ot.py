"""Plain flow matching vs minibatch-OT flow matching on 8gaussians -> moons, over several seeds:
W2 after one Euler step and after an adaptive solve (Cheng & Schwing 2025, Fig. 1).

  python scripts/reproduce_ot.py --config=configs/ot_8gaussians_moons.py --workdir=runs/ot_8g_moons
      [--config.reproduce.seeds=0,1,2 --config.num_train_steps=...]

Writes ot_reproduction.json and ot_reproduction.md (the table) into --workdir; each run's
checkpoints and figures are in --workdir/<coupling>/seed_<seed>/ (running again resumes).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_reproduce_ot_flags()
    cli.run(cli.reproduce_ot_main)
