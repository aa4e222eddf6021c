"""The training loop: one loop for every objective, model and dataset.

    train_and_evaluate(config, workdir)

reads the ConfigDict once (`Experiment.from_config`, which validates everything before any
compilation, the device mesh included) and from then on works with plain objects.  One compiled
call runs `config.steps_per_call` train steps under `lax.scan` with the state donated.

Randomness: step k uses key_k = fold_in(train_key, k), and example j of the global batch draws its
time, noise and dropout from fold_in(key_k, j) alone (`Experiment.batch_loss`).  Data batch k is a
pure function of (seed, k).  So a resumed run repeats exactly the randomness of an uninterrupted
one, and 1, 2 or 512 devices, jit or pmap, with or without gradient accumulation compute the same
losses and gradients up to the order of float reductions.

Parallelism (`flowmatch.parallel`): `config.parallel` gives a ("data", "fsdp") mesh; the global
batch (`config.batch_size`) is split over all its devices, and the step runs as one jit program
over sharded global arrays (mode "sharding") or under `jax.pmap` (mode "pmap").  Every process
loads only its own rows of each global batch.

Files written under `workdir` (by process 0 only): config.json, metrics.jsonl (one JSON object per
logged step), samples_<step>.png, TensorBoard events if asked for; checkpoints/<step>/ (orbax,
written by all processes together).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import data as data_lib
from flowmatch import ema as ema_lib
from flowmatch import evaluation
from flowmatch import integrators
from flowmatch import metrics as metrics_lib
from flowmatch import models as models_lib
from flowmatch import objectives as objectives_lib
from flowmatch import parallel as parallel_lib
from flowmatch import paths as paths_lib
from flowmatch import sampling
from flowmatch import schedules as schedules_lib


class ConfigError(ValueError):
    """A configuration that cannot run: the message says what was wrong and what to do."""


@flax.struct.dataclass
class TrainState:
    """Everything that evolves during training (the data position is step-derived)."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    ema_params: Any


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def make_optimizer(opt: ml_collections.ConfigDict, num_train_steps: int):
    """optax AdamW with linear warmup, cosine or constant decay, and global-norm clipping.

    Returns (tx, learning_rate_schedule).
    """
    lr = opt.learning_rate
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"optimizer.learning_rate must be > 0, got {lr!r}")
    warmup = int(opt.warmup_steps)
    if warmup < 0:
        raise ConfigError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
    if opt.schedule == "cosine":
        decay_steps = max(num_train_steps, warmup + 1)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=decay_steps, end_value=lr * opt.end_lr_factor)
    elif opt.schedule == "constant":
        schedule = (optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr))
        if warmup:
            schedule = optax.join_schedules([schedule, optax.constant_schedule(lr)], [warmup])
    else:
        raise ConfigError(
            f"unknown optimizer.schedule {opt.schedule!r}; choose one of: cosine, constant")
    if opt.name != "adamw":
        raise ConfigError(f"unknown optimizer.name {opt.name!r}; choose one of: adamw")
    parts = []
    if opt.grad_clip_norm:
        if opt.grad_clip_norm < 0:
            raise ConfigError(f"optimizer.grad_clip_norm must be >= 0 (0 = off), got {opt.grad_clip_norm}")
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay))
    return optax.chain(*parts), schedule


