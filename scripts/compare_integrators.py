"""Compare integrators on a trained run: sample quality and integration error against NFE.

  python scripts/compare_integrators.py --workdir=runs/checkerboard \
      --output=runs/checkerboard/integrators [--methods=euler,heun,rk4,dopri5 \
      --nfe=2,4,8,16,32,64,128 --tolerances=1e-1,1e-2,1e-3,1e-4,1e-5 --num_samples=N --seed=0 \
      --reference_tol=1e-7 --nll --corrections=time_shift,eps_scale=1.02]

Writes integrators.json, integrators.csv and integrators.png into --output and prints the table.
Kept short on purpose: the logic lives in flowmatch.experiments.compare, where it is tested.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402
from flowmatch.experiments import compare  # noqa: E402

flags.DEFINE_string("workdir", None, "The --workdir of a training run.")
flags.DEFINE_string("output", None, "Output directory for integrators.json, .csv and .png.")
flags.DEFINE_list("methods", list(compare.DEFAULT_METHODS),
                  "Sampling methods to compare: integrators, or any other of the registry "
                  "(dpmpp_2m, dpmpp_3m, unipc, sde_euler, sde_heun, ancestral, ddim).")
flags.DEFINE_list("nfe", [str(b) for b in compare.DEFAULT_NFE_BUDGETS],
                  "NFE budgets of the fixed-grid solves (positive integers).")
flags.DEFINE_list("tolerances", [f"{t:g}" for t in compare.DEFAULT_TOLERANCES],
                  "rtol = atol values swept by the adaptive methods (bosh3, dopri5, tsit5).")
flags.DEFINE_integer("num_samples", None, "Number of samples (default: 20,000 for 2-D data, minutes "
                     "on a laptop; the run's eval.num_tv_samples, e.g. 100000, for final figures, "
                     "about 5x the time; images: the run's eval size).")
flags.DEFINE_float("reference_tol", compare.REFERENCE_TOL,
                   "rtol = atol of the dopri5 reference every solve is measured against (the "
                   "longest solve: on the digits U-Net 2,222 NFE for 100 samples at 1e-7, 1,172 "
                   "at 1e-6; a looser reference is faster and less exact).")
flags.DEFINE_integer("seed", 0, "Seed of the noise every solve starts from.")
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
flags.DEFINE_bool("nll", False, "2-D data: also the mean NLL (nats) of fresh data points per "
                  "integrator (exact divergence).")
flags.DEFINE_list("figure_formats", ["png"], "Figure files to write: png, pdf and/or svg "
                  "(vector, for a paper).")
flags.DEFINE_list("corrections", [], "Exposure-bias corrections run on every fixed-grid solve as "
                  "extra rows: time_shift, eps_scale=LAM (e.g. eps_scale=1.02).")
flags.mark_flags_as_required(["workdir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    compare.compare_integrators(
        FLAGS.workdir, FLAGS.output, methods=FLAGS.methods,
        nfe_budgets=cli.parse_list("nfe", FLAGS.nfe, int, "positive integers"),
        tolerances=cli.parse_list("tolerances", FLAGS.tolerances, float, "positive numbers"),
        num_samples=FLAGS.num_samples, seed=FLAGS.seed, step=FLAGS.step, nll=FLAGS.nll,
        reference_tol=FLAGS.reference_tol,
        corrections=FLAGS.corrections,
        figure_formats=cli.parse_list("figure_formats", FLAGS.figure_formats, str,
                                      "png, pdf or svg"))


if __name__ == "__main__":
    cli.run(main)
