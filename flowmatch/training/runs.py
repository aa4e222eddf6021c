"""A run directory: its config, what rebuilds its model, and restoring it to sample.

    WORKDIR/config.json   the full config of the run (`save_config` / `load_config`)
    WORKDIR/run.json      a `RunSpec`: the data's example shape, classes and kind
    WORKDIR/checkpoints/  orbax checkpoints (`flowmatch.checkpoint`)

    run = restore("runs/moons")                  # never reads the training data
    run.components.make_sampler("rk4", num_steps=8), run.state.ema_params, run.step

Runs written before run.json existed are restored too: their spec is derived from the data set's
name (2-D sets and the built-in image sets have known shapes; image folders take image_size and
channels from the config; reflow pairs read their small manifest, not the pairs).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import ml_collections

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import fileio
from flowmatch import parallel as parallel_lib
from flowmatch.data import images as images_lib
from flowmatch.data import toy2d
from flowmatch.training import components as components_lib
from flowmatch.training import state as state_lib
from flowmatch.training.components import RunSpec

SPEC_FILE = "run.json"


def save_config(config, workdir: str) -> None:
    """Writes workdir/config.json atomically (a killed run leaves the old file or the new one)."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    fileio.write_atomic(os.path.join(workdir, "config.json"), lambda f: f.write(text.encode()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with (written at its start)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no config.json in {workdir!r}: is it the --workdir of a flowmatch training run?")
    with open(path) as f:
        raw = json.load(f)

    def fix(v):
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return tuple(fix(x) for x in v)
        return v

    return ml_collections.ConfigDict(fix(raw))


def spec_of_source(source, data_name: str) -> RunSpec:
    """The RunSpec of a loaded data source (`flowmatch.data.make_source`)."""
    name = getattr(source, "data_name", data_name)  # pairs: the data the pairs imitate
    box = getattr(source, "box", None)
    return RunSpec(data=name, kind=source.kind, example_shape=tuple(source.example_shape),
                   num_classes=int(getattr(source, "num_classes", 0) or 0),
                   box=None if box is None else tuple(tuple(map(float, b)) for b in box))


def write_spec(spec: RunSpec, workdir: str) -> None:
    text = json.dumps(spec.to_json(), indent=1)
    fileio.write_atomic(os.path.join(workdir, SPEC_FILE), lambda f: f.write(text.encode()))


def _legacy_spec(config) -> RunSpec:
    """The spec of a run from before run.json, from its config alone."""
    d = config.data
    if d.name in toy2d.TOY_DATASETS:
        box = tuple(tuple(map(float, b)) for b in toy2d.toy_box(d.name))
        return RunSpec(data=d.name, kind="toy2d", example_shape=(2,), box=box)
    if d.name == "pairs":
        from flowmatch.data import pairs as pairs_lib  # pylint: disable=g-import-not-at-top
        manifest = pairs_lib.read_manifest(d.path)
        if manifest is None:
            raise FileNotFoundError(f"the run trained on the pairs in {d.path!r}, which are gone, "
                                    f"and it has no {SPEC_FILE} to rebuild its model from")
        spec = manifest["spec"]
        box = (tuple(tuple(map(float, b)) for b in toy2d.toy_box(spec["data"]))
               if spec["kind"] == "toy2d" else None)
        return RunSpec(data=spec["data"], kind=spec["kind"],
                       example_shape=tuple(spec["example_shape"]),
                       num_classes=int(spec.get("num_classes", 0)), box=box)
    info = images_lib.image_dataset_info(d.name)
    size = info.image_size or d.image_size
    channels = {"digits": 1, "mnist": 1, "cifar10": 3}.get(d.name, d.get("channels", 3))
    classes = info.num_classes if info.num_classes is not None else config.model.get(
        "num_classes", 0)
    return RunSpec(data=d.name, kind="image", example_shape=(size, size, channels),
                   num_classes=int(classes or 0))


def read_spec(workdir: str, config=None) -> RunSpec:
    """The run's RunSpec (run.json, or derived from its config for older runs)."""
    path = os.path.join(workdir, SPEC_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return RunSpec.from_json(json.load(f))
    return _legacy_spec(config if config is not None else load_config(workdir))


class Run(NamedTuple):
    """A restored run: its config, components (model, objective, source, samplers), the train
    state of a checkpoint and that checkpoint's step."""

    workdir: str
    config: Any
    components: components_lib.Components
    state: state_lib.TrainState
    step: int


def build(workdir: str) -> tuple[Any, components_lib.Components]:
    """(config, components) of the run in `workdir`, without any checkpoint or data."""
    config = load_config(workdir)
    settings = components_lib.read_settings(config)
    return config, components_lib.build(settings, read_spec(workdir, config))


def restore(workdir: str, step: int | None = None, plan: parallel_lib.Plan | None = None) -> Run:
    """The run in `workdir` at checkpoint `step` (default: the newest that restores cleanly).

    plan: the devices to restore onto (default: every local device, data parallel, whatever
    layout the run was trained with; orbax reshards).  Reads config.json, run.json and the
    checkpoint, never the training data.
    """
    config, comps = build(workdir)
    plan = plan or parallel_lib.Plan.all_devices()
    abstract = state_lib.abstract_state(comps.model, comps.tx, comps.spec.example_shape,
                                        comps.conditional, plan)
    directory = os.path.join(workdir, "checkpoints")
    ckpt = checkpoint_lib.Checkpointer(directory, max_to_keep=comps.settings.checkpoint.max_to_keep)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}: train first with "
                                    f"scripts/train.py --workdir={workdir}")
        if step is None:
            restored = ckpt.restore_latest(abstract)
            if restored is None:
                raise FileNotFoundError(f"no checkpoint in {workdir} could be restored; see the log")
            step, state, _ = restored
        else:
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint at step {step} in {workdir}; available: "
                                        f"{steps}")
            state, _ = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return Run(workdir=workdir, config=config, components=comps, state=state, step=int(step))
