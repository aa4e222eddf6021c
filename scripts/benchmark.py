"""Speed figures, each printed beside its reference measured in the same run: the train step
beside a plain-JAX loop of the same network and torchcfm's loop; whole processes and start-up
beside torchcfm's process; the evaluation beside its sampling; sampling FLOP/s beside the
measured matmul peak and torchdiffeq's rk4; the OT-coupled step beside the uncoupled one and
torchcfm's OT-CFM; the coupling scope under data parallelism; the integrators' overhead over the
network; optionally the U-Net train step.  The torch references appear when torch, torchcfm,
POT and torchdiffeq import (run it in such a Python to get them).

  python scripts/benchmark.py [--config=configs/checkerboard.py] [--quick] [--output=bench.json]
      [--sections=train,process,eval,sampling,couplings,scope,integrators]
      [--unet_config=configs/cifar10.py [--unet_batch_per_device=64] [--unet_steps_per_call=10]
       [--unet_profile_dir=DIR]]

`--sections=` (empty) runs none of the 2-D sections (with --unet_config: the U-Net alone).
scripts/gpu_benchmark.sh runs the accelerator measurements of docs/speed.md in one command.

Kept short on purpose: the logic lives in flowmatch.experiments.speed and speed_unet.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", "configs/checkerboard.py", "2-D config whose network is benchmarked.",
    lock_config=False)
flags.DEFINE_bool("quick", False, "Fewer repeats and shorter runs (a smoke run of the "
                  "benchmark itself).")
flags.DEFINE_list("sections", None, "Which benchmarks to run (default all): train, process, "
                  "eval, sampling, couplings, scope, integrators; empty: none of them.")
flags.DEFINE_string("output", None, "Optional JSON file for the figures.")
flags.DEFINE_string("unet_config", None, "Also benchmark the U-Net train step of this config "
                    "(e.g. configs/cifar10.py): FLOPs per step, step time, MFU on GPU/TPU, "
                    "per-device throughput at 1, 2, 4, 8 simulated CPU devices.")
flags.DEFINE_integer("unet_batch_per_device", None, "U-Net benchmark: examples per device "
                     "(default: the config's batch_size over all devices on GPU/TPU, 2 on CPU).")
flags.DEFINE_integer("unet_steps_per_call", 1, "U-Net benchmark: train steps per compiled call "
                     "(on CPU: the steps per call timed beside one; default the config's).")
flags.DEFINE_string("unet_profile_dir", None, "U-Net benchmark on GPU/TPU: trace two calls with "
                    "jax's profiler into this directory and print where the device's time went.")
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv, example="--quick")
    from flowmatch import fileio  # pylint: disable=g-import-not-at-top
    from flowmatch.experiments import speed  # pylint: disable=g-import-not-at-top
    unet_config = cli.load_config_file(FLAGS.unet_config) if FLAGS.unet_config else None
    for name in ("unet_batch_per_device", "unet_steps_per_call"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            raise cli.ConfigError(f"--{name} must be a positive integer, got {value}")
    sections = speed.SECTIONS if FLAGS.sections is None else FLAGS.sections
    unknown = sorted(set(sections) - set(speed.SECTIONS))
    if unknown:
        raise cli.ConfigError(f"unknown --sections {unknown}; choose from "
                              f"{','.join(speed.SECTIONS)}")
    figures = speed.run(FLAGS.config, quick=FLAGS.quick, sections=sections)
    if unet_config is not None:
        from flowmatch.experiments import speed_unet  # pylint: disable=g-import-not-at-top
        figures["unet"] = speed_unet.run_unet_benchmark(
            unet_config, repeats=2 if FLAGS.quick else 5,
            batch_per_device=FLAGS.unet_batch_per_device,
            steps_per_call=FLAGS.unet_steps_per_call, profile_dir=FLAGS.unet_profile_dir)
    if FLAGS.output:
        fileio.write_json(FLAGS.output, figures, indent=2)


if __name__ == "__main__":
    cli.run(main)
