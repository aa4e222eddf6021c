"""Time grids t_0, ..., t_N for fixed-step ODE solves.

Convention: t = 0 is noise, t = 1 is data.  Every grid here has num_steps + 1 points, starts at
exactly t0, ends at exactly t1 (either direction: t0 > t1 runs data -> noise, e.g. for
inversion) and is monotone.  Each grid is uniform in a warped time phi(t):

    t_i = phi^{-1}((1 - u_i) phi(t0) + u_i phi(t1)),        u_i = i / N,

so swapping t0 and t1 gives exactly the reversed grid.  Grids are float arrays [num_steps + 1] in
JAX's default float dtype (float32, or float64 under x64); t0 and t1 may be traced.
"""

from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return int(num_steps)


def _concrete(x):
    """x as a NumPy value, or None when it is traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _warped(num_steps, t0, t1, phi, phi_inv):
    """The grid uniform in phi(t), with endpoints set exactly to t0 and t1."""
    n = _check_num_steps(num_steps)
    dtype = jnp.asarray(0.0).dtype
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    # u and 1 - u from integers, so reversing (t0, t1) reverses the grid bit for bit.
    u = jnp.arange(n + 1, dtype=dtype) / n
    w = jnp.arange(n, -1, -1, dtype=dtype) / n
    ts = phi_inv(w * phi(t0) + u * phi(t1))
    return ts.at[0].set(t0).at[-1].set(t1)


def _identity(t):
    return t


def uniform(num_steps: int, t0=0.0, t1=1.0) -> jnp.ndarray:
    """Equally spaced grid [num_steps + 1]: t_i = t0 + (t1 - t0) i / N."""
    return _warped(num_steps, t0, t1, _identity, _identity)


def edm(num_steps: int, rho: float = 7.0, t0=0.0, t1=1.0) -> jnp.ndarray:
    """Karras et al. (2022, eq. 5) rho spacing, concentrated near the data end t = 1.

    EDM spaces noise levels uniformly in sigma^(1/rho).  Here the noise level is
    sigma_t = 1 - t, the noise scale of the straight path x_t = t x1 + (1 - t) x0, which goes to 0
    at the data end; so steps shrink towards t = 1, where fine detail is resolved:

        t_i = 1 - ((1 - u_i) (1 - t0)^(1/rho) + u_i (1 - t1)^(1/rho))^rho,   u_i = i / N.

    From t0 = 0 to t1 = 1 this is t_i = 1 - (1 - i/N)^rho; rho = 1 is uniform.  Requires
    t0, t1 <= 1.  EDM stops at sigma_min = 0.002; this grid goes to sigma = 0, so the last step
    is (1/N)^rho long, and in float32 (resolution 6e-8 near 1) the last intervals collapse to
    zero length once N > 1 / 6e-8^(1/rho) (about 10 for rho = 7): harmless (a zero-length step
    leaves the state unchanged) but it spends evaluations; prefer a smaller rho for many steps.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}; EDM uses 7, 1 gives a uniform grid.")
    for name, val in (("t0", t0), ("t1", t1)):
        c = _concrete(val)
        if c is not None and not np.all(c <= 1.0):
            raise ValueError(f"edm grid needs {name} <= 1 (sigma = 1 - t >= 0), got {val!r}")
    return _warped(num_steps, t0, t1,
                   lambda t: (1.0 - t) ** (1.0 / rho),
                   lambda p: 1.0 - p ** rho)


