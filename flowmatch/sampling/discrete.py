"""DDPM's samplers on any affine path: ancestral (Ho et al. 2020) and DDIM (Song et al. 2021).

Both step backwards along the forward process on a grid of times 0 <= t_K < ... < t_1 < t_0 = 1
(here listed from the noise end: tau_0 = t_K first).  At each grid time the network's data and
noise estimates (x1_hat, x0_hat) come from its prediction through `paths.endpoints`; a step from
time a to the next time b > a is

    ancestral  x_b = c_a x_a + c_1 x1_hat + sqrt(var) z       (q(x_b | x_a, x1_hat), `paths.posterior`)
    DDIM       x_b = alpha_b x1_hat + sqrt(sigma_b^2 - s^2) x0_hat + s z,   s = eta sqrt(var)

with z ~ N(0, I) from fold_in(key, k) at step k (counted K-1 down to 0 as the noise level falls)
and no noise into t = 1.  For a DDPM model the grid is K of its T steps
(`timegrids.discrete_steps`; all T for ancestral by default) followed by t = 1, and the
coefficients come from its exact alpha-bar table; these are then exactly Ho et al.'s Algorithm 2
on the respaced schedule (Nichol & Dhariwal 2021, Sec. 4) and Song et al.'s eq. 12.  For a model of
a continuous path (flow matching) the grid is K uniform steps over [0, 1]; with the cond-OT path
DDIM is then the Euler method in the data estimate.  nfe = K.  Step coefficients are computed on
the host in float64 (the grid is static) and enter the compiled loop as float32 arrays.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from flowmatch import paths as paths_lib
from flowmatch import schedules as schedules_lib
from flowmatch import timegrids
from flowmatch.sampling.model import ModelFn
from flowmatch.sampling.records import Samples

VARIANCES = ("fixed_small", "fixed_large")


def is_discrete(model: ModelFn) -> bool:
    """True for a model of a discrete (DDPM) schedule."""
    return isinstance(model.path.schedule, schedules_lib.DiscreteVPSchedule)


def _host_coefficients(model: ModelFn, times: np.ndarray, steps: np.ndarray | None):
    """The schedule at the grid times as float64 arrays [len(times)] (alpha, sigma, d_alpha,
    d_sigma): a discrete schedule's exact table at its steps (and alpha = 1, sigma = 0 at t = 1),
    else the schedule evaluated in float32."""
    if steps is not None:
        sched = model.path.schedule
        abar = np.append(sched.alphas_cumprod[steps], 1.0)
        alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
        slope = np.append(sched.slope[steps + 1], sched.slope[0])  # d phi / d tau at the knots
        return schedules_lib.ScheduleOutput(alpha, sigma, sigma * slope, -alpha * slope)
    s = model.path.schedule(jnp.asarray(times, jnp.float32))
    return schedules_lib.ScheduleOutput(*(np.asarray(v, np.float64) for v in s))


def grid(model: ModelFn, num_steps: int | None, *, skip: str = "uniform",
         spacing: str = "linspace"):
    """(times [K + 1] float64 ascending, ending at 1; the discrete steps [K] or None).

    DDPM models: K of their steps (num_steps=None: all T), by `timegrids.discrete_steps`; other
    models: K = num_steps uniform steps over [0, 1] (required)."""
    if is_discrete(model):
        T = model.path.schedule.num_timesteps
        steps = timegrids.discrete_steps(T, T if num_steps is None else num_steps, skip, spacing)
        times = np.append(np.asarray(model.path.schedule.time(steps[::-1])), 1.0)
        return times, steps[::-1]
    if num_steps is None:
        raise ValueError("ancestral / ddim sampling of a continuous-time model needs num_steps")
    return np.asarray(timegrids.uniform(num_steps, 0.0, 1.0), np.float64), None


def _transitions(s: schedules_lib.ScheduleOutput) -> dict:
    """Per-step float64 arrays [K] from the grid's schedule values [K + 1]: the values at the
    step's start (where the network is evaluated), the posterior coefficients (c_a, c_1, var), the
    forward variance s2 and (alpha_b, sigma_b) of the step's end."""
    sa = schedules_lib.ScheduleOutput(*(v[:-1] for v in s))
    sb = schedules_lib.ScheduleOutput(*(v[1:] for v in s))
    c_a, c_1, var, s2 = paths_lib.posterior(sa, sb)
    return dict(alpha=sa.alpha, sigma=sa.sigma, d_alpha=sa.d_alpha, d_sigma=sa.d_sigma,
                c_a=c_a, c_1=c_1, var=var, s2=s2, alpha_b=sb.alpha, sigma_b=sb.sigma)


