"""Exponential moving average of parameters as a pure (init, update) pair.

    ema_{k+1} = decay * ema_k + (1 - decay) * params_{k+1}

`warmup` (optional) uses decay_k = min(decay, (1 + k) / (10 + k)) so that short runs are not
dominated by the random initialisation (the schedule of TensorFlow's ExponentialMovingAverage
with num_updates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init(params):
    """The EMA starts at the initial parameters (a copy, so donation of params is safe)."""
    return jax.tree.map(jnp.array, params)


def decay_at(step, decay: float, warmup: bool):
    """The decay used for the update that produces step `step + 1`."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update(ema_params, params, decay):
    """One EMA step; decay is a scalar (python float or array)."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p.astype(e.dtype) - e), ema_params,
                        params)
