"""Every check of a training config, in one place, before any data is loaded or code compiled.

    validate(config)                                 names, numbers and combinations
    check_model_fits_data(config, model, source)     the network against the data's shapes
    check_workdir(config, workdir, mode)             a workdir that holds another run

`Experiment.from_config` calls the first two (the device layout is checked by
`parallel.check_batch` there too), `train_and_evaluate` the third.  Each problem is one
`ConfigError` line: the key, the value given, what is allowed, and what to do.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any

import numpy as np
from absl import logging


class ConfigError(ValueError):
    """A configuration that cannot run: the message says what was wrong and what to do."""


COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw",)
LR_SCHEDULES = ("cosine", "constant")
NONFINITE_POLICIES = ("skip", "stop")
WORKDIR_MODES = ("auto", "resume", "overwrite")
MAX_SEED = 2**31 - 1

# Keys that can change between two invocations on one workdir without making it another run:
# logging, evaluation, checkpointing, the device layout and the handling of non-finite steps
# (same maths; e.g. resuming on another machine, or switching to nonfinite.policy='skip').
HARMLESS_KEYS = ("progress_bar", "tensorboard", "log_every_steps", "eval_every_steps",
                 "checkpoint_every_steps", "steps_per_call", "grad_accum_steps", "parallel.",
                 "eval.", "sampling.", "checkpoint.", "nonfinite.")
# Keys that may change too, with a warning: num_train_steps (training a run for longer; the
# learning-rate schedule follows the new value from the restored step on).
NOTED_KEYS = ("num_train_steps",)
PREVIOUS_RUNS = "previous_runs"


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _get(config, key: str, default=KeyError):
    """config['a.b'] for a dotted key; `default` when a section or key is missing."""
    node = config
    for part in key.split("."):
        if node is None or part not in node:
            if default is KeyError:
                raise ConfigError(f"config has no key {key!r}; start from configs/default.py")
            return default
        node = node[part]
    return node


def _flag(key: str) -> str:
    return f"--config.{key}"


def check_positive_int(key: str, value: Any):
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}; set "
                          f"{_flag(key)}=N with N >= 1")


def check_choice(key: str, value: Any, allowed, what: str | None = None):
    if value not in allowed:
        raise ConfigError(f"unknown {what or key} {value!r}; choose one of: "
                          f"{', '.join(map(str, allowed))} (config key: {key})")


def check_range(key: str, value: Any, lo=None, hi=None, *, lo_open=False, hi_open=False):
    """value is a finite real number in the interval (None = unbounded on that side)."""
    ok = _is_real(value) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            want = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            want = f"{'<' if hi_open else '<='} {hi:g}"
        raise ConfigError(f"{key} must be {want}, got {value!r}; set {_flag(key)} to a number "
                          f"{want}")


def _known_datasets() -> tuple[str, ...]:
    from flowmatch import data as data_lib  # pylint: disable=g-import-not-at-top
    names = tuple(data_lib.DATASETS)
    return names + (("pairs",) if "pairs" not in names and hasattr(data_lib, "load_pairs")
                    else ())


def validate(config) -> None:
    """Raises ConfigError for the first problem found in `config`; needs no data, no devices."""
    from flowmatch import integrators  # pylint: disable=g-import-not-at-top
    from flowmatch import models  # pylint: disable=g-import-not-at-top
    from flowmatch import objectives  # pylint: disable=g-import-not-at-top
    from flowmatch import schedules  # pylint: disable=g-import-not-at-top

    for key in ("batch_size", "num_train_steps", "steps_per_call", "log_every_steps",
                "eval_every_steps", "checkpoint_every_steps"):
        check_positive_int(key, _get(config, key))
    for key in ("grad_accum_steps", "checkpoint.max_to_keep", "eval.num_tv_samples",
                "eval.num_w2_samples", "eval.tv_bins", "eval.chunk_size",
                "eval.num_plot_samples", "eval.num_image_samples",
                "nonfinite.max_consecutive_skips"):
        value = _get(config, key, None)
        if value is not None:
            check_positive_int(key, value)
    seed = _get(config, "seed")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**31 - 1], got {seed!r}; set "
                          "--config.seed")
    k = config.steps_per_call
    for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        if config[key] % k:
            raise ConfigError(
                f"{key}={config[key]} is not a multiple of steps_per_call={k}; logs, evaluations "
                "and checkpoints happen between jitted calls, so make it a multiple (or set "
                "steps_per_call=1)")
    if config.eval_every_steps % config.log_every_steps:
        raise ConfigError(
            f"eval_every_steps={config.eval_every_steps} must be a multiple of "
            f"log_every_steps={config.log_every_steps} (evaluation results go into that step's "
            "metrics row)")
    check_range("ema_decay", _get(config, "ema_decay"), 0.0, 1.0, hi_open=True)

    # Names.
    check_choice("data.name", _get(config, "data.name"), _known_datasets(), "dataset")
    check_choice("model.name", _get(config, "model.name"), tuple(models.MODELS), "model")
    check_choice("model.dtype", _get(config, "model.dtype"), COMPUTE_DTYPES)
    check_choice("path.schedule", _get(config, "path.schedule"), tuple(schedules.SCHEDULES),
                 "schedule")
    check_choice("objective.name", _get(config, "objective.name"), objectives.OBJECTIVES,
                 "objective")
    check_choice("sampling.method", _get(config, "sampling.method"), integrators.METHODS,
                 "integrator")
    check_choice("optimizer.name", _get(config, "optimizer.name"), OPTIMIZERS)
    check_choice("optimizer.schedule", _get(config, "optimizer.schedule"), LR_SCHEDULES)
    policy = _get(config, "nonfinite.policy", None)
    if policy is not None:
        check_choice("nonfinite.policy", policy, NONFINITE_POLICIES)

    # Optimizer numbers.
    check_range("optimizer.learning_rate", _get(config, "optimizer.learning_rate"), 0.0,
                lo_open=True)
    for key in ("optimizer.b1", "optimizer.b2"):
        check_range(key, _get(config, key), 0.0, 1.0, hi_open=True)
    check_range("optimizer.eps", _get(config, "optimizer.eps"), 0.0, lo_open=True)
    for key in ("optimizer.weight_decay", "optimizer.end_lr_factor", "optimizer.grad_clip_norm"):
        check_range(key, _get(config, key), 0.0)
    warmup = _get(config, "optimizer.warmup_steps")
    if not _is_int(warmup) or warmup < 0:
        raise ConfigError(f"optimizer.warmup_steps must be an integer >= 0, got {warmup!r}")

    # Sampler: a step count for fixed-grid methods, tolerances only for adaptive ones.
    s = config.sampling
    num_steps = s.get("num_steps")
    if num_steps is not None:
        check_positive_int("sampling.num_steps", num_steps)
    for key in ("rtol", "atol"):
        if s.get(key) is not None:
            check_range(f"sampling.{key}", s[key], 0.0, lo_open=True)
    tolerances = s.get("rtol") is not None or s.get("atol") is not None
    if s.method not in integrators.ADAPTIVE_METHODS and tolerances:
        raise ConfigError(
            f"sampling.rtol/atol are set but sampling.method={s.method!r} is a fixed-step "
            "method; drop the tolerances or choose an adaptive method: "
            f"{', '.join(integrators.ADAPTIVE_METHODS)}")
    if num_steps is None and not (tolerances and s.method in integrators.ADAPTIVE_METHODS):
        raise ConfigError(
            f"sampling.method={s.method!r} needs sampling.num_steps (a positive integer)"
            + (" or sampling.rtol/atol" if s.method in integrators.ADAPTIVE_METHODS else ""))

    _validate_data(config.data)


def _validate_data(d) -> None:
    name = d.name
    path = d.get("path") or ""
    if name in ("cifar10", "image_folder", "pairs") and not path:
        raise ConfigError(f"dataset {name!r} needs a path: set --config.data.path=..."
                          + (" (the CIFAR-10 python release, cifar-10-python.tar.gz)"
                             if name == "cifar10" else ""))
    if name == "image_folder":
        check_positive_int("data.image_size", d.get("image_size"))
        channels = d.get("channels", 3)
        if channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}; "
                              "set --config.data.channels")


def check_model_fits_data(config, model, source) -> None:
    """The network built from config.model against the data: kind, shapes, classes.

    source: a data source (`kind`, `example_shape`, `num_classes`).  For the U-Net this runs its
    own shape checks (levels vs image size, attention resolutions, heads) on the example shape,
    without tracing anything.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    name, d = config.model.name, config.data.name
    shape = tuple(source.example_shape)
    if name == "unet" and source.kind != "image":
        raise ConfigError(
            f"model 'unet' needs image data, but data.name={d!r} is {source.kind}; "
            "use model.name='mlp' for 2-D data")
    if name == "mlp" and len(shape) != 1:
        raise ConfigError(
            f"model 'mlp' takes vectors, but data {d!r} has examples of shape {shape}; "
            "use model.name='unet' for images")
    check_input = getattr(model, "_check_input", None)
    if check_input is not None:
        try:
            check_input(jax.ShapeDtypeStruct((1, *shape), jnp.float32))
        except ValueError as e:
            raise ConfigError(f"config.model does not fit data {d!r} of shape {shape}: {e}") from e
    out_channels = config.model.get("out_channels")
    if out_channels is not None and out_channels != shape[-1]:
        raise ConfigError(
            f"model.out_channels={out_channels} but data {d!r} has {shape[-1]} channels; the "
            "network predicts a tensor like its input: leave model.out_channels unset (None)")
    want = getattr(model, "num_classes", 0) or 0
    have = getattr(source, "num_classes", 0) or 0
    if want and not have:
        raise ConfigError(
            f"model.num_classes={want} makes the model class-conditional, but data {d!r} has no "
            "labels; set --config.model.num_classes=0")
    if want and want < have:
        raise ConfigError(
            f"model.num_classes={want} but data {d!r} has {have} classes (labels 0..{have - 1}); "
            f"set --config.model.num_classes={have} (or 0 for an unconditional model)")