def shifted(num_steps: int, shift: float, t0=0.0, t1=1.0) -> jnp.ndarray:
    """Timestep-shifted grid used for flow models (SD3: Esser et al. 2024, eq. 23).

    SD3 writes time s with s = 0 data, s = 1 noise and shifts it to s' = k s / (1 + (k - 1) s).
    In this project's time t = 1 - s (t = 0 noise) the same map is

        t' = t / (k - (k - 1) t),

    applied to a uniform grid (from t0 = 0 to t1 = 1: t_i = u_i / (k - (k - 1) u_i)).  A shift
    k > 1 moves every interior point towards noise (t = 0): small steps near noise, large steps
    near data (SD3 uses k = 3 at 1024^2); k < 1 moves them towards data; k = 1 is uniform.
    For a sub-interval the grid is uniform in the unshifted time t k / (1 + (k - 1) t) between
    t0 and t1.  Requires t0, t1 in [0, 1].
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}; 1 is uniform, > 1 moves steps "
                         "towards noise (t = 0).")
    for name, val in (("t0", t0), ("t1", t1)):
        c = _concrete(val)
        if c is not None and not np.all((0.0 <= c) & (c <= 1.0)):
            raise ValueError(f"shifted grid needs {name} in [0, 1], got {val!r}")
    k = float(shift)
    return _warped(num_steps, t0, t1,
                   lambda t: k * t / (1.0 + (k - 1.0) * t),
                   lambda u: u / (k - (k - 1.0) * u))


GRIDS: dict[str, Callable[..., jnp.ndarray]] = {"uniform": uniform, "edm": edm, "shifted": shifted}


def make_grid(kind: str, num_steps: int, **kwargs) -> jnp.ndarray:
    """Grid by name: make_grid("edm", 16, rho=5.0) == edm(16, rho=5.0).  Returns [num_steps + 1]."""
    fn = GRIDS.get(kind)
    if fn is None:
        raise ValueError(f"unknown time grid {kind!r}; choose one of: {', '.join(GRIDS)}")
    return fn(num_steps, **kwargs)


# -- DDPM step subsequences -------------------------------------------------------------------------

SKIPS = ("uniform", "quadratic")
SPACINGS = ("linspace", "leading", "trailing")


def discrete_steps(num_timesteps: int, num_steps: int, skip: str = "uniform",
                   spacing: str = "linspace") -> np.ndarray:
    """K = num_steps of a discrete schedule's T steps, ascending int64 NumPy [K] (all T when K = T).

    Step i sits at time 1 - (i + 1) / T (`flowmatch.schedules.DiscreteVPSchedule`), so samplers
    visit the result from its last entry (the noisiest) to its first.  With g(u) = u ('uniform')
    or u^2 ('quadratic', Song et al. 2021a: denser near the data; they scale it to 0.8 T for
    CIFAR-10, here it spans the full range) and k = 0..K-1, following Lin et al. 2024, Table 2
    (given there 1-based, here 0-based):
        'linspace' (Nichol & Dhariwal):  i_k = round(g(k / (K-1)) (T-1))   first 0, last T-1
        'leading'  (DDIM, LDM):          i_k = floor(g(k / K) T)            first 0
        'trailing' (DPM-Solver):         i_k = round(g((k+1) / K) T) - 1    last T-1
    e.g. T = 1000, K = 10: linspace 0, 111, ..., 999; leading 0, 100, ..., 900; trailing 99, 199,
    ..., 999.  Quadratic grids can repeat a step at the dense end; repeats are moved up one step
    at a time so the result is strictly increasing.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, numbers.Integral) or (
            num_timesteps < 2):
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    T = int(num_timesteps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or not (
            1 <= num_steps <= T):
        raise ValueError(f"num_steps must be an integer in [1, T={T}], got {num_steps!r}")
    for kind, value, allowed in (("timestep skip", skip, SKIPS),
                                 ("timestep spacing", spacing, SPACINGS)):
        if value not in allowed:
            raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}")
    K = int(num_steps)
    k = np.arange(K, dtype=np.float64)
    g = (lambda u: u) if skip == "uniform" else (lambda u: u * u)
    if spacing == "linspace":
        ts = np.round(g(k / max(K - 1, 1)) * (T - 1)) if K > 1 else np.array([T - 1.0])
    elif spacing == "leading":
        # the small epsilon keeps k T / K that are whole numbers on the right side of floor
        ts = np.floor(g(k / K) * T + 1e-9)
    else:
        ts = np.round(g((k + 1) / K) * T) - 1
    ts = np.clip(ts, 0, T - 1).astype(np.int64)
    for j in range(1, K):
        ts[j] = max(ts[j], ts[j - 1] + 1)
    if ts[-1] > T - 1:
        raise ValueError(f"cannot place {K} distinct steps of T={T} with skip={skip!r}")
    return ts
