"""A workdir that already holds a run: resume it, refuse it, or move it aside.

    action = check_workdir(config, workdir, mode)      # reads only; ConfigError if it is another run
    apply_workdir_action(workdir, action)              # process 0: nothing is ever deleted
"""

from __future__ import annotations

import datetime
import json
import os

import jax
from absl import logging

from flowmatch import checks
from flowmatch.checks import ConfigError

WORKDIR_MODES = ("auto", "resume", "overwrite")
# Keys that can change between two invocations on one workdir without making it another run:
# logging, evaluation, checkpointing, the device layout, the kernel of the DiT's attention, where
# the couplings are solved and the handling of non-finite steps (same maths; e.g. resuming a GPU
# run on another machine, or switching to nonfinite.policy='skip').
HARMLESS_KEYS = ("progress_bar", "tensorboard", "wandb_project", "wandb_entity", "log_every_steps",
                 "eval_every_steps", "checkpoint_every_steps", "steps_per_call",
                 "grad_accum_steps", "parallel.", "model.attention", "eval.", "sampling.",
                 "checkpoint.", "nonfinite.", "coupling.ahead_threads",
                 "coupling.auction_kernel")
# Keys that may change too, with a warning: num_train_steps (training a run for longer; the
# learning-rate schedule follows the new value from the restored step on).
NOTED_KEYS = ("num_train_steps",)
PREVIOUS_RUNS = "previous_runs"


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
    checks.choice("mode", mode, WORKDIR_MODES, "workdir mode")
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
        logging.info("continuing the run in %s with %s", workdir, note)
        if jax.process_index() == 0:
            print(f"flowmatch: note: continuing the run in {workdir} with {note} (the run was "
                  "trained with the old value; the learning-rate schedule follows the new one "
                  "from the restored step on)", flush=True)
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
