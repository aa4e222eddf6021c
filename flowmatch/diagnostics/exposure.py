"""Exposure bias: the noise level of the states a sampler visits against the schedule's.

In training, the state at time t is x_t = alpha_t x1 + sigma_t x0 with exactly the noise level
sigma_t; in sampling, integration and model errors give states whose noise no longer matches t
(Ning et al. 2023, "Elucidating the exposure bias in diffusion models"; Li et al. 2023,
"Alleviating exposure bias in diffusion models through sampling with shifted time steps").

Estimator.  The model's own prediction of the data, x1_hat(x, t) (any parametrisation turned
into a velocity, then into (x1, x0) by the path's 2x2 system), gives the noise it sees in x,
    s(x, t) = ||x - alpha_t x1_hat(x, t)||^2 / dim      (= sigma_t^2 ||x0_hat||^2 / dim),
the squared norm of the predicted noise component that Ning et al. compare between training and
sampling.  Its mean over training states, r(tau) = E s(x_tau, tau) with x_tau from the forward
process (data and fresh noise), is the calibration curve (`calibrate`); it falls from about 1 at
tau = 0 to 0 at tau = 1.  A posterior mean shrinks towards the data, so r(tau) is not
sigma_tau^2: the curve, not a formula, is the reference.  For a sampling state at nominal time t
with mean statistic s_hat(t), the effective time t_eff solves r(t_eff) = s_hat(t) (Li et al.'s
"time whose noise level matches"), and the effective noise level is sigma(t_eff).  Where r is
flat (a VP path near t = 0, where sigma_t stays near 1) many times match equally well, so t_eff
is the time nearest t whose r agrees with s_hat(t) within Z_SCORE combined standard errors of
the two means; t_eff = t when t itself agrees (no detectable shift).  With the exact
velocity field and an exact integrator the sampling states have the training marginals, so
s_hat(t) = r(t), t_eff = t and sigma_eff = sigma_t (up to Monte Carlo error): the tests check this
on Gaussian data.  sigma_eff > sigma_t means the states are noisier than the schedule says.

Corrections (evaluated by `flowmatch.experiments.compare`):
  time_shift  Li et al.'s time-shifted sampling on a fixed grid: step k starts from x_k but
              treats it as being at tau_k = t_eff(t_k) (from a pilot run on other noise,
              clipped to within max_shift of a step from t_k) and takes one step of the method
              from tau_k to t_{k+1}: the model is evaluated at the time that matches the state's
              noise.  Same NFE as the plain grid.
  eps_scale   Ning et al.'s epsilon scaling: the predicted noise component is divided by a
              factor lam, v' = d_alpha x1_hat + d_sigma x0_hat / lam (lam > 1 removes less noise
              per step).  Any integrator; same NFE.

A trained network enters as its `sampling.ModelFn`: its velocity `model.velocity_fn(params, cond)`
on its path `model.path`; trajectories span [0, t1] with t1 = model.t_end (1 for flow matching,
a DDPM model's last training time, where its sampler stops and denoises).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import integrators
from flowmatch import paths as paths_lib
from flowmatch import sampling
from flowmatch import timegrids

DEFAULT_NUM_TAUS = 101
DEFAULT_MAX_SHIFT = 0.5
Z_SCORE = 2.0
CORRECTIONS = ("time_shift", "eps_scale")


def _expand(t, x):
    t = jnp.asarray(t, x.dtype)
    return jnp.broadcast_to(t, (x.shape[0],)).reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def endpoints(v: Callable, path: paths_lib.AffinePath, t, x):
    """(x1_hat, x0_hat) implied by the velocity v(t, x) at a scalar t; x: [B, ...]."""
    tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return path.to_endpoints(v(t, x), x, tb, "velocity")


def noise_statistic(path: paths_lib.AffinePath, t, x, x1_hat):
    """s = ||x - alpha_t x1_hat||^2 / dim per example: [B] (t a scalar; x, x1_hat [B, ...])."""
    alpha = path.schedule(_expand(t, x)).alpha
    r = (x - alpha * x1_hat).reshape(x.shape[0], -1).astype(jnp.float32)
    return jnp.mean(jnp.square(r), axis=1)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The forward-process statistic r(tau) = E s(x_tau, tau) on a grid of times.

    taus: [K] increasing from 0 to 1; stat: [K] the measured means; stat_se: [K] their standard
    errors (std over examples / sqrt(B)); envelope: [K] their running minimum (non-increasing),
    the curve that `effective_time` inverts; sigma: [K] sigma_tau.
    """

    taus: np.ndarray
    stat: np.ndarray
    stat_se: np.ndarray
    envelope: np.ndarray
    sigma: np.ndarray


