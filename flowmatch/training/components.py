"""A training config read into typed settings and built into components, checked on the way.

    settings = read_settings(config)          # every section checked; no data, no devices
    comps = build(settings, spec)             # + the network, checked against the data's shapes

`read_settings` is config validation: each section goes into its component's own record
(`checks.from_section`: unknown keys are errors naming the key and the allowed ones; the record's
ValueError becomes a ConfigError naming the config key), and the combinations between sections
are checked here.  `build` makes the network, the objective, the source distribution, the
optimizer and the sampler defaults for data described by a `RunSpec` (example shape, classes):
from loaded data when training, from the run's `run.json` when restoring one to sample it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flowmatch import checks
from flowmatch import couplings as couplings_lib
from flowmatch import integrators
from flowmatch import models as models_lib
from flowmatch import objectives as objectives_lib
from flowmatch import parallel as parallel_lib
from flowmatch import paths as paths_lib
from flowmatch import sampling
from flowmatch.sampling import records
from flowmatch import schedules as schedules_lib
from flowmatch import sources as sources_lib
from flowmatch.checks import ConfigError
from flowmatch.training import settings as settings_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Sections of experiment drivers' configs; a training run takes them out first.
DRIVER_SECTIONS = {"benchmark": "scripts/benchmark_ddpm.py", "reflow": "scripts/reflow.py",
                   "reproduce": "scripts/reproduce_ot.py"}
SECTIONS = ("parallel", "data", "model", "path", "source", "coupling", "objective", "optimizer",
            "sampling", "eval", "checkpoint", "nonfinite")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What rebuilding a run's model needs besides its config: the data's shape and classes.

    Written to WORKDIR/run.json at the start of training, so restoring and sampling a run never
    read the training data.  kind: 'toy2d' or 'image'; data: the data set's name (for 'pairs'
    runs, the data the pairs were made from); box: a 2-D set's plotting / histogram box.
    """

    data: str
    kind: str
    example_shape: tuple
    num_classes: int = 0
    box: tuple | None = None

    def to_json(self) -> dict:
        return {"format": 1, "data": self.data, "kind": self.kind,
                "example_shape": list(self.example_shape), "num_classes": int(self.num_classes),
                "box": None if self.box is None else [list(map(float, b)) for b in self.box]}

    @classmethod
    def from_json(cls, d: dict) -> "RunSpec":
        box = d.get("box")
        return cls(data=d["data"], kind=d["kind"], example_shape=tuple(d["example_shape"]),
                   num_classes=int(d.get("num_classes", 0)),
                   box=None if box is None else tuple(tuple(b) for b in box))


class Settings(NamedTuple):
    """Every section of a training config as a checked record (sampling: resolved settings)."""

    train: settings_lib.TrainSettings
    data: settings_lib.DataSettings
    eval: settings_lib.EvalSettings
    optimizer: settings_lib.OptimizerSettings
    checkpoint: settings_lib.CheckpointSettings
    nonfinite: settings_lib.NonfiniteSettings
    parallel: parallel_lib.ParallelSettings
    coupling: couplings_lib.CouplingSettings
    source: dict
    path: dict
    objective: objectives_lib.FlowMatching | objectives_lib.DDPM
    model: dict
    sampling: dict


