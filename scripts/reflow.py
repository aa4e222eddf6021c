"""Reflow (rectified flow) and one-step distillation.

  python scripts/reflow.py --config=configs/reflow_moons.py --workdir=runs/reflow_moons
  python scripts/reflow.py --pairs_from=runs/moons --workdir=runs/moons_pairs --num_pairs=100000 \
      [--chunk_size=10000 --method=dopri5 --rtol=1e-5 --atol=1e-5 --seed=0 --step=N]
  python scripts/reflow.py --config=configs/moons.py --distill_pairs=runs/moons_pairs \
      --workdir=runs/moons_distill [--init_from=runs/moons]

The first runs the whole chain (flow 1 -> pairs -> flow 2 ... -> distilled one-step model) and
writes evaluation.json / evaluation.md; rerunning it resumes.  The others are its parts alone.
Kept short on purpose: the logic lives in flowmatch.experiments.reflow.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "A reflow config, e.g. configs/reflow_moons.py (':smoke' for the tiny "
    "variant): runs its whole chain into --workdir.  With --distill_pairs, any training config.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the chain's stages (a rerun resumes), of the "
                    "pairs (--pairs_from) or of the one-step run (--distill_pairs).")
flags.DEFINE_string("pairs_from", None, "Only generate pairs: from the trained run in this "
                    "directory, into --workdir (resumable).")
flags.DEFINE_integer("num_pairs", None, "--pairs_from: number of pairs.")
flags.DEFINE_integer("chunk_size", 10_000, "--pairs_from: pairs per chunk file.")
flags.DEFINE_string("method", None, "--pairs_from: sampler (default: the run's "
                    "config.sampling.method).")
flags.DEFINE_integer("steps", None, "--pairs_from: steps of a fixed-step sampler.")
flags.DEFINE_float("rtol", None, "--pairs_from: relative tolerance of an adaptive method.")
flags.DEFINE_float("atol", None, "--pairs_from: absolute tolerance of an adaptive method.")
flags.DEFINE_integer("seed", 0, "--pairs_from: seed of the noise (chunk c draws with key "
                     "fold_in(rng.seed_stream(seed, 'pairs'), c)).")
flags.DEFINE_integer("step", None, "--pairs_from: checkpoint step to load (default: latest).")
flags.DEFINE_string("distill_pairs", None, "Only train a one-step model (t = 0, one Euler step) "
                    "on the pairs in this directory, with --config's settings.")
flags.DEFINE_string("init_from", None, "--distill_pairs: start from the parameters of this run "
                    "(the flow that made the pairs; same model).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    try:  # multi-host clusters (SLURM, TPU pods) are detected; see scripts/train.py for flags
        parallel.maybe_initialize_distributed(None, None, None, mode="auto")
    except ValueError as e:
        raise cli.ConfigError(str(e)) from e
    from flowmatch.experiments import reflow  # pylint: disable=g-import-not-at-top
    f = FLAGS
    logging.set_verbosity(logging.WARNING)
    if f.pairs_from:
        if f.distill_pairs or f.config is not None:
            raise cli.ConfigError("--pairs_from only generates pairs: drop --config and "
                                  "--distill_pairs (run them as a second command)")
        if f.num_pairs is None:
            raise cli.ConfigError("--pairs_from needs --num_pairs")
        reflow.generate_pairs(f.pairs_from, f.workdir, num_pairs=f.num_pairs,
                              chunk_size=f.chunk_size, method=f.method, num_steps=f.steps,
                              rtol=f.rtol, atol=f.atol, seed=f.seed, step=f.step)
    elif f.config is None:
        raise cli.ConfigError("--config is required (a reflow config, e.g. "
                              "configs/reflow_moons.py), unless --pairs_from is given")
    elif f.distill_pairs:
        reflow.train_distilled(f.config, f.workdir, f.distill_pairs, init_workdir=f.init_from)
    else:
        reflow.run_reflow(f.config, f.workdir)


if __name__ == "__main__":
    cli.run(main)
