"""Discrete-time DDPM (Ho et al. 2020) as a baseline that trains in flowmatch's one training loop.

Notation inside this module is DDPM's, not the rest of the project's: `x_start` / "x0" is the
CLEAN DATA (the project's x1) and `eps` the Gaussian noise (the project's x0).  The discrete
timestep is i in {0, ..., T-1}, i = T-1 the noisiest (Ho et al. number them t = 1..T; i = t - 1):

    q(x_i | x_start) = N(sqrt(abar_i) x_start, (1 - abar_i) I),   abar_i = prod_{j<=i} (1 - beta_j).

Time mapping.  Networks see the project's continuous time t (0 = noise, 1 = data):

    t = continuous_time(i, T) = 1 - (i + 1) / T      in {0, 1/T, ..., 1 - 1/T}
    i = discrete_index(t, T)  = round(T (1 - t)) - 1  (clipped to [0, T-1])

so the diffusion time tau = 1 - t = (i + 1) / T is the one under which the cosine schedule is
defined (abar_i = f((i + 1) / T) / f(0), Nichol & Dhariwal 2021) and under which T beta_i of the
linear schedule tends to Song et al.'s (2021) continuous beta(tau) in [0.1, 20].  t = 0 is the
noisiest step T-1 (where sampling starts from x_T ~ N(0, I)); t = 1 (abar = 1, clean data) is no
discrete step.  Steps are 1/T apart, which flowmatch's time embeddings (sin(1000 t)) resolve.

Contents: schedules (`make_schedule`, `respace`), q / posterior / reverse-step maths, the
prediction conversions (eps, x0, v), the `DDPM` training objective (same interface as
`objectives.FlowMatching`), three samplers (`ancestral_sample`, `ddim_sample`, `pf_ode_sample`
through `flowmatch.integrators`), and the variational bound `vlb_bits_per_dim`.  Per-example
timesteps i are int arrays [B]; x is [B, ...] (images NHWC in [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import integrators
from flowmatch import paths as paths_lib
from flowmatch import schedules as schedules_lib

Predict = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]

BETA_SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")
SKIPS = ("uniform", "quadratic")
SPACINGS = ("linspace", "leading", "trailing")


def _choose(kind: str, value, allowed, config_key: str | None = None):
    if value not in allowed:
        where = f" (config key: {config_key})" if config_key else ""
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}{where}")
    return value


def _check_num_timesteps(num_timesteps) -> int:
    if (isinstance(num_timesteps, bool) or not isinstance(num_timesteps, numbers.Integral)
            or num_timesteps < 2):
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    return int(num_timesteps)


# -- beta schedules (float64, NumPy) ---------------------------------------------------------------


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


def make_betas(name: str, num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    """beta_i, i = 0..T-1, as float64 NumPy [T].

    'linear' (Ho et al. 2020): linspace(1e-4, 0.02) at T = 1000; for other T both endpoints are
        scaled by 1000 / T (Nichol & Dhariwal's convention), unless beta_start / beta_end are given.
    'cosine' (Nichol & Dhariwal 2021): offset s = 0.008, betas capped at max_beta = 0.999.  The
        capped last step leaves abar_{T-1} ~ 1e-7 (T = 100) to 1e-9 (T = 1000), so an eps model's
        x0 estimate there, (x - sqrt(1 - abar) eps) / sqrt(abar), amplifies its error 2e3-2e4-fold;
        deterministic samplers that start at step T-1 (DDIM 'trailing', the PF-ODE) feel this.
    """
    _choose("beta schedule", name, BETA_SCHEDULES, "objective.beta_schedule")
    T = _check_num_timesteps(num_timesteps)
    unknown = set(kwargs) - set(_BETA_KWARGS[name])
    if unknown:
        raise ValueError(f"beta schedule {name!r} takes no argument(s) {sorted(unknown)}; it "
                         f"accepts: {list(_BETA_KWARGS[name])}")
    return _BETA_FNS[name](T, **kwargs)


def schedule_arrays(betas) -> dict[str, np.ndarray]:
    """Every per-step quantity of a beta schedule, float64 NumPy [T] each (Ho et al. eq. 4, 6, 7).

    posterior q(x_{i-1} | x_i, x_start) = N(coef1_i x_start + coef2_i x_i, var_i):
        coef1_i = beta_i sqrt(abar_{i-1}) / (1 - abar_i),
        coef2_i = (1 - abar_{i-1}) sqrt(alpha_i) / (1 - abar_i),
        var_i   = beta_i (1 - abar_{i-1}) / (1 - abar_i),      abar_{-1} = 1 (so var_0 = 0).
    posterior_log_variance_clipped replaces the -inf at i = 0 by log var_1 (as Ho et al.).
    """
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError("betas must be a 1-D array of at least 2 values in (0, 1), got "
                         f"shape {betas.shape}, range [{betas.min()}, {betas.max()}]")
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    )


class Float64Arrays:
    """Float64 NumPy copies of a schedule's arrays, as read-only attributes.

    Compared and hashed by identity, so it can sit in a DDPMSchedule's static (non-pytree) part.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        for name, value in arrays.items():
            value = np.array(value, np.float64)
            value.setflags(write=False)
            setattr(self, name, value)


@flax.struct.dataclass
class DDPMSchedule:
    """A discrete schedule: float32 [T] arrays (see `schedule_arrays`), T, and float64 copies.

    A pytree (the arrays are leaves), so it may be passed into jitted functions.  `float64` holds
    the same arrays in float64 NumPy (exact references for tests and for respacing).
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    num_timesteps: int = flax.struct.field(pytree_node=False)
    float64: Float64Arrays = flax.struct.field(pytree_node=False)


def schedule_from_betas(betas) -> DDPMSchedule:
    """A DDPMSchedule from betas [T] (computed in float64, stored in float32)."""
    arrays = schedule_arrays(betas)
    return DDPMSchedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()},
                        num_timesteps=len(arrays["betas"]), float64=Float64Arrays(arrays))


def make_schedule(name: str = "linear", num_timesteps: int = 1000, **kwargs) -> DDPMSchedule:
    """The named schedule ('linear' or 'cosine', see `make_betas`) with T = num_timesteps."""
    return schedule_from_betas(make_betas(name, num_timesteps, **kwargs))


def respace(s: DDPMSchedule, timesteps) -> DDPMSchedule:
    """The schedule of a subsequence i_0 < ... < i_{K-1} of s's steps (Nichol & Dhariwal §4).

    beta'_k = 1 - abar_{i_k} / abar_{i_{k-1}} (abar_{i_{-1}} = 1), so abar'_k = abar_{i_k}: the
    respaced process has the same marginals at the kept steps.  Index k of the result is step i_k.
    """
    ts = _check_timesteps(timesteps, s.num_timesteps)
    abar = s.float64.alphas_cumprod[ts]
    return schedule_from_betas(1.0 - abar / np.append(1.0, abar[:-1]))


# -- time mapping and timestep subsequences --------------------------------------------------------


def continuous_time(i, num_timesteps: int):
    """t = 1 - (i + 1) / T: the network's time for step i (i = T-1 -> t = 0, i = 0 -> 1 - 1/T).

    i: int array of any shape.  A jax array gives JAX's default float dtype; NumPy / Python ints
    give NumPy float64 (for building grids on the host).
    """
    T = num_timesteps
    if isinstance(i, (np.ndarray, numbers.Integral)):
        return 1.0 - (np.asarray(i, np.float64) + 1.0) / T
    return 1.0 - (jnp.asarray(i).astype(jnp.asarray(0.0).dtype) + 1.0) / T


def discrete_index(t, num_timesteps: int):
    """i = round(T (1 - t)) - 1, clipped to [0, T-1]: the inverse of `continuous_time` (int32).

    Times between grid points go to the nearest step; t > 1 - 1/(2T) (towards clean data) to 0.
    """
    T = num_timesteps
    t = jnp.asarray(t)
    t = t.astype(jnp.promote_types(t.dtype, jnp.float32))
    return jnp.clip(jnp.round(T * (1.0 - t)) - 1, 0, T - 1).astype(jnp.int32)


def _check_timesteps(timesteps, T) -> np.ndarray:
    ts = np.asarray(timesteps)
    if (ts.ndim != 1 or ts.shape[0] < 1 or not np.issubdtype(ts.dtype, np.integer)
            or ts[0] < 0 or ts[-1] > T - 1 or np.any(np.diff(ts) <= 0)):
        raise ValueError(f"timesteps must be strictly increasing integers in [0, {T - 1}], got "
                         f"{ts if ts.size < 20 else ts[:20]}")
    return ts.astype(np.int64)


def respaced_timesteps(num_timesteps: int, num_steps: int, skip: str = "uniform",
                       spacing: str = "linspace") -> np.ndarray:
    """K = num_steps of the T steps, ascending int64 NumPy [K] (all T when K = T).

    With g(u) = u ('uniform') or u^2 ('quadratic', Song et al. 2021a: denser near the data; they
    scale it to 0.8 T for CIFAR-10, here it spans the full range) and k = 0..K-1, following Lin et
    al. 2024, Table 2 (given there 1-based, here 0-based):
        'linspace' (Nichol & Dhariwal):  i_k = round(g(k / (K-1)) (T-1))   first 0, last T-1
        'leading'  (DDIM, LDM):          i_k = floor(g(k / K) T)            first 0
        'trailing' (DPM-Solver):         i_k = round(g((k+1) / K) T) - 1    last T-1
    e.g. T = 1000, K = 10: linspace 0, 111, ..., 999; leading 0, 100, ..., 900; trailing 99, 199,
    ..., 999.
    Quadratic grids can repeat a step at the dense end; repeats are moved up one step at a time
    so the result is strictly increasing.
    """
    T = _check_num_timesteps(num_timesteps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or not (
            1 <= num_steps <= T):
        raise ValueError(f"num_steps must be an integer in [1, T={T}], got {num_steps!r}")
    _choose("timestep skip", skip, SKIPS)
    _choose("timestep spacing", spacing, SPACINGS)
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
    return _check_timesteps(ts, T)


def ddim_timesteps(num_timesteps: int, num_steps: int, skip: str = "uniform",
                   spacing: str = "leading") -> np.ndarray:
    """The DDIM step subsequence: `respaced_timesteps` with DDIM's default 'leading' spacing."""
    return respaced_timesteps(num_timesteps, num_steps, skip, spacing)


# -- q, posterior and prediction conversions -------------------------------------------------------


def _take(arr, i, x):
    """arr[i] in x's dtype, shaped [B, 1, ..., 1] (i: [B]) or [1, ..., 1] (scalar i)."""
    v = jnp.take(arr, jnp.asarray(i)).astype(x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(s: DDPMSchedule, x_start, i, noise):
    """x_i = sqrt(abar_i) x_start + sqrt(1 - abar_i) noise.  x_start, noise: [B, ...]; i: [B]."""
    return (_take(s.sqrt_alphas_cumprod, i, x_start) * x_start
            + _take(s.sqrt_one_minus_alphas_cumprod, i, x_start) * noise)


def posterior_mean_variance(s: DDPMSchedule, x_start, x_i, i):
    """q(x_{i-1} | x_i, x_start) (Ho et al. eq. 7): (mean [B, ...], variance, log_variance_clipped),
    the last two [B, 1, ..., 1].  At i = 0 the mean is x_start and the variance 0."""
    mean = (_take(s.posterior_mean_coef1, i, x_i) * x_start
            + _take(s.posterior_mean_coef2, i, x_i) * x_i)
    return (mean, _take(s.posterior_variance, i, x_i),
            _take(s.posterior_log_variance_clipped, i, x_i))


def _coefs(s, i, x):
    return _take(s.sqrt_alphas_cumprod, i, x), _take(s.sqrt_one_minus_alphas_cumprod, i, x)


def predict_x0_from_eps(s: DDPMSchedule, x_i, i, eps):
    """x0 = (x_i - sqrt(1 - abar_i) eps) / sqrt(abar_i)."""
    a, b = _coefs(s, i, x_i)
    return (x_i - b * eps) / a


def predict_eps_from_x0(s: DDPMSchedule, x_i, i, x0):
    """eps = (x_i - sqrt(abar_i) x0) / sqrt(1 - abar_i)."""
    a, b = _coefs(s, i, x_i)
    return (x_i - a * x0) / b


def v_target(s: DDPMSchedule, x_start, i, noise):
    """v = sqrt(abar_i) eps - sqrt(1 - abar_i) x_start (Salimans & Ho 2022)."""
    a, b = _coefs(s, i, x_start)
    return a * noise - b * x_start


def predict_x0_from_v(s: DDPMSchedule, x_i, i, v):
    """x0 = sqrt(abar_i) x_i - sqrt(1 - abar_i) v."""
    a, b = _coefs(s, i, x_i)
    return a * x_i - b * v


def predict_eps_from_v(s: DDPMSchedule, x_i, i, v):
    """eps = sqrt(1 - abar_i) x_i + sqrt(abar_i) v."""
    a, b = _coefs(s, i, x_i)
    return b * x_i + a * v


def _x0_eps(pred, x, a, b, prediction):
    """(x0, eps) from a prediction at x = a x0 + b eps (a = sqrt(abar), b = sqrt(1 - abar))."""
    if prediction == "eps":
        return (x - b * pred) / a, pred
    if prediction == "x0":
        return pred, (x - a * pred) / b
    return a * x - b * pred, b * x + a * pred


def _denoised(pred, x, a, b, prediction, clip_denoised):
    """(x0, eps) with x0 optionally clipped to [-1, 1] and eps then recomputed from it."""
    x0, eps = _x0_eps(pred, x, a, b, prediction)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x - a * x0) / b
    return x0, eps


def to_x0_eps(s: DDPMSchedule, x_i, i, pred, prediction: str = "eps"):
    """(x0, eps) implied by a prediction ('eps', 'x0' or 'v') at (x_i, i)."""
    _choose("prediction", prediction, PREDICTIONS, "objective.prediction")
    a, b = _coefs(s, i, x_i)
    return _x0_eps(pred, x_i, a, b, prediction)


# -- the reverse process ---------------------------------------------------------------------------


@flax.struct.dataclass
class Reverse:
    """p(x_{i-1} | x_i) of a model: mean and x0 [B, ...]; variance, log_variance [B, 1, ..., 1]."""

    mean: jax.Array
    variance: jax.Array
    log_variance: jax.Array
    x0: jax.Array


def model_variance(s: DDPMSchedule, variance: str = "fixed_small"):
    """(variance [T], log variance [T]) of the reverse steps.

    'fixed_small': the posterior variance beta~_i (log clipped at i = 0 to log beta~_1).
    'fixed_large': beta_i, with entry 0 replaced by beta~_1 in both arrays (as Ho et al. do for the
        log, and Nichol & Dhariwal for both): it only matters for the decoder term of the bound,
        since the last sampling step adds no noise.
    """
    _choose("variance", variance, VARIANCES)
    if variance == "fixed_small":
        return s.posterior_variance, s.posterior_log_variance_clipped
    large = np.append(s.float64.posterior_variance[1], s.float64.betas[1:])
    return jnp.asarray(large, jnp.float32), jnp.asarray(np.log(large), jnp.float32)


def p_mean_variance(s: DDPMSchedule, x_i, i, pred, *, prediction: str = "eps",
                    variance: str = "fixed_small", clip_denoised: bool = False) -> Reverse:
    """The model's reverse step from a network output `pred` at (x_i, i): the posterior of eq. 7
    with x_start replaced by the predicted x0 (clipped to [-1, 1] if clip_denoised)."""
    _choose("prediction", prediction, PREDICTIONS, "objective.prediction")
    var, log_var = model_variance(s, variance)
    a, b = _coefs(s, i, x_i)
    x0, _ = _denoised(pred, x_i, a, b, prediction, clip_denoised)
    mean, _, _ = posterior_mean_variance(s, x0, x_i, i)
    return Reverse(mean=mean, variance=_take(var, i, x_i), log_variance=_take(log_var, i, x_i),
                   x0=x0)


def p_sample_step(s: DDPMSchedule, x_i, i, pred, noise, *, prediction: str = "eps",
                  variance: str = "fixed_small", clip_denoised: bool = False):
    """One ancestral step x_{i-1} = mean + exp(log_var / 2) noise, without noise where i = 0."""
    r = p_mean_variance(s, x_i, i, pred, prediction=prediction, variance=variance,
                        clip_denoised=clip_denoised)
    last = jnp.asarray(i) == 0
    last = last.reshape(last.shape + (1,) * (x_i.ndim - last.ndim))
    return r.mean + jnp.where(last, 0.0, jnp.exp(0.5 * r.log_variance)) * noise


def ddim_step(s: DDPMSchedule, x_i, i, i_prev, pred, noise=None, *, prediction: str = "eps",
              eta: float = 0.0, clip_denoised: bool = False):
    """One DDIM step from step i to i_prev < i (i_prev = -1: clean data); Song et al. 2021, eq. 12:

        x_prev = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma noise,
        sigma  = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar'),   abar' = abar_{i_prev}.

    eta = 0 is deterministic (noise may be None); eta = 1 with i_prev = i - 1 is the ancestral
    step with the posterior variance.  i, i_prev: [B] (or scalars).
    """
    _choose("prediction", prediction, PREDICTIONS, "objective.prediction")
    ip = jnp.asarray(i_prev)
    abar_prev = jnp.where(ip >= 0, jnp.take(s.alphas_cumprod, jnp.maximum(ip, 0)), 1.0)
    abar_prev = abar_prev.reshape(abar_prev.shape + (1,) * (x_i.ndim - abar_prev.ndim))
    return _ddim_update(x_i, pred, _take(s.alphas_cumprod, i, x_i), abar_prev.astype(x_i.dtype),
                        noise, prediction, eta, clip_denoised)


def _ddim_update(x, pred, abar, abar_prev, noise, prediction, eta, clip_denoised):
    x0, eps = _denoised(pred, x, jnp.sqrt(abar), jnp.sqrt(1.0 - abar), prediction, clip_denoised)
    out = jnp.sqrt(abar_prev) * x0
    if isinstance(eta, numbers.Real) and eta == 0:
        return out + jnp.sqrt(1.0 - abar_prev) * eps
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    return out + jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps + sigma * noise


# -- samplers --------------------------------------------------------------------------------------


@flax.struct.dataclass
class SampleOutput:
    """A sampler's result: x [B, ...]; nfe: int32 network evaluations; success: bool (False only
    for a failed ODE solve, see `integrators.Solution.status`)."""

    x: jax.Array
    nfe: jax.Array
    success: jax.Array


def _call(predict, x, t):
    tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return predict(x, tb).astype(x.dtype)


def ancestral_sample(predict: Predict, s: DDPMSchedule, key, x_T, *, prediction: str = "eps",
                     num_steps: int | None = None, skip: str = "uniform",
                     spacing: str = "linspace", variance: str = "fixed_small",
                     clip_denoised: bool = False) -> SampleOutput:
    """Ancestral sampling (Ho et al. Algorithm 2) from x_T ~ N(0, I): [B, ...] at step T-1.

    predict(x [B, ...], t [B]) -> prediction (`prediction`: 'eps', 'x0' or 'v'); t continuous.
    num_steps=None: all T steps.  Fewer: K steps from `respaced_timesteps(T, K, skip, spacing)`,
    sampled with the respaced schedule (`respace`).  The last step returns the posterior mean
    (= the predicted x0), no noise.  clip_denoised clips predicted x0 to [-1, 1] (for images;
    off by default because other data need not lie there).  Noise of step k: fold_in(key, k).
    One lax.scan; call inside jax.jit.  nfe = K.
    """
    _choose("prediction", prediction, PREDICTIONS)
    _choose("variance", variance, VARIANCES)
    T = s.num_timesteps
    ts = respaced_timesteps(T, T if num_steps is None else num_steps, skip, spacing)
    r = respace(s, ts)
    K = len(ts)
    times = jnp.asarray(continuous_time(ts, T), x_T.dtype)

    def body(x, kt):
        k, t = kt
        pred = _call(predict, x, t)
        noise = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
        kb = jnp.full((x.shape[0],), k)
        x = p_sample_step(r, x, kb, pred, noise, prediction=prediction, variance=variance,
                          clip_denoised=clip_denoised)
        return x, None

    x, _ = lax.scan(body, x_T, (jnp.arange(K - 1, -1, -1), times[::-1]))
    return SampleOutput(x=x, nfe=jnp.asarray(K, jnp.int32), success=jnp.asarray(True))


def ddim_sample(predict: Predict, s: DDPMSchedule, key, x_T, *, num_steps: int = 50,
                eta: float = 0.0, prediction: str = "eps", skip: str = "uniform",
                spacing: str = "leading", clip_denoised: bool = False) -> SampleOutput:
    """DDIM sampling (Song et al. 2021) over `ddim_timesteps(T, num_steps, skip, spacing)`.

    x_T ~ N(0, I): [B, ...], taken to be at the first (largest) step of the subsequence; each step
    goes to the next smaller kept step, the last one to abar = 1 (the predicted x0).  eta = 0:
    deterministic (key may be None); eta > 0 draws fold_in(key, k) at step k.  One lax.scan;
    nfe = num_steps.
    """
    _choose("prediction", prediction, PREDICTIONS)
    if not (isinstance(eta, numbers.Real) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if eta > 0 and key is None:
        raise ValueError("ddim_sample with eta > 0 draws noise: pass a key")
    T = s.num_timesteps
    ts = ddim_timesteps(T, num_steps, skip, spacing)
    abar = s.float64.alphas_cumprod[ts]
    abar_prev = np.append(1.0, abar[:-1])
    dt = x_T.dtype
    xs = (jnp.arange(len(ts)), jnp.asarray(continuous_time(ts, T), dt), jnp.asarray(abar, dt),
          jnp.asarray(abar_prev, dt))

    def body(x, step):
        k, t, a, a_prev = step
        pred = _call(predict, x, t)
        noise = None if eta == 0 else jax.random.normal(jax.random.fold_in(key, k), x.shape, dt)
        return _ddim_update(x, pred, a, a_prev, noise, prediction, eta, clip_denoised), None

    x, _ = lax.scan(body, x_T, jax.tree.map(lambda a: a[::-1], xs))
    return SampleOutput(x=x, nfe=jnp.asarray(len(ts), jnp.int32), success=jnp.asarray(True))


# -- the probability-flow ODE ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class VPSchedule:
    """The discrete schedule as a continuous variance-preserving path in flowmatch's convention.

    alpha(t) = sqrt(abar(t)) = cos phi(t), sigma(t) = sqrt(1 - abar(t)) = sin phi(t), where the
    noise angle phi is a monotone C^1 cubic (PCHIP, Fritsch & Carlson 1980) through the knots

        phi(1 - k/T) = arctan(sqrt((1 - abar_{k-1}) / abar_{k-1})),   k = 0..T,  abar_{-1} = 1,

    so at every training time t_i = continuous_time(i) alpha^2 = abar_i exactly, at t = 1
    alpha = 1, sigma = 0 (data), and at t = 0 alpha = sqrt(abar_{T-1}) > 0.  The angle, unlike
    log abar, stays bounded (phi < pi/2) and has finite slope at t = 1, so alpha, sigma and their
    derivatives are finite on all of [0, 1].  pi/2 - phi is interpolated separately (same cubic)
    so that alpha = sin(pi/2 - phi) keeps its relative precision near t = 0, where it is small.
    Knots are float64; evaluation runs in t's float dtype (at least float32).
    """

    phi: np.ndarray     # [T + 1] at tau_k = 1 - t_k = k / T
    psi: np.ndarray     # [T + 1] pi/2 - phi
    slope: np.ndarray   # [T + 1] d phi / d tau at the knots

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod) -> "VPSchedule":
        abar = np.append(1.0, np.asarray(alphas_cumprod, np.float64))
        phi = np.arctan2(np.sqrt(1.0 - abar), np.sqrt(abar))
        psi = np.arctan2(np.sqrt(abar), np.sqrt(1.0 - abar))
        T = len(abar) - 1
        sec = np.diff(phi) * T  # > 0: phi increases with tau
        d = np.empty(T + 1)
        d[1:-1] = 2.0 * sec[:-1] * sec[1:] / (sec[:-1] + sec[1:])  # harmonic mean (uniform knots)
        for end, (s0, s1) in ((0, (sec[0], sec[1])), (T, (sec[-1], sec[-2]))):
            d[end] = np.clip(0.5 * (3.0 * s0 - s1), 0.0, 3.0 * s0)  # 3-point, monotone-limited
        return cls(phi=phi, psi=psi, slope=d)

    @property
    def num_timesteps(self) -> int:
        return len(self.phi) - 1

    def __call__(self, t) -> schedules_lib.ScheduleOutput:
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
        return schedules_lib.ScheduleOutput(alpha=alpha, sigma=sigma, d_alpha=-sigma * w,
                                            d_sigma=alpha * w)


def vp_schedule(s: DDPMSchedule) -> VPSchedule:
    """The continuous VP schedule of a discrete one (see `VPSchedule`)."""
    return VPSchedule.from_alphas_cumprod(s.float64.alphas_cumprod)


def pf_ode_velocity(vp: VPSchedule, pred, x, t, prediction: str = "eps"):
    """dx/dt of the probability-flow ODE at (x [B, ...], t [B] or scalar) from a prediction.

    dx/dt = d_alpha x0 + d_sigma eps = (d_alpha / alpha) x + (d_sigma - d_alpha sigma / alpha) eps,
    through `paths.AffinePath` (its "x0" is our eps, its "x1" our x0).  'eps' and 'v' are finite on
    all of [0, 1]; 'x0' divides by sigma, which is 0 at t = 1 (kept >= 1e-5 by AffinePath): stop
    such solves at continuous_time(0) and denoise (what `pf_ode_sample` does).
    """
    _choose("prediction", prediction, PREDICTIONS, "objective.prediction")
    path = paths_lib.AffinePath(vp)
    if prediction == "v":
        t = jnp.asarray(t, x.dtype)
        so = vp(t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t)
        pred, prediction = so.sigma * x + so.alpha * pred, "eps"
    return path.velocity(pred, x, t, {"eps": "x0", "x0": "x1"}[prediction])


def velocity_fn(predict: Predict, s: DDPMSchedule, prediction: str = "eps") -> Callable:
    """v(t, x) of the probability-flow ODE of a DDPM model, for `integrators.solve`.

    Sample by integrating from x_T ~ N(0, I) at t0 = 0 (= continuous_time(T-1), the noisiest
    step, alpha = sqrt(abar_{T-1}) > 0) to t1 = 1 (eps / v models; alpha = 1, sigma = 0), or to
    t1 = continuous_time(0) followed by one denoising evaluation (any model; `pf_ode_sample`).
    The path is `vp_schedule(s)`: the network sees times between its training times there.
    """
    _choose("prediction", prediction, PREDICTIONS, "objective.prediction")
    vp = vp_schedule(s)

    def v(t, x):
        tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        return pf_ode_velocity(vp, predict(x, tb).astype(x.dtype), x, tb, prediction)

    return v


def pf_ode_sample(predict: Predict, s: DDPMSchedule, x_T, *, prediction: str = "eps",
                  method: str = "dopri5", num_steps: int | None = None,
                  rtol: float | None = None, atol: float | None = None,
                  denoise: bool = True) -> SampleOutput:
    """Samples by the probability-flow ODE (Song et al. 2021) with `integrators.solve`.

    Integrates `velocity_fn` from t = 0 (x_T ~ N(0, I)) to t = continuous_time(0) and, with
    denoise=True, returns the predicted x0 there (one more evaluation, as DDIM's last step);
    denoise=False integrates on to t = 1 (eps / v models only).  method, num_steps, rtol, atol
    as in `integrators.solve`.  nfe includes the denoising call; success is the solve's.
    """
    _choose("prediction", prediction, PREDICTIONS)
    integrators.check_arguments(method, num_steps=num_steps, rtol=rtol, atol=atol)
    T = s.num_timesteps
    t1 = float(continuous_time(0, T)) if denoise else 1.0
    sol = integrators.solve(velocity_fn(predict, s, prediction), x_T, method=method,
                            num_steps=num_steps, rtol=rtol, atol=atol, t0=0.0, t1=t1)
    x, nfe = sol.x, sol.nfe
    if denoise:
        so = vp_schedule(s)(jnp.asarray(t1, x.dtype))
        x, _ = _x0_eps(_call(predict, x, t1), x, so.alpha, so.sigma, prediction)
        nfe = nfe + 1
    return SampleOutput(x=x, nfe=jnp.asarray(nfe, jnp.int32), success=sol.success)


# -- the training objective ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DDPM:
    """The DDPM objective (Ho et al. 2020, L_simple), with `objectives.FlowMatching`'s interface.

    loss = E_{i ~ U{0..T-1}, eps ~ N(0, I), x_start ~ data} || f(x_i, t_i) - target ||^2 averaged
    over elements, x_i = sqrt(abar_i) x_start + sqrt(1 - abar_i) eps, t_i = continuous_time(i),
    target eps (prediction='eps'), x_start ('x0') or sqrt(abar_i) eps - sqrt(1 - abar_i) x_start
    ('v').  `velocity` turns predictions into the probability-flow ODE's velocity on
    `vp_schedule(schedule)`, so the ODE samplers of `flowmatch.sampling` run DDPM models too.
    """

    beta_schedule: str = "linear"
    num_timesteps: int = 1000
    prediction: str = "eps"
    schedule: DDPMSchedule = dataclasses.field(init=False, repr=False, compare=False)
    vp: VPSchedule = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _choose("prediction", self.prediction, PREDICTIONS, "objective.prediction")
        s = make_schedule(self.beta_schedule, self.num_timesteps)
        object.__setattr__(self, "schedule", s)
        object.__setattr__(self, "vp", vp_schedule(s))

    def loss(self, predict: Predict, x1, key):
        """Monte-Carlo loss on clean data x1: [B, ...] (one i and eps per example).  (loss, aux)."""
        s = self.schedule
        key_i, key_eps = jax.random.split(key)
        i = jax.random.randint(key_i, (x1.shape[0],), 0, s.num_timesteps)
        eps = jax.random.normal(key_eps, x1.shape, x1.dtype)
        x_i = q_sample(s, x1, i, eps)
        pred = predict(x_i, continuous_time(i, s.num_timesteps).astype(x1.dtype))
        if self.prediction == "eps":
            target = eps
        elif self.prediction == "x0":
            target = x1
        else:
            target = v_target(s, x1, i, eps)
        loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))
        return loss, {"loss": loss}

    def to_x0_eps(self, pred, x_i, i):
        """(x0, eps) implied by a prediction at (x_i [B, ...], i [B])."""
        return to_x0_eps(self.schedule, x_i, i, pred, self.prediction)

    def velocity(self, pred, x_t, t):
        """The probability-flow velocity at continuous t [B] (see `pf_ode_velocity`)."""
        return pf_ode_velocity(self.vp, pred, x_t, t, self.prediction)


