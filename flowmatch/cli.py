"""Command-line entry points: the only place where flags are read.

scripts/train.py and scripts/sample.py call `train_main` / `sample_main` through `run`, which
turns a configuration or input error into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from flowmatch.train import ConfigError


def _fail(message: str):
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def run(main):
    """absl.app.run(main) with actionable errors reported without a traceback."""

    def wrapped(argv):
        try:
            return main(argv)
        except (ConfigError, FileNotFoundError) as e:
            _fail(str(e))

    try:
        app.run(wrapped)
    except flags.Error as e:  # pragma: no cover  (absl reports flag errors itself)
        _fail(str(e))


# --- train ---------------------------------------------------------------------------------


def define_train_flags():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", None, "Path to a config file, e.g. configs/checkerboard.py (append ':smoke' for "
        "the tiny test variant). Override fields with --config.a.b=value.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples. Running "
                        "the same command again resumes from its latest checkpoint. Multi-host: "
                        "one directory every process can reach (a shared file system: NFS, a gcsfuse "
                        "mount of a bucket).")
    flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0, "
                        "the same on every process (with --num_processes and --process_id).")
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, "
                         "0 .. num_processes - 1.")
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "jax.distributed without the three flags above: 'auto' starts it under a "
                      "multi-task SLURM job or a multi-host TPU environment, 'on' always (JAX "
                      "detects the cluster, e.g. on a Cloud TPU pod slice), 'off' never.")
    flags.mark_flags_as_required(["config", "workdir"])


def train_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    try:  # before anything else touches JAX
        parallel.maybe_initialize_distributed(f.coordinator_address, f.num_processes,
                                              f.process_id, mode=f.distributed)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    from flowmatch import train  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.INFO)
    train.train_and_evaluate(f.config, f.workdir)


# --- sample --------------------------------------------------------------------------------


def define_sample_flags():
    flags.DEFINE_string("workdir", None, "The --workdir of a training run.")
    flags.DEFINE_string("output", None, "Output .npz file; a picture is written beside it (.png).")
    flags.DEFINE_integer("num_samples", None, "Number of samples (default: the run's eval size).")
    flags.DEFINE_string("method", None, "Integrator (default: the run's config.sampling.method), "
                        "or for DDPM runs also 'ancestral' or 'ddim'.")
    flags.DEFINE_integer("steps", None, "Steps of a fixed-grid method (default: the run's "
                         "config.sampling.num_steps).")
    flags.DEFINE_float("rtol", None, "Relative tolerance of an adaptive method.")
    flags.DEFINE_float("atol", None, "Absolute tolerance of an adaptive method.")
    flags.DEFINE_integer("seed", 0, "Seed of the noise the samples start from.")
    flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
    flags.mark_flags_as_required(["workdir", "output"])


def sample_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    from flowmatch import generate  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    generate.sample_to_file(f.workdir, f.output, num_samples=f.num_samples, method=f.method,
                            num_steps=f.steps, rtol=f.rtol, atol=f.atol, seed=f.seed, step=f.step)


# --- compare integrators -------------------------------------------------------------------


def define_compare_flags():
    from flowmatch import compare  # pylint: disable=g-import-not-at-top
    flags.DEFINE_string("workdir", None, "The --workdir of a training run.")
    flags.DEFINE_string("output", None, "Output directory for integrators.json, .csv and .png.")
    flags.DEFINE_list("methods", list(compare.DEFAULT_METHODS), "Integrators to compare.")
    flags.DEFINE_list("nfe", [str(b) for b in compare.DEFAULT_NFE_BUDGETS],
                      "NFE budgets of the fixed-grid solves (positive integers).")
    flags.DEFINE_list("tolerances", [f"{t:g}" for t in compare.DEFAULT_TOLERANCES],
                      "rtol = atol values swept by the adaptive methods (bosh3, dopri5, tsit5).")
    flags.DEFINE_integer("num_samples", None, "Number of samples (default: the run's eval size).")
    flags.DEFINE_integer("seed", 0, "Seed of the noise every solve starts from.")
    flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
    flags.DEFINE_bool("nll", False, "2-D data: also the mean NLL (nats) of fresh data points per "
                      "integrator (exact divergence).")
    flags.mark_flags_as_required(["workdir", "output"])


def _parse_list(name: str, values, kind, what: str) -> list:
    try:
        return [kind(v) for v in values]
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of {what}, got "
                          f"{','.join(values)!r}") from None


def compare_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    from flowmatch import compare  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    compare.compare_integrators(
        f.workdir, f.output, methods=f.methods,
        nfe_budgets=_parse_list("nfe", f.nfe, int, "positive integers"),
        tolerances=_parse_list("tolerances", f.tolerances, float, "positive numbers"),
        num_samples=f.num_samples, seed=f.seed, step=f.step, nll=f.nll)


# --- benchmark -----------------------------------------------------------------------------


def define_benchmark_flags():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", "configs/checkerboard.py", "2-D config whose network is benchmarked.",
        lock_config=False)
    flags.DEFINE_bool("quick", False, "Fewer repeats (a smoke run of the benchmark itself).")
    flags.DEFINE_string("output", None, "Optional JSON file for the figures.")
    flags.DEFINE_string("unet_config", None, "Also benchmark the U-Net train step of this config "
                        "(e.g. configs/cifar10.py): FLOPs per step, step time, MFU on GPU/TPU, "
                        "per-device throughput at 1, 2, 4, 8 simulated CPU devices.")


def benchmark_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    import json  # pylint: disable=g-import-not-at-top
    from flowmatch import benchmark  # pylint: disable=g-import-not-at-top
    figures = benchmark.run(flags.FLAGS.config, quick=flags.FLAGS.quick)
    if flags.FLAGS.unet_config:
        import importlib.util  # pylint: disable=g-import-not-at-top
        from flowmatch import benchmark_parallel  # pylint: disable=g-import-not-at-top
        spec = importlib.util.spec_from_file_location("unet_config", flags.FLAGS.unet_config)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        figures["unet"] = benchmark_parallel.run_unet_benchmark(
            module.get_config(), repeats=2 if flags.FLAGS.quick else 5)
    if flags.FLAGS.output:
        with open(flags.FLAGS.output, "w") as f:
            json.dump(figures, f, indent=2)


# --- benchmark_ddpm ------------------------------------------------------------------------


def define_benchmark_ddpm_flags():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", None, "A configs/benchmark/*.py file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for both runs and the benchmark files.")
    flags.mark_flags_as_required(["config", "workdir"])


def benchmark_ddpm_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    from flowmatch import benchmark_ddpm  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    benchmark_ddpm.run_benchmark(flags.FLAGS.config, flags.FLAGS.workdir)
