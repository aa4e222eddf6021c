"""The train step: a module-level factory over plain arguments, and its compiled multi-step call.

    step = make_train_step(apply=..., objective=..., tx=..., draw=make_draw(...), ...)
    state, metrics = step(state, batch, train_key, first_index)

Randomness: step k uses step_key = fold_in(train_key, k).  Its draws (the rows' times, noise,
coupling uniforms, label dropout) are one uniform draw over the global batch, of which row j
takes row j (`make_draw`, `row_uniforms`); a toy source's samples and the network's dropout keys
come from named streams of step_key.  A compiled call draws its steps' rows before its loop
(`draw_steps`: the same bits).  A coupling pairs the rows' source samples over the global batch
(or each device's rows, as configured), once per step inside the loop, or a call ahead on the
host (`prepare_steps`, `make_prepare`, run by `training.ahead`: the same bits).  So 1, 2 or 512
devices, jit or pmap, with or without gradient accumulation compute the same losses and gradients
up to the order of float reductions, and a resumed run repeats exactly the randomness of an
uninterrupted one.  Devices enter only through the `plan` passed to `make_draw` and
`make_multi_step`, and the `reduce` / micro-batch arguments.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from flowmatch import couplings as couplings_lib
from flowmatch import ema as ema_lib
from flowmatch import objectives as objectives_lib
from flowmatch import parallel as parallel_lib
from flowmatch import rng
from flowmatch import threefry
from flowmatch.models import precision

# A step's randomness.  All the rows' scalar draws and their noise come from ONE uniform draw
# U = uniform(step_key, [batch_size, NUM_SCALARS + row size]) over the global batch, of which row
# j takes row j (`row_uniforms`): its training time from column TIME (objective.times_from_uniform,
# inverse-CDF sampling), the Sinkhorn coupling's uniform from COUPLING, the label dropout's from
# LABEL_DROPOUT, and N(0, I) noise from the rest (`rng.normal_from_uniform`, the transform
# jax.random.normal applies).  With jax's partitionable threefry element (j, c) of a draw of
# shape [n, m] depends on the key, j and c alone (not on n, nor on how the draw is split over
# devices), so a row's randomness is the same whatever the device layout; and one vectorised
# hash per step replaces a fold_in, split and draw per row (on XLA:CPU each threefry call is a
# loop of its own).  A toy source draws from the named stream "source"; a network's dropout
# from fold_in(stream(step_key, "dropout"), j).
TIME, COUPLING, LABEL_DROPOUT = 0, 1, 2
NUM_SCALARS = 3
SOURCE_STREAM = "source"
DROPOUT_STREAM = "dropout"


def global_rows(draw: Callable, key, batch_size: int, first_index, rows: int):
    """Rows first_index .. first_index + rows - 1 of draw(key, batch_size): [rows, ...].

    Under jit the batch is global (first_index 0, rows = batch_size) and this is the draw; under
    pmap each device draws the global batch and keeps its rows (a redundant draw of the noise,
    cheap beside a network)."""
    everything = draw(key, batch_size)
    if rows == batch_size:
        return everything
    return jax.lax.dynamic_slice_in_dim(everything, first_index, rows, axis=0)


def row_uniforms(step_key, batch_size: int, row_size: int, first_index, rows: int):
    """U[0, 1) [rows, NUM_SCALARS + row_size]: rows first_index .. of the step's one draw."""
    return global_rows(
        lambda k, n: jax.random.uniform(k, (n, NUM_SCALARS + row_size), jnp.float32),
        step_key, batch_size, first_index, rows)


def drop_labels(labels, uniforms, p: float, null_label: int):
    """labels [b] with row j's replaced by null_label when uniforms[j] < p (its LABEL_DROPOUT
    column), so the same rows are dropped whatever the device layout.  p = 0: labels as is."""
    if not p:
        return labels
    return jnp.where(uniforms < p, jnp.asarray(null_label, labels.dtype), labels)


def draw_source(source, batch_size: int, x1, u, first_index, step_key):
    """The p0 samples of the rows first_index .. first_index + b - 1 of the global batch: [b, ...]
    like x1.  Normal sources: N(0, I) from the rows' uniforms u ([b, NUM_SCALARS + row size],
    `row_uniforms`) times source.scale; a toy set (defined per batch, e.g. torchcfm's
    sample_moons(n)) from one draw over the global batch from stream(step_key, "source")."""
    if source.is_normal:
        x0 = rng.normal_from_uniform(u[:, NUM_SCALARS:]).reshape(x1.shape).astype(x1.dtype)
        return x0 if source.scale == 1.0 else x0 * jnp.asarray(source.scale, x0.dtype)
    return global_rows(lambda k, n: source.sample(k, n).astype(x1.dtype),
                       rng.stream(step_key, SOURCE_STREAM), batch_size, first_index, x1.shape[0])


