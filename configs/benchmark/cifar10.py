"""FM vs DDPM on CIFAR-10 for an accelerator: the DDPM U-Net of configs/cifar10.py (35.7M
parameters) trained twice with identical budget, then FID (50,000 samples, Inception pool3
against the training split's statistics) over an NFE grid, and held-out bits/dim.

Needs two files the user provides (nothing is downloaded at run time):
  --config.data.path           the CIFAR-10 python tarball (see configs/cifar10.py)
  --config.benchmark.fid_weights  the FID Inception weights converted to .npz
                                  (flowmatch/models/inception.py: where to get, how to convert)
Run (one accelerator):
  python scripts/benchmark_ddpm.py --config=configs/benchmark/cifar10.py \
      --workdir=runs/bench_cifar10 --config.data.path=/data/cifar-10-python.tar.gz \
      --config.benchmark.fid_weights=/data/pt_inception-2015-12-05.npz

Expected runtime: an estimate, not a measurement (no accelerator run of this config yet).
XLA counts 35.2 GFLOP per example for one train step of this network (forward + backward;
`python scripts/benchmark.py --unet_config=configs/cifar10.py`), about 11.7 GFLOP per forward
evaluation.  Training: 2 models x 200,000 steps x 128 examples x 35.2 GFLOP = 1.8e18 FLOP.
Sampling: the grid below is about 3,300 network evaluations per sample (DDPM's 1,000-step
ancestral run is under a third of it), x 50,000 samples x 11.7 GFLOP = 1.9e18 FLOP.  At a sustained
150 TFLOP/s (about 30% of an H100's dense bf16 peak; float32 matmuls run as TF32) that is
about 3.3 h of training and 3.6 h of sampling, 7.5 h in all with the FID and bpd evaluations; on
an 8-chip TPU v4 slice about 4 times less.  Halve num_samples to 25,000 (FIDs not comparable
to the 50k literature values) or drop the ode_methods you don't need to save sampling time.
The training budget is a quarter of DDPM's 800k steps: expect FIDs above the papers' (DDPM
3.17, FM-OT 6.35 at their full budgets).
Smoke variant (tests; needs no weights when the test supplies a tiny extractor):
  --config=configs/benchmark/cifar10.py:smoke
"""

import importlib.util
import os

import ml_collections


def _cifar10_config(variant):
    # configs/cifar10.py by path (config files are loaded by path, not as a package).
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "cifar10.py")
    spec = importlib.util.spec_from_file_location("flowmatch_config_cifar10", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def get_config(variant=""):
    c = _cifar10_config(variant)
    c.num_train_steps = 200_000
    c.eval_every_steps = 50_000
    c.objective.beta_schedule = "linear"
    c.objective.num_timesteps = 1000
    c.eval.chunk_size = 1_000  # samples per compiled sampler call
    c.benchmark = ml_collections.ConfigDict(dict(
        figure_formats=("png",),  # add "pdf" or "svg" for vector figures
        seed=0, fm_prediction="velocity", ddpm_prediction="eps",
        nfe=(10, 20, 50, 100), ode_methods=("euler", "heun", "rk4", "dopri5"),
        tolerances=(1e-3, 1e-5), num_samples=50_000, num_bpd_images=1_000, bpd_tol=1e-5,
        vlb_terms=1000, fid_weights="", fid_stats="",
        # One multistep solver on both models (2 x 180 network evaluations per sample).
        solver_methods=("dpmpp_2m",), sde_methods=()))
    if variant == "smoke":
        c.objective.num_timesteps = 20
        c.eval.chunk_size = 8
        c.benchmark.nfe = (4,)
        c.benchmark.ode_methods = ("euler",)
        c.benchmark.tolerances = ()
        c.benchmark.num_samples = 8
        c.benchmark.solver_methods = ()
        c.benchmark.sde_methods = ()
        c.benchmark.num_bpd_images = 4
        c.benchmark.vlb_terms = 4
        c.benchmark.bpd_tol = 1e-2
    return c
