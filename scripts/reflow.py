"""Reflow (rectified flow) and one-step distillation.

  python scripts/reflow.py --config=configs/reflow_moons.py --workdir=runs/reflow_moons
  python scripts/reflow.py --pairs_from=runs/moons --workdir=runs/moons_pairs --num_pairs=100000 \
      [--chunk_size=10000 --method=dopri5 --rtol=1e-5 --atol=1e-5 --seed=0 --step=N]
  python scripts/reflow.py --config=configs/moons.py --distill_pairs=runs/moons_pairs \
      --workdir=runs/moons_distill [--init_from=runs/moons]

The first runs the whole chain (flow 1 -> pairs -> flow 2 ... -> distilled one-step model) and
writes evaluation.json / evaluation.md; rerunning it resumes.  The others are its parts alone.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_reflow_flags()
    cli.run(cli.reflow_main)
