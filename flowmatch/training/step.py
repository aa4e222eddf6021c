"""The train step: a module-level factory over plain arguments, and its compiled multi-step call.

    step = make_train_step(apply=..., objective=..., tx=..., ...)
    state, metrics = step(state, batch, train_key, first_index)

Randomness: step k uses step_key = fold_in(train_key, k), and row j of the global batch draws its
time, noise and dropout from fold_in(step_key, j) alone, and its label dropout from that row key's
named stream "label_dropout" (`batch_loss`); a coupling then pairs the
rows' source samples over the global batch, also independently of the device layout
(`make_pairing`).  So 1, 2 or 512 devices, jit or pmap, with or without gradient accumulation
compute the same losses and gradients up to the order of float reductions, and a resumed run
repeats exactly the randomness of an uninterrupted one.  Devices enter only through the `plan`
passed to `make_pairing` and `compile_steps`, and the `reduce` / micro-batch arguments.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from flowmatch import couplings as couplings_lib
from flowmatch import ema as ema_lib
from flowmatch import objectives as objectives_lib
from flowmatch import parallel as parallel_lib
from flowmatch import rng

# Streams of a step's randomness besides the rows' fold_in(step_key, j), j < batch_size.
SOURCE_STREAM = 2**32 - 1    # a toy source's draw of the whole global batch
COUPLING_STREAM = 2**32 - 2  # Sinkhorn: one uniform per row, fold_in(stream, j)
# A row's label dropout: one uniform from rng.stream(fold_in(step_key, j), LABEL_DROPOUT_STREAM),
# a stream of its own so that the split of the row key (loss, network dropout) stays as it was.
LABEL_DROPOUT_STREAM = "label_dropout"


def drop_labels(labels, indices, step_key, p: float, null_label: int):
    """labels [b] with each row's label replaced by null_label with probability p, row j deciding
    from its own key (uniform(stream(fold_in(step_key, j), "label_dropout")) < p): the same rows
    are dropped whatever the device layout.  p = 0 returns labels unchanged."""
    if not p:
        return labels

    def one(label, index):
        key = rng.stream(jax.random.fold_in(step_key, index), LABEL_DROPOUT_STREAM)
        drop = jax.random.uniform(key) < p
        return jnp.where(drop, jnp.asarray(null_label, label.dtype), label)

    return jax.vmap(one)(labels, indices)


def batch_loss(apply: Callable, objective, conditional: bool, params, batch, indices, step_key,
               null_label: int | None = None):
    """Mean loss over rows of the global batch, each with its own randomness; (loss, aux).

    batch: {"x": [b, ...], "label": [b]}, optionally "x0": [b, ...] (the source samples paired
    with the rows: from a coupling or a file of pairs; without it the objective draws x0 ~ N(0, I)
    per row); indices: [b] int32, the rows' positions in the global batch.  Row j calls the
    objective on itself alone with key fold_in(step_key, j) (split into the loss's key and the
    dropout key), so its loss does not depend on which device, shard or micro-batch holds it.
    A conditional model with objective.label_dropout = p > 0 sees the null label null_label (its
    num_classes) instead of the row's with probability p (`drop_labels`).
    Always float32.  With "x0", aux also has "pair_cost", the mean |x1 - x0|^2 of the pairs.
    apply(params, x, t, cond, train=True, dropout_key=key) -> prediction.
    """
    p = getattr(objective, "label_dropout", 0.0)
    labels = batch["label"]
    if p and conditional:
        if null_label is None:
            raise ValueError("objective.label_dropout > 0 needs the model's null label "
                             "(null_label = model.num_classes)")
        labels = drop_labels(labels, indices, step_key, p, null_label)

    def one(x, label, index, x0):
        key_loss, key_dropout = jax.random.split(jax.random.fold_in(step_key, index))
        cond = label[None] if conditional else None
        predict = lambda x_t, t: apply(params, x_t, t, cond, train=True,  # noqa: E731
                                       dropout_key=key_dropout)
        if x0 is None:
            loss, aux = objective.loss(predict, x[None], key_loss)
        else:
            loss, aux = objective.loss(predict, x[None], key_loss, x0=x0[None])
            aux = dict(aux, pair_cost=couplings_lib.pair_cost(x[None], x0[None]))
        return jax.tree.map(lambda v: v.astype(jnp.float32), (loss, aux))

    losses, aux = jax.vmap(one)(batch["x"], labels, indices, batch.get("x0"))
    return jnp.mean(losses), jax.tree.map(jnp.mean, aux)


def draw_source(source, batch_size: int, x1, indices, step_key):
    """The p0 samples of rows `indices` of the global batch of step key `step_key`: [b, ...].

    Normal sources: row j draws from fold_in(step_key, j) exactly the noise the loss itself would
    (`FlowMatching.draw_noise`), times source.scale.  A toy set (defined per batch, e.g. torchcfm's
    sample_moons(n)) is drawn as one global batch from fold_in(step_key, SOURCE_STREAM) and row j
    takes point j.  Either way a row's x0 does not depend on which device holds it.
    """
    if source.is_normal:
        def one(x, index):
            key_loss, _ = jax.random.split(jax.random.fold_in(step_key, index))
            return objectives_lib.FlowMatching.draw_noise(key_loss, x[None])[0]

        x0 = jax.vmap(one)(x1, indices)
        return x0 if source.scale == 1.0 else x0 * jnp.asarray(source.scale, x0.dtype)
    everything = source.sample(jax.random.fold_in(step_key, SOURCE_STREAM), batch_size)
    return jnp.take(everything, indices, axis=0).astype(x1.dtype)


def make_pairing(objective, source, coupling: couplings_lib.CouplingSettings, batch_size: int,
                 plan: parallel_lib.Plan) -> Callable:
    """pair(batch, indices, step_key) -> the batch with "x0": p0 samples paired with its rows.

    Flow matching only (other objectives draw their own noise: the batch is returned as it is),
    and only when the batch has no "x0" yet (pairs from a file are used as they are).  The
    coupling pairs the rows of its scope: 'global', the whole global batch
    (`Plan.over_global_batch`), or 'local', each device's rows (`Plan.over_local_rows`).
    Sinkhorn draws row j's partner with the uniform of fold_in(fold_in(step_key,
    COUPLING_STREAM), j).
    """
    fm = isinstance(objective, objectives_lib.FlowMatching)

    def paired(x1, x0, labels, uniforms):
        pairing = couplings_lib.couple(coupling.name, x1, x0, uniforms=uniforms,
                                       labels=labels if coupling.per_class else None,
                                       **coupling.kwargs())
        return jnp.take(x0, pairing.index, axis=0)

    spread = (plan.over_global_batch if coupling.scope == "global" else plan.over_local_rows)
    paired = spread(paired)

    def pair(batch, indices, step_key):
        if not fm or "x0" in batch:
            return batch
        x0 = draw_source(source, batch_size, batch["x"], indices, step_key)
        if coupling.name == "independent":
            return dict(batch, x0=x0)
        stream = jax.random.fold_in(step_key, COUPLING_STREAM)
        uniforms = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(stream, i)))(indices)
        return dict(batch, x0=paired(batch["x"], x0, batch["label"], uniforms))

    return pair


def make_train_step(*, apply: Callable, objective, conditional: bool,
                    tx: optax.GradientTransformation, lr_schedule: Callable, ema_decay: float,
                    ema_warmup: bool, pair: Callable, grad_accum_steps: int = 1,
                    split_micro: Callable | None = None, reduce: Callable | None = None,
                    null_label: int | None = None):
    """train_step(state, batch, train_key, first_index=0) -> (new state, metrics).

    batch: rows first_index .. first_index + b - 1 of the global batch (all of it under jit, one
    device's shard under pmap).  pair: `make_pairing`'s function.  grad_accum_steps = A > 1
    processes the rows as A micro-batches (split_micro(tree) -> [A, b / A, ...], laid out so no
    row crosses devices) and averages their gradients.  reduce (pmap: a pmean over the devices)
    averages loss, aux and gradients across devices.  null_label: a conditional model's null
    class (its num_classes), which objective.label_dropout trains (`batch_loss`).

    Non-finite guard: when the loss or the gradients' global norm is not finite (any NaN or Inf in
    a gradient makes the norm non-finite), params, opt_state and ema_params stay as they were (the
    step counter advances: the batch is skipped) and metrics["skipped"] is 1.  The choice is a
    lax.cond on that scalar: testing every leaf with a select made XLA's CPU compile of the
    digits U-Net step 19x slower (14 s -> 272 s).
    """
    loss_fn = lambda params, batch, indices, key: batch_loss(  # noqa: E731
        apply, objective, conditional, params, batch, indices, key, null_label)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params, batch, indices, step_key):
        if grad_accum_steps == 1:
            return grad_fn(params, batch, indices, step_key)
        micro = split_micro((batch, indices))

        def accumulate(total, mb):
            return jax.tree.map(jnp.add, total, grad_fn(params, *mb, step_key)), None

        shapes = jax.eval_shape(grad_fn, params, *jax.tree.map(lambda v: v[0], micro), step_key)
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        total, _ = jax.lax.scan(accumulate, zeros, micro)
        return jax.tree.map(lambda v: v / grad_accum_steps, total)

    def train_step(state, batch, train_key, first_index=0):
        step_key = jax.random.fold_in(train_key, state.step)
        indices = first_index + jnp.arange(batch["x"].shape[0], dtype=jnp.int32)
        batch = pair(batch, indices, step_key)
        (loss, aux), grads = gradients(state.params, batch, indices, step_key)
        if reduce is not None:
            loss, aux, grads = reduce((loss, aux, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_lib.decay_at(state.step, ema_decay, ema_warmup)
        ema_params = ema_lib.update(state.ema_params, params, decay)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = (params, opt_state, ema_params)
        old = (state.params, state.opt_state, state.ema_params)
        params, opt_state, ema_params = jax.lax.cond(finite, lambda: new, lambda: old)
        metrics = dict(aux, loss=loss, grad_norm=grad_norm,
                       learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
                       skipped=1.0 - finite.astype(jnp.float32))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=ema_params), metrics

    return train_step


def steps(step: Callable, state, batches):
    """lax.scan of `step` over the leading axis of `batches`; a plain call when it is 1.

    XLA on CPU runs convolutions inside a loop, even one of length 1, many times slower (a digits
    U-Net step: 3.2 s in a scan, 76 ms without), so one step per call is not looped.
    """
    if jax.tree.leaves(batches)[0].shape[0] == 1:
        state, metrics = step(state, jax.tree.map(lambda x: x[0], batches))
        return state, jax.tree.map(lambda x: x[None], metrics)
    return jax.lax.scan(step, state, batches)


def make_multi_step(comps, plan: parallel_lib.Plan, state_shardings):
    """A compiled (state, batches, train_key) -> (state, metrics) over the plan, state donated.

    comps: the run's `components.Components`.  Runs k = batches' leading size train steps under
    lax.scan.  Mode "sharding": state as from `state.create_state`, batches [k, B, ...]
    (`Plan.put_batches`), metrics [k].  Mode "pmap": state in pmap layout (`Plan.stack`),
    batches [num_shards, k, B / num_shards, ...], metrics [num_shards (local), k] (equal on every
    device).  The one place where pmap and jit differ.
    """
    s = comps.settings.train
    in_pmap = plan.mode == "pmap"
    accum = s.grad_accum_steps
    shards = 1 if in_pmap else plan.num_shards

    def split_micro(tree):
        micro = jax.tree.map(lambda v: parallel_lib.split_microbatches(v, accum, shards), tree)
        return micro if in_pmap else jax.lax.with_sharding_constraint(micro,
                                                                      plan.batch_sharding(1))

    train_step = make_train_step(
        apply=comps.apply, objective=comps.objective, conditional=comps.conditional, tx=comps.tx,
        lr_schedule=comps.lr_schedule, ema_decay=s.ema_decay, ema_warmup=s.ema_warmup,
        pair=make_pairing(comps.objective, comps.source, comps.settings.coupling, s.batch_size,
                          plan),
        grad_accum_steps=accum, split_micro=split_micro,
        reduce=(lambda t: jax.lax.pmean(t, parallel_lib.DATA_AXIS)) if in_pmap else None,
        null_label=comps.model.num_classes if comps.conditional else None)

    if in_pmap:
        def shard_steps(state, batches, first_index, train_key):
            return steps(lambda st, b: train_step(st, b, train_key, first_index), state, batches)

        pmapped = jax.pmap(shard_steps, axis_name=parallel_lib.DATA_AXIS,
                           in_axes=(0, 0, 0, None), devices=plan.devices, donate_argnums=(0,))
        offsets = plan.shard_offsets(s.batch_size // plan.num_shards)
        return lambda state, batches, train_key: pmapped(state, batches, offsets, train_key)

    def multi_step(state, batches, train_key):
        return steps(lambda st, b: train_step(st, b, train_key), state, batches)

    return jax.jit(multi_step, donate_argnums=(0,),
                   in_shardings=(state_shardings, plan.batch_sharding(1), plan.replicated),
                   out_shardings=(state_shardings, plan.replicated))
