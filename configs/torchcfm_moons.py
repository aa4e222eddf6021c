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


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "moons"
    c.source.name = "8gaussians"
    c.batch_size = 256
    c.num_train_steps = 20_000
    c.steps_per_call = 100
    c.log_every_steps = 1_000
    c.eval_every_steps = 20_000
    c.checkpoint_every_steps = 5_000
    c.ema_decay = 0.0
    c.model.hidden_sizes = (64, 64, 64)
    c.model.activation = "selu"
    c.model.time_embedding = "concat"
    c.objective.time_sampling = "uniform"
    c.objective.logit_normal_loc = 0.0
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "constant"
    c.optimizer.grad_clip_norm = 0.0
    return default.apply_variant(c, variant)