def calibrate(v: Callable, path: paths_lib.AffinePath, data, noise, taus=None) -> Calibration:
    """r(tau) from forward states x_tau = alpha_tau data + sigma_tau noise (data, noise: [B, ...]
    with the model's example shape; taus default: DEFAULT_NUM_TAUS uniform points in [0, 1]).

    v: the model's velocity v(t, x).  One jitted scan over taus, B model evaluations each.
    """
    data = jnp.asarray(data)
    noise = jnp.asarray(noise, data.dtype)
    if data.shape != noise.shape:
        raise ValueError(f"data and noise need one shape, got {data.shape} and {noise.shape}")
    taus = np.linspace(0.0, 1.0, DEFAULT_NUM_TAUS) if taus is None else np.asarray(taus)
    if taus.ndim != 1 or taus.size < 2 or np.any(np.diff(taus) <= 0):
        raise ValueError(f"taus must be increasing, at least 2 points; got {taus}")

    @jax.jit
    def run(data, noise, taus):
        def one(_, tau):
            s = path.schedule(_expand(tau, data))
            x = s.alpha * data + s.sigma * noise
            x1_hat, _ = endpoints(v, path, tau, x)
            return None, _mean_se(noise_statistic(path, tau, x, x1_hat))

        return lax.scan(one, None, taus)[1]

    stat, se = (np.asarray(a, np.float64) for a in run(data, noise,
                                                        jnp.asarray(taus, data.dtype)))
    sigma = np.asarray(path.schedule(jnp.asarray(taus, jnp.float32)).sigma, np.float64)
    return Calibration(taus=taus.astype(np.float64), stat=stat, stat_se=se,
                       envelope=np.minimum.accumulate(stat), sigma=sigma)


def _mean_se(s):
    """(mean, standard error of the mean) of per-example values s: [B]."""
    return jnp.mean(s), jnp.std(s) / jnp.sqrt(s.shape[0])


def effective_time(cal: Calibration, stat, ts=None, stat_se=None,
                   z: float = Z_SCORE) -> np.ndarray:
    """t_eff with r(t_eff) = stat (elementwise), by linear interpolation of the envelope,
    clipped to [0, 1] (a statistic above r(0) gives 0: noisier than pure noise).

    With the nominal times ts (and the statistics' standard errors stat_se): t_eff = t where
    |r(t) - stat| <= z se (se combines both means' errors); else the time nearest t where that
    holds (the smallest shift the data demand: the edge of the consistent set, linearly
    interpolated between calibration times); else the interpolated inverse.  Resolves flat
    stretches of r."""
    stat = np.asarray(stat, np.float64)
    env, taus = cal.envelope, cal.taus
    inverse = np.interp(stat, env[::-1], taus[::-1])
    if ts is None:
        return inverse
    ts = np.broadcast_to(np.asarray(ts, np.float64), stat.shape)
    own = np.zeros_like(stat) if stat_se is None else np.asarray(stat_se, np.float64)
    out = inverse.copy()
    for i in np.ndindex(stat.shape):
        t = ts[i]
        se_t = np.interp(t, taus, cal.stat_se)
        if abs(np.interp(t, taus, cal.stat) - stat[i]) <= z * np.hypot(se_t, own[i]):
            out[i] = t
            continue
        g = np.abs(cal.stat - stat[i]) - z * np.hypot(cal.stat_se, own[i])  # <= 0: consistent
        ok = np.flatnonzero(g <= 0)
        if ok.size == 0:
            continue
        j = ok[np.argmin(np.abs(taus[ok] - t))]
        k = j - 1 if taus[j] > t else j + 1  # the neighbour towards t (inconsistent, g > 0)
        tau = taus[j]
        if 0 <= k < len(taus) and g[k] > 0:
            tau = tau + g[j] / (g[j] - g[k]) * (taus[k] - tau)
        out[i] = min(tau, t) if taus[j] < t else max(tau, t)
    return out


class Trajectory(NamedTuple):
    """`trajectory_statistic`'s result: grid ts [N + 1], mean statistic stat [N + 1] and its
    standard error stat_se [N + 1] at the grid states, final state x [B, ...]."""

    ts: np.ndarray
    stat: np.ndarray
    stat_se: np.ndarray
    x: jax.Array


