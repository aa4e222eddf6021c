"""Train (or resume) a flow model.

  python scripts/train.py --config=configs/checkerboard.py --workdir=runs/checkerboard
  python scripts/train.py --config=configs/digits.py:smoke --workdir=/tmp/d --config.seed=1

Running the same command again resumes from the newest intact checkpoint, bit for bit.  SIGTERM
saves a checkpoint at the next step boundary and exits with status 0.  A workdir holding a run
with another config is refused unless --resume (continue it) or --overwrite (move it into
WORKDIR/previous_runs/ and start afresh) is given.  Exit status: 0 done or preempted, 2 bad
config or input, 1 stopped by non-finite steps or unusable checkpoints (one line, no traceback).
Compiled programs are kept between runs in ~/.cache/flowmatch/xla (a rerun starts in seconds;
FLOWMATCH_COMPILATION_CACHE=off turns it off).  This file is kept short on purpose: the logic lives in flowmatch.training, where it is tested.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flowmatch.experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/checkerboard.py (append ':smoke' for the "
    "tiny test variant). Override fields with --config.a.b=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples. Running the "
                    "same command again resumes from its latest checkpoint. Multi-host: one "
                    "directory every process can reach (a shared file system).")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0, the "
                    "same on every process (with --num_processes and --process_id).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, "
                     "0 .. num_processes - 1.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "jax.distributed without the "
                  "three flags above: 'auto' starts it under a multi-task SLURM job or a multi-host "
                  "TPU environment, 'on' always, 'off' never.")
flags.DEFINE_bool("resume", False, "Continue the run in --workdir even though its config.json "
                  "differs from --config (its old config is kept as config.before-TIME.json).")
flags.DEFINE_bool("overwrite", False, "Start afresh in --workdir: the run already there is moved "
                  "into WORKDIR/previous_runs/TIME/ (nothing is deleted).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    try:  # before anything else touches JAX
        parallel.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                              FLAGS.process_id, mode=FLAGS.distributed)
    except ValueError as e:
        raise cli.ConfigError(str(e)) from e
    if FLAGS.resume and FLAGS.overwrite:
        raise cli.ConfigError("--resume and --overwrite exclude each other: --resume continues the "
                              "run in --workdir, --overwrite moves it aside and starts afresh")
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import training  # pylint: disable=g-import-not-at-top
    name = "train.log" if jax.process_index() == 0 else f"train.{jax.process_index()}.log"
    mode = "resume" if FLAGS.resume else "overwrite" if FLAGS.overwrite else "auto"
    # Library logs (INFO) go to WORKDIR/train.log once the workdir is checked; the terminal shows
    # warnings, the progress bar and flowmatch's own lines.
    training.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, workdir_mode=mode,
        on_workdir_ready=lambda workdir: cli.log_to_file(os.path.join(workdir, name)))


if __name__ == "__main__":
    cli.run(main)
