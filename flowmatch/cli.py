"""Command-line entry points: the only place where flags are read.

scripts/train.py and scripts/sample.py call `train_main` / `sample_main` through `run`, which
turns a configuration or input error into one line on stderr and exit status 2, a run stopped by
non-finite values or unusable checkpoints into one line and exit status 1 (no traceback), and a
preemption (SIGTERM: checkpoint saved) into exit status 0.
"""

from __future__ import annotations

import re
import sys

from absl import app
from absl import flags
from absl import logging

from flowmatch.checkpoint import CheckpointError
from flowmatch.checkpoint import Preempted
from flowmatch.train import ConfigError
from flowmatch.train import NonFiniteError


def _one_line(message: str) -> str:
    """A multi-line message on one line; one carrying a traceback (ml_collections embeds one
    when a config file fails to load) is cut to where it comes from and its final error."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)]
        if errors:
            return f"{lines[0].split(': ')[0]}: {errors[-1].split(': ', 1)[1]}"
    return " ".join(lines)


def _fail(message: str, status: int = 2):
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(status)


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag (or a config file that fails to load) as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}; see --helpshort")


def run(main):
    """absl.app.run(main) with actionable errors reported without a traceback."""

    def wrapped(argv):
        try:
            return main(argv)
        except (ConfigError, FileNotFoundError) as e:
            _fail(str(e))
        except (NonFiniteError, CheckpointError) as e:
            _fail(str(e), status=1)
        except Preempted as e:  # the checkpoint is saved: a clean exit the scheduler can restart
            sys.stderr.write(f"{e}\n")
            sys.stderr.flush()
            sys.exit(0)

    app.run(wrapped, flags_parser=_parse_flags)


# --- train ---------------------------------------------------------------------------------


def define_train_flags():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", None, "Path to a config file, e.g. configs/checkerboard.py (append ':smoke' for "
        "the tiny test variant). Override fields with --config.a.b=value.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples. Running "
                        "the same command again resumes from its latest checkpoint. Multi-host: "
                        "one directory every process can reach (a shared file system: NFS, a "
                        "gcsfuse mount of a bucket).")
    flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0, "
                        "the same on every process (with --num_processes and --process_id).")
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, "
                         "0 .. num_processes - 1.")
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "jax.distributed without the three flags above: 'auto' starts it under a "
                      "multi-task SLURM job or a multi-host TPU environment, 'on' always (JAX "
                      "detects the cluster, e.g. on a Cloud TPU pod slice), 'off' never.")
    flags.DEFINE_bool("resume", False, "Continue the run in --workdir even though its config.json "
                      "differs from --config (its old config is kept as config.before-TIME.json). "
                      "Without it (or --overwrite) such a workdir is refused.")
    flags.DEFINE_bool("overwrite", False, "Start afresh in --workdir: the run already there is "
                      "moved into WORKDIR/previous_runs/TIME/ (nothing is deleted).")
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
    if f.resume and f.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the run "
                          "in --workdir, --overwrite moves it aside and starts afresh")
    from flowmatch import train  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.INFO)
    mode = "resume" if f.resume else "overwrite" if f.overwrite else "auto"
    train.train_and_evaluate(f.config, f.workdir, workdir_mode=mode)


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
    flags.DEFINE_list("corrections", [], "Exposure-bias corrections run on every fixed-grid "
                      "solve as extra rows: time_shift, eps_scale=LAM (e.g. eps_scale=1.02).")
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
        num_samples=f.num_samples, seed=f.seed, step=f.step, nll=f.nll,
        corrections=f.corrections)


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


# --- reproduce_ot --------------------------------------------------------------------------


def define_reproduce_ot_flags():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", None, "configs/ot_8gaussians_moons.py (its `reproduce` block lists the "
        "couplings and seeds).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for every run and ot_reproduction.{json,md}; "
                        "running again resumes and skips finished runs.")
    flags.mark_flags_as_required(["config", "workdir"])


def reproduce_ot_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    from flowmatch import reproduce_ot  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    reproduce_ot.reproduce(flags.FLAGS.config, flags.FLAGS.workdir)


# --- reflow --------------------------------------------------------------------------------


def define_reflow_flags():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", None, "A reflow config, e.g. configs/reflow_moons.py (':smoke' for the tiny "
        "variant): runs its whole chain into --workdir.  With --distill_pairs, any training "
        "config.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory of the chain's stages (a rerun resumes), of "
                        "the pairs (--pairs_from) or of the one-step run (--distill_pairs).")
    flags.DEFINE_string("pairs_from", None, "Only generate pairs: from the trained run in this "
                        "directory, into --workdir (resumable).")
    flags.DEFINE_integer("num_pairs", None, "--pairs_from: number of pairs.")
    flags.DEFINE_integer("chunk_size", 10_000, "--pairs_from: pairs per chunk file.")
    flags.DEFINE_string("method", None, "--pairs_from: integrator (default: the run's "
                        "config.sampling.method).")
    flags.DEFINE_integer("steps", None, "--pairs_from: steps of a fixed-grid method.")
    flags.DEFINE_float("rtol", None, "--pairs_from: relative tolerance of an adaptive method.")
    flags.DEFINE_float("atol", None, "--pairs_from: absolute tolerance of an adaptive method.")
    flags.DEFINE_integer("seed", 0, "--pairs_from: seed of the noise (chunk c uses "
                         "fold_in(PRNGKey(seed), c)).")
    flags.DEFINE_integer("step", None, "--pairs_from: checkpoint step to load (default: latest).")
    flags.DEFINE_string("distill_pairs", None, "Only train a one-step model (t = 0, one Euler "
                        "step) on the pairs in this directory, with --config's settings.")
    flags.DEFINE_string("init_from", None, "--distill_pairs: start from the parameters of this "
                        "run (the flow that made the pairs; same model).")
    flags.mark_flags_as_required(["workdir"])


def reflow_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    try:  # multi-host clusters (SLURM, TPU pods) are detected; see scripts/train.py for flags
        parallel.maybe_initialize_distributed(None, None, None, mode="auto")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    from flowmatch import reflow  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    try:
        if f.pairs_from:
            if f.distill_pairs or f.config is not None:
                raise ConfigError("--pairs_from only generates pairs: drop --config and "
                                  "--distill_pairs (run them as a second command)")
            if f.num_pairs is None:
                raise ConfigError("--pairs_from needs --num_pairs")
            reflow.generate_pairs(f.pairs_from, f.workdir, num_pairs=f.num_pairs,
                                  chunk_size=f.chunk_size, method=f.method, num_steps=f.steps,
                                  rtol=f.rtol, atol=f.atol, seed=f.seed, step=f.step)
        elif f.config is None:
            raise ConfigError("--config is required (a reflow config, e.g. "
                              "configs/reflow_moons.py), unless --pairs_from is given")
        elif f.distill_pairs:
            reflow.train_distilled(f.config, f.workdir, f.distill_pairs, init_workdir=f.init_from)
        else:
            reflow.run_reflow(f.config, f.workdir)
    except ValueError as e:  # invalid pairs directories, settings
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e


# --- diagnose ------------------------------------------------------------------------------


ANALYSES = ("exposure", "spectra", "roofline")


def define_diagnose_flags():
    from flowmatch.diagnostics import report  # pylint: disable=g-import-not-at-top
    flags.DEFINE_list("analyses", list(ANALYSES), f"Analyses to run: {', '.join(ANALYSES)}.")
    flags.DEFINE_list("workdir", [], "Training runs: exposure runs on each; spectra on the image "
                      "runs among them. NAME=DIR labels a run (e.g. fm=runs/fm,ddpm=runs/ddpm).")
    flags.DEFINE_string("output", None, "Output directory for the JSON and PNG files.")
    flags.DEFINE_list("methods", list(report.DEFAULT_METHODS), "Fixed-grid integrators.")
    flags.DEFINE_list("nfe", None, "NFE budgets (default: exposure "
                      f"{','.join(map(str, report.DEFAULT_EXPOSURE_NFE))}; spectra "
                      f"{','.join(map(str, report.DEFAULT_SPECTRA_NFE))}).")
    flags.DEFINE_integer("num_samples", None, "Trajectories per analysis (default: see "
                         "flowmatch.diagnostics.report).")
    flags.DEFINE_integer("compare_samples", None, "Samples per solve of the corrections' "
                         "comparison (default: the run's eval size).")
    flags.DEFINE_integer("seed", 0, "Seed of the noise.")
    flags.DEFINE_list("corrections", list(report.DEFAULT_CORRECTIONS), "Exposure-bias "
                      "corrections evaluated by the comparison harness (empty: none).")
    flags.DEFINE_float("max_shift", 0.5, "time_shift: largest shift, as a fraction of a step.")
    flags.DEFINE_float("fraction", report.DEFAULT_FRACTION, "spectra: the fraction of its final "
                       "energy a ring must reach.")
    flags.DEFINE_string("image_metric_cache", None, "exposure on digits / mnist runs: cache "
                        "directory of the feature classifier, to score corrections by its "
                        "Frechet distance (default: no image metric, traj_error only).")
    flags.DEFINE_list("roofline_configs", ["configs/moons.py", "configs/digits.py"],
                      "roofline: config files whose networks are profiled.")
    flags.DEFINE_list("mlp_batches", None, "roofline: MLP batch sizes (default 1,16,256,4096,"
                      "65536).")
    flags.DEFINE_list("unet_batches", None, "roofline: U-Net batch sizes (default 1,8,64,256).")
    flags.DEFINE_bool("measure_peaks", True, "roofline: measure this device's peak FLOP/s and "
                      "bandwidth (a matmul and a copy; about 10 s).")
    flags.mark_flags_as_required(["output"])


def _named_runs(values) -> dict:
    runs = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = v.rstrip("/").split("/")[-1], v
        runs[name] = path
    return runs


def _load_config_file(path: str):
    import importlib.util  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    file, _, variant = path.partition(":")
    if not os.path.exists(file):
        raise ConfigError(f"no config file {file!r}")
    spec = importlib.util.spec_from_file_location(f"diagnose_config_{len(path)}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def diagnose_main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like --output=DIR")
    import os  # pylint: disable=g-import-not-at-top
    from flowmatch import train  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    from flowmatch.diagnostics import report  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    unknown = sorted(set(f.analyses) - set(ANALYSES))
    if unknown or not f.analyses:
        raise ConfigError(f"unknown analyses {unknown}; choose from: {', '.join(ANALYSES)}")
    runs = _named_runs(f.workdir)
    if {"exposure", "spectra"} & set(f.analyses) and not runs:
        raise ConfigError("exposure and spectra need --workdir (one or more training runs)")
    data = {name: train.load_config(w).data.name for name, w in runs.items()}
    nfe = None if f.nfe is None else _parse_list("nfe", f.nfe, int, "positive integers")
    logging.set_verbosity(logging.WARNING)
    if "exposure" in f.analyses:
        for name, workdir in runs.items():
            quality = None
            if f.image_metric_cache and data[name] in ("digits", "mnist"):
                from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
                metric = image_metrics.make_image_metric(data[name], f.image_metric_cache)
                quality = lambda samples, m=metric: {"fd": m(samples)["fd"]}
            report.exposure_report(
                workdir, os.path.join(f.output, f"exposure_{name}"), methods=f.methods,
                nfe_budgets=nfe or report.DEFAULT_EXPOSURE_NFE, num_samples=f.num_samples,
                seed=f.seed, corrections=f.corrections, max_shift=f.max_shift,
                quality_fn=quality, compare_samples=f.compare_samples)
    if "spectra" in f.analyses:
        images = {n: w for n, w in runs.items() if data[n] not in toy2d.TOY_DATASETS}
        if not images:
            raise ConfigError("spectra need image runs; none of --workdir trained on images")
        report.spectra_report(images, os.path.join(f.output, "spectra"), methods=f.methods,
                              nfe_budgets=nfe or report.DEFAULT_SPECTRA_NFE,
                              num_samples=f.num_samples, seed=f.seed, fraction=f.fraction)
    if "roofline" in f.analyses:
        configs = {}
        for path in f.roofline_configs:
            config = _load_config_file(path)
            configs[config.model.name if config.model.name not in configs else path] = config
        sizes = {}
        for flag, model in (("mlp_batches", "mlp"), ("unet_batches", "unet")):
            if getattr(f, flag) is not None:
                sizes[model] = _parse_list(flag, getattr(f, flag), int, "positive integers")
        report.roofline_report(configs, os.path.join(f.output, "roofline"), batch_sizes=sizes,
                               measure_peaks=f.measure_peaks)
