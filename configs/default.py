"""Shared defaults of every flowmatch config.  Not a runnable experiment on its own: the
per-dataset files (configs/<dataset>.py) start from `get_config()` here and change a few fields.

Keys (what the training loop reads):
  seed, batch_size (global), num_train_steps, steps_per_call (train steps per jitted call),
  log_every_steps, eval_every_steps, checkpoint_every_steps, ema_decay, ema_warmup,
  progress_bar, tensorboard (also TensorBoard event files; pip install tensorboardX),
  wandb_project, wandb_entity ('' = off; else also log to Weights & Biases; pip install wandb),
  grad_accum_steps (1 = off; the global batch is split into that many micro-batches whose
               gradients are averaged: the same update as one batch, less memory),
  parallel.*   mode ('sharding': jit over a device mesh | 'pmap'), data_axis_size (-1 = all
               devices), fsdp_axis_size (1 = parameters replicated; > 1 splits parameters and
               optimizer state over that many devices, mode 'sharding' only), fsdp_min_size
               (parameters with fewer elements stay replicated), tensor_axis_size (> 1 splits
               parameters by their logical axes, heads / mlp over it, embed over fsdp; the
               batch is replicated over it), num_slices (TPU slices over DCN; the data axis
               spans them); batch_size must divide by data_axis_size x fsdp_axis_size x
               grad_accum_steps; see docs/parallel.md
  data.*       name, path, image_size, channels, random_flip, skip_bad ('pairs' with path = a
               directory of (x0, x1) pairs from scripts/reflow.py trains on paired data;
               'arrayrecord' with path = a directory from scripts/prepare_data.py streams its
               shards through grain: split, worker_count, prefetch, verify_checksums)
  model.*      name ('mlp' | 'unet' | 'dit'), dtype ('float32' | 'bfloat16'), and the network's
               own fields (unet_model / dit_model below give the image networks' sections; the
               MLP's and the DiT's matmul_dtype 'bfloat16' rounds their products' operands to
               bfloat16 and keeps the results and all else in float32:
               flowmatch/models/precision.py; the DiT's attention 'auto' | 'xla' | 'cudnn'
               picks its attention kernel, 'auto' cuDNN's fused one on a GPU in bfloat16);
               num_classes > 0 trains class-conditionally on the data's labels (image classes;
               the 2-D sets' natural labels, flowmatch/data/toy2d.py: 8gaussians 8, moons 2,
               checkerboard 8, circles 2, spirals 2, swissroll 4)
  path.*       schedule ('cond_ot' | 'cosine' | 'polynomial'), sigma_min, exponent
  source.*     p0, what flows start from at t = 0: name ('normal' | a 2-D data set such as
               '8gaussians', for 2-D data), scale (multiplies its samples)
  coupling.*   how p0 samples are paired with data rows (flow matching): name ('independent' |
               'exact': optimal assignment by an auction | 'sinkhorn': entropic plan, a partner
               drawn per row), scope ('global': the whole global batch, gathered across devices
               | 'local': each device's rows), per_class (pairs stay within a label),
               sinkhorn_reg (relative to the batch's largest pair cost), num_iters (Sinkhorn: at
               most), sinkhorn_tolerance (Sinkhorn stops once the x0 marginal's L1 error is at
               most this; 0: always num_iters), sinkhorn_relaxation (over-relaxed updates in
               [1, 2); 1: plain Sinkhorn),
               tolerance (auction: mean pair cost within tolerance x cost range of the optimum),
               bidders (auction rows bidding per round), auction_kernel ('auto': the
               auction's rounds as a native CPU kernel where it builds, else its lax loops |
               'lax' | 'native'; the same pairs either way); see flowmatch/couplings.py;
               ahead_threads (the trainer's: threads on the host that solve the next call's
               couplings while a call trains; -1 automatic, 0 inside the train step; the
               pairs are the same; flowmatch/training/ahead.py)
  objective.*  name ('flow_matching' | 'ddpm'), prediction (flow matching: 'velocity' | 'x1' |
               'x0'; ddpm: 'eps' | 'x0' | 'v'), label_dropout (both; in [0, 1): the probability
               a row of a class-conditional model, model.num_classes > 0, trains with the null
               label, which classifier-free guidance needs: scripts/sample.py --label,
               --guidance_scale, --guidance_interval; 0 = off); flow matching: time_sampling
               ('uniform' | 'logit_normal' | 'zero': t = t_min always, one-step distillation
               on pairs),
               logit_normal_loc, logit_normal_scale, t_min, t_max; ddpm:
               beta_schedule ('linear' | 'cosine'), num_timesteps
  optimizer.*  AdamW: learning_rate, b1, b2, eps, weight_decay, warmup_steps, schedule
               ('cosine' | 'constant'), end_lr_factor, grad_clip_norm (0 = off)
  sampling.*   the default sampler of evaluation and scripts/sample.py: method, num_steps
               (fixed grid), rtol / atol (adaptive; when set, num_steps is not used)
  eval.*       num_tv_samples, num_w2_samples, tv_bins, chunk_size, num_plot_samples,
               num_image_samples, w2_in_training (the training evaluation also scores w2: an
               exact assignment on the host, about 1.3 s at 2,000 points; scripts/sample.py
               always does), chunk_rows (the samplers' network in row chunks of this many, the
               same samples; 0: the whole batch at once; see docs/sampling.md: chunks help the
               3 x 256 network and slow torchcfm's 64 x 3 one)
  checkpoint.* max_to_keep (the newest sealed checkpoints kept; see flowmatch/checkpoint.py)
  nonfinite.*  policy ('skip': a step whose loss, gradients or update are not finite leaves the
               state unchanged, counted in metrics as skipped_steps | 'stop': such a step stops
               the run with an error naming it), max_consecutive_skips ('skip': stop after this
               many such steps in a row)
"""