# -- the workdir ------------------------------------------------------------------------------


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def harmless(key: str) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_KEYS)


def config_differences(old: dict, new: dict, *, noted: bool = False) -> list[str]:
    """`key: old -> new` for every setting that both configs have and that changes the run
    (with `noted`: only those of NOTED_KEYS, which are allowed with a warning).

    Keys in only one of them are not counted: a newer flowmatch adds settings with defaults.
    """
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b))
            if a[k] != b[k] and not harmless(k) and (k in NOTED_KEYS) == noted]


def config_as_json(config) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def holds_a_run(workdir: str) -> bool:
    """True if `workdir` has a config.json, metrics.jsonl or anything under checkpoints/."""
    ckpts = os.path.join(workdir, "checkpoints")
    return (os.path.exists(os.path.join(workdir, "config.json"))
            or os.path.exists(os.path.join(workdir, "metrics.jsonl"))
            or (os.path.isdir(ckpts) and bool(os.listdir(ckpts))))


def check_workdir(config, workdir: str, mode: str = "auto") -> str:
    """What to do with what `workdir` already holds; raises ConfigError if it is another run.

    mode 'auto' resumes a run with the same config (up to HARMLESS_KEYS) and refuses one with a
    different config; 'resume' continues it whatever its config ('keep_old_config': its
    config.json is kept beside the new one); 'overwrite' starts afresh after moving the old
    run aside ('move_aside').  Returns 'none', 'keep_old_config' or 'move_aside'.  Reads only.
    """
    check_choice("workdir mode", mode, WORKDIR_MODES)
    if not holds_a_run(workdir):
        return "none"
    if mode == "overwrite":
        return "move_aside"
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return "none"  # checkpoints without a config (e.g. written by reflow to start from)
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        if mode == "resume":
            return "keep_old_config"
        raise ConfigError(
            f"{path} cannot be read ({type(e).__name__}: {e}), so it is unknown whether this "
            "workdir holds the same run; pass --resume to continue its checkpoints, "
            "--overwrite to move it aside and start afresh, or choose another --workdir") from e
    new = config_as_json(config)
    for note in config_differences(old, new, noted=True):
        logging.warning("continuing the run in %s with %s", workdir, note)
    diffs = config_differences(old, new)
    if not diffs:
        return "none"
    if mode == "resume":
        return "keep_old_config"
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    raise ConfigError(
        f"{workdir} holds a run with a different config ({shown}); pass --resume to continue "
        f"its checkpoints with the new config, --overwrite to move that run into "
        f"{os.path.join(workdir, PREVIOUS_RUNS)}/ and start afresh, or choose another --workdir")


def _timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def apply_workdir_action(workdir: str, action: str) -> str | None:
    """Carries out `check_workdir`'s answer (process 0 only); returns what was done, or None.

    Nothing is deleted: 'move_aside' moves everything in workdir into
    previous_runs/<UTC time>/, 'keep_old_config' renames config.json to
    config.before-<UTC time>.json.
    """
    if action == "none":
        return None
    stamp = _timestamp()
    if action == "keep_old_config":
        old = os.path.join(workdir, "config.json")
        if not os.path.exists(old):
            return None
        kept = os.path.join(workdir, f"config.before-{stamp}.json")
        os.replace(old, kept)
        return f"continuing the run in {workdir} with a changed config; its old config is {kept}"
    if action == "move_aside":
        target = os.path.join(workdir, PREVIOUS_RUNS, stamp)
        n = 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(workdir, PREVIOUS_RUNS, f"{stamp}-{n}")
        os.makedirs(target)
        for name in sorted(os.listdir(workdir)):
            if name != PREVIOUS_RUNS:
                os.replace(os.path.join(workdir, name), os.path.join(target, name))
        return f"--overwrite: moved the previous run in {workdir} to {target} (nothing deleted)"
    raise ValueError(f"unknown workdir action {action!r}")
