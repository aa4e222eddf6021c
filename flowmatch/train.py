"""The training loop: one loop for every objective, model and dataset.

    train_and_evaluate(config, workdir)

reads the ConfigDict once (`Experiment.from_config`, which validates everything before any
compilation, the device mesh included) and from then on works with plain objects.  One compiled
call runs `config.steps_per_call` train steps under `lax.scan` with the state donated.

Randomness: step k uses key_k = fold_in(train_key, k), and example j of the global batch draws its
time, noise and dropout from fold_in(key_k, j) alone (`Experiment.batch_loss`); a coupling
(config.coupling) then pairs the rows' source samples over the global batch, also independently
of the device layout (`Experiment.pair_batch`).  Data batch k is a pure function of (seed, k).
So a resumed run repeats exactly the randomness of an uninterrupted one, and 1, 2 or 512
devices, jit or pmap, with or without gradient accumulation compute the same losses and
gradients up to the order of float reductions.

Parallelism (`flowmatch.parallel`): `config.parallel` gives a ("data", "fsdp") mesh; the global
batch (`config.batch_size`) is split over all its devices, and the step runs as one jit program
over sharded global arrays (mode "sharding") or under `jax.pmap` (mode "pmap").  Every process
loads only its own rows of each global batch.

Files written under `workdir` (by process 0 only): config.json, metrics.jsonl (one JSON object per
logged step), samples_<step>.png, TensorBoard events if asked for; checkpoints/<step>/ (orbax,
written by all processes together).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import sys
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
from jax.experimental import multihost_utils

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import couplings as couplings_lib
from flowmatch import data as data_lib
from flowmatch import ema as ema_lib
from flowmatch import evaluation
from flowmatch import fileio
from flowmatch import integrators
from flowmatch import metrics as metrics_lib
from flowmatch import models as models_lib
from flowmatch import objectives as objectives_lib
from flowmatch import parallel as parallel_lib
from flowmatch import paths as paths_lib
from flowmatch import sampling
from flowmatch import schedules as schedules_lib
from flowmatch import sources as sources_lib
from flowmatch import validation
from flowmatch.validation import ConfigError  # re-exported: train.ConfigError


@flax.struct.dataclass
class TrainState:
    """Everything that evolves during training (the data position is step-derived)."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    ema_params: Any


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
    # p0 at t = 0 (config.source) and how its samples are paired with data (config.coupling).
    source_dist: sources_lib.SourceDistribution = dataclasses.field(
        default_factory=sources_lib.SourceDistribution)
    coupling: couplings_lib.CouplingSettings = dataclasses.field(
        default_factory=couplings_lib.CouplingSettings)

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
        except (ValueError, TypeError, OSError, ImportError) as e:  # OSError: unreadable data
            raise ConfigError(str(e)) from e

    @classmethod
    def _build(cls, config, plan=None):
        validation.validate(config)  # names, numbers, combinations: before any data or devices
        grad_accum_steps = config.get("grad_accum_steps", 1)
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
        model = models_lib.build_model(config.model.name, dtype=compute_dtype, **model_kwargs)
        validation.check_model_fits_data(config, model, source)

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

        source_dist, coupling = _source_and_coupling(config, source, objective)
        sampler_settings(config.sampling)
        tx, lr_schedule = make_optimizer(config.optimizer, config.num_train_steps)
        return cls(config=config, source=source, model=model, path=path, objective=objective, tx=tx,
                   lr_schedule=lr_schedule, compute_dtype=compute_dtype, plan=plan,
                   grad_accum_steps=int(grad_accum_steps), source_dist=source_dist,
                   coupling=coupling)

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

        batch: {"x": [b, ...], "label": [b]}, optionally "x0": [b, ...] (the source samples
        paired with the rows: from a coupling or a file of pairs; without it flow matching draws
        x0 ~ N(0, I) per row); indices: [b] int32, the rows' positions in the global batch.  Row
        j calls the objective on itself alone with key fold_in(step_key, j) (split into the
        loss's key and the dropout key), so the loss of a row does not depend on which device,
        shard or micro-batch holds it.  The objectives' losses and aux entries are means over
        the batch, so the mean over rows is the global-batch loss.  Always float32.  With "x0",
        aux also has "pair_cost", the mean |x1 - x0|^2 of the pairs (the coupling's cost).
        """

        def one(x, label, index, x0):
            key_loss, key_dropout = jax.random.split(jax.random.fold_in(step_key, index))
            cond = label[None] if self.conditional() else None
            predict = lambda x_t, t: self.apply(params, x_t, t, cond, train=True,
                                                dropout_key=key_dropout)
            if x0 is None:
                loss, aux = self.objective.loss(predict, x[None], key_loss)
            else:
                loss, aux = self.objective.loss(predict, x[None], key_loss, x0=x0[None])
                # The coupling's transport cost: the mean over rows is the batch's mean pair cost.
                aux = dict(aux, pair_cost=couplings_lib.pair_cost(x[None], x0[None]))
            return jax.tree.map(lambda v: v.astype(jnp.float32), (loss, aux))

        x0 = batch.get("x0")
        if x0 is not None and not isinstance(self.objective, objectives_lib.FlowMatching):
            raise ConfigError(
                f"the batch carries paired source samples 'x0', which only flow matching trains "
                f"on; objective.name={self.config.objective.name!r} draws its own noise")
        losses, aux = jax.vmap(one)(batch["x"], batch["label"], indices, x0)
        return jnp.mean(losses), jax.tree.map(jnp.mean, aux)

    def sample_source(self, key, n: int):
        """n draws of the source distribution p0 (config.source): [n, *example_shape] float32.

        What every sampler starts from at t = 0 (standard normal by default).
        """
        return self.source_dist.sample(key, n)

    def draw_source(self, batch, indices, step_key):
        """The p0 samples of rows `indices` of the global batch of step key `step_key`: [b, ...].

        'normal': row j draws from fold_in(step_key, j) exactly the noise the loss itself would
        (`FlowMatching.draw_noise`), times source.scale.  A toy set (defined per batch, e.g.
        torchcfm's sample_moons(n)) is drawn as one global batch from fold_in(step_key,
        2**32 - 1) and row j takes point j.  Either way a row's x0 does not depend on which
        device holds it.
        """
        p0, x1 = self.source_dist, batch["x"]
        if p0.is_normal:
            def one(x, index):
                key_loss, _ = jax.random.split(jax.random.fold_in(step_key, index))
                return objectives_lib.FlowMatching.draw_noise(key_loss, x[None])[0]

            x0 = jax.vmap(one)(x1, indices)
            return x0 if p0.scale == 1.0 else x0 * jnp.asarray(p0.scale, x0.dtype)
        everything = p0.sample(jax.random.fold_in(step_key, _SOURCE_STREAM),
                               self.config.batch_size)
        return jnp.take(everything, indices, axis=0).astype(x1.dtype)

    def pair_batch(self, batch, indices, step_key):
        """The batch with "x0": p0 samples paired with its rows by config.coupling.

        Flow matching only (other objectives draw their own noise: the batch is returned as it
        is), and only when the batch has no "x0" yet (pairs from a file are used as they are).
        indices: [b] the rows' positions in the global batch.  The coupling pairs the rows of
        config.coupling.scope: 'global', the whole global batch (under jit a sharding
        constraint gathers the rows onto every device, under pmap an all_gather over "data";
        each device computes the same pairing and keeps its rows), or 'local', each device's
        rows alone (shard_map under jit, the device's shard under pmap).  Sinkhorn draws row
        j's partner with the uniform of fold_in(fold_in(step_key, 2**32 - 2), j).
        """
        if not isinstance(self.objective, objectives_lib.FlowMatching) or "x0" in batch:
            return batch
        x0 = self.draw_source(batch, indices, step_key)
        c = self.coupling
        if c.name == "independent":
            return dict(batch, x0=x0)
        stream = jax.random.fold_in(step_key, _COUPLING_STREAM)
        uniforms = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(stream, i)))(indices)

        def paired(x1, x0, labels, uniforms):
            pairing = couplings_lib.couple(c.name, x1, x0, uniforms=uniforms,
                                           labels=labels if c.per_class else None, **c.kwargs())
            return jnp.take(x0, pairing.index, axis=0)

        args = (batch["x"], x0, batch["label"], uniforms)
        plan = self.plan
        if plan.mode == "pmap":
            if c.scope == "local":
                return dict(batch, x0=paired(*args))
            rows = x0.shape[0]
            full = paired(*(jax.lax.all_gather(v, parallel_lib.DATA_AXIS, tiled=True)
                            for v in args))
            start = jax.lax.axis_index(parallel_lib.DATA_AXIS) * rows
            return dict(batch, x0=jax.lax.dynamic_slice_in_dim(full, start, rows))
        if c.scope == "local" and plan.num_shards > 1:
            spec = jax.sharding.PartitionSpec(parallel_lib.BATCH_AXES)
            # check_vma off: the couplings' loops start from constants, which the check would
            # ask to mark as varying over the mesh; every value here is per device anyway.
            local = jax.shard_map(paired, mesh=plan.mesh, in_specs=(spec,) * 4, out_specs=spec,
                                  check_vma=False)
            return dict(batch, x0=local(*args))
        if plan.mesh.size > 1:
            # Every device solves the whole (gathered) batch by itself.  Under plain jit XLA's
            # SPMD partitioner was free to split the solver's arrays over the mesh, putting
            # collectives inside the auction's thousands of sequential rounds (8 simulated CPU
            # devices: 2 steps/s instead of 18); shard_map with replicated specs keeps the
            # whole solve on each device, and only the inputs' all-gather crosses devices.
            whole = jax.sharding.PartitionSpec()
            paired = jax.shard_map(paired, mesh=plan.mesh, in_specs=(whole,) * 4,
                                   out_specs=whole, check_vma=False)
        args = jax.lax.with_sharding_constraint(args, plan.replicated)
        x0 = jax.lax.with_sharding_constraint(paired(*args), plan.batch_sharding())
        return dict(batch, x0=x0)

    def train_step(self, state: TrainState, batch, train_key, first_index=0):
        """One optimisation step.  Returns (new state, metrics).

        batch: {"x": [b, ...], "label": [b]}, rows first_index .. first_index + b - 1 of the global
        batch: all of it under jit (mode "sharding"), one device's shard under pmap, where
        gradients and metrics are then averaged over the "data" axis.  With grad_accum_steps = A
        the rows are processed as A micro-batches and their gradients averaged.

        Non-finite guard: when the loss or a gradient is not finite (tested on the loss and the
        gradients' global norm: any NaN or Inf among them makes it non-finite), params,
        opt_state and ema_params stay as they were (the step counter advances: the batch is
        skipped) and metrics["skipped"] is 1; `train_and_evaluate` applies config.nonfinite.
        The choice is a lax.cond on that scalar: testing every leaf with a select made XLA's CPU
        compile of the digits U-Net step 19x slower (14 s -> 272 s).
        """
        in_pmap = self.plan.mode == "pmap"
        step_key = jax.random.fold_in(train_key, state.step)
        rows = batch["x"].shape[0]
        indices = first_index + jnp.arange(rows, dtype=jnp.int32)
        batch = self.pair_batch(batch, indices, step_key)  # + "x0": p0 samples, coupled
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
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new, old = (params, opt_state, ema_params), (state.params, state.opt_state,
                                                     state.ema_params)
        params, opt_state, ema_params = jax.lax.cond(finite, lambda: new, lambda: old)
        metrics = dict(aux, loss=loss, grad_norm=grad_norm,
                       learning_rate=self.lr_schedule(state.step),
                       skipped=1.0 - finite.astype(jnp.float32))
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

    def make_sampler(self, method=None, num_steps=None, rtol=None, atol=None, *,
                     return_source: bool = False):
        """`sample(params, key, n, cond=None) -> (x [n, ...], nfe, success)` over the plan's mesh.

        x0 = sample_source(key, n) (p0, by default normal(key, [n, ...])) and the whole solve
        are split over the devices (when n divides by their number; else every device solves
        all of it); the same numbers as on one device.  Outputs are replicated, so every
        process can read them.  return_source: (x0, x, nfe, success), the x0 each x was
        integrated from too (reflow's pairs).
        """
        settings = self.sampler_settings(method, num_steps, rtol, atol)
        apply_fn = lambda params, x, t, cond: self.apply(params, x, t, cond)
        plan = self.plan

        @functools.partial(jax.jit, static_argnums=(2,), out_shardings=plan.replicated)
        def solve(params, key, n, cond):
            x0 = self.sample_source(key, n)
            if n % plan.num_shards == 0:
                x0 = jax.lax.with_sharding_constraint(x0, plan.batch_sharding())
                if cond is not None:
                    cond = jax.lax.with_sharding_constraint(cond, plan.batch_sharding())
            sol = sampling.solve_from_noise(apply_fn, params, self.objective, x0, cond=cond,
                                            **settings)
            out = (sol.x, sol.nfe, sol.success)
            return (x0, *out) if return_source else out

        def sample(params, key, n, cond=None):
            params = jax.device_put(params, plan.state_shardings(params))
            cond = None if cond is None else plan.replicate(cond)
            return solve(params, plan.replicate(key), n, cond)

        return sample


# Streams of a train step's randomness besides the rows' fold_in(step_key, j), j < batch_size.
_SOURCE_STREAM = 2**32 - 1    # a toy source's draw of the whole global batch
_COUPLING_STREAM = 2**32 - 2  # Sinkhorn: one uniform per row, fold_in(stream, j)


def _source_and_coupling(config, data_source, objective):
    """(SourceDistribution, CouplingSettings) of config.source / config.coupling (missing
    sections: standard normal, independent pairs), checked against the data and objective."""
    source_dist = sources_lib.from_config(config.get("source"), data_source.example_shape)
    coupling = couplings_lib.CouplingSettings.from_config(config.get("coupling"))
    if not isinstance(objective, objectives_lib.FlowMatching) and (
            coupling.name != "independent" or not source_dist.is_normal):
        raise ConfigError(
            f"objective.name={config.objective.name!r} draws its own Gaussian noise: it needs "
            f"coupling.name='independent' and source.name='normal', got {coupling.name!r} and "
            f"{source_dist.name!r}; use objective.name='flow_matching' for couplings and other "
            "sources")
    if coupling.name != "independent" and config.data.name == "pairs":
        raise ConfigError(
            f"data.name='pairs' trains on (x0, x1) pairs as they were written; "
            f"coupling.name={coupling.name!r} would re-pair them: set coupling.name='independent'")
    if coupling.per_class and not getattr(data_source, "num_classes", 0):
        raise ConfigError(
            f"coupling.per_class=True keeps pairs within a class, but data.name="
            f"{config.data.name!r} has no labels; set coupling.per_class=False")
    return source_dist, coupling


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
    """Writes workdir/config.json atomically (a killed run leaves the old file or the new one)."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    fileio.write_atomic(os.path.join(workdir, "config.json"), lambda f: f.write(text.encode()))


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


class NonFiniteError(FloatingPointError):
    """Training stopped on non-finite losses or gradients (config.nonfinite); names the steps."""


@dataclasses.dataclass
class NonfiniteMonitor:
    """Applies config.nonfinite to the train step's per-step `skipped` flags, in step order.

    policy 'skip': a skipped step (its update was not applied) is counted and logged; more than
    `max_consecutive_skips` in a row stop the run.  'stop': the first one stops it.  The counts
    travel in the checkpoint's meta, so a resumed run continues the same streak.
    """

    policy: str = "skip"
    max_consecutive_skips: int = 10
    total: int = 0           # skipped steps since the run began
    streak: int = 0          # skipped steps in a row, ending at the last observed step
    streak_start: int = 0    # first step of that streak

    @classmethod
    def from_config(cls, section) -> "NonfiniteMonitor":
        section = dict(section or {})
        return cls(policy=section.get("policy", "skip"),
                   max_consecutive_skips=int(section.get("max_consecutive_skips", 10)))

    def state(self) -> dict:
        return {"total": self.total, "streak": self.streak, "streak_start": self.streak_start}

    def restore(self, saved: dict | None):
        saved = saved or {}
        self.total = int(saved.get("total", 0))
        self.streak = int(saved.get("streak", 0))
        self.streak_start = int(saved.get("streak_start", 0))

    def observe(self, first_step: int, skipped, last_saved: int | None):
        """skipped: [n] flags of steps first_step .. first_step + n - 1.  Raises NonFiniteError."""
        kept = ("no checkpoint was written after step "
                f"{last_saved}" if last_saved is not None else "no checkpoint was written")
        for i, flag in enumerate(np.asarray(skipped)):
            s = first_step + i
            if flag < 0.5:
                self.streak = 0
                continue
            self.total += 1
            if self.streak == 0:
                self.streak_start = s
            self.streak += 1
            if self.policy == "stop":
                raise NonFiniteError(
                    f"non-finite loss or gradients at step {s} (its update was not applied) and "
                    f"nonfinite.policy='stop'; {kept}. Lower "
                    "optimizer.learning_rate or check the data, or set "
                    "--config.nonfinite.policy=skip to skip such steps")
            logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row, "
                            "%d in this run)", s, self.streak, self.total)
            if self.streak > self.max_consecutive_skips:
                raise NonFiniteError(
                    f"steps {self.streak_start}..{s}: {self.streak} consecutive steps with a "
                    "non-finite loss or gradients (more than nonfinite.max_consecutive_skips="
                    f"{self.max_consecutive_skips}); their updates were skipped and the run "
                    f"stopped; {kept}. Lower optimizer.learning_rate or check the data")


def _barrier(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"flowmatch_train_{name}")


def _log_row(window: dict) -> dict:
    """The metrics row of a log window {name: [per-step values]}: means over applied steps."""
    skipped = np.asarray(window["skipped"], np.float64) > 0.5
    row = {}
    for name, values in window.items():
        if name not in ("skipped", "learning_rate"):
            v = np.asarray(values, np.float64)[~skipped]
            row[name] = float(np.mean(v)) if v.size else float("nan")
    row["learning_rate"] = float(window["learning_rate"][-1])
    row["skipped_steps"] = int(skipped.sum())
    return row


def _window_to_json(window: dict) -> dict:
    return {k: [v if math.isfinite(v) else None for v in vs] for k, vs in window.items()}


def _window_from_json(saved) -> dict:
    return {k: [float("nan") if v is None else float(v) for v in vs]
            for k, vs in (saved or {}).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       workdir_mode: str = "auto") -> TrainState:
    """Trains (or resumes) the run described by `config` in `workdir`; returns the final state.

    workdir_mode: what to do when `workdir` already holds a run (`validation.check_workdir`):
    'auto' resumes it if its config.json matches `config` (up to logging, evaluation and
    checkpoint settings) and raises ConfigError otherwise; 'resume' continues it anyway;
    'overwrite' moves it into workdir/previous_runs/ and starts afresh.

    Exits: returns the state after num_train_steps; on SIGTERM saves a checkpoint at the next
    step boundary, waits for it and raises checkpoint.Preempted; NonFiniteError by
    config.nonfinite.  Every exit waits for pending checkpoint saves.  Multi-process: every
    process calls this with the same arguments (after `parallel.maybe_initialize_distributed`);
    `workdir` must be one shared directory.
    """
    exp = Experiment.from_config(config)
    main = parallel_lib.is_main_process()
    nonfinite = NonfiniteMonitor.from_config(config.get("nonfinite"))
    action = validation.check_workdir(config, workdir, workdir_mode)  # reads only
    _barrier("workdir_checked")
    os.makedirs(workdir, exist_ok=True)
    if main:
        done = validation.apply_workdir_action(workdir, action)
        if done:
            print(f"flowmatch: {done}", flush=True)
        save_config(config, workdir)
    _barrier("workdir_ready")
    # From here on SIGTERM is caught: the run stops at the next step boundary with a checkpoint.
    with checkpoint_lib.PreemptionWatcher() as preemption:
        return _train(exp, workdir, nonfinite, preemption)


def _train(exp: Experiment, workdir: str, nonfinite: NonfiniteMonitor,
           preemption: checkpoint_lib.PreemptionWatcher) -> TrainState:
    """The body of `train_and_evaluate` once the workdir is ready."""
    config, plan = exp.config, exp.plan
    main = parallel_lib.is_main_process()
    root = jax.random.PRNGKey(config.seed)
    init_key, train_key, eval_key = (jax.random.fold_in(root, i) for i in range(3))
    state = exp.create_state(init_key)
    num_params = models_lib.count_params(state.params)
    logging.info("model %s: %s parameters; %s", config.model.name, f"{num_params:,}", plan)
    if main:
        print(f"flowmatch: {config.model.name} with {num_params:,} parameters; data "
              f"{config.data.name} {tuple(exp.source.example_shape)}; {plan.num_shards} device(s), "
              f"{jax.process_count()} process(es), mode {plan.mode}; workdir {workdir}", flush=True)
        skipped_files = getattr(getattr(exp.source, "data", None), "num_skipped", 0)
        if skipped_files:
            print(f"flowmatch: skipped {skipped_files} unreadable data file(s) "
                  "(data.skip_bad=True; see the log for which)", flush=True)

    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.checkpoint.max_to_keep)
    try:
        restored = ckpt.restore_latest(checkpoint_lib.abstract_like(state), repair=True)
    except BaseException:
        ckpt.close()
        raise
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    meta = {}
    if restored is not None:
        step0, state, meta = restored
        logging.info("resumed from checkpoint at step %d", step0)
        if main:
            print(f"flowmatch: resuming from step {step0}", flush=True)
            if os.path.exists(metrics_path):
                metrics_lib.truncate_metrics(metrics_path, step0)  # rows past it come again
    elif main and os.path.exists(metrics_path):
        metrics_lib.truncate_metrics(metrics_path, 0)  # a fresh start: no rows from an old run
    step = int(state.step)
    last_saved = step if restored is not None else None
    nonfinite.restore(meta.get("nonfinite"))
    # Global batch i is a pure function of (seed, i): the saved position is all the iterator needs.
    data_index = int(meta["data"]["index"]) if restored is not None else 0
    iterator = data_lib.BatchIterator(exp.source, config.batch_size, config.seed, index=data_index,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
    rows = (iterator.process_index * iterator.local_batch_size,
            (iterator.process_index + 1) * iterator.local_batch_size)
    if plan.process_rows(config.batch_size) != rows:
        ckpt.close()
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
        # Redirected to a file (no terminal), redraw once a minute instead of ~10 times a second.
        progress = tqdm.tqdm(total=total, initial=step, unit="step", dynamic_ncols=True,
                             smoothing=0.1, mininterval=0.1 if sys.stderr.isatty() else 60.0)
    # The per-step metrics of the current log window ({name: [values]}); a checkpoint saved
    # inside a window carries them, so a resumed run logs the same rows.
    window = _window_from_json(meta.get("window"))
    window_start, t_window = step, time.perf_counter()
    unread = collections.deque()  # (first step, device metrics) of calls not yet read

    def read(lag: int):
        """Reads the metrics of all but the `lag` newest calls, applying config.nonfinite."""
        while len(unread) > lag:
            first, m = unread.popleft()
            host = jax.device_get(m)
            if in_pmap:  # [devices, k]: the same values on every device
                host = {name: v[0] for name, v in host.items()}
            nonfinite.observe(first, host["skipped"], last_saved)
            for name, v in host.items():
                window.setdefault(name, []).extend(float(x) for x in np.asarray(v))

    def save(snapshot):
        nonlocal last_saved
        if not checkpoint_lib.all_finite(snapshot):
            raise NonFiniteError(
                f"the train state at step {step} has non-finite values; it is not saved ("
                + (f"the newest checkpoint, step {last_saved}, is kept)" if last_saved is not None
                   else "no checkpoint exists yet)"))
        # Asynchronous: the save proceeds while training goes on.
        ckpt.save(step, snapshot, {"data": {"index": data_index}, "step": step,
                                   "nonfinite": nonfinite.state(),
                                   "window": _window_to_json(window)})
        last_saved = step

    try:
        while step < total:
            n = min(k, total - step)
            batches = plan.put_batches(iterator.batches(data_index, n))
            run_state, step_metrics = multi_step(run_state, batches, device_key)
            unread.append((step + 1, step_metrics))
            step += n
            data_index += n
            if progress is not None:
                progress.update(n)
            is_last = step == total
            log = step % config.log_every_steps == 0 or is_last
            checkpoint = step % config.checkpoint_every_steps == 0 or is_last
            evaluate = step % config.eval_every_steps == 0 or is_last
            # Reading the previous call's metrics overlaps with the call just dispatched.
            read(0 if log or checkpoint else 1)
            snapshot = canonical(run_state) if checkpoint or evaluate else None
            if log:
                row = _log_row(window)
                row["steps_per_sec"] = (step - window_start) / max(
                    time.perf_counter() - t_window, 1e-9)
                if evaluate:
                    t_eval = time.perf_counter()
                    row.update(evaluator(step, snapshot.ema_params))
                    row["eval_seconds"] = time.perf_counter() - t_eval
                # Written before the checkpoint of this step exists: a resumed run never lacks
                # a row up to its restored step.
                writer.write(step, row)
                if progress is not None:
                    progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                window, window_start, t_window = {}, step, time.perf_counter()
            preempted = preemption.reached(step - n + 1, step) and not is_last
            if preempted:
                read(0)
            if checkpoint or preempted:
                save(snapshot if snapshot is not None else canonical(run_state))
            if preempted:
                ckpt.wait()
                if main:
                    print(f"flowmatch: preemption notice: saved a checkpoint at step {step}; "
                          "rerun the same command to continue", flush=True)
                raise checkpoint_lib.Preempted(step, ckpt.directory)
    finally:
        if progress is not None:
            progress.close()
        writer.close()
        ckpt.close()
        if scratch is not None:
            scratch.cleanup()
    return canonical(run_state)
