"""The train state: parameters, optimizer state and EMA, created straight into a device plan."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from flowmatch import ema as ema_lib
from flowmatch import threefry


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
    """`init_state` computed straight into the plan's shardings (the same numbers on any mesh).

    The program is lowered with Threefry unrolled on CPU (`flowmatch.threefry`: the same bits).
    An init is little but random draws, a hash or two per parameter leaf (the leaf's key, its
    draw), and XLA:CPU compiles jax's looped hash slowly: unrolled, the init of the checkerboard
    smoke MLP compiles in 1.4 s instead of 2.3 s and that of the digits U-Net in 6.6 s instead
    of 18 s (2 CPU cores).  Other platforms lower as before.
    """
    shardings = jax.tree.map(lambda a: a.sharding,
                             abstract_state(model, tx, example_shape, conditional, plan))
    fn = lambda k: init_state(model, tx, example_shape, conditional, k)  # noqa: E731
    with threefry.unrolled(True):
        return jax.jit(fn, out_shardings=shardings)(plan.replicate(key))