def trajectory_statistic(v: Callable, path: paths_lib.AffinePath, x0, *, method: str,
                         num_steps: int, v_model: Callable | None = None,
                         t1: float = 1.0) -> Trajectory:
    """Integrates v from x0 (t = 0) to t1 on a uniform grid and measures s at every grid state.

    v_model: the model whose prediction x1_hat enters s (default v itself; a different one lets
    a test drive the states with a deliberately wrong field and measure them with the exact
    one).  Costs the solve plus N + 1 model evaluations (the predictions at the saved states).
    Fixed grids only.
    """
    v_model = v if v_model is None else v_model

    def measure(t, x):
        return _mean_se(noise_statistic(path, t, x, endpoints(v_model, path, t, x)[0]))

    sol, (stat, se) = along_trajectory(v, x0, measure, method=method, num_steps=num_steps, t1=t1)
    return Trajectory(*(np.asarray(a, np.float64) for a in (sol.ts, stat, se)), sol.x)


def along_trajectory(v: Callable, x0, fn: Callable, *, method: str, num_steps: int,
                     t1: float = 1.0):
    """Solves dx/dt = v from x0 (t = 0) to t1 on a uniform grid of num_steps steps, keeping every
    grid state, and maps fn(t, x) over the N + 1 saved states with lax.scan; one compiled
    program.  Returns (the solution: ts, xs, x, ...; fn's outputs stacked over the grid)."""

    @jax.jit
    def run(x0):
        sol = integrators.solve(v, x0, method=method, num_steps=num_steps, t0=0.0, t1=t1,
                                save_trajectory=True)
        return sol, lax.scan(lambda _, tx: (None, fn(*tx)), None, (sol.ts, sol.xs))[1]

    return run(jnp.asarray(x0))


def profile(cal: Calibration, path: paths_lib.AffinePath, ts, stat, stat_se=None) -> list[dict]:
    """Rows per grid time: t, sigma (nominal), stat (sampling), stat_train (r(t)), t_eff
    (`effective_time` with the nominal times), sigma_eff and ratio = sigma_eff / sigma (None
    where sigma = 0)."""
    ts = np.asarray(ts, np.float64)
    stat = np.asarray(stat, np.float64)
    t_eff = effective_time(cal, stat, ts, stat_se)
    sig = np.asarray(path.schedule(jnp.asarray(ts, jnp.float32)).sigma, np.float64)
    sig_eff = np.asarray(path.schedule(jnp.asarray(t_eff, jnp.float32)).sigma, np.float64)
    r = np.interp(ts, cal.taus, cal.stat)
    rows = []
    for i in range(len(ts)):
        rows.append({"t": float(ts[i]), "sigma": float(sig[i]), "stat": float(stat[i]),
                     "stat_train": float(r[i]), "t_eff": float(t_eff[i]),
                     "sigma_eff": float(sig_eff[i]),
                     "ratio": float(sig_eff[i] / sig[i]) if sig[i] > 1e-6 else None})
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Over the interior grid times (0 < t < 1, sigma > 0; the start is exact noise): mean and
    max |log(sigma_eff / sigma)|, the mean ratio, and the mean of t_eff - t."""
    inner = [r for r in rows if 0.0 < r["t"] < 1.0 and r["ratio"] is not None]
    if not inner:
        return {"mean_abs_log_ratio": None, "max_abs_log_ratio": None, "mean_ratio": None,
                "mean_time_shift": None}
    logs = np.abs(np.log([max(r["ratio"], 1e-12) for r in inner]))
    return {"mean_abs_log_ratio": float(np.mean(logs)), "max_abs_log_ratio": float(np.max(logs)),
            "mean_ratio": float(np.mean([r["ratio"] for r in inner])),
            "mean_time_shift": float(np.mean([r["t_eff"] - r["t"] for r in inner]))}


# -- corrections -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Correction:
    """A sampling correction: kind in CORRECTIONS; scale for eps_scale (the divisor lam)."""

    kind: str
    scale: float | None = None

    def __post_init__(self):
        if self.kind not in CORRECTIONS:
            raise ValueError(f"unknown correction {self.kind!r}; choose one of: "
                             "time_shift, eps_scale=LAM (e.g. eps_scale=1.02)")
        if self.kind == "eps_scale" and not (self.scale is not None and self.scale > 0):
            raise ValueError(f"eps_scale needs a factor > 0 (e.g. eps_scale=1.02), got "
                             f"{self.scale!r}")
        if self.kind == "time_shift" and self.scale is not None:
            raise ValueError("time_shift takes no factor; write time_shift")

    @property
    def name(self) -> str:
        return self.kind if self.scale is None else f"{self.kind}={self.scale:g}"


def parse_correction(spec) -> Correction:
    """'time_shift' or 'eps_scale=LAM' (a Correction passes through)."""
    if isinstance(spec, Correction):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a correction is a string such as 'time_shift' or 'eps_scale=1.02', "
                         f"got {spec!r}")
    kind, _, value = spec.strip().partition("=")
    scale = None
    if value:
        try:
            scale = float(value)
        except ValueError:
            raise ValueError(f"correction {spec!r}: {value!r} is not a number") from None
    return Correction(kind, scale)


def scale_noise(v: Callable, path: paths_lib.AffinePath, scale: float) -> Callable:
    """Ning et al.'s epsilon scaling as a velocity: d_alpha x1_hat + d_sigma x0_hat / scale."""

    def v_scaled(t, x):
        x1_hat, x0_hat = endpoints(v, path, t, x)
        s = path.schedule(_expand(t, x))
        return s.d_alpha * x1_hat + s.d_sigma * x0_hat / scale

    return v_scaled


