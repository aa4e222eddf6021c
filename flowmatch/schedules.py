"""Noise schedules of affine probability paths.

A schedule maps time t (0 = noise, 1 = data) to the coefficients of

    x_t = alpha_t * x1 + sigma_t * x0,        x0 ~ N(0, I) (noise), x1 ~ data,

and their time derivatives, which give the conditional velocity
dx_t/dt = d_alpha_t * x1 + d_sigma_t * x0.  Schedules know nothing about data, models or
training; `flowmatch.paths` builds on them.

All schedules satisfy alpha_0 = 0 and alpha_1 = 1; sigma_0 = 1 and sigma_1 = sigma_min (0 unless
stated).  Derivatives are written out in closed form (tests check them against `jax.jvp`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax.numpy as jnp


class ScheduleOutput(NamedTuple):
    """alpha_t, sigma_t and their time derivatives, each with t's shape."""

    alpha: jnp.ndarray
    sigma: jnp.ndarray
    d_alpha: jnp.ndarray
    d_sigma: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class CondOTSchedule:
    """Conditional optimal-transport / rectified-flow path (Lipman et al. 2023; Liu et al. 2023).

    alpha_t = t,  sigma_t = 1 - (1 - sigma_min) t.  With sigma_min = 0 this is the straight line
    x_t = t x1 + (1 - t) x0 of rectified flow; sigma_min > 0 keeps a little noise at t = 1.
    """

    sigma_min: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(
                f"sigma_min must be in [0, 1), got {self.sigma_min}; 0 gives rectified flow, "
                "small values such as 1e-4 follow Lipman et al. 2023.")

    def __call__(self, t) -> ScheduleOutput:
        t = jnp.asarray(t)
        k = 1.0 - self.sigma_min
        return ScheduleOutput(
            alpha=t, sigma=1.0 - k * t, d_alpha=jnp.ones_like(t), d_sigma=jnp.full_like(t, -k))


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """Variance-preserving trigonometric path: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2).

    alpha_t^2 + sigma_t^2 = 1 at every t (the cosine path of Albergo & Vanden-Eijnden 2023 and
    the "VP cosine" of Nichol & Dhariwal 2021 in continuous form).
    """

    def __call__(self, t) -> ScheduleOutput:
        t = jnp.asarray(t)
        h = 0.5 * math.pi
        s, c = jnp.sin(h * t), jnp.cos(h * t)
        return ScheduleOutput(alpha=s, sigma=c, d_alpha=h * c, d_sigma=-h * s)


@dataclasses.dataclass(frozen=True)
class PolynomialSchedule:
    """Polynomial convex path: alpha_t = t^n, sigma_t = 1 - t^n (n > 0; n = 1 is cond-OT).

    Larger n keeps the state noisier for longer (the polynomial scheduler of Lipman et al. 2024,
    "Flow Matching Guide and Code").
    """

    exponent: float = 2.0

    def __post_init__(self):
        if not self.exponent > 0:
            raise ValueError(f"polynomial exponent must be > 0, got {self.exponent}")

    def __call__(self, t) -> ScheduleOutput:
        t = jnp.asarray(t)
        n = self.exponent
        a = t**n
        # n t^(n-1), written so that t = 0 with n >= 1 gives a finite value.
        da = n * jnp.power(t, n - 1.0)
        return ScheduleOutput(alpha=a, sigma=1.0 - a, d_alpha=da, d_sigma=-da)


Schedule = Callable[[jnp.ndarray], ScheduleOutput]

SCHEDULES = {
    "cond_ot": CondOTSchedule,
    "cosine": CosineSchedule,
    "polynomial": PolynomialSchedule,
}


def make_schedule(name: str, **kwargs) -> Schedule:
    """Builds a schedule by name: 'cond_ot' (sigma_min=...), 'cosine', 'polynomial' (exponent=...)."""
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)} "
            "(config key: path.schedule)")
    cls = SCHEDULES[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(
            f"schedule {name!r} takes no argument(s) {sorted(unknown)}; "
            f"it accepts: {sorted(allowed) or 'no arguments'}")
    return cls(**kwargs)
