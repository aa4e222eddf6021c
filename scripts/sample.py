"""Sample a trained run with any sampler of the registry (flowmatch.sampling.METHODS).

  python scripts/sample.py --workdir=runs/checkerboard --output=runs/checkerboard/samples.npz \
      [--num_samples=N --method=rk4 --steps=8 --seed=0]
  python scripts/sample.py --workdir=runs/8gaussians_cond --output=/tmp/g.npz \
      --label=3 --guidance_scale=2 [--guidance_interval=0.2,0.8]

Writes OUTPUT (.npz: samples, nfe, passes, labels for class-conditional runs) and a .png beside
it; for 2-D data prints tv and w2 against fresh data of the sampled classes.  Kept short on purpose: the logic lives in
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
flags.DEFINE_integer("label", None, "Class of every sample of a class-conditional run (default: "
                     "the samples cycle through the classes 0, 1, ...).")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale w of a class-"
                   "conditional run: 1 = the conditional model, 0 = the unconditional one, > 1 "
                   "guides harder; each evaluation then costs 2 network passes.")
flags.DEFINE_list("guidance_interval", None, "lo,hi: guide only at times t in [lo, hi] (t = 0 "
                  "noise, t = 1 data), w = 1 elsewhere (Kynkaanniemi et al. 2024).")
flags.mark_flags_as_required(["workdir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    from flowmatch.experiments import sample  # pylint: disable=g-import-not-at-top
    interval = FLAGS.guidance_interval
    if interval is not None:
        interval = tuple(cli.parse_list("guidance_interval", interval, float, "two times lo,hi"))
    sample.sample_to_file(FLAGS.workdir, FLAGS.output, num_samples=FLAGS.num_samples,
                          method=FLAGS.method, num_steps=FLAGS.steps, rtol=FLAGS.rtol,
                          atol=FLAGS.atol, seed=FLAGS.seed, step=FLAGS.step, label=FLAGS.label,
                          guidance_scale=FLAGS.guidance_scale, guidance_interval=interval)


if __name__ == "__main__":
    cli.run(main)