def noise_scaled_model(model: sampling.ModelFn, scale: float) -> sampling.ModelFn:
    """The model with epsilon scaling applied (`scale_noise` of its velocity), as a model that
    predicts that velocity on the same path with the same t_end: any sampler of the registry
    (`sampling.make_sampler`) then samples the corrected field."""

    def apply(params, x, t, cond):
        return scale_noise(model.velocity_fn(params, cond), model.path, scale)(t, x)

    return sampling.ModelFn(apply=apply, path=model.path, prediction="velocity",
                            t_end=model.t_end, scalar_time=model.scalar_time)


def time_shift_schedule(grid, t_eff, max_shift: float = DEFAULT_MAX_SHIFT) -> np.ndarray:
    """Evaluation times tau_k [N] for the steps of `grid` [N + 1] (increasing), from the
    effective times t_eff [N + 1 or N] of the grid states of a pilot run: tau_k = t_eff_k
    clipped to [t_k - max_shift h_{k-1}, t_k + max_shift h_k] (0 <= max_shift < 1 keeps
    tau_k < t_{k+1}); tau_0 = t_0 (the initial state is exact noise)."""
    grid = np.asarray(grid, np.float64)
    n = len(grid) - 1
    t_eff = np.asarray(t_eff, np.float64)[:n]
    if not 0.0 <= max_shift < 1.0:
        raise ValueError(f"max_shift must be in [0, 1), got {max_shift}")
    h = np.diff(grid)
    lo = grid[:-1] - max_shift * np.concatenate([[0.0], h[:-1]])
    hi = grid[:-1] + max_shift * h
    tau = np.clip(t_eff, lo, hi)
    tau[0] = grid[0]
    return tau


def time_shifted_solve(v: Callable, x0, *, method: str, grid, eval_times):
    """One step of `method` from eval_times[k] to grid[k + 1] per k, starting from x0 at grid[0].

    grid: [N + 1]; eval_times: [N] (grid[:-1] gives the plain fixed-grid solve).  Call inside
    jit.  Returns (x [B, ...], nfe)."""
    grid = jnp.asarray(grid)
    eval_times = jnp.asarray(eval_times, grid.dtype)
    stages = integrators.nfe_for(method, 1)

    def step(x, tt):
        tau, t_next = tt
        sol = integrators.solve(v, x, method=method, time_grid=jnp.stack([tau, t_next]))
        return sol.x, None

    x, _ = lax.scan(step, x0, (eval_times, grid[1:]))
    return x, stages * (grid.shape[0] - 1)


def time_shifted_sampler(model: sampling.ModelFn, *, method: str, eval_times):
    """sample(params, x0, key, cond) -> sampling.Samples by `time_shifted_solve` of the model's
    velocity on the uniform grid of len(eval_times) steps over [0, model.t_end] (then, like the
    registry's ODE sampler, the data estimate at t_end when the model denoises: nfe + 1).  The
    registry's sampler signature for a correction the registry does not have; key is unused."""
    eval_times = np.asarray(eval_times, np.float64)
    grid = uniform_grid(len(eval_times), model.t_end)

    def sample(params, x0, key, cond=None):
        del key
        x, nfe = time_shifted_solve(model.velocity_fn(params, cond), x0, method=method,
                                    grid=jnp.asarray(grid, x0.dtype), eval_times=eval_times)
        if model.denoises:
            x, nfe = model.denoise(params, x, cond), nfe + 1
        return sampling.Samples(x=x, nfe=jnp.asarray(nfe, jnp.int32),
                                success=jnp.all(jnp.isfinite(x)))

    return sample


def uniform_grid(num_steps: int, t1: float = 1.0) -> np.ndarray:
    """The uniform grid [num_steps + 1] over [0, t1] that `integrators.solve(num_steps=...,
    t1=t1)` uses."""
    return np.asarray(timegrids.uniform(num_steps, 0.0, t1), np.float64)