@dataclasses.dataclass(frozen=True)
class Draw:
    """A step's randomness (`make_draw`) in its two parts; draw(batch, first_index, step_key)
    runs both.

    rows(batch, first_index, step_key): the rows' own draws (times, source samples, dropped
    labels and, for a coupling, the uniforms it pairs with), a pure function of the batch and
    the step key: a call's steps can draw theirs together before its loop (`draw_steps`), bit
    for bit as one step at a time.  pair(drawn batch): the coupling's re-pairing of the drawn
    source samples with the rows, one solve per step (identity without a coupling or for pairs
    from a file)."""

    rows: Callable
    pair: Callable

    def __call__(self, batch, first_index, step_key):
        return self.pair(self.rows(batch, first_index, step_key))


# What a train step is given (`make_train_step`): its rows as they come, drawn, or drawn and paired.
BATCH, DRAWN, PAIRED = "batch", "drawn", "paired"

# The drawn batch's entry for what the coupling pairs with, its rows' uniforms (the COUPLING
# column) and labels before any dropout: `Draw.rows` adds it, `Draw.pair` uses and drops it.
PAIRING = "pairing"


def make_draw(objective, source, coupling: couplings_lib.CouplingSettings, batch_size: int,
              plan: parallel_lib.Plan, null_label: int | None = None, *,
              host_blocks: int | None = None) -> Draw:
    """draw(batch, first_index, step_key) -> the batch with each row's randomness of the step.

    batch: rows first_index .. of the global batch of batch_size ({"x", "label"}, optionally
    "x0": pairs from a file, used as they are).  Adds "times" (objective.times_from_uniform of
    the TIME column) and "x0" (`draw_source`; flow matching with a coupling then re-pairs them
    with the rows: 'global' over the whole global batch, `Plan.over_global_batch`, 'local' over
    each device's rows, `Plan.over_local_rows`, Sinkhorn drawing row j's partner with its
    COUPLING column), and drops labels (`drop_labels`, the LABEL_DROPOUT column) when
    objective.label_dropout > 0 (null_label: the model's num_classes).  A `Draw`: its `rows`
    and `pair` are the two parts.

    host_blocks: the draw of a program on one host device over this process's rows
    (`make_prepare`) instead of the train step's: no sharding constraints, and the coupling over
    all the rows given ('global') or over host_blocks equal blocks of them in turn, the rows of
    one device each ('local').
    """
    fm = isinstance(objective, objectives_lib.FlowMatching)
    coupled = fm and coupling.name != "independent"
    p = getattr(objective, "label_dropout", 0.0)
    if p and null_label is None:
        raise ValueError("objective.label_dropout > 0 needs the model's null label "
                         "(null_label = model.num_classes)")

    def paired(x1, x0, labels, uniforms):
        pairing = couplings_lib.couple(coupling.name, x1, x0, uniforms=uniforms,
                                       labels=labels if coupling.per_class else None,
                                       **coupling.kwargs())
        return jnp.take(x0, pairing.index, axis=0)

    if host_blocks is None:
        spread = plan.over_global_batch if coupling.scope == "global" else plan.over_local_rows
    else:
        spread = ((lambda fn: fn) if coupling.scope == "global"
                  else lambda fn: in_blocks(fn, host_blocks))
    paired = spread(paired)

    def rows(batch, first_index, step_key):
        x1 = batch["x"]
        b = x1.shape[0]
        u = row_uniforms(step_key, batch_size, math.prod(x1.shape[1:]), first_index, b)
        if b == batch_size and host_blocks is None:
            u = plan.constrain_rows(u)
        out = dict(batch, times=objective.times_from_uniform(u[:, TIME]))
        if "x0" not in batch:
            out["x0"] = draw_source(source, batch_size, x1, u, first_index, step_key)
            if coupled:
                out[PAIRING] = {"uniforms": u[:, COUPLING], "label": batch["label"]}
        if p:
            out["label"] = drop_labels(batch["label"], u[:, LABEL_DROPOUT], p, null_label)
        return out

    def pair(drawn):
        if PAIRING not in drawn:
            return drawn
        out = dict(drawn)
        inputs = out.pop(PAIRING)
        out["x0"] = paired(out["x"], out["x0"], inputs["label"], inputs["uniforms"])
        return out

    return Draw(rows, pair)