# -- the variational bound -------------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (broadcasting), in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _log_diff_ndtr(lo, hi):
    """log(Phi(hi) - Phi(lo)) for lo < hi, reflected into the lower tail to avoid cancellation."""
    flip = lo + hi > 0
    lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    a, b = jax.scipy.special.log_ndtr(lo), jax.scipy.special.log_ndtr(hi)
    return b + jnp.log1p(-jnp.exp(jnp.minimum(a - b, -1e-30)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, *, num_bits: int = 8):
    """log P(x) elementwise for x on the 2^bits-level grid of [-1, 1] (Ho et al. eq. 13).

    P(x) = int_{delta-(x)}^{delta+(x)} N(y; mean, e^{2 log_scale}) dy with bins of width
    2 / (2^bits - 1): delta+- = x +- 1 / (2^bits - 1), and -inf / +inf at x = -1 / +1, so the
    bins cover the real line and the probabilities of all levels sum to 1.
    """
    half = 1.0 / (2**num_bits - 1)
    inv = jnp.exp(-log_scale)
    lo = jnp.where(x < -1.0 + half, -jnp.inf, (x - half - mean) * inv)
    hi = jnp.where(x > 1.0 - half, jnp.inf, (x + half - mean) * inv)
    lo_f = jnp.where(jnp.isfinite(lo), lo, -1e30)  # finite stand-ins keep the gradients NaN-free
    hi_f = jnp.where(jnp.isfinite(hi), hi, 1e30)
    return jnp.where(
        jnp.isneginf(lo), jax.scipy.special.log_ndtr(hi_f),
        jnp.where(jnp.isposinf(hi), jax.scipy.special.log_ndtr(-lo_f), _log_diff_ndtr(lo_f, hi_f)))


@flax.struct.dataclass
class VLBOutput:
    """The bound in bits/dim per example, and its parts.

    total = prior + decoder + kl  [B].  prior: L_T; decoder: L_0; kl: sum (or estimate) of the
    L_i, i = 1..T-1.  terms [B, K]: the evaluated L_i (unweighted), at steps term_index [K].
    nfe: network evaluations (K + 1).
    """

    total: jax.Array
    prior: jax.Array
    decoder: jax.Array
    kl: jax.Array
    terms: jax.Array
    term_index: jax.Array
    nfe: int = flax.struct.field(pytree_node=False)


def vlb_bits_per_dim(predict: Predict, s: DDPMSchedule, x_start, key, *,
                     prediction: str = "eps", variance: str = "fixed_small",
                     clip_denoised: bool = False, num_terms: int | None = None,
                     num_bits: int = 8) -> VLBOutput:
    """The variational bound of Ho et al. 2020 (eq. 5) in bits/dim for data on the 8-bit grid.

    -log p(x_start) <= L_T + sum_{i=1}^{T-1} L_i + L_0, with (our 0-based steps)
        L_T = KL(q(x_{T-1} | x_start) || N(0, I))                                (no network)
        L_i = KL(q(x_{i-1} | x_i, x_start) || p(x_{i-1} | x_i)),  x_i ~ q(x_i | x_start)
        L_0 = -log p(x_start | x_0): `discretized_gaussian_log_likelihood` at the model mean,
              log scale half the `model_variance` log variance at step 0,
    each summed over dimensions and divided by D log 2.
    x_start: [B, ...] on the 2^bits grid of [-1, 1]; noise of step i: fold_in(key, i).
    num_terms=None evaluates all T-1 KL terms plus L_0: T network calls of the batch (expensive:
    1000 for the usual T).  num_terms=K < T-1 draws K distinct steps from 1..T-1 uniformly
    (from fold_in(key, T)) and estimates the KL sum as (T-1)/K times their sum (unbiased; L_T
    and L_0, usually the largest, are always exact): K + 1 calls.
    """
    _choose("prediction", prediction, PREDICTIONS)
    _choose("variance", variance, VARIANCES)
    T = s.num_timesteps
    B = x_start.shape[0]
    dims = math.prod(x_start.shape[1:])
    to_bpd = 1.0 / (dims * math.log(2.0))
    dt = x_start.dtype

    def per_example(v):  # [B, ...] nats -> [B] bits/dim
        return jnp.sum(v.reshape(B, -1), axis=1) * to_bpd

    def model_at(i, noise):
        ib = jnp.full((B,), i)
        x_i = q_sample(s, x_start, ib, noise)
        pred = _call(predict, x_i, continuous_time(i, T).astype(dt))
        return ib, x_i, p_mean_variance(s, x_i, ib, pred, prediction=prediction,
                                        variance=variance, clip_denoised=clip_denoised)

    def noise_at(i):
        return jax.random.normal(jax.random.fold_in(key, i), x_start.shape, dt)

    def kl_term(_, i):
        ib, x_i, rev = model_at(i, noise_at(i))
        mean, _, log_var = posterior_mean_variance(s, x_start, x_i, ib)
        return None, per_example(normal_kl(mean, log_var, rev.mean, rev.log_variance))

    if num_terms is None:
        idx = jnp.arange(1, T)
        weight = 1.0
    else:
        if (isinstance(num_terms, bool) or not isinstance(num_terms, numbers.Integral)
                or not 1 <= num_terms <= T - 1):
            raise ValueError(f"num_terms must be None (all terms) or an integer in [1, T-1={T - 1}]"
                             f", got {num_terms!r}")
        idx = jax.random.choice(jax.random.fold_in(key, T), jnp.arange(1, T), (num_terms,),
                                replace=False)
        weight = (T - 1) / num_terms
    _, terms = lax.scan(kl_term, None, idx)  # [K, B]
    terms = terms.T
    kl = weight * jnp.sum(terms, axis=1)

    _, _, rev0 = model_at(0, noise_at(0))
    decoder = -per_example(discretized_gaussian_log_likelihood(
        x_start, rev0.mean, 0.5 * rev0.log_variance, num_bits=num_bits))

    last = jnp.full((B,), T - 1)
    prior_mean = _take(s.sqrt_alphas_cumprod, last, x_start) * x_start
    prior_logvar = jnp.log1p(-_take(s.alphas_cumprod, last, x_start))
    prior = per_example(normal_kl(prior_mean, prior_logvar, 0.0, 0.0))
    return VLBOutput(total=prior + decoder + kl, prior=prior, decoder=decoder, kl=kl, terms=terms,
                     term_index=idx, nfe=int(idx.shape[0]) + 1)


__all__ = [
    "BETA_SCHEDULES", "PREDICTIONS", "VARIANCES", "SKIPS", "SPACINGS", "DDPMSchedule", "DDPM",
    "Float64Arrays", "Reverse", "SampleOutput", "VLBOutput", "VPSchedule", "make_betas",
    "schedule_arrays", "schedule_from_betas", "make_schedule", "respace", "continuous_time",
    "discrete_index", "respaced_timesteps", "ddim_timesteps", "q_sample", "posterior_mean_variance",
    "predict_x0_from_eps", "predict_eps_from_x0", "v_target", "predict_x0_from_v",
    "predict_eps_from_v", "to_x0_eps", "model_variance", "p_mean_variance", "p_sample_step",
    "ddim_step", "ancestral_sample", "ddim_sample", "vp_schedule", "pf_ode_velocity",
    "velocity_fn", "pf_ode_sample", "normal_kl", "discretized_gaussian_log_likelihood",
    "vlb_bits_per_dim",
]