@dataclasses.dataclass
class Experiment:
    """Everything built from a config, validated, before anything is compiled."""

    config: ml_collections.ConfigDict
    source: Any
    model: Any
    path: paths_lib.AffinePath
    objective: Any
    tx: optax.GradientTransformation
    lr_schedule: Callable
    compute_dtype: Any
    plan: parallel_lib.Plan
    grad_accum_steps: int = 1

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, *,
                    plan: parallel_lib.Plan | None = None) -> "Experiment":
        """Validates `config` and builds the experiment.

        plan: devices to use instead of config.parallel's (whose batch checks are then skipped),
        e.g. `parallel.Plan.all_devices()` to sample from a run trained on another topology.
        """
        try:
            return cls._build(config, plan)
        except ConfigError:
            raise
        except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
            raise ConfigError(str(e)) from e

    @classmethod
    def _build(cls, config, plan=None):
        for key in ("batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
                    "checkpoint_every_steps", "steps_per_call"):
            _positive_int(key, config[key])
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
        if config.model.dtype not in DTYPES:
            raise ConfigError(
                f"unknown model.dtype {config.model.dtype!r}; choose one of: {', '.join(DTYPES)}")
        if not 0.0 <= config.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
        grad_accum_steps = config.get("grad_accum_steps", 1)
        _positive_int("grad_accum_steps", grad_accum_steps)
        if plan is None:
            plan = _make_plan(config.get("parallel"), config.batch_size, grad_accum_steps)

        d = config.data
        source = data_lib.make_source(
            d.name, split="train", path=d.get("path") or None, image_size=d.get("image_size") or None,
            channels=d.get("channels", 3), random_flip=d.get("random_flip", False),
            skip_bad=d.get("skip_bad", False))

        compute_dtype = DTYPES[config.model.dtype]
        model_kwargs = {k: v for k, v in config.model.items() if k not in ("name", "dtype")}
        for key, value in model_kwargs.items():
            if isinstance(value, list):
                model_kwargs[key] = tuple(value)
        if config.model.name == "unet" and source.kind != "image":
            raise ConfigError(
                f"model 'unet' needs image data, but data.name={d.name!r} is {source.kind}; "
                "use model.name='mlp' for 2-D data")
        if config.model.name == "mlp" and len(source.example_shape) != 1:
            raise ConfigError(
                f"model 'mlp' takes vectors, but data {d.name!r} has examples of shape "
                f"{tuple(source.example_shape)}; use model.name='unet' for images")
        model = models_lib.build_model(config.model.name, dtype=compute_dtype, **model_kwargs)

        p = config.path
        sched_cls = schedules_lib.SCHEDULES.get(p.schedule)
        if sched_cls is None:
            schedules_lib.make_schedule(p.schedule)  # raises the error listing the known names
        fields = {f.name for f in dataclasses.fields(sched_cls)}
        path = paths_lib.make_path(p.schedule, **{k: v for k, v in p.items() if k in fields})
        # config.objective holds the settings of every objective; each takes its own.
        fields = objectives_lib.objective_fields(config.objective.name)
        obj_kwargs = {k: v for k, v in config.objective.items() if k in fields}
        objective = objectives_lib.build_objective(config.objective.name, path=path, **obj_kwargs)

        s = config.sampling
        if s.method not in integrators.ADAPTIVE_METHODS and (
                s.rtol is not None or s.atol is not None):
            raise ConfigError(
                f"sampling.rtol/atol are set but sampling.method={s.method!r} is a fixed-step "
                "method; drop the tolerances or choose an adaptive method: "
                f"{', '.join(integrators.ADAPTIVE_METHODS)}")
        sampler_settings(s)
        tx, lr_schedule = make_optimizer(config.optimizer, config.num_train_steps)
        return cls(config=config, source=source, model=model, path=path, objective=objective, tx=tx,
                   lr_schedule=lr_schedule, compute_dtype=compute_dtype, plan=plan,
                   grad_accum_steps=int(grad_accum_steps))

    # -- pieces of the loop --------------------------------------------------------------------

    def conditional(self) -> bool:
        return getattr(self.model, "num_classes", 0) > 0

    def apply(self, params, x, t, cond=None, *, train=False, dropout_key=None):
        rngs = {"dropout": dropout_key} if dropout_key is not None else None
        return self.model.apply({"params": params}, x, t, cond=cond, train=train, rngs=rngs)

    def init_state(self, key) -> TrainState:
        """The initial state, float32 whatever model.dtype (which sets the compute dtype only)."""
        shape = (1, *self.source.example_shape)
        cond = jnp.zeros((1,), jnp.int32) if self.conditional() else None
        params = self.model.init(key, jnp.zeros(shape, jnp.float32), jnp.zeros((1,)),
                                 cond=cond)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), ema_params=ema_lib.init(params))

    def state_shardings(self):
        """The plan's sharding of every leaf of the train state (replicated unless fsdp > 1)."""
        return self.plan.state_shardings(jax.eval_shape(self.init_state, jax.random.PRNGKey(0)))

    def abstract_state(self):
        """The train state as jax.ShapeDtypeStructs with the plan's shardings (for restoring)."""
        abstract = jax.eval_shape(self.init_state, jax.random.PRNGKey(0))
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.plan.state_shardings(abstract))

    def create_state(self, key) -> TrainState:
        """`init_state(key)` computed straight into the plan's shardings (the same on any mesh)."""
        return jax.jit(self.init_state, out_shardings=self.state_shardings())(
            self.plan.replicate(key))

    def batch_loss(self, params, batch, indices, step_key):
        """Mean loss over rows of the global batch, each with its own randomness.

        batch: {"x": [b, ...], "label": [b]}; indices: [b] int32, the rows' positions in the
        global batch.  Row j calls the objective on itself alone with key fold_in(step_key, j)
        (split into the loss's key and the dropout key), so the loss of a row does not depend on
        which device, shard or micro-batch holds it.  The objectives' losses and aux entries are
        means over the batch, so the mean over rows is the global-batch loss.  Always float32.
        """

        def one(x, label, index):
            key_loss, key_dropout = jax.random.split(jax.random.fold_in(step_key, index))
            cond = label[None] if self.conditional() else None
            predict = lambda x_t, t: self.apply(params, x_t, t, cond, train=True,
                                                dropout_key=key_dropout)
            loss, aux = self.objective.loss(predict, x[None], key_loss)
            return jax.tree.map(lambda v: v.astype(jnp.float32), (loss, aux))

        losses, aux = jax.vmap(one)(batch["x"], batch["label"], indices)
        return jnp.mean(losses), jax.tree.map(jnp.mean, aux)

    def train_step(self, state: TrainState, batch, train_key, first_index=0):
        """One optimisation step.  Returns (new state, metrics).

        batch: {"x": [b, ...], "label": [b]}, rows first_index .. first_index + b - 1 of the global
        batch: all of it under jit (mode "sharding"), one device's shard under pmap, where
        gradients and metrics are then averaged over the "data" axis.  With grad_accum_steps = A
        the rows are processed as A micro-batches and their gradients averaged.
        """
        in_pmap = self.plan.mode == "pmap"
        step_key = jax.random.fold_in(train_key, state.step)
        rows = batch["x"].shape[0]
        indices = first_index + jnp.arange(rows, dtype=jnp.int32)
        grad_fn = jax.value_and_grad(self.batch_loss, has_aux=True)
        accum = self.grad_accum_steps
        if accum == 1:
            (loss, aux), grads = grad_fn(state.params, batch, indices, step_key)
        else:
            shards = 1 if in_pmap else self.plan.num_shards
            micro = jax.tree.map(lambda v: parallel_lib.split_microbatches(v, accum, shards),
                                 (batch, indices))
            if not in_pmap:
                micro = jax.lax.with_sharding_constraint(micro, self.plan.batch_sharding(1))

            def accumulate(total, mb):
                return jax.tree.map(jnp.add, total, grad_fn(state.params, *mb, step_key)), None

            shapes = jax.eval_shape(grad_fn, state.params, *jax.tree.map(lambda v: v[0], micro),
                                    step_key)
            zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
            ((loss, aux), grads), _ = jax.lax.scan(accumulate, zeros, micro)
            loss, aux, grads = jax.tree.map(lambda v: v / accum, (loss, aux, grads))
        if in_pmap:
            loss, aux, grads = jax.lax.pmean((loss, aux, grads), parallel_lib.DATA_AXIS)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_lib.decay_at(state.step, self.config.ema_decay, self.config.ema_warmup)
        ema_params = ema_lib.update(state.ema_params, params, decay)
        metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads),
                       learning_rate=self.lr_schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params)
        return new_state, metrics

    def make_multi_step(self):
        """A compiled (state, batches, train_key) -> (state, metrics), state donated.

        Runs k = batches' leading size train steps under lax.scan.  Mode "sharding": state as
        from `create_state`, batches [k, B, ...] (`Plan.put_batches`), metrics [k].  Mode "pmap":
        state in pmap layout (`Plan.stack`), batches [num_shards, k, B / num_shards, ...], and
        metrics [num_shards (local), k] (equal on every device).
        """
        plan = self.plan
        if plan.mode == "pmap":

            def shard_steps(state, batches, first_index, train_key):
                return _steps(lambda s, b: self.train_step(s, b, train_key, first_index),
                              state, batches)

            pmapped = jax.pmap(shard_steps, axis_name=parallel_lib.DATA_AXIS,
                               in_axes=(0, 0, 0, None), devices=plan.devices, donate_argnums=(0,))
            offsets = plan.shard_offsets(self.config.batch_size // plan.num_shards)
            return lambda state, batches, train_key: pmapped(state, batches, offsets, train_key)

        def multi_step(state, batches, train_key):
            return _steps(lambda s, b: self.train_step(s, b, train_key), state, batches)

        state_shardings = self.state_shardings()
        return jax.jit(multi_step, donate_argnums=(0,),
                       in_shardings=(state_shardings, plan.batch_sharding(1), plan.replicated),
                       out_shardings=(state_shardings, plan.replicated))

    def sampler_settings(self, method=None, num_steps=None, rtol=None, atol=None) -> dict:
        """Integrator settings: explicit arguments, else the run's config.sampling.

        With no steps or tolerances given, an adaptive method takes config.sampling.rtol/atol
        when they are set, and every other method takes config.sampling.num_steps.
        """
        return sampler_settings(self.config.sampling, method, num_steps, rtol, atol)

    def make_sampler(self, method=None, num_steps=None, rtol=None, atol=None):
        """`sample(params, key, n, cond=None) -> (x [n, ...], nfe, success)` over the plan's mesh.

        The noise x0 = normal(key, [n, ...]) and the whole solve are split over the devices (when
        n divides by their number; else every device solves all of it); the same numbers as on
        one device.  Outputs are replicated, so every process can read them.
        """
        settings = self.sampler_settings(method, num_steps, rtol, atol)
        apply_fn = lambda params, x, t, cond: self.apply(params, x, t, cond)
        shape = tuple(self.source.example_shape)
        plan = self.plan

        @functools.partial(jax.jit, static_argnums=(2,), out_shardings=plan.replicated)
        def solve(params, key, n, cond):
            x0 = jax.random.normal(key, (n, *shape), jnp.float32)
            if n % plan.num_shards == 0:
                x0 = jax.lax.with_sharding_constraint(x0, plan.batch_sharding())
                if cond is not None:
                    cond = jax.lax.with_sharding_constraint(cond, plan.batch_sharding())
            sol = sampling.solve_from_noise(apply_fn, params, self.objective, x0, cond=cond,
                                            **settings)
            return sol.x, sol.nfe, sol.success

        def sample(params, key, n, cond=None):
            params = jax.device_put(params, plan.state_shardings(params))
            cond = None if cond is None else plan.replicate(cond)
            return solve(params, plan.replicate(key), n, cond)

        return sample


def _steps(step, state, batches):
    """lax.scan of `step` over the leading axis of `batches`; a plain call when it is 1.

    XLA on CPU runs convolutions inside a loop, even one of length 1, many times slower (a digits
    U-Net step: 3.2 s in a scan, 76 ms without), so one step per call is not looped.
    """
    if jax.tree.leaves(batches)[0].shape[0] == 1:
        state, metrics = step(state, jax.tree.map(lambda x: x[0], batches))
        return state, jax.tree.map(lambda x: x[None], metrics)
    return jax.lax.scan(step, state, batches)


def sampler_settings(s, method=None, num_steps=None, rtol=None, atol=None) -> dict:
    """See `Experiment.sampler_settings`; `s` is config.sampling.  Validates the combination."""
    method = method or s.method
    if num_steps is None and rtol is None and atol is None:
        tolerances = s.rtol is not None or s.atol is not None
        if method in integrators.ADAPTIVE_METHODS and tolerances:
            rtol, atol = s.rtol, s.atol
        else:
            num_steps = s.num_steps
    integrators.check_arguments(method, num_steps=num_steps, time_grid=None, rtol=rtol, atol=atol)
    return dict(method=method, num_steps=num_steps, rtol=rtol, atol=atol)


def _make_plan(section, batch_size: int, grad_accum_steps: int) -> parallel_lib.Plan:
    """The device plan of config.parallel, checked against the devices and the batch."""
    try:
        settings = parallel_lib.ParallelSettings.from_config(section)
        data, fsdp = parallel_lib.mesh_shape(settings, jax.device_count(), jax.process_count())
        parallel_lib.check_batch(batch_size, data * fsdp, grad_accum_steps)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return parallel_lib.Plan(parallel_lib.make_mesh(data, fsdp), settings.mode,
                             settings.fsdp_min_size)


def save_config(config, workdir):
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir) -> ml_collections.ConfigDict:
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


