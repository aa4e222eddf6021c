"""image_folder: your own images (png/jpg/bmp/webp under --config.data.path; one subfolder per
class, or a flat folder), resized and centre-cropped to data.image_size.

Run:
  python scripts/train.py --config=configs/image_folder.py --workdir=runs/myimages \
      --config.data.path=/path/to/images --config.data.image_size=32
Expected: depends on the data; start from these settings (a 32x32 U-Net of about 9M parameters)
and scale base_channels / num_train_steps with the data.
Smoke variant (tests): --config=configs/image_folder.py:smoke --config.data.path=...
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "image_folder"
    default.for_images(c, num_samples=64)
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.batch_size = 64
    c.num_train_steps = 100_000
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.ema_decay = 0.9999
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 1_000
    c.model = default.unet_model(
        base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.1, num_groups=32)
    c.sampling.method = "heun"
    c.sampling.num_steps = 50
    c = default.apply_variant(c, variant)
    if variant == "smoke":
        c.data.image_size = 8
        c.model.base_channels = 16
        c.model.channel_mult = (1, 2)
        c.model.attn_resolutions = (4,)
        c.model.num_res_blocks = 1
        c.model.num_groups = 8
    return c
