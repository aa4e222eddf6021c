"""Glue between trained networks and ODE integrators.

model + params + objective -> a velocity field v(t, x) -> `flowmatch.integrators.solve` from
noise at t = 0 to data at t = 1.  Nothing here knows about training or parallelism.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import integrators


def velocity_fn(apply_fn: Callable, params: Any, objective, cond=None) -> Callable:
    """v(t, x) for an integrator: the model's prediction converted to a velocity.

    apply_fn(params, x, t, cond) -> prediction (velocity, x1 or x0, per `objective.prediction`);
    t: a scalar, broadcast to the batch; x: [B, ...].
    """

    def v(t, x):
        tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        pred = apply_fn(params, x, tb, cond).astype(x.dtype)
        return objective.velocity(pred, x, tb)

    return v


def solve_from_noise(apply_fn: Callable, params: Any, objective, x0, *, method: str,
                     num_steps: int | None = None, rtol: float | None = None,
                     atol: float | None = None, time_grid=None, cond=None):
    """Integrates the learned flow from x0 (source samples, t = 0) to t = 1.  Returns an
    integrators.Solution."""
    v = velocity_fn(apply_fn, params, objective, cond)
    return integrators.solve(v, x0, method=method, num_steps=num_steps, time_grid=time_grid,
                             rtol=rtol, atol=atol)


def make_sampler(apply_fn: Callable, objective, example_shape: Sequence[int], *, method: str,
                 num_steps: int | None = None, rtol: float | None = None,
                 atol: float | None = None, dtype=jnp.float32,
                 source_sample: Callable | None = None):
    """A jitted `sample(params, key, n, cond=None) -> (x [n, *example_shape], nfe)`.

    x0 is drawn from `key`: N(0, I), or source_sample(key, n) -> [n, *example_shape] for another
    source distribution (e.g. `flowmatch.sources.SourceDistribution.sample`); the solver runs as
    one XLA program.  Tolerances only for adaptive methods (the integrator checks the
    combination and says what to pass).
    """
    # Validate the method / step / tolerance combination now, on the host, not at first trace.
    integrators.check_arguments(method, num_steps=num_steps, time_grid=None, rtol=rtol, atol=atol)

    @functools.partial(jax.jit, static_argnums=(2,))
    def sample(params, key, n, cond=None):
        if source_sample is None:
            x0 = jax.random.normal(key, (n, *example_shape), dtype)
        else:
            x0 = jnp.asarray(source_sample(key, n), dtype)
        sol = solve_from_noise(apply_fn, params, objective, x0, method=method, num_steps=num_steps,
                               rtol=rtol, atol=atol, cond=cond)
        return sol.x, sol.nfe, sol.success

    return sample


def sample_in_chunks(sample: Callable, params: Any, key, num_samples: int, chunk_size: int,
                     labels=None):
    """Draws num_samples with a `make_sampler` function, chunk by chunk (one compilation).

    Chunk i uses fold_in(key, i), so results do not depend on anything but (key, chunk_size).
    Returns (samples as float32 NumPy [num_samples, ...], total NFE, all solves succeeded).
    """
    chunk_size = min(chunk_size, num_samples)
    outs, nfe, ok = [], 0, True
    for i, start in enumerate(range(0, num_samples, chunk_size)):
        cond = None
        if labels is not None:
            cond = jnp.asarray(np.resize(labels[start:start + chunk_size], chunk_size), jnp.int32)
        x, n, success = sample(params, jax.random.fold_in(key, i), chunk_size, cond)
        outs.append(np.asarray(x, np.float32))
        nfe = max(nfe, int(n))
        ok = ok and bool(success)
    return np.concatenate(outs)[:num_samples], nfe, ok