class Components(NamedTuple):
    """What a run is made of, built from its settings for data of `spec`."""

    settings: Settings
    spec: RunSpec
    model: Any                      # a flax module f(x, t, cond)
    objective: Any                  # flowmatch.objectives.FlowMatching or DDPM
    source: sources_lib.SourceDistribution
    tx: optax.GradientTransformation
    lr_schedule: Callable

    @property
    def conditional(self) -> bool:
        return getattr(self.model, "num_classes", 0) > 0

    @property
    def stochastic(self) -> bool:
        """Whether the network draws randomness in training (dropout > 0): the train step then
        gives each row its own dropout key (`training.step.batch_loss`, per_row)."""
        return float(getattr(self.model, "dropout", 0.0) or 0.0) > 0.0

    def apply(self, params, x, t, cond=None, *, train=False, dropout_key=None):
        rngs = {"dropout": dropout_key} if dropout_key is not None else None
        return self.model.apply({"params": params}, x, t, cond=cond, train=train, rngs=rngs)

    def model_fn(self, guidance_scale=None, guidance_interval=None) -> sampling.ModelFn:
        """The network as the samplers see it (`flowmatch.sampling`), guided with
        guidance_scale / guidance_interval (`sampling.ModelFn`; a conditional model only)."""
        if guidance_scale is not None and not self.conditional:
            raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional run, but "
                             "this model is unconditional (model.num_classes=0)")
        null = self.model.num_classes if self.conditional else None
        return sampling.ModelFn.from_objective(
            lambda params, x, t, cond: self.apply(params, x, t, cond), self.objective,
            guidance_scale=guidance_scale, guidance_interval=guidance_interval, null_label=null,
            scalar_time=True)  # the networks take t [B] or a scalar (flowmatch.models contract)

    def make_sampler(self, method=None, num_steps=None, rtol=None, atol=None, *,
                     guidance_scale=None, guidance_interval=None, **options):
        """A sampler of the registry with the run's defaults (config.sampling) filled in, guided
        when guidance_scale is set; its Samples carry `passes` (network passes)."""
        s = sampling.resolve(_Defaults(self.settings.sampling), method, num_steps, rtol, atol)
        model = self.model_fn(guidance_scale, guidance_interval)
        return records.with_passes(sampling.make_sampler(model, **s, **options), model)


class _Defaults(dict):
    def __getattr__(self, name):
        return self.get(name)


def _section(config, name):
    return config[name] if name in config else None


def _top_level(config) -> settings_lib.TrainSettings:
    for key in config:
        if key in DRIVER_SECTIONS:
            raise ConfigError(f"config section {key!r} belongs to {DRIVER_SECTIONS[key]}; run "
                              f"that script with this config, or remove the section to train")
    fields = checks.field_names(settings_lib.TrainSettings)
    checks.known_keys("", config, set(fields) | set(SECTIONS))
    return checks.from_section(settings_lib.TrainSettings,
                               {k: config[k] for k in fields if k in config}, "")


def _path_section(section) -> dict:
    """config.path: the schedule name and the union of the schedules' fields (each schedule takes
    its own); the chosen schedule is built to check its values."""
    section = dict(section or {"schedule": "cond_ot"})
    allowed = {"schedule"} | {f for cls in schedules_lib.SCHEDULES.values()
                              for f in checks.field_names(cls)}
    checks.known_keys("path.", section, allowed)
    name = checks.as_config_error("path", checks.choice, "schedule",
                                  section.get("schedule", "cond_ot"),
                                  tuple(schedules_lib.SCHEDULES), "schedule")
    fields = set(checks.field_names(schedules_lib.SCHEDULES[name]))
    kwargs = {k: v for k, v in section.items() if k in fields}
    checks.as_config_error("path", schedules_lib.make_schedule, name, **kwargs)
    return dict(schedule=name, **kwargs)


def _objective(section, path_kwargs):
    """config.objective: name plus the union of the objectives' fields (each takes its own)."""
    section = dict(section or {"name": "flow_matching"})
    allowed = {"name"} | {f for n in objectives_lib.OBJECTIVES
                          for f in objectives_lib.objective_fields(n)}
    checks.known_keys("objective.", section, allowed)
    name = section.get("name", "flow_matching")
    checks.as_config_error("objective", checks.choice, "name", name,
                           objectives_lib.OBJECTIVES, "objective")
    fields = objectives_lib.objective_fields(name)
    kwargs = {k: v for k, v in section.items() if k in fields}
    path = paths_lib.make_path(**path_kwargs)
    return checks.as_config_error("objective", objectives_lib.build_objective, name, path=path,
                                  **kwargs)


