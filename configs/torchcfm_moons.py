"""torchcfm's 2-D example, like for like: the setting of the speed comparison with torchcfm.

torchcfm's tutorial trains conditional flow matching from its 8 Gaussians to its moons with
batch 256, Adam at a constant learning rate 1e-3, 20,000 steps, uniform t, and its models.MLP
(dim=2, time_varying=True, w=64): t appended to the input, three hidden layers of 64 SELU
units.  Here: the same network (model.time_embedding='concat'), data, source, optimizer and
steps, independent pairs on the cond-OT path (sigma = 0; torchcfm's tutorial adds sigma = 0.1
noise to x_t, one more draw), no EMA, no gradient clipping, and the default final evaluation
(tv on 100,000 samples, heun 50 steps).  `scripts/benchmark.py --sections=process` times this
run's whole process (start-up, training, evaluation) beside torchcfm's tutorial loop in the
same run:

  python scripts/train.py --config=configs/torchcfm_moons.py --workdir=runs/torchcfm_moons

Smoke variant (tests): --config=configs/torchcfm_moons.py:smoke
"""

from configs import default
from configs import ot_8gaussians_moons


def get_config(variant=""):
    # torchcfm's tutorial setting (data, source, batch, steps, optimizer, SELU 64 x 3, no EMA) is
    # the OT reproduction's; here with independent pairs and torchcfm's way of feeding t.
    c = ot_8gaussians_moons.get_config(variant)
    del c["reproduce"]
    c.coupling.name = "independent"
    c.model.time_embedding = "concat"
    if not variant:
        c.steps_per_call = 100
        c.eval = default.get_config().eval  # the default final evaluation (tv on 100,000)
        c.eval.chunk_rows = 0  # on the whole batch at once, as for the network's other runs
    return c
