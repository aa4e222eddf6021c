"""ODE sampling: follow the model's velocity from t = 0 to its last training time.

Flow-matching models integrate dx/dt = v(t, x) from the source samples at t = 0 to t = 1.  DDPM
models integrate their probability-flow ODE (the same velocity, on their variance-preserving path)
from t = 0 to t_end = 1 - 1/T, their last training time, and return the data estimate there (one
more evaluation, counted in nfe): the one probability-flow sampler, correct for every
parametrisation (a data-predicting model's velocity divides by sigma_t, which is 0 at t = 1).
"""

from __future__ import annotations

import jax.numpy as jnp

from flowmatch import integrators
from flowmatch.sampling.model import ModelFn
from flowmatch.sampling.records import Samples


def ode_sampler(model: ModelFn, *, method: str, num_steps: int | None = None,
                rtol: float | None = None, atol: float | None = None, time_grid=None,
                max_steps: int = 4096):
    """sample(params, x0 [n, ...], key, cond) -> Samples, integrating with `method`.

    Fixed grid: num_steps (uniform on [0, t_end]) or time_grid (from 0 to t_end); adaptive
    (embedded pairs): rtol and atol.  nfe: the solver's evaluations (+ 1 when the model denoises
    at t_end).  key is unused (deterministic).
    """
    integrators.check_arguments(method, num_steps=num_steps, time_grid=time_grid, rtol=rtol,
                                atol=atol, max_steps=max_steps)
    t_end = model.t_end
    span = {} if time_grid is not None else {"t0": 0.0, "t1": t_end}

    def sample(params, x0, key, cond=None):
        del key
        v = model.velocity_fn(params, cond)
        sol = integrators.solve(v, x0, method=method, num_steps=num_steps, time_grid=time_grid,
                                rtol=rtol, atol=atol, max_steps=max_steps, **span)
        return samples_of(model, params, cond, sol.x, sol)

    return sample


def samples_of(model: ModelFn, params, cond, x_end, sol: integrators.Solution) -> Samples:
    """The Samples of an ODE solve `sol` whose state at t_end is x_end: that state, or the model's
    data estimate there when it denoises at t_end (one more evaluation, counted in nfe)."""
    x, nfe = x_end, sol.nfe
    if model.denoises:
        x = model.denoise(params, x_end, cond)
        nfe = nfe + 1
    return Samples(x=x, nfe=jnp.asarray(nfe, jnp.int32), success=sol.success,
                   steps=sol.num_accepted)
