"""Noise schedules of affine probability paths.

A schedule maps time t (0 = noise, 1 = data) to the coefficients of

    x_t = alpha_t * x1 + sigma_t * x0,        x0 ~ N(0, I) (noise), x1 ~ data,

and their time derivatives, which give the conditional velocity
dx_t/dt = d_alpha_t * x1 + d_sigma_t * x0.  Schedules know nothing about data, models or
training; `flowmatch.paths` builds on them.

All schedules satisfy alpha_0 = 0 and alpha_1 = 1; sigma_0 = 1 and sigma_1 = sigma_min (0 unless
stated).  Derivatives are written out in closed form (tests check them against `jax.jvp`).

The discrete DDPM schedules (`make_betas`, `DiscreteVPSchedule`) are schedules of this same kind:
a DDPM model is a model of the affine path over its variance-preserving schedule, with no
vocabulary of its own (`flowmatch.objectives.DDPM`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np


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


# -- the discrete DDPM schedules as a continuous VP path -------------------------------------------

BETA_SCHEDULES = ("linear", "cosine")


def _linear_betas(T, beta_start=None, beta_end=None):
    # Ho et al.: 1e-4 .. 0.02 over T = 1000.  Other T: scaled by 1000 / T as in Nichol & Dhariwal's
    # get_named_beta_schedule, which keeps sum(beta) ~ 10, so abar_{T-1} ~ 4e-5 (near pure noise).
    scale = 1000.0 / T
    start = 1e-4 * scale if beta_start is None else float(beta_start)
    end = 0.02 * scale if beta_end is None else float(beta_end)
    if not 0.0 < start <= end < 1.0:
        raise ValueError(
            f"linear schedule needs 0 < beta_start <= beta_end < 1, got {start} .. {end} for "
            f"T={T} (the default endpoints 1e-4 and 0.02 are scaled by 1000 / T; use T >= 21, "
            "explicit beta_start / beta_end, or the cosine schedule)")
    return np.linspace(start, end, T, dtype=np.float64)


def _cosine_betas(T, offset=0.008, max_beta=0.999):
    # Nichol & Dhariwal eq. 17: abar(tau) = f(tau) / f(0), f(tau) = cos((tau + s) / (1 + s) pi/2)^2;
    # beta_i = 1 - abar((i + 1) / T) / abar(i / T), capped at max_beta (the end where abar -> 0).
    if not (offset >= 0.0 and 0.0 < max_beta < 1.0):
        raise ValueError(f"cosine schedule needs offset >= 0 and 0 < max_beta < 1, got "
                         f"offset={offset}, max_beta={max_beta}")
    tau = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((tau + offset) / (1.0 + offset) * (np.pi / 2)) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


_BETA_FNS = {"linear": _linear_betas, "cosine": _cosine_betas}
_BETA_KWARGS = {"linear": ("beta_start", "beta_end"), "cosine": ("offset", "max_beta")}


def check_num_timesteps(num_timesteps) -> int:
    if (isinstance(num_timesteps, bool) or not isinstance(num_timesteps, numbers.Integral)
            or num_timesteps < 2):
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    return int(num_timesteps)


def make_betas(name: str, num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    """beta_i, i = 0..T-1 (DDPM's forward-process variances), as float64 NumPy [T].

    'linear' (Ho et al. 2020): linspace(1e-4, 0.02) at T = 1000; for other T both endpoints are
        scaled by 1000 / T (Nichol & Dhariwal's convention), unless beta_start / beta_end are given.
    'cosine' (Nichol & Dhariwal 2021): offset s = 0.008, betas capped at max_beta = 0.999.  The
        capped last step leaves abar_{T-1} ~ 1e-7 (T = 100) to 1e-9 (T = 1000), so a noise
        model's data estimate there, (x - sigma x0_hat) / alpha, amplifies its error 2e3-2e4-fold.
    """
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of: "
                         f"{', '.join(BETA_SCHEDULES)} (config key: objective.beta_schedule)")
    T = check_num_timesteps(num_timesteps)
    unknown = set(kwargs) - set(_BETA_KWARGS[name])
    if unknown:
        raise ValueError(f"beta schedule {name!r} takes no argument(s) {sorted(unknown)}; it "
                         f"accepts: {list(_BETA_KWARGS[name])}")
    return _BETA_FNS[name](T, **kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteVPSchedule:
    """DDPM's discrete schedule (Ho et al. 2020) as a continuous variance-preserving path.

    T steps i = 0..T-1 with cumulative products abar_i = prod_{j<=i} (1 - beta_j); step i sits at
    the project's time t_i = 1 - (i + 1) / T (`time`): i = T-1, the noisiest, at t = 0, where
    sampling starts, and step 0 at t = 1 - 1/T; t = 1 (abar = 1, clean data) is no step.  At the
    steps alpha_{t_i} = sqrt(abar_i) and sigma_{t_i} = sqrt(1 - abar_i), so the DDPM forward
    process q(x_i | data) = N(sqrt(abar_i) data, (1 - abar_i) I) is the affine path x_t = alpha_t
    x1 + sigma_t x0 at those times (x1 data, x0 the noise DDPM calls epsilon).

    Between the steps alpha = cos phi(t), sigma = sin phi(t), where the noise angle phi is a
    monotone C^1 cubic (PCHIP, Fritsch & Carlson 1980) through the knots
        phi(1 - k/T) = arctan(sqrt((1 - abar_{k-1}) / abar_{k-1})),   k = 0..T,  abar_{-1} = 1,
    so alpha^2 = abar_i at every step, alpha = 1 and sigma = 0 at t = 1, and alpha =
    sqrt(abar_{T-1}) > 0 at t = 0.  The angle, unlike log abar, stays bounded (phi < pi/2) and has
    finite slope at t = 1, so alpha, sigma and their derivatives are finite on all of [0, 1] (the
    probability-flow ODE of a DDPM model is an ODE of this path).  pi/2 - phi is interpolated
    separately (same cubic) so that alpha = sin(pi/2 - phi) keeps its relative precision near
    t = 0.  Knots are float64; evaluation runs in t's float dtype (at least float32).

    `alphas_cumprod` (float64 [T]) is the exact table: `at_steps` reads the coefficients of whole
    steps from it rather than from the cubic (what DDPM's samplers and loss use).
    """

    alphas_cumprod: np.ndarray  # [T] float64
    phi: np.ndarray             # [T + 1] at tau_k = 1 - t = k / T
    psi: np.ndarray             # [T + 1] pi/2 - phi
    slope: np.ndarray           # [T + 1] d phi / d tau at the knots

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVPSchedule":
        betas = np.asarray(betas, np.float64)
        if betas.ndim != 1 or betas.shape[0] < 2 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a 1-D array of at least 2 values in (0, 1), got "
                             f"shape {betas.shape}, range [{betas.min()}, {betas.max()}]")
        alphas_cumprod = np.cumprod(1.0 - betas)
        abar = np.append(1.0, alphas_cumprod)
        phi = np.arctan2(np.sqrt(1.0 - abar), np.sqrt(abar))
        psi = np.arctan2(np.sqrt(abar), np.sqrt(1.0 - abar))
        T = len(betas)
        sec = np.diff(phi) * T  # > 0: phi increases with tau
        d = np.empty(T + 1)
        d[1:-1] = 2.0 * sec[:-1] * sec[1:] / (sec[:-1] + sec[1:])  # harmonic mean (uniform knots)
        for end, (s0, s1) in ((0, (sec[0], sec[1])), (T, (sec[-1], sec[-2]))):
            d[end] = np.clip(0.5 * (3.0 * s0 - s1), 0.0, 3.0 * s0)  # 3-point, monotone-limited
        for a in (alphas_cumprod, phi, psi, d):
            a.setflags(write=False)
        return cls(alphas_cumprod=alphas_cumprod, phi=phi, psi=psi, slope=d)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def betas(self) -> np.ndarray:
        """beta_i = 1 - abar_i / abar_{i-1}, float64 [T]."""
        return 1.0 - self.alphas_cumprod / np.append(1.0, self.alphas_cumprod[:-1])

    def time(self, i):
        """t_i = 1 - (i + 1) / T for step indices i (NumPy / Python ints: float64 NumPy; jax
        arrays: JAX's default float dtype)."""
        T = self.num_timesteps
        if isinstance(i, (np.ndarray, numbers.Integral)):
            return 1.0 - (np.asarray(i, np.float64) + 1.0) / T
        return 1.0 - (jnp.asarray(i).astype(jnp.asarray(0.0).dtype) + 1.0) / T

    def step(self, t):
        """The nearest step index round(T (1 - t)) - 1, clipped to [0, T-1] (int32): `time`'s
        inverse; times nearer clean data than step 0 go to step 0."""
        T = self.num_timesteps
        t = jnp.asarray(t)
        t = t.astype(jnp.promote_types(t.dtype, jnp.float32))
        return jnp.clip(jnp.round(T * (1.0 - t)) - 1, 0, T - 1).astype(jnp.int32)

    def at_steps(self, i, dtype=jnp.float32) -> ScheduleOutput:
        """The coefficients at whole steps i (int array, any shape) from the exact table:
        alpha = sqrt(abar_i), sigma = sqrt(1 - abar_i) (computed in float64, cast to dtype); the
        derivatives from the cubic at the knot (d phi / dt = -slope)."""
        table = np.stack([np.sqrt(self.alphas_cumprod), np.sqrt(1.0 - self.alphas_cumprod),
                          self.slope[1:]])
        a, s, w = (jnp.take(jnp.asarray(row, dtype), jnp.asarray(i)) for row in table)
        return ScheduleOutput(alpha=a, sigma=s, d_alpha=s * w, d_sigma=-a * w)

    def __call__(self, t) -> ScheduleOutput:
        t = jnp.asarray(t)
        dtype = jnp.promote_types(t.dtype, jnp.float32)
        t = t.astype(dtype)
        T = self.num_timesteps
        u = (1.0 - t) * T
        k = jnp.clip(jnp.floor(u), 0, T - 1).astype(jnp.int32)
        r = u - k
        phi, psi, m = (jnp.asarray(a, dtype) for a in (self.phi, self.psi, self.slope / T))
        p0, p1, q0, q1, m0, m1 = phi[k], phi[k + 1], psi[k], psi[k + 1], m[k], m[k + 1]
        h01 = r * r * (3.0 - 2.0 * r)
        tang = r * (1.0 - r) ** 2 * m0 + r * r * (r - 1.0) * m1
        ph = p0 + h01 * (p1 - p0) + tang
        ps = q0 + h01 * (q1 - q0) - tang
        dph_du = (6.0 * r * (1.0 - r) * (p1 - p0) + (1.0 - r) * (1.0 - 3.0 * r) * m0
                  + r * (3.0 * r - 2.0) * m1)
        w = -T * dph_du  # d phi / dt < 0
        alpha, sigma = jnp.sin(ps), jnp.sin(ph)
        return ScheduleOutput(alpha=alpha, sigma=sigma, d_alpha=-sigma * w, d_sigma=alpha * w)


def discrete_vp(beta_schedule: str = "linear", num_timesteps: int = 1000,
                **kwargs) -> DiscreteVPSchedule:
    """The DDPM schedule `make_betas(beta_schedule, num_timesteps, **kwargs)` as a path schedule."""
    return DiscreteVPSchedule.from_betas(make_betas(beta_schedule, num_timesteps, **kwargs))


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