import ml_collections
from ml_collections import config_dict


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 1024
    c.num_train_steps = 16_000
    c.steps_per_call = 10
    c.log_every_steps = 100
    c.eval_every_steps = 16_000  # at the end only: a 100,000-sample evaluation of the 3 x 256
    # network is about a minute on 2 CPU cores; 8_000 adds one half-way
    c.checkpoint_every_steps = 2_000
    c.ema_decay = 0.999
    c.ema_warmup = True
    c.progress_bar = True
    c.tensorboard = False
    c.wandb_project = ""
    c.wandb_entity = ""
    c.grad_accum_steps = 1

    c.parallel = ml_collections.ConfigDict(dict(
        mode="sharding", data_axis_size=-1, fsdp_axis_size=1, fsdp_min_size=2**14,
        tensor_axis_size=1, num_slices=1))

    c.data = ml_collections.ConfigDict(dict(
        name="checkerboard", path="", image_size=0, channels=3, random_flip=False,
        skip_bad=False, split="train", worker_count=0, prefetch=2, verify_checksums=False))

    c.model = ml_collections.ConfigDict(dict(
        name="mlp", dtype="float32", matmul_dtype="float32", hidden_sizes=(256, 256, 256),
        activation="relu", time_embedding="sinusoidal", time_scale=10.0, time_embed_dim=64,
        num_classes=0))

    c.path = ml_collections.ConfigDict(dict(schedule="cond_ot", sigma_min=0.0, exponent=2.0))

    c.source = ml_collections.ConfigDict(dict(name="normal", scale=1.0))
    c.coupling = ml_collections.ConfigDict(dict(
        name="independent", scope="global", per_class=False, sinkhorn_reg=0.01, num_iters=50,
        sinkhorn_tolerance=0.01, sinkhorn_relaxation=1.7, tolerance=1e-6, bidders=8,
        auction_kernel="auto", ahead_threads=-1))

    c.objective = ml_collections.ConfigDict(dict(
        name="flow_matching", prediction="velocity", time_sampling="logit_normal",
        logit_normal_loc=1.0, logit_normal_scale=1.0, t_min=0.0, t_max=1.0,
        beta_schedule="linear", num_timesteps=1000, label_dropout=0.0))

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        warmup_steps=200, schedule="cosine", end_lr_factor=0.0, grad_clip_norm=1.0))

    c.sampling = ml_collections.ConfigDict(dict(
        method="heun", num_steps=50, rtol=config_dict.placeholder(float),
        atol=config_dict.placeholder(float)))

    c.eval = ml_collections.ConfigDict(dict(
        num_tv_samples=100_000, num_w2_samples=2_000, tv_bins=64, chunk_size=100_000,
        num_plot_samples=5_000, num_image_samples=64, w2_in_training=False, chunk_rows=10_000))

    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3))

    c.nonfinite = ml_collections.ConfigDict(dict(policy="skip", max_consecutive_skips=10))
    return c


def smoke(c):
    """Shrinks a config to seconds on a CPU: for tests, not for results."""
    c.num_train_steps = 4
    c.steps_per_call = min(c.steps_per_call, 2)
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.batch_size = min(c.batch_size, 16)
    c.progress_bar = False
    c.sampling.num_steps = 2
    c.eval.num_tv_samples = 2_000
    c.eval.num_w2_samples = 200
    c.eval.chunk_size = 2_000
    c.eval.num_plot_samples = 200
    c.eval.num_image_samples = 4
    return c


VARIANTS = ("", "smoke")


def apply_variant(c, variant):
    """`variant` is what follows ':' in --config=configs/X.py:VARIANT."""
    variant = variant or ""
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; choose one of: "
                         "(none), smoke  (e.g. --config=configs/moons.py:smoke)")
    if variant == "smoke":
        smoke(c)
    return c


def unet_model(**fields):
    """A model section for the U-Net: DDPM's choices unless `fields` says otherwise."""
    model = dict(name="unet", dtype="float32", time_embedding="sinusoidal", time_scale=1000.0,
                 num_classes=0, num_heads=1, base_channels=128, channel_mult=(1, 2, 2, 2),
                 num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, num_groups=32)
    model.update(fields)
    return ml_collections.ConfigDict(model)


def dit_model(preset="S/2", **fields):
    """A model section for the diffusion transformer: a published size (flowmatch.models.dit's
    dit_preset: "S/2" ... "XL/8") with DiT's other choices, then `fields`; e.g.
    dit_model("XL/2", num_classes=1000, remat="full")."""
    from flowmatch.models.dit import dit_preset  # pylint: disable=g-import-not-at-top
    model = dict(name="dit", dtype="float32", matmul_dtype="float32", **dit_preset(preset),
                 mlp_ratio=4.0, qk_norm=False, dropout=0.0, num_classes=0, time_freq_dim=256,
                 time_scale=1000.0, remat="none", scan_blocks=False, attention="auto")
    model.update(fields)
    return ml_collections.ConfigDict(model)


def for_images(c, num_samples: int):
    """Settings every image config shares: uniform training times, ten train steps per jitted
    call (as the 2-D configs; the U-Net's convolution gradients are written out so that XLA:CPU
    runs them fast inside the loop of steps: flowmatch.models.convolution), and `num_samples`
    images per evaluation, plotted and sampled in one chunk."""
    c.steps_per_call = 10
    c.objective.time_sampling = "uniform"
    c.objective.logit_normal_loc = 0.0
    c.eval.num_image_samples = num_samples
    c.eval.num_plot_samples = num_samples
    c.eval.chunk_size = num_samples
    return c
