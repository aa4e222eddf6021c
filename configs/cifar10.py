"""cifar10: CIFAR-10 (50,000 32x32 training images) with the DDPM-size U-Net (35,746,307
parameters: Ho et al. 2020's CIFAR-10 network) trained by conditional-OT flow matching.

Data: the python-pickle release, https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
(the tarball or its extracted cifar-10-batches-py/ folder), given by --config.data.path.
Run (one accelerator; DDPM's recipe: batch 128, lr 2e-4, 800k steps, EMA 0.9999):
  python scripts/train.py --config=configs/cifar10.py --workdir=runs/cifar10 \
      --config.data.path=/data/cifar-10-python.tar.gz
  python scripts/sample.py --workdir=runs/cifar10 --output=runs/cifar10/samples.npz
Expected: not yet measured in this repository (no accelerator training run so far; the step's speed
on one GPU in bfloat16: configs/cifar10_gpu8.py); Lipman et al. 2023 report FID 6.35 for this
setting with dopri5. On a CPU this config is only a smoke test.
Smoke variant (tests): --config=configs/cifar10.py:smoke --config.data.path=...
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "cifar10"
    default.for_images(c, num_samples=64)
    c.data.random_flip = True
    c.batch_size = 128
    c.num_train_steps = 800_000
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 10_000
    c.ema_decay = 0.9999
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 5_000
    c.optimizer.schedule = "constant"
    c.model = default.unet_model(
        base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.1, num_groups=32)
    c.sampling.method = "dopri5"
    c.sampling.rtol = 1e-5
    c.sampling.atol = 1e-5
    c = default.apply_variant(c, variant)
    if variant == "smoke":
        c.model.base_channels = 16
        c.model.channel_mult = (1, 2)
        c.model.num_res_blocks = 1
        c.model.num_groups = 8
        c.sampling.rtol = c.sampling.atol = 1e-2
    return c
