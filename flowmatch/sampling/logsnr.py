"""Log-SNR time of a model's path and the static grids of the SDE and DPM-Solver samplers.

On an affine path x_t = alpha_t x1 + sigma_t x0 (t = 0 noise, t = 1 data) the half log
signal-to-noise ratio

    lambda_t = log(alpha_t / sigma_t)

grows with t on every schedule here: from -inf at t = 0 where alpha_0 = 0 (cond-OT, cosine) or a
finite value (DDPM's discrete schedule, alpha = sqrt(abar_{T-1}) > 0 there) to +inf at t = 1
where sigma_1 = 0.  DPM-Solver steps in lambda (Lu et al. 2022, Sec. 3.1), so its grids and
coefficients come from here; where an end of [0, t_end] has infinite lambda the samplers stop a
hair inside it, at lambda = LOGSNR_RANGE (`bounds`): (-5, 5) is about the range of DDPM's linear
schedule at T = 1000 (lambda from -5.07 at its noisiest step to 4.60 at its last), i.e. t = 0.0067
and 0.9933 on the cond-OT path.

Everything here runs on the host once per sampler (the grids are static): schedule values in
float64 NumPy, from a DDPM model's exact alpha-bar table at its steps, else from the schedule
evaluated in JAX's default float dtype (float64 under `jax.enable_x64`).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import schedules as schedules_lib
from flowmatch.sampling.model import ModelFn

LOGSNR_RANGE = (-5.0, 5.0)
_BISECTIONS = 64


def is_discrete(model: ModelFn) -> bool:
    """True for a model of a discrete (DDPM) schedule."""
    return isinstance(model.path.schedule, schedules_lib.DiscreteVPSchedule)


def schedule_at(model: ModelFn, times, steps=None) -> schedules_lib.ScheduleOutput:
    """(alpha, sigma, d_alpha, d_sigma) at the given times as float64 NumPy arrays [n].

    steps (a DDPM model's step indices [n], optional): read the exact table there (alpha =
    sqrt(abar_i), sigma = sqrt(1 - abar_i); derivatives from the schedule's knot slopes)."""
    if steps is not None:
        sched = model.path.schedule
        abar = sched.alphas_cumprod[np.asarray(steps)]
        alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
        slope = sched.slope[np.asarray(steps) + 1]  # d phi / d tau at step i's knot
        return schedules_lib.ScheduleOutput(alpha, sigma, sigma * slope, -alpha * slope)
    # one compiled call rather than op-by-op dispatch (seconds for the DDPM schedule's cubic)
    s = jax.jit(model.path.schedule)(jnp.asarray(np.asarray(times, np.float64)))
    return schedules_lib.ScheduleOutput(*(np.asarray(v, np.float64) for v in s))


def logsnr(s: schedules_lib.ScheduleOutput) -> np.ndarray:
    """lambda = log(alpha) - log(sigma) (float64; -inf where alpha = 0, +inf where sigma = 0)."""
    # clipped at 0: float rounding leaves e.g. cos(pi / 2) = -4e-8 at the cosine path's end
    alpha, sigma = (np.maximum(np.asarray(v, np.float64), 0.0) for v in (s.alpha, s.sigma))
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)


def time_at_logsnr(model: ModelFn, lam) -> np.ndarray:
    """The times in [0, 1] where the model's path has log-SNR lam (bisection; lambda increases
    with t).  float64 NumPy, accurate to the schedule's float precision."""
    lam = np.atleast_1d(np.asarray(lam, np.float64))
    lo, hi = np.zeros_like(lam), np.ones_like(lam)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        below = logsnr(schedule_at(model, mid)) < lam
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _check_time(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a time in [0, 1], got {value!r}")
    return float(value)


def bounds(model: ModelFn, t_min=None, t_max=None, *, start_inside: bool = True,
           end_inside: bool = True) -> tuple[float, float]:
    """(t_lo, t_hi): where a sampler on the model's continuous path starts and stops.

    Given t_min / t_max are kept (checked: 0 <= t_min < t_max <= t_end).  Otherwise t_lo = 0 and
    t_hi = t_end, except that an end where lambda is infinite moves inside to lambda =
    LOGSNR_RANGE when start_inside / end_inside ask for it (a sampler that needs lambda or a
    coefficient that is singular there)."""
    t_min, t_max = _check_time("t_min", t_min), _check_time("t_max", t_max)
    lam_ends = logsnr(schedule_at(model, np.array([0.0, model.t_end])))
    lo = t_min if t_min is not None else (
        float(time_at_logsnr(model, LOGSNR_RANGE[0])[0])
        if start_inside and not np.isfinite(lam_ends[0]) else 0.0)
    hi = t_max if t_max is not None else (
        float(time_at_logsnr(model, LOGSNR_RANGE[1])[0])
        if end_inside and not np.isfinite(lam_ends[1]) else float(model.t_end))
    if not 0.0 <= lo < hi <= model.t_end:
        raise ValueError(f"need 0 <= t_min < t_max <= t_end = {model.t_end}, got t_min={lo}, "
                         f"t_max={hi}")
    return lo, hi


def uniform_logsnr_times(model: ModelFn, num_points: int, t_lo: float, t_hi: float) -> np.ndarray:
    """num_points times ascending from t_lo to t_hi, uniform in lambda (both ends finite)."""
    lam = logsnr(schedule_at(model, np.array([t_lo, t_hi])))
    if not np.all(np.isfinite(lam)):
        raise ValueError(f"a log-SNR grid needs finite lambda at both ends; lambda({t_lo}) = "
                         f"{lam[0]}, lambda({t_hi}) = {lam[1]}: pass t_min > 0 / t_max < 1")
    if num_points == 1:
        return np.array([t_lo])
    times = time_at_logsnr(model, np.linspace(lam[0], lam[1], num_points))
    times[0], times[-1] = t_lo, t_hi
    return times


def logsnr_steps(schedule: schedules_lib.DiscreteVPSchedule, num_steps: int) -> np.ndarray:
    """num_steps of a DDPM schedule's T steps, ascending int64 [K], nearest to uniform in lambda
    from the noisiest step T-1 to step 0 (both included for K >= 2; DPM-Solver's 'logSNR'
    skip type on the discrete steps).  Steps where the rounding collides are moved apart, as in
    `timegrids.discrete_steps`."""
    T = schedule.num_timesteps
    K = int(num_steps)
    abar = schedule.alphas_cumprod
    lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in the step index
    if K == 1:
        return np.array([T - 1], np.int64)
    targets = np.linspace(lam[-1], lam[0], K)  # noisiest first
    idx = np.interp(targets, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))
    steps = np.clip(np.round(idx), 0, T - 1).astype(np.int64)[::-1].copy()  # ascending
    for j in range(1, K):
        steps[j] = max(steps[j], steps[j - 1] + 1)
    steps[-1] = min(steps[-1], T - 1)
    for j in range(K - 2, -1, -1):
        steps[j] = min(steps[j], steps[j + 1] - 1)
    return steps
