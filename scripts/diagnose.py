"""Diagnostics of trained runs: exposure bias (and its corrections), coarse-to-fine spectra,
and the compute profile (roofline).

  python scripts/diagnose.py --workdir=runs/moons --output=runs/moons/diagnostics \\
      --analyses=exposure [--methods=euler,heun,rk4 --nfe=4,8,16,32,64 \\
      --corrections=time_shift,eps_scale=0.98,eps_scale=1.02]
  python scripts/diagnose.py --workdir=fm=runs/digits_fm,ddpm=runs/digits_ddpm \\
      --output=runs/digits_diag --analyses=spectra [--nfe=32 --fraction=0.9]
  python scripts/diagnose.py --output=runs/roofline --analyses=roofline \\
      [--roofline_configs=configs/moons.py,configs/digits.py --mlp_batches=1,256,65536]

Writes JSON + PNG per analysis into --output.  Kept short on purpose: the logic lives in
flowmatch.experiments.diagnose, where it is tested.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402
from flowmatch.experiments import diagnose  # noqa: E402

A = diagnose.ANALYSES
flags.DEFINE_list("analyses", list(A), f"Analyses to run: {', '.join(A)}.")
flags.DEFINE_list("workdir", [], "Training runs: exposure runs on each; spectra on the image runs "
                  "among them. NAME=DIR labels a run (e.g. fm=runs/fm,ddpm=runs/ddpm).")
flags.DEFINE_string("output", None, "Output directory for the JSON and PNG files.")
flags.DEFINE_list("methods", list(diagnose.DEFAULT_METHODS), "Fixed-grid integrators.")
flags.DEFINE_list("nfe", None, "NFE budgets (default: exposure "
                  f"{','.join(map(str, diagnose.DEFAULT_EXPOSURE_NFE))}; spectra "
                  f"{','.join(map(str, diagnose.DEFAULT_SPECTRA_NFE))}).")
flags.DEFINE_integer("num_samples", None, "Trajectories per analysis (default: see "
                     "flowmatch.experiments.diagnose).")
flags.DEFINE_integer("compare_samples", None, "Samples per solve of the corrections' comparison "
                     "(default: the run's eval size).")
flags.DEFINE_integer("seed", 0, "Seed of the noise.")
flags.DEFINE_list("corrections", list(diagnose.DEFAULT_CORRECTIONS), "Exposure-bias corrections "
                  "evaluated by the comparison harness (empty: none).")
flags.DEFINE_float("max_shift", 0.5, "time_shift: largest shift, as a fraction of a step.")
flags.DEFINE_float("fraction", diagnose.DEFAULT_FRACTION, "spectra: the fraction of its final "
                   "energy a ring must reach.")
flags.DEFINE_string("image_metric_cache", None, "exposure on digits / mnist runs: cache directory "
                    "of the feature classifier, to score corrections by its Frechet distance "
                    "(default: no image metric, traj_error only).")
flags.DEFINE_list("roofline_configs", list(diagnose.DEFAULT_ROOFLINE_CONFIGS),
                  "roofline: config files whose networks are profiled.")
flags.DEFINE_list("mlp_batches", None, "roofline: MLP batch sizes (default 1,16,256,4096,65536).")
flags.DEFINE_list("unet_batches", None, "roofline: U-Net batch sizes (default 1,8,64,256).")
flags.DEFINE_bool("measure_peaks", True, "roofline: measure this device's peak FLOP/s and "
                  "bandwidth (a matmul and a copy; about 10 s).")
flags.mark_flags_as_required(["output"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv, "--output=DIR")
    ints = lambda name: None if FLAGS[name].value is None else cli.parse_list(  # noqa: E731
        name, FLAGS[name].value, int, "positive integers")
    sizes = {model: ints(flag) for flag, model in (("mlp_batches", "mlp"),
                                                   ("unet_batches", "unet"))
             if FLAGS[flag].value is not None}
    logging.set_verbosity(logging.WARNING)
    diagnose.diagnose(
        FLAGS.analyses, cli.named_runs(FLAGS.workdir), FLAGS.output, methods=FLAGS.methods,
        nfe_budgets=ints("nfe"), num_samples=FLAGS.num_samples,
        compare_samples=FLAGS.compare_samples, seed=FLAGS.seed, corrections=FLAGS.corrections,
        max_shift=FLAGS.max_shift, fraction=FLAGS.fraction,
        image_metric_cache=FLAGS.image_metric_cache, roofline_configs=FLAGS.roofline_configs,
        batch_sizes=sizes, measure_peaks=FLAGS.measure_peaks)


if __name__ == "__main__":
    cli.run(main)
