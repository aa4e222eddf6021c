"""Stochastic sampling of any model of an affine Gaussian path: a family of SDEs with its marginals.

Time runs from t = 0 (noise) to t = 1 (data), and p_t is the marginal of x_t = alpha_t x1 +
sigma_t x0.  Its probability-flow velocity v (what every model converts to, `ModelFn`) satisfies
the continuity equation d p_t / dt = -div(v p_t).  For any diffusion coefficient g(t) >= 0 the
SDE, integrated forwards in t,

    dx = [v(t, x) + (g(t)^2 / 2) score(t, x)] dt + g(t) dW,      score = grad log p_t,

has the same marginals: its Fokker-Planck equation is d p / dt = -div((v + g^2/2 grad log p) p)
+ (g^2 / 2) Laplacian p = -div(v p), since div(p grad log p) = Laplacian p.  The sign is +
because t increases towards the data: this is the reverse-time SDE of the noising process
written in the project's time (Song et al. 2021, eq. 6, with their s = 1 - t), and the
"forward" SDE of stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023, Thm 2.23; Ma et
al. 2024, SiT, Sec. 3.4, eq. 8).  g = 0 is the probability-flow ODE.  The score comes from the
network's prediction through the path's exact conversions, score = -x0_hat / sigma_t
(`paths.from_endpoints(..., "score")`); the drift is written v - k(t) x0_hat with k = g^2 /
(2 sigma), which keeps it finite where g vanishes with sigma (the 'sigma' and 'score_sde' choices
at the data end).

Diffusion coefficients (`DIFFUSIONS`), each times `diffusion_scale` s:
    'constant'    g = s
    'sigma'       g = s sigma_t                          (SiT's default 'sigma' form)
    'score_sde'   g^2 = s^2 2 sigma_t^2 d lambda / dt,    lambda = log(alpha_t / sigma_t)
    'decreasing'  g = s (1 - t)                          (vanishes at the data end)
'score_sde' (s = 1) is the path's own score SDE: the forward noising process of the path, run
from data to noise (decreasing t), is dx = f x dt' + g dW' with f = d log alpha / dt and g^2 =
d sigma^2 / dt - 2 f sigma^2 = -2 sigma^2 d lambda / dt (Kingma et al. 2021, eq. 29; Song et al.
2021, eq. 5 for VP), so in increasing t, g^2 = 2 sigma^2 d lambda / dt = 2 sigma^2 (d_alpha /
alpha - d_sigma / sigma) >= 0; with it the SDE above is Song et al.'s reverse SDE, and on a DDPM
model DDPM's ancestral sampler is its discretisation.  It is infinite where alpha = 0 (t = 0 on
cond-OT and cosine paths), so there the grid starts inside (see below), and stiff where lambda
moves fast: it takes the log-SNR grid by default, on which a step's g^2 / sigma^2 dt = 2 d lambda.

Integrators (one XLA program, lax.scan over the steps; step k draws z_k = normal(fold_in(key,
k)), k = 0, 1, ... from the noise end, one draw per step):
    'sde_euler'   Euler-Maruyama: x' = x + h f(t, x) + g(t) sqrt(h) z             (weak order 1)
    'sde_heun'    stochastic Heun, the predictor-corrector "modified trapezoidal" scheme for
                  additive noise (Kloeden & Platen 1992, Sec. 15.1, eq. 1.5 there; Rumelin
                  1982): x~ = x + h f(t, x) + g(t) dW,  x' = x + h/2 [f(t, x) + f(t', x~)] +
                  (g(t) + g(t'))/2 dW with dW = sqrt(h) z (weak order 2 here: g depends on t
                  only).  Not Karras et al. 2022's Algorithm 2, which adds noise and then takes a
                  deterministic Heun step.
The last step is always a single evaluation at t_{N-1} (it never evaluates at t_N, where the
score is singular when sigma = 0, nor v of an x1-predicting model):
    last_step='mean'     the drift-only step x_N = x + h f(t_{N-1}, x) (no noise; SiT's "Mean");
                         for a DDPM model (t_end < 1) followed by its data estimate at t_end
                         (one more evaluation, as every sampler of such models ends);
    last_step='tweedie'  x_N = E[x1 | x_{t_{N-1}}] = (x + sigma^2 score) / alpha, the model's data
                         estimate at t_{N-1} (Tweedie's formula), for any model.
The noiseless last step leaves out g(t_{N-1})^2 h of variance: negligible where g vanishes at the
data end ('sigma', 'decreasing', 'score_sde' on cond-OT: O(h^3)), first order in h for
'constant' (which then bounds sde_heun's weak order by 1 with 'mean').
nfe: sde_euler N, sde_heun 2N - 1, + 1 for 'mean' on a DDPM model (`nfe`).

Grids (N steps, N + 1 times from t_lo to t_end): 'uniform' in t (`timegrids.uniform`, the ODE
samplers' grid; the default except for 'score_sde') or 'logsnr', uniform in lambda from t_lo
(+ the last step from t_hi to t_end = 1 where sigma_1 = 0, lambda = +inf).  t_lo = 0 unless
something is singular at t = 0 on the path (alpha_0 = 0 with an x0 (noise) predicting model,
'score_sde' or the log-SNR grid): then the grid starts a hair inside, at lambda = -5
(`logsnr.bounds`, t = 0.0067 on cond-OT), treating the source samples as x at t_lo (an
O(alpha_{t_lo}) mismatch, the same as a DDPM model's prior).  t_min / t_max set them.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import timegrids
from flowmatch.sampling import logsnr
from flowmatch.sampling.model import ModelFn
from flowmatch.sampling.records import Samples

METHODS = ("sde_euler", "sde_heun")
DIFFUSIONS = ("constant", "sigma", "score_sde", "decreasing")
LAST_STEPS = ("mean", "tweedie")
GRIDS = ("uniform", "logsnr")
OPTIONS = ("diffusion", "diffusion_scale", "last_step", "grid", "t_min", "t_max")


def check_options(method: str, *, diffusion="sigma", diffusion_scale=1.0, last_step="mean",
                  grid=None, t_min=None, t_max=None) -> None:
    """Validates the settings that need no model (host side); ValueError lists what is allowed."""
    for kind, value, allowed in (("SDE method", method, METHODS),
                                 ("diffusion", diffusion, DIFFUSIONS),
                                 ("last_step", last_step, LAST_STEPS)):
        if value not in allowed:
            raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}")
    if grid is not None and grid not in GRIDS:
        raise ValueError(f"unknown SDE grid {grid!r}; choose one of: {', '.join(GRIDS)}")
    if (isinstance(diffusion_scale, bool) or not isinstance(diffusion_scale, numbers.Real)
            or not np.isfinite(diffusion_scale) or diffusion_scale < 0):
        raise ValueError(f"diffusion_scale must be a finite number >= 0 (0: the probability-flow "
                         f"ODE), got {diffusion_scale!r}")
    for name, value in (("t_min", t_min), ("t_max", t_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a time in [0, 1] or None, got {value!r}")


def nfe(method: str, num_steps: int, model: ModelFn | None = None, *,
        last_step: str = "mean") -> int:
    """Network evaluations of `method` with num_steps steps (see the module docstring)."""
    per = {"sde_euler": int(num_steps), "sde_heun": 2 * int(num_steps) - 1}[method]
    return per + int(last_step == "mean" and model is not None and model.denoises)


def diffusion_coefficients(diffusion: str, scale: float, s, t):
    """(g, k) at times t [n] (float64 NumPy): g(t) and the score weight k = g^2 / (2 sigma_t),
    given the schedule values s there (see the module docstring for each choice)."""
    t = np.asarray(t, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if diffusion == "score_sde":
            k = scale * scale * (s.sigma * s.d_alpha / s.alpha - s.d_sigma)  # sigma d lambda / dt
            return np.sqrt(2.0 * s.sigma * k), k
        g = {"constant": np.full_like(t, scale), "sigma": scale * s.sigma,
             "decreasing": scale * (1.0 - t)}[diffusion]
        if diffusion == "sigma":
            return g, 0.5 * scale * g
        return g, g * g / (2.0 * s.sigma)


def _grid(model: ModelFn, num_steps, grid, t_min, t_max, singular_start):
    """N + 1 times ascending from t_lo to t_end (JAX default float dtype), see the docstring."""
    t_lo, t_hi = logsnr.bounds(model, t_min, t_max, start_inside=singular_start,
                               end_inside=grid == "logsnr")
    if grid == "uniform":
        return timegrids.uniform(num_steps, t_lo, model.t_end)
    if t_hi < model.t_end:  # lambda(t_end) = inf: lambda-uniform to t_hi, then the last step
        times = np.append(logsnr.uniform_logsnr_times(model, num_steps, t_lo, t_hi), model.t_end)
    else:
        times = logsnr.uniform_logsnr_times(model, num_steps + 1, t_lo, t_hi)
    return jnp.asarray(times, jnp.asarray(0.0).dtype)


def _steps(model: ModelFn, num_steps, diffusion, scale, grid, t_min, t_max) -> dict:
    """The per-step arrays [N] of the scan (host side): times t, t_next; g and the score weight
    k at t (0 noise in the last step) and at t_next (Heun's corrector); the step index; last."""
    grid = grid or ("logsnr" if diffusion == "score_sde" else "uniform")
    stochastic = scale > 0
    alpha0 = float(logsnr.schedule_at(model, np.zeros(1)).alpha[0])
    singular_start = alpha0 == 0.0 and (model.prediction == "x0" or grid == "logsnr"
                                        or (stochastic and diffusion == "score_sde"))
    times = _grid(model, num_steps, grid, t_min, t_max, singular_start)
    t_host = np.asarray(times, np.float64)
    g, k = diffusion_coefficients(diffusion, scale, logsnr.schedule_at(model, t_host[:-1]),
                                  t_host[:-1])
    if stochastic and not (np.all(np.isfinite(g)) and np.all(np.isfinite(k))):
        bad = t_host[:-1][~(np.isfinite(g) & np.isfinite(k))]
        raise ValueError(f"diffusion {diffusion!r} is not finite at t = {bad[:3]} on this path; "
                         "start the grid inside with t_min > 0 (e.g. t_min=0.01)")
    last = np.arange(num_steps) == num_steps - 1
    return dict(t=times[:-1], t_next=times[1:], k0=k, k1=np.append(k[1:], 0.0),
                g0=np.where(last, 0.0, g), g1=np.append(g[1:], 0.0), idx=np.arange(num_steps),
                last=last)


def sde_sampler(model: ModelFn, *, method: str, num_steps: int, diffusion: str = "sigma",
                diffusion_scale: float = 1.0, last_step: str = "mean", grid: str | None = None,
                t_min: float | None = None, t_max: float | None = None):
    """sample(params, x0 [n, ...], key, cond=None) -> Samples by integrating the SDE above.

    method: 'sde_euler' or 'sde_heun'; num_steps N >= 1; diffusion, diffusion_scale: g(t);
    last_step: 'mean' or 'tweedie'; grid: 'uniform' (default) or 'logsnr' (default for
    'score_sde'); t_min, t_max: see the module docstring.  diffusion_scale = 0 is the
    probability-flow ODE (sde_euler: the 'euler' ODE sampler bit for bit; key unused).
    """
    check_options(method, diffusion=diffusion, diffusion_scale=diffusion_scale,
                  last_step=last_step, grid=grid, t_min=t_min, t_max=t_max)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"{method} needs num_steps, a positive integer; got {num_steps!r}")
    stochastic = diffusion_scale > 0
    heun, tweedie = method == "sde_heun", last_step == "tweedie"
    xs = _steps(model, num_steps, diffusion, float(diffusion_scale), grid, t_min, t_max)

    def sample(params, x0, key, cond=None):
        if stochastic and key is None:
            raise ValueError(f"{method} draws noise: pass a key")
        dt = x0.dtype

        def drift(x, t, kt):
            """(v + (g^2 / 2) score, the data estimate) at (x, t); one evaluation."""
            pred, tb = model.predict(params, x, t, cond)
            v = model.path.velocity(pred, x, tb, model.prediction)
            if not (stochastic or tweedie):
                return v, None
            data_hat, noise_hat = model.path.to_endpoints(pred, x, tb, model.prediction)
            if stochastic:
                v = v - kt.astype(dt) * noise_hat  # score = -x0_hat / sigma, k = g^2 / (2 sigma)
            return v, data_hat

        def step(x, c):
            h = (c["t_next"] - c["t"]).astype(dt)
            f0, data_hat = drift(x, c["t"], c["k0"])
            x_next = x + h * f0
            if stochastic:
                z = jax.random.normal(jax.random.fold_in(key, c["idx"]), x.shape, dt)
                dw = jnp.sqrt(h) * z
                x_next = x_next + c["g0"].astype(dt) * dw
            if heun:
                def corrected(_):
                    f1, _ = drift(x_next, c["t_next"], c["k1"])
                    out = x + h * (0.5 * f0 + 0.5 * f1)
                    if stochastic:
                        out = out + (0.5 * (c["g0"] + c["g1"])).astype(dt) * dw
                    return out

                x_next = lax.cond(c["last"], lambda _: x + h * f0, corrected, None)
            if tweedie:
                x_next = jnp.where(c["last"], data_hat, x_next)
            return x_next, None

        # every step, the last too, inside one scan: traced times give the ODE samplers'
        # arithmetic bit for bit (a constant time would be folded differently by XLA)
        x, _ = lax.scan(step, x0, {n: jnp.asarray(v) for n, v in xs.items()})
        if model.denoises and not tweedie:
            x = model.denoise(params, x, cond)
        count = nfe(method, num_steps, model, last_step=last_step)
        return Samples(x=x, nfe=jnp.asarray(count, jnp.int32), success=jnp.all(jnp.isfinite(x)),
                       steps=jnp.asarray(num_steps, jnp.int32))

    return sample
