"""cifar10_tpu: configs/cifar10.py's DDPM-size U-Net (35,746,307 parameters) on a Cloud TPU pod
slice (written for v4-32: 16 chips on 4 hosts; any slice whose chip count divides the batch
works): global batch 1024 (64 per chip), bfloat16 compute with float32 parameters and optimizer
state, data parallel over every chip of every host (jit with shardings), 10 steps per call.

Against configs/cifar10.py (batch 128, lr 2e-4, 800k steps, warmup 5k, EMA 0.9999) the schedule
is kept per example seen: 8x the batch, 1/8 of the steps and warmup (100k steps = the same
102.4M examples), EMA decay 0.9999^8 ~ 0.9992, lr x sqrt(8) ~ 5.7e-4 (square-root scaling for
Adam).  Derived, not yet tuned or measured.

Every host runs the same command; each loads CIFAR-10 (copy the tarball to every worker first)
and keeps only its rows of each global batch.  --workdir must be one directory all hosts share
(e.g. a gcsfuse mount of a bucket or NFS): checkpoints are written by all hosts through orbax,
config.json / metrics.jsonl / samples_*.png by host 0 only.
  gcloud compute tpus tpu-vm scp cifar-10-python.tar.gz $TPU:/tmp/ --zone=$ZONE --worker=all
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd flowmatch && \
      python scripts/train.py --config=configs/cifar10_tpu.py --workdir=/mnt/shared/cifar10_tpu \
      --config.data.path=/tmp/cifar-10-python.tar.gz --distributed=on"
(--distributed=on: jax.distributed.initialize() finds the other hosts itself on Cloud TPU; a
single-host slice such as v4-8 or v5e-8 needs no flag.)  Other slices: keep 64 per chip, e.g.
--config.batch_size=2048 on a v5e-32.
Speed: one train step is 35.2 GFLOP per example (XLA's count), 36.0 TFLOP at batch 1024; peak of a
v4-32 is 16 x 275 TFLOP/s (bf16).  Step time and MFU not yet measured: run
python scripts/benchmark.py --unet_config=configs/cifar10_tpu.py on the slice.
Expected: not yet measured (see configs/cifar10.py for the single-accelerator reference).
Smoke variant (tests; the built-in digits data, no download): --config=configs/cifar10_tpu.py:smoke
"""

from configs import cifar10
from configs import cifar10_gpu8
from configs import default


def get_config(variant=""):
    c = cifar10.get_config()
    c.batch_size = 1024
    c.num_train_steps = 100_000
    c.steps_per_call = 10
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.ema_decay = 0.9992
    c.optimizer.learning_rate = 5.7e-4
    c.optimizer.warmup_steps = 625
    c.model.dtype = "bfloat16"
    c.parallel.mode = "sharding"
    c.parallel.data_axis_size = -1  # every chip of every host
    c.parallel.fsdp_axis_size = 1  # 36M parameters fit every chip many times over
    c.eval.num_image_samples = 1024  # 64 per chip
    c.eval.chunk_size = 1024
    c = default.apply_variant(c, variant)
    if variant == "smoke":
        cifar10_gpu8.smoke_model(c)
    return c
