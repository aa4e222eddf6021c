"""reflow_moons: rectified flow on moons (Liu et al. 2023): flow 1 (plain flow matching), one
reflow (flow 2, trained on 100,000 pairs of flow 1), and a one-step model distilled from flow 2.

Run (2 CPU cores):
  python scripts/reflow.py --config=configs/reflow_moons.py --workdir=runs/reflow_moons
Writes flow1/, pairs1/, flow2/, pairs2/, distill/ and evaluation.{json,md} (tv / w2 per sampler,
straightness) into the workdir; rerunning the command skips finished stages and resumes the
unfinished one.  Measured (one seed; docs/sections/reflow.md): tv / w2 with one Euler step
0.926 / 2.250 (flow 1), 0.293 / 0.388 (flow 2), 0.113 / 0.183 (distilled); heun, 50 steps: 0.085 /
0.141 (flow 1), 0.112 / 0.183 (flow 2); straightness 1.67 (flow 1), 0.0031 (flow 2).  Runtime:
781 s for the stages + about 5.5 min of evaluation on 2 CPU cores shared with other jobs.
Smoke variant (tests): --config=configs/reflow_moons.py:smoke

The training fields are those of every stage (the reflow section's zeros mean "the same"); the
training config alone (without the reflow section) is what scripts/train.py would run as flow 1.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "moons"
    c.num_train_steps = 4_000
    c.eval_every_steps = 4_000
    c.checkpoint_every_steps = 1_000
    c.reflow = ml_collections.ConfigDict(dict(
        num_reflows=1,                 # k: flows 2 .. k + 1 train on the previous flow's pairs
        base_workdir="",               # an existing flow-1 run instead of training one
        num_pairs=100_000, chunk_size=10_000, pair_seed=0,
        pair_method="",                # '' = each run's own sampler (config.sampling: heun, 50)
        pair_num_steps=config_dict.placeholder(int),
        pair_rtol=config_dict.placeholder(float), pair_atol=config_dict.placeholder(float),
        init_from_previous=True,       # flow i + 1 and the distilled model start from flow i
        num_train_steps=0, learning_rate=0.0,            # 0: as the training fields above
        distill=True, distill_num_train_steps=0, distill_learning_rate=0.0,
        evaluate=True, eval_samplers=("euler:1", "euler:4", "heun:50", "dopri5:1e-5"),
        eval_num_samples=0,            # 0: eval.num_tv_samples
        straightness_steps=100, straightness_samples=10_000))
    default.apply_variant(c, variant)
    if variant == "smoke":
        c.reflow.num_pairs = 96
        c.reflow.chunk_size = 64
        c.reflow.eval_samplers = ("euler:1", "heun:2")
        c.reflow.eval_num_samples = 500
        c.reflow.straightness_steps = 4
        c.reflow.straightness_samples = 64
    return c
