"""Sample a trained run with any sampler of the registry (flowmatch.sampling.METHODS).

  python scripts/sample.py --workdir=runs/checkerboard --output=runs/checkerboard/samples.npz \
      [--num_samples=N --method=rk4 --steps=8 --seed=0]

Writes OUTPUT (.npz: samples, nfe, labels for class-conditional runs) and a .png beside it; for
2-D data prints tv and w2 against fresh data.  Kept short on purpose: the logic lives in
flowmatch.experiments.sample.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

flags.DEFINE_string("workdir", None, "The --workdir of a training run.")
flags.DEFINE_string("output", None, "Output .npz file; a picture is written beside it (.png).")
flags.DEFINE_integer("num_samples", None, "Number of samples (default: the run's eval size).")
flags.DEFINE_string("method", None, "Sampler (default: the run's config.sampling.method): an ODE "
                    "integrator (euler, heun, rk4, dopri5, ...) or 'ancestral' / 'ddim'.")
flags.DEFINE_integer("steps", None, "Steps of a fixed-step sampler (default: the run's "
                     "config.sampling.num_steps; ancestral: all of a DDPM model's T; ddim: 50).")
flags.DEFINE_float("rtol", None, "Relative tolerance of an adaptive ODE method.")
flags.DEFINE_float("atol", None, "Absolute tolerance of an adaptive ODE method.")
flags.DEFINE_integer("seed", 0, "Seed of the noise the samples start from.")
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
flags.mark_flags_as_required(["workdir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    from flowmatch.experiments import sample  # pylint: disable=g-import-not-at-top
    sample.sample_to_file(FLAGS.workdir, FLAGS.output, num_samples=FLAGS.num_samples,
                          method=FLAGS.method, num_steps=FLAGS.steps, rtol=FLAGS.rtol,
                          atol=FLAGS.atol, seed=FLAGS.seed, step=FLAGS.step)


if __name__ == "__main__":
    cli.run(main)