def _model_section(section) -> dict:
    section = dict(section or {})
    name = section.get("name", "mlp")
    checks.as_config_error("model", checks.choice, "name", name, tuple(models_lib.MODELS),
                           "model")
    checks.as_config_error("model", checks.choice, "dtype", section.get("dtype", "float32"),
                           tuple(DTYPES), "compute dtype")
    allowed = {"name", "dtype"} | set(models_lib.model_fields(models_lib.MODELS[name]))
    checks.known_keys("model.", section, allowed)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()}


def _sampling_section(section) -> dict:
    """config.sampling: the run's default sampler (method, num_steps | rtol / atol)."""
    section = dict(section or {})
    checks.known_keys("sampling.", section, ("method", "num_steps", "rtol", "atol"))
    d = _Defaults(dict(method="heun", num_steps=None, rtol=None, atol=None), **section)
    try:
        if (d.rtol is not None or d.atol is not None) and d.method not in integrators.ADAPTIVE_METHODS:
            raise ValueError(f"rtol/atol are set but method={d.method!r} is no adaptive ODE "
                             "method; drop the tolerances or choose one of: "
                             f"{', '.join(integrators.ADAPTIVE_METHODS)}")
        sampling.resolve(d)
    except ValueError as e:
        raise ConfigError(f"sampling: {e}") from e
    return dict(d)


def read_settings(config) -> Settings:
    """Every check of a training config that needs no data and no devices (see the module
    docstring); raises ConfigError for the first problem."""
    train = _top_level(config)
    get = lambda name: _section(config, name)  # noqa: E731
    rec = lambda cls, name: checks.from_section(cls, get(name), name)  # noqa: E731
    path = _path_section(get("path"))
    for name, cls in (("coupling", couplings_lib.CouplingSettings),
                      ("parallel", parallel_lib.ParallelSettings)):
        checks.known_keys(f"{name}.", dict(get(name) or {}), checks.field_names(cls))
    coupling = checks.as_config_error("coupling", couplings_lib.CouplingSettings.from_config,
                                      get("coupling"))
    source = dict(get("source") or {})
    checks.known_keys("source.", source, ("name", "scale"))
    parallel = checks.as_config_error("parallel", parallel_lib.ParallelSettings.from_config,
                                      get("parallel"))
    out = Settings(
        train=train, data=rec(settings_lib.DataSettings, "data"),
        eval=rec(settings_lib.EvalSettings, "eval"),
        optimizer=rec(settings_lib.OptimizerSettings, "optimizer"),
        checkpoint=rec(settings_lib.CheckpointSettings, "checkpoint"),
        nonfinite=rec(settings_lib.NonfiniteSettings, "nonfinite"), parallel=parallel,
        coupling=coupling, source=source, path=path, objective=_objective(get("objective"), path),
        model=_model_section(get("model")), sampling=_sampling_section(get("sampling")))
    _check_combinations(out)
    return out


def _check_combinations(s: Settings):
    if s.train.batch_size % s.train.grad_accum_steps:
        raise ConfigError(f"batch_size={s.train.batch_size} is not divisible by grad_accum_steps="
                          f"{s.train.grad_accum_steps}")
    fm = isinstance(s.objective, objectives_lib.FlowMatching)
    if not fm and (s.coupling.name != "independent" or s.source.get("name", "normal") != "normal"):
        raise ConfigError(
            f"objective.name='ddpm' draws its own Gaussian noise: it needs coupling.name="
            f"'independent' and source.name='normal', got {s.coupling.name!r} and "
            f"{s.source.get('name', 'normal')!r}; use objective.name='flow_matching' for couplings "
            "and other sources")
    if s.objective.label_dropout and not s.model.get("num_classes", 0):
        raise ConfigError(
            f"objective.label_dropout={s.objective.label_dropout} trains the null label of a "
            "class-conditional model, but model.num_classes=0 (unconditional); set "
            "model.num_classes to the data's classes, or objective.label_dropout=0")
    if s.coupling.name != "independent" and s.data.name == "pairs":
        raise ConfigError(
            f"data.name='pairs' trains on (x0, x1) pairs as they were written; coupling.name="
            f"{s.coupling.name!r} would re-pair them: set coupling.name='independent'")


