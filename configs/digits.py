"""digits: scikit-learn's bundled 8x8 handwritten digits (1,438 training images), a small U-Net.

Run (2 CPU cores):
  python scripts/train.py --config=configs/digits.py --workdir=runs/digits
  python scripts/sample.py --workdir=runs/digits --output=runs/digits/samples.npz
Expected: digit-like samples in samples_5000.png, many recognisable (0, 3, 5, 7, 9), with loss
about 0.44: measured 2026-12-05 on the 2-core Xeon (AVX-512), 238 s for the whole run (24.0
steps/s logged at the last step, ten steps per call), final loss 0.4445
(docs/results/digits_xeon_0417); 253 s and 20.8 steps/s on 2026-12-04, before a call's draws
moved before its loop (docs/results/unet_loop_cpu_xeon_1930); 316 s earlier on 2 cores shared with other jobs, one
step per call (about 16 steps/s). Classifier
Frechet distance (flowmatch.image_metrics, 1,000 samples): about 1.85 with heun or rk4 at 8 to 64
evaluations, against a real-data floor of 1.13 (configs/benchmark/digits.py, which trains this
config).
Smoke variant (tests): --config=configs/digits.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "digits"
    default.for_images(c, num_samples=100)
    c.batch_size = 64
    c.num_train_steps = 5_000
    c.log_every_steps = 100
    c.eval_every_steps = 2_500
    c.checkpoint_every_steps = 1_000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.model = default.unet_model(
        base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
        dropout=0.1, num_groups=8)
    c.sampling.method = "heun"
    c.sampling.num_steps = 50
    return default.apply_variant(c, variant)
