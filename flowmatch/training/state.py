"""The train state: parameters, optimizer state and EMA, created straight into a device plan."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from flowmatch import ema as ema_lib


@flax.struct.dataclass
class TrainState:
    """Everything that evolves during training (the data position is step-derived)."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    ema_params: Any


def init_state(model, tx, example_shape, conditional: bool, key) -> TrainState:
    """The initial state, float32 whatever the model's compute dtype."""
    cond = jnp.zeros((1,), jnp.int32) if conditional else None
    params = model.init(key, jnp.zeros((1, *example_shape), jnp.float32), jnp.zeros((1,)),
                        cond=cond)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=ema_lib.init(params))


def abstract_state(model, tx, example_shape, conditional: bool, plan=None):
    """The train state as jax.ShapeDtypeStructs (with the plan's shardings when given)."""
    abstract = jax.eval_shape(
        lambda k: init_state(model, tx, example_shape, conditional, k), jax.random.PRNGKey(0))
    if plan is None:
        return abstract
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, plan.state_shardings(abstract))


def create_state(model, tx, example_shape, conditional: bool, key, plan) -> TrainState:
    """`init_state` computed straight into the plan's shardings (the same numbers on any mesh)."""
    shardings = jax.tree.map(lambda a: a.sharding,
                             abstract_state(model, tx, example_shape, conditional, plan))
    fn = lambda k: init_state(model, tx, example_shape, conditional, k)  # noqa: E731
    return jax.jit(fn, out_shardings=shardings)(plan.replicate(key))