def _host_scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the run described by `config` in `workdir`; returns the final state.

    Multi-process: every process calls this with the same arguments (after
    `parallel.maybe_initialize_distributed`); `workdir` must be one shared directory.
    """
    exp = Experiment.from_config(config)
    plan = exp.plan
    main = parallel_lib.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    if main:
        save_config(config, workdir)

    root = jax.random.PRNGKey(config.seed)
    init_key, train_key, eval_key = (jax.random.fold_in(root, i) for i in range(3))
    state = exp.create_state(init_key)
    num_params = models_lib.count_params(state.params)
    logging.info("model %s: %s parameters; %s", config.model.name, f"{num_params:,}", plan)
    if main:
        print(f"flowmatch: {config.model.name} with {num_params:,} parameters; data "
              f"{config.data.name} {tuple(exp.source.example_shape)}; {plan.num_shards} device(s), "
              f"{jax.process_count()} process(es), mode {plan.mode}; workdir {workdir}", flush=True)

    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.checkpoint.max_to_keep)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    restored = ckpt.restore_latest(checkpoint_lib.abstract_like(state))
    if restored is not None:
        step0, state, meta = restored
        logging.info("resumed from checkpoint at step %d", step0)
        if main:
            print(f"flowmatch: resuming from step {step0}", flush=True)
            if os.path.exists(metrics_path):
                metrics_lib.truncate_metrics(metrics_path, step0)
    elif main and os.path.exists(metrics_path):
        metrics_lib.truncate_metrics(metrics_path, 0)  # a fresh start: no rows from an old run
    step = int(state.step)
    # Global batch i is a pure function of (seed, i): the saved position is all the iterator needs.
    data_index = int(meta["data"]["index"]) if restored is not None else 0
    iterator = data_lib.BatchIterator(exp.source, config.batch_size, config.seed, index=data_index,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
    rows = (iterator.process_index * iterator.local_batch_size,
            (iterator.process_index + 1) * iterator.local_batch_size)
    if plan.process_rows(config.batch_size) != rows:
        raise ConfigError(
            f"process {jax.process_index()} loads rows {rows} of each global batch but its devices "
            f"hold rows {plan.process_rows(config.batch_size)}; every process needs the same "
            "number of devices")
    writer = metrics_lib.MetricWriter(workdir, tensorboard=config.tensorboard,
                                      is_main_process=main)
    multi_step = exp.make_multi_step()
    # Evaluation is collective (the samples are split over every device), so every process runs
    # it; only process 0's pictures land in workdir.
    scratch = None if main else tempfile.TemporaryDirectory(prefix="flowmatch_eval_")
    evaluator = evaluation.Evaluator(exp, workdir if main else scratch.name, eval_key)
    in_pmap = plan.mode == "pmap"
    device_key = plan.replicate(train_key)
    run_state = plan.stack(state) if in_pmap else state
    canonical = lambda s: plan.unstack(s) if in_pmap else s
    k = config.steps_per_call
    total = config.num_train_steps

    progress = None
    if config.progress_bar and main:
        import tqdm  # pylint: disable=g-import-not-at-top
        progress = tqdm.tqdm(total=total, initial=step, unit="step", dynamic_ncols=True,
                             smoothing=0.1)
    window, window_start, t_window = [], step, time.perf_counter()
    try:
        while step < total:
            n = min(k, total - step)
            batches = plan.put_batches(iterator.batches(data_index, n))
            run_state, step_metrics = multi_step(run_state, batches, device_key)
            step += n
            data_index += n
            window.append(step_metrics)
            if progress is not None:
                progress.update(n)
            is_last = step == total
            if step % config.log_every_steps == 0 or is_last:
                host = [jax.device_get(m) for m in window]
                if in_pmap:  # [devices, k]: the same values on every device
                    host = [jax.tree.map(lambda v: v[0], m) for m in host]
                host = jax.tree.map(lambda *xs: np.concatenate(xs), *host)
                elapsed = time.perf_counter() - t_window
                row = {name: float(np.mean(v)) for name, v in host.items()}
                row["learning_rate"] = float(host["learning_rate"][-1])
                row["steps_per_sec"] = (step - window_start) / max(elapsed, 1e-9)
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(
                        f"non-finite loss between steps {window_start + 1} and {step}; lower "
                        "optimizer.learning_rate or check the data")
            save = step % config.checkpoint_every_steps == 0 or is_last
            evaluate = step % config.eval_every_steps == 0 or is_last
            snapshot = canonical(run_state) if save or evaluate else None
            if save:
                # Asynchronous: the save proceeds while evaluation and training go on.
                ckpt.save(step, snapshot, {"data": {"index": data_index}, "step": step})
            if step % config.log_every_steps == 0 or is_last:
                if evaluate:
                    t_eval = time.perf_counter()
                    row.update(evaluator(step, snapshot.ema_params))
                    row["eval_seconds"] = time.perf_counter() - t_eval
                writer.write(step, row)
                if progress is not None:
                    progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                window, window_start, t_window = [], step, time.perf_counter()
    finally:
        if progress is not None:
            progress.close()
        writer.close()
        ckpt.close()
        if scratch is not None:
            scratch.cleanup()
    return canonical(run_state)
