"""imagenet64_dit_tpu: class-conditional DiT-B/2 (130.3M parameters) on 64x64 ImageNet images read
from prepared ArrayRecord shards, on a Cloud TPU pod slice (written for v5e-64: 64 chips, 16 hosts
of 4, 16 GiB HBM and 197 TFLOP/s bf16 peak per chip).  Flow matching with velocity prediction
(as SiT), uniform times, label dropout 0.1 (the null class that classifier-free guidance needs:
scripts/sample.py --guidance_scale), bfloat16 compute with float32 parameters and optimizer
state, every block rematerialised (remat "full") and run as one scan (scan_blocks).

Mesh (parallel.*): data -1 x fsdp 4 x tensor 2 = 8 x 4 x 2 on 64 chips.  The global batch, 1024,
is split over data x fsdp (32 rows per (data, fsdp) shard, each computed by the 2 chips of its
tensor pair); the parameters split by their logical axes, embed -> fsdp and heads / mlp ->
tensor (docs/parallel.md).  B/2 fits a chip without either: fsdp_axis_size=1,
tensor_axis_size=1 (pure data parallelism) may well be faster, and this layout is the one to
scale to L/2 or XL/2 (--config.model.width=1024 --config.model.depth=24
--config.model.num_heads=16 for L/2).  Multi-slice (e.g. 2 x v5e-64 over DCN):
--config.parallel.num_slices=2 (the data axis spans the slices).

Commands.  Prepare the shards once (ImageNet's train folder, class subfolders -> labels 0..999):
  python scripts/prepare_data.py --source=image_folder --input=/data/imagenet/train \\
      --output=/data/imagenet64 --image_size=64 --num_workers=32
copy or mount /data/imagenet64 on every host (e.g. gcsfuse), then on every worker:
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd flowmatch && \\
      python scripts/train.py --config=configs/imagenet64_dit_tpu.py \\
      --workdir=/mnt/shared/imagenet64_dit --config.data.path=/data/imagenet64 --distributed=on"
Sampling with guidance:
  python scripts/sample.py --workdir=/mnt/shared/imagenet64_dit --output=samples.npz \\
      --num_samples=50000 --guidance_scale=1.5
Latent variant (--config=configs/imagenet64_dit_tpu.py:latents): precomputed 32x32x4 latents of
256x256 images (the SD VAE's, scaled by 0.18215 as in DiT; write them as latents.npz with x and
label, then prepare_data.py --source=latents --input=latents.npz --output=/data/in256_latents);
the same network on 256 tokens, the setting of the DiT and SiT papers.

Schedule: DiT's 400K steps of 256 (102.4M examples) as 100K steps of 1024; AdamW, constant
learning rate 1e-4 x sqrt(4) = 2e-4 (square-root scaling), no weight decay; EMA 0.9999 per 256
-> 0.9999^4 ~ 0.9996 per step.  Derived, not tuned or measured.

Speed: an ESTIMATE until measured.  XLA's cost analysis of the lowered forward (batch 1, 2 flops
per multiply-add; tests/configs/test_imagenet64_dit_tpu.py recomputes the 64x64 figure):
  64x64x3 (1024 tokens): 214.1 GFLOP forward, 642 GFLOP per train example (3x: forward and
  backward; remat's recomputation not counted, as in MFU);  32x32x4 latents (256 tokens):
  46.2 GFLOP forward (23.1 G multiply-adds: DiT Table 4 gives 23.0 Gflops for B/2), 139 GFLOP
  per train example.
At an assumed 40% MFU: v5e (197 TFLOP/s): 123 images/s per chip (64x64), 569 (latents);
v4 (275 TFLOP/s): 171 and 794.  64 v5e chips: about 7,900 images/s, 0.13 s per step of 1024,
100K steps in about 3.6 hours (64x64).  Measure with scripts/benchmark.py on the slice.
Measured on one GPU (an H200, 2026-12-04, docs/speed.md "On one GPU"; blocks unrolled, no remat,
32 images a step, 64x64): 54.8 ms a step with cuDNN's fused attention (model.attention "auto"
takes it on a GPU), 375 TFLOP/s, MFU 38% of the H200's data sheet; 101.9 ms with XLA's.
Memory per chip (dit.memory_estimate with fsdp 4, bfloat16 activations, remat "full", 32 rows;
an upper bound, as the tensor axis splits further): 64x64: params 0.12 GiB, AdamW 0.24, EMA
0.12, grads 0.12, activations 3.8 = 4.5 GiB (remat "none": 39 GiB, does not fit 16 GiB);
latents: activations 0.68, total 1.3 GiB.  Counted from the mesh's shardings (the test): the
float32 parameters take 88.2 MB per chip of 521.2 MB (MLP and attention split 8 ways, adaLN 4).
Expected result (literature; the papers' figures are for the latent variant: ImageNet 256x256
as 32x32x4 SD-VAE latents, 400K steps of 256, FID-50K without guidance): DiT-B/2 43.5
(Peebles & Xie 2023, Table 4), SiT-B/2 33.0 (Ma et al. 2024, the same backbone trained with a
linear interpolant and velocity prediction, as here); L/2: 23.3 and 18.8.  For 64x64 pixels no
DiT-B/2 figure is published; expect samples recognisable by class with guidance, FID to be
measured.
Smoke variant (tests; the built-in digits, a tiny DiT, 1 device): :smoke
"""

from configs import default

VARIANTS = ("", "smoke", "latents")


def get_config(variant=""):
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; choose one of: (none), smoke, "
                         "latents  (e.g. --config=configs/imagenet64_dit_tpu.py:latents)")
    c = default.get_config()
    c.data.name = "arrayrecord"
    c.data.path = "/data/imagenet64"
    c.data.split = "train"
    c.data.image_size = 64
    c.data.channels = 3
    c.data.random_flip = True
    c.data.worker_count = 4
    default.for_images(c, num_samples=256)
    c.batch_size = 1024
    c.num_train_steps = 100_000
    c.steps_per_call = 10
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
    c.ema_decay = 0.9996
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "constant"
    c.optimizer.weight_decay = 0.0
    c.objective.prediction = "velocity"
    c.objective.label_dropout = 0.1
    c.model = default.dit_model("B/2", num_classes=1000, dtype="bfloat16", remat="full",
                                scan_blocks=True)
    c.parallel.mode = "sharding"
    c.parallel.data_axis_size = -1
    c.parallel.fsdp_axis_size = 4
    c.parallel.tensor_axis_size = 2
    c.parallel.num_slices = 1
    c.sampling.method = "heun"
    c.sampling.num_steps = 50
    if variant == "latents":
        c.data.path = "/data/in256_latents"
        c.data.image_size = 32
        c.data.channels = 4
    if variant == "smoke":
        c.data.name = "digits"
        c.data.path = ""
        c.data.image_size = 0
        c.data.channels = 1
        c.data.random_flip = False
        c.data.worker_count = 0
        c.model.update(width=32, depth=2, num_heads=2, num_classes=10)
        c.parallel.fsdp_axis_size = 1
        c.parallel.tensor_axis_size = 1
        c.batch_size = 16
        c.eval.num_image_samples = c.eval.num_plot_samples = c.eval.chunk_size = 4
    return default.apply_variant(c, "smoke" if variant == "smoke" else "")