def in_blocks(fn, num_blocks: int):
    """fn(*rows) on num_blocks equal blocks of the rows in turn (`lax.map`), the outputs in
    order: a device's rows each, as `Plan.over_local_rows` gives them to fn."""
    if num_blocks == 1:
        return fn

    def blocked(*rows):
        split = lambda v: v.reshape(num_blocks, v.shape[0] // num_blocks, *v.shape[1:])  # noqa
        out = jax.lax.map(lambda args: fn(*args), tuple(split(v) for v in rows))
        return out.reshape(-1, *out.shape[2:])

    return blocked


def draw_steps(draw: Draw, batches, first_step, train_key, first_index=0):
    """`Draw.rows` of a call's k steps at once: batches [k, b, ...] -> drawn [k, b, ...], step i's
    key fold_in(train_key, first_step + i) as the step itself takes it.  One vectorised program
    instead of k small ones inside the loop: on XLA:CPU a step's draws (hashes, inverse-CDF
    noise) were fused into each of their consumers and computed twice; drawn ahead, 100 steps of
    the 64 x 3 MLP at batch 256 ran about 1.25x faster with the same losses (docs/speed.md).
    Memory: the drawn times and source samples of the k steps, about the batches' size."""
    k = jax.tree.leaves(batches)[0].shape[0]
    first_step = jnp.asarray(first_step)
    keys = jax.vmap(lambda i: jax.random.fold_in(train_key, i))(
        first_step + jnp.arange(k, dtype=first_step.dtype))
    return jax.vmap(lambda batch, key: draw.rows(batch, first_index, key))(batches, keys)


def batch_loss(apply: Callable, objective, conditional: bool, params, batch, indices, step_key,
               pair_cost: bool = False, per_row: bool = True):
    """Mean loss over rows of the global batch; (loss, aux).

    batch: {"x": [b, ...], "label": [b], "x0": [b, ...], "times": [b]} as `make_draw` gives it
    (x0 and times may be left out: the objective then draws them from a key); indices: [b]
    int32, the rows' positions in the global batch.

    per_row: each row calls the objective on itself alone (vmap), its network dropout keyed by
    fold_in(stream(step_key, "dropout"), j), so its loss does not depend on which device, shard
    or micro-batch holds it: what a network with dropout needs.  per_row=False makes one call
    on the whole batch (no dropout key; the rows' randomness is all in x0 and times): the same
    loss up to float reassociation, and on XLA:CPU about 13% faster for a 2-D MLP step, whose
    per-row vmap of batch-1 matmuls lowers to extra copies.  Always float32.
    pair_cost: aux also has "pair_cost", the mean |x1 - x0|^2 of the pairs (a coupling's or a
    file's).  apply(params, x, t, cond, train=True, dropout_key=key) -> prediction.
    """
    if not per_row:
        if "x0" not in batch or "times" not in batch:
            raise ValueError("batch_loss(per_row=False) needs the batch's x0 and times "
                             "(training.step.make_draw)")
        x, x0 = batch["x"], batch["x0"]
        cond = batch["label"] if conditional else None
        predict = lambda x_t, t: apply(params, x_t, t, cond, train=True)  # noqa: E731
        loss, aux = objective.loss(predict, x, step_key, x0=x0, times=batch["times"])
        if pair_cost:
            aux = dict(aux, pair_cost=couplings_lib.pair_cost(x, x0))
        return jax.tree.map(lambda v: v.astype(jnp.float32), (loss, aux))

    dropout = rng.stream(step_key, DROPOUT_STREAM)

    def one(x, label, index, x0, times):
        key = jax.random.fold_in(dropout, index)
        cond = label[None] if conditional else None
        predict = lambda x_t, t: apply(params, x_t, t, cond, train=True,  # noqa: E731
                                       dropout_key=key)
        loss, aux = objective.loss(predict, x[None], key,
                                   x0=None if x0 is None else x0[None],
                                   times=None if times is None else times[None])
        if pair_cost:
            aux = dict(aux, pair_cost=couplings_lib.pair_cost(x[None], x0[None]))
        return jax.tree.map(lambda v: v.astype(jnp.float32), (loss, aux))

    losses, aux = jax.vmap(one)(batch["x"], batch["label"], indices, batch.get("x0"),
                                batch.get("times"))
    return jnp.mean(losses), jax.tree.map(jnp.mean, aux)


def make_train_step(*, apply: Callable, objective, conditional: bool,
                    tx: optax.GradientTransformation, lr_schedule: Callable, ema_decay: float,
                    ema_warmup: bool, draw: Draw, pair_cost: bool = False,
                    per_row: bool = True, grad_accum_steps: int = 1,
                    split_micro: Callable | None = None, reduce: Callable | None = None):
    """train_step(state, batch, train_key, first_index=0, given="batch") -> (new state, metrics).

    batch: rows first_index .. first_index + b - 1 of the global batch (all of it under jit, one
    device's shard under pmap); given: "batch" (the step draws and pairs its rows), "drawn" (the
    rows' draws already made, `draw_steps`: the step only pairs them) or "paired" (drawn and
    paired, `prepare_steps`: the step only trains).  draw: `make_draw`'s `Draw` (the step's
    randomness, drawn once for all micro-batches).  pair_cost: also report the pairs' mean
    |x1 - x0|^2 (a coupling's or a file's pairs).  per_row: `batch_loss`'s (True: a network
    with dropout).  grad_accum_steps = A > 1 processes the rows as A micro-batches
    (split_micro(tree) -> [A, b / A, ...], laid out so no row crosses devices) and averages
    their gradients.  reduce (pmap: a pmean over the devices)
    averages loss, aux and gradients across devices.

    Non-finite guard: when the loss or the gradients' global norm is not finite (any NaN or Inf in
    a gradient makes the norm non-finite), params, opt_state and ema_params stay as they were (the
    step counter advances: the batch is skipped) and metrics["skipped"] is 1.  The choice is a
    lax.cond on that scalar: testing every leaf with a select made XLA's CPU compile of the
    digits U-Net step 19x slower (14 s -> 272 s).
    """
    loss_fn = lambda params, batch, indices, key: batch_loss(  # noqa: E731
        apply, objective, conditional, params, batch, indices, key, pair_cost, per_row)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params, batch, indices, step_key):
        # Low-precision products (model.matmul_dtype) by their written-out VJP.
        with precision.gradient_products():
            return accumulated(params, batch, indices, step_key)

    def accumulated(params, batch, indices, step_key):
        if grad_accum_steps == 1:
            return grad_fn(params, batch, indices, step_key)
        micro = split_micro((batch, indices))

        def accumulate(total, mb):
            return jax.tree.map(jnp.add, total, grad_fn(params, *mb, step_key)), None

        shapes = jax.eval_shape(grad_fn, params, *jax.tree.map(lambda v: v[0], micro), step_key)
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        total, _ = jax.lax.scan(accumulate, zeros, micro)
        return jax.tree.map(lambda v: v / grad_accum_steps, total)

    def train_step(state, batch, train_key, first_index=0, given=BATCH):
        step_key = jax.random.fold_in(train_key, state.step)
        indices = first_index + jnp.arange(batch["x"].shape[0], dtype=jnp.int32)
        if given == BATCH:
            batch = draw(batch, first_index, step_key)
        elif given == DRAWN:
            batch = draw.pair(batch)
        elif given != PAIRED:
            raise ValueError(f"given must be one of {BATCH!r}, {DRAWN!r}, {PAIRED!r}; got "
                             f"{given!r}")
        (loss, aux), grads = gradients(state.params, batch, indices, step_key)
        if reduce is not None:
            loss, aux, grads = reduce((loss, aux, grads))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update():  # inside the cond, so the new state is written in place of the old
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            decay = ema_lib.decay_at(state.step, ema_decay, ema_warmup)
            return params, opt_state, ema_lib.update(state.ema_params, params, decay)

        params, opt_state, ema_params = jax.lax.cond(
            finite, update, lambda: (state.params, state.opt_state, state.ema_params))
        metrics = dict(aux, loss=loss, grad_norm=grad_norm,
                       learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
                       skipped=1.0 - finite.astype(jnp.float32))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=ema_params), metrics

    return train_step