def _check_model_fits_data(s: Settings, model, spec: RunSpec):
    name, d, shape = s.model.get("name", "mlp"), s.data.name, tuple(spec.example_shape)
    if name != "mlp" and spec.kind not in ("image", "latent"):
        raise ConfigError(f"model {name!r} needs image data, but data.name={d!r} is {spec.kind}; "
                          "use model.name='mlp' for 2-D data")
    if name == "mlp" and len(shape) != 1:
        raise ConfigError(f"model 'mlp' takes vectors, but data {d!r} has examples of shape "
                          f"{shape}; use model.name='unet' or 'dit' for images")
    check_input = getattr(model, "_check_input", None)
    if check_input is not None:
        try:
            check_input(jax.ShapeDtypeStruct((1, *shape), jnp.float32))
        except ValueError as e:
            raise ConfigError(f"config.model does not fit data {d!r} of shape {shape}: {e}") from e
    out_channels = s.model.get("out_channels")
    if out_channels is not None and out_channels != shape[-1]:
        raise ConfigError(
            f"model.out_channels={out_channels} but data {d!r} has {shape[-1]} channels; the "
            "network predicts a tensor like its input: leave model.out_channels unset (None)")
    want, have = getattr(model, "num_classes", 0) or 0, spec.num_classes
    if want and not have:
        dropout = (" and objective.label_dropout=0" if s.objective.label_dropout else "")
        raise ConfigError(f"model.num_classes={want} makes the model class-conditional, but data "
                          f"{d!r} has no labels; set --config.model.num_classes=0{dropout}")
    if want and want < have:
        raise ConfigError(f"model.num_classes={want} but data {d!r} has {have} classes (labels "
                          f"0..{have - 1}); set --config.model.num_classes={have} (or 0 for an "
                          "unconditional model)")
    if s.coupling.per_class and not have:
        raise ConfigError(f"coupling.per_class=True keeps pairs within a class, but data.name="
                          f"{d!r} has no labels; set coupling.per_class=False")


def make_optimizer(opt: settings_lib.OptimizerSettings, num_train_steps: int):
    """optax AdamW with linear warmup, cosine or constant decay, and global-norm clipping.

    Returns (tx, learning_rate_schedule)."""
    lr, warmup = opt.learning_rate, int(opt.warmup_steps)
    if opt.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(num_train_steps, warmup + 1), end_value=lr * opt.end_lr_factor)
    elif warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    else:
        schedule = optax.constant_schedule(lr)
    parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay))
    return optax.chain(*parts), schedule


def build(s: Settings, spec: RunSpec) -> Components:
    """The components of a run for data described by `spec`; ConfigError when they do not fit."""
    fields = {k: v for k, v in s.model.items() if k not in ("name", "dtype")}
    dtype = DTYPES[s.model.get("dtype", "float32")]
    model = checks.as_config_error("model", models_lib.build_model, s.model.get("name", "mlp"),
                                   dtype=dtype, **fields)
    _check_model_fits_data(s, model, spec)
    source = checks.as_config_error(
        "source", sources_lib.SourceDistribution, name=s.source.get("name", "normal"),
        scale=s.source.get("scale", 1.0), example_shape=tuple(spec.example_shape))
    tx, lr_schedule = make_optimizer(s.optimizer, s.train.num_train_steps)
    return Components(settings=s, spec=spec, model=model, objective=s.objective, source=source,
                      tx=tx, lr_schedule=lr_schedule)
