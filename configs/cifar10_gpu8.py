"""cifar10_gpu8: configs/cifar10.py's DDPM-size U-Net (35,746,307 parameters) on one node of 8
GPUs: global batch 512 (64 per GPU), bfloat16 compute with float32 parameters and optimizer
state, data parallel over the 8 GPUs (jit with shardings).

Against configs/cifar10.py (batch 128, lr 2e-4, 800k steps, warmup 5k, EMA 0.9999) the schedule
is kept per example seen: 4x the batch, 1/4 of the steps and warmup (200k steps = the same
102.4M examples), EMA decay 0.9999^4 ~ 0.9996 (the same averaging horizon in examples), and
lr x sqrt(4) = 4e-4 (square-root scaling for Adam).  Derived, not yet tuned or measured.

Data: --config.data.path=... as in configs/cifar10.py (the python tarball).
Run (one node, 8 GPUs, one process):
  python scripts/train.py --config=configs/cifar10_gpu8.py --workdir=runs/cifar10_gpu8 \
      --config.data.path=/data/cifar-10-python.tar.gz
Several nodes of 8 GPUs (here 2; --workdir on a file system all nodes share, e.g. NFS):
  # on node k = 0, 1 (node 0's address first):
  python scripts/train.py --config=configs/cifar10_gpu8.py --workdir=/shared/runs/cifar10_gpu8 \
      --config.data.path=/data/cifar-10-python.tar.gz --config.batch_size=1024 \
      --coordinator_address=node0:12345 --num_processes=2 --process_id=k
  # or under SLURM, detected automatically (one task per node):
  srun --nodes=2 --ntasks-per-node=1 --gpus-per-task=8 python scripts/train.py \
      --config=configs/cifar10_gpu8.py --workdir=/shared/runs/cifar10_gpu8 \
      --config.data.path=/data/cifar-10-python.tar.gz --config.batch_size=1024
Exact float32 reproduction of configs/cifar10.py's trajectory on 8 GPUs instead: use
configs/cifar10.py itself (the same command; batch 128 = 16 per GPU).
Speed: one train step is 35.2 GFLOP per example (XLA's count), 18.0 TFLOP at batch 512.  Measured
on one H200 at this config's 64 images per GPU (2026-12-04, docs/speed.md "On one GPU"): 13.46 ms
a step, 4,755 images/s, MFU 16.8% of the data sheet's bfloat16 peak (the GPU idles between kernels
a quarter of the time; about half its kernel time is XLA's fusions around the convolutions); 8 GPUs
not measured.  Measure with
  scripts/gpu_benchmark.sh OUT    (or scripts/benchmark.py --unet_config=configs/cifar10_gpu8.py)
Expected: not yet measured (see configs/cifar10.py for the single-accelerator reference).
Smoke variant (tests; the built-in digits data, no download): --config=configs/cifar10_gpu8.py:smoke
"""

from configs import cifar10
from configs import default


def get_config(variant=""):
    c = cifar10.get_config()
    c.batch_size = 512
    c.num_train_steps = 200_000
    c.steps_per_call = 10
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.ema_decay = 0.9996
    c.optimizer.learning_rate = 4e-4
    c.optimizer.warmup_steps = 1_250
    c.model.dtype = "bfloat16"
    c.parallel.mode = "sharding"
    c.parallel.data_axis_size = -1  # every GPU of every process
    c.parallel.fsdp_axis_size = 1  # 36M parameters: replicating them is cheaper than sharding
    c.eval.num_image_samples = 512  # 64 per GPU
    c.eval.chunk_size = 512
    c = default.apply_variant(c, variant)
    if variant == "smoke":
        smoke_model(c)
    return c


def smoke_model(c):
    """The smoke variant: the same settings on scikit-learn's 8x8 digits and a tiny U-Net."""
    c.data.name = "digits"
    c.data.path = ""
    c.data.random_flip = False
    c.model.base_channels = 16
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.num_groups = 8
    c.model.attn_resolutions = (4,)
    c.sampling.method = "heun"
    c.sampling.rtol = c.sampling.atol = None
    return c