def reports_pair_cost(comps) -> bool:
    """Whether a run's metrics have "pair_cost" (the mean |x1 - x0|^2 of its pairs, coupled,
    independent or from a file): flow matching."""
    return isinstance(comps.objective, objectives_lib.FlowMatching)


def steps(step: Callable, state, batches):
    """lax.scan of `step` over the leading axis of `batches`; a plain call when it is 1.

    One step per call is not looped: XLA:CPU runs a convolution whose dimension numbers are not
    its kernel's (jax's transposes of one, unless written out as `models.convolution` does for
    the U-Net) many times slower inside a loop, even one of length 1.
    """
    if jax.tree.leaves(batches)[0].shape[0] == 1:
        state, metrics = step(state, jax.tree.map(lambda x: x[0], batches))
        return state, jax.tree.map(lambda x: x[None], metrics)
    return jax.lax.scan(step, state, batches)


def prepare_steps(draw: Draw, batches, first_step, train_key, first_index=0):
    """A call's k batches drawn (`draw_steps`) and paired, step by step (`lax.map`): what the
    train step given "paired" takes, bit for bit what it would draw and pair itself."""
    return jax.lax.map(draw.pair, draw_steps(draw, batches, first_step, train_key, first_index))


def make_prepare(comps, plan: parallel_lib.Plan):
    """The jitted (batches, first_step, train_key) -> `prepare_steps` of this process's rows,
    for a program on one host device (`ahead.Feeder` runs it on the CPU; a device's rows are
    paired alone under scope 'local', as in the step).  batches: [k, local batch, ...]; the
    output feeds `make_multi_step(..., prepared=True)` through `Plan.put_batches`."""
    s = comps.settings.train
    draw = make_draw(comps.objective, comps.source, comps.settings.coupling, s.batch_size, plan,
                     null_label=comps.model.num_classes if comps.conditional else None,
                     host_blocks=plan.num_shards // jax.process_count())
    first_index = plan.process_rows(s.batch_size)[0]
    return threefry.hot_program(jax.jit(
        lambda batches, first_step, train_key: prepare_steps(draw, batches, first_step,
                                                             train_key, first_index)))


def make_multi_step(comps, plan: parallel_lib.Plan, state_shardings, *, prepared: bool = False):
    """A compiled (state, batches, train_key) -> (state, metrics) over the plan, state donated.

    comps: the run's `components.Components`.  Runs k = batches' leading size train steps under
    lax.scan, their rows' draws made for all k before the loop (`draw_steps`); prepared=True:
    the batches come drawn and paired (`make_prepare`, `ahead.Feeder`) and the steps only
    train.  Mode "sharding":
    state as from `state.create_state`, batches [k, B, ...] (`Plan.put_batches`), metrics [k].
    Mode "pmap": state in pmap layout (`Plan.stack`), batches [num_shards, k, B / num_shards,
    ...], metrics [num_shards (local), k] (equal on every device).  The one place where pmap and
    jit differ.  Marked as a hot program (`threefry.hot_program`): the scripts lower it with the
    unrolled Threefry.
    """
    s = comps.settings.train
    in_pmap = plan.mode == "pmap"
    accum = s.grad_accum_steps
    shards = 1 if in_pmap else plan.num_shards

    def split_micro(tree):
        micro = jax.tree.map(lambda v: parallel_lib.split_microbatches(v, accum, shards), tree)
        return micro if in_pmap else jax.lax.with_sharding_constraint(micro,
                                                                      plan.batch_sharding(1))

    draw = make_draw(comps.objective, comps.source, comps.settings.coupling, s.batch_size, plan,
                     null_label=comps.model.num_classes if comps.conditional else None)
    train_step = make_train_step(
        apply=comps.apply, objective=comps.objective, conditional=comps.conditional, tx=comps.tx,
        lr_schedule=comps.lr_schedule, ema_decay=s.ema_decay, ema_warmup=s.ema_warmup, draw=draw,
        pair_cost=reports_pair_cost(comps), per_row=comps.stochastic,
        grad_accum_steps=accum, split_micro=split_micro,
        reduce=(lambda t: jax.lax.pmean(t, parallel_lib.DATA_AXIS)) if in_pmap else None)

    def drawn_steps(state, batches, train_key, first_index=0):
        if prepared:
            given = PAIRED
        else:
            batches, given = draw_steps(draw, batches, state.step, train_key, first_index), DRAWN
        return steps(lambda st, b: train_step(st, b, train_key, first_index, given), state,
                     batches)

    if in_pmap:
        def shard_steps(state, batches, first_index, train_key):
            return drawn_steps(state, batches, train_key, first_index)

        pmapped = jax.pmap(shard_steps, axis_name=parallel_lib.DATA_AXIS,
                           in_axes=(0, 0, 0, None), devices=plan.devices, donate_argnums=(0,))
        offsets = plan.shard_offsets(s.batch_size // plan.num_shards)
        return threefry.hot_program(
            lambda state, batches, train_key: pmapped(state, batches, offsets, train_key))

    def multi_step(state, batches, train_key):
        return drawn_steps(state, batches, train_key)

    return threefry.hot_program(jax.jit(
        multi_step, donate_argnums=(0,),
        in_shardings=(state_shardings, plan.batch_sharding(1), plan.replicated),
        out_shardings=(state_shardings, plan.replicated)))