def _estimates(model, params, x, c, cond, clip_denoised):
    """(x1_hat, x0_hat) at a step's start time c["t"], with the step's schedule values c;
    x1_hat optionally clipped to [-1, 1] (the noise estimate then recomputed from it)."""
    pred, _ = model.predict(params, x, c["t"], cond)
    s = schedules_lib.ScheduleOutput(c["alpha"], c["sigma"], c["d_alpha"], c["d_sigma"])
    x1, x0 = paths_lib.endpoints(s, pred, x, model.prediction, model.path.eps)
    if clip_denoised:
        x1 = jnp.clip(x1, -1.0, 1.0)
        x0 = (x - s.alpha * x1) / paths_lib._safe(s.sigma, model.path.eps)
    return x1, x0


def _scan(model, times, coeffs, step_fn, x_init, key):
    """Runs step_fn(x, t, coefficients of the step, noise key) over the grid; K evaluations."""
    K = len(times) - 1
    dt = x_init.dtype
    xs = {name: jnp.asarray(v, dt) for name, v in coeffs.items()}
    xs["t"] = jnp.asarray(times[:-1], dt)
    xs["k"] = jnp.arange(K - 1, -1, -1)

    def body(x, c):
        return step_fn(x, c, jax.random.fold_in(key, c["k"]) if key is not None else None), None

    x, _ = lax.scan(body, x_init, xs)
    return Samples(x=x, nfe=jnp.asarray(K, jnp.int32), success=jnp.asarray(True),
                   steps=jnp.asarray(K, jnp.int32))


def ancestral_sampler(model: ModelFn, *, num_steps: int | None = None, skip: str = "uniform",
                      spacing: str = "linspace", variance: str = "fixed_small",
                      clip_denoised: bool = False):
    """sample(params, x0, key, cond) -> Samples by ancestral sampling (see the module docstring).

    variance: 'fixed_small' (the posterior variance) or 'fixed_large' (the forward step's
    variance s2, Ho et al.'s sigma_t^2 = beta_t); the step into t = 1 adds no noise either way.
    clip_denoised clips x1_hat to [-1, 1] (for images; other data need not lie there).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
    times, steps = grid(model, num_steps, skip=skip, spacing=spacing)
    c = _transitions(_host_coefficients(model, times, steps))
    std = np.sqrt(c["var"] if variance == "fixed_small" else c["s2"])
    std[-1] = 0.0
    coeffs = dict(c, std=std)

    def sample(params, x0, key, cond=None):
        def step(x, s, noise_key):
            x1, _ = _estimates(model, params, x, s, cond, clip_denoised)
            z = jax.random.normal(noise_key, x.shape, x.dtype)
            return s["c_a"] * x + s["c_1"] * x1 + s["std"] * z

        return _scan(model, times, coeffs, step, x0, key)

    return sample


def ddim_sampler(model: ModelFn, *, num_steps: int | None = 50, eta: float = 0.0,
                 skip: str = "uniform", spacing: str = "leading", clip_denoised: bool = False):
    """sample(params, x0, key, cond) -> Samples by DDIM (eta = 0: deterministic, key unused;
    eta = 1 on all steps: the ancestral sampler with the posterior variance)."""
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    times, steps = grid(model, num_steps, skip=skip, spacing=spacing)
    c = _transitions(_host_coefficients(model, times, steps))
    std = eta * np.sqrt(c["var"])
    coeffs = dict(c, std=std, noise_b=np.sqrt(np.maximum(c["sigma_b"] ** 2 - std * std, 0.0)))
    stochastic = eta > 0

    def sample(params, x0, key, cond=None):
        if stochastic and key is None:
            raise ValueError("ddim with eta > 0 draws noise: pass a key")

        def step(x, s, noise_key):
            x1, x0_hat = _estimates(model, params, x, s, cond, clip_denoised)
            out = s["alpha_b"] * x1 + s["noise_b"] * x0_hat
            if stochastic:
                out = out + s["std"] * jax.random.normal(noise_key, x.shape, x.dtype)
            return out

        return _scan(model, times, coeffs, step, x0, key if stochastic else None)

    return sample
