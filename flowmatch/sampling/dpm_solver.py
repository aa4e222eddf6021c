"""Multistep exponential integrators in log-SNR time: DPM-Solver++ (2M, 3M) and UniPC.

The probability-flow ODE of an affine path, written for the data prediction x1_hat = D(x, t)
in lambda = log(alpha_t / sigma_t) (`logsnr`), has the exact solution (Lu et al. 2022b,
"DPM-Solver++"; the data-prediction form of Lu et al. 2022a, Prop. 3.1; t = 0 noise, t = 1
data, lambda increasing)

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} D(lambda) d lambda,

and these solvers integrate D's polynomial interpolation through the last evaluations exactly
(the linear part exactly): a step from grid time s = t_{i-1} to t = t_i, h = lambda_t - lambda_s,
with m_j = D at t_{i-1-j} (m_0 the newest) and rho = sigma_t / sigma_s:

DPM-Solver++(1): x_t = rho x_s - alpha_t phi_1 m_0 with phi_1 = e^{-h} - 1 (= DDIM, Song et al.
    2021, the same step written in (x1_hat, x0_hat)).
DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2: with r = h_{i-1} / h,
    D = (1 + 1/(2r)) m_0 - (1/(2r)) m_1,   x_t = rho x_s - alpha_t phi_1 D.
DPM-Solver++(3M): the order-3 Taylor expansion of the integral above in lambda (x' and x'' enter
    with h phi_2 and -h^2 phi_3, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2), the derivatives
    from the divided differences of the authors' multistep update (LuChengTHU/dpm-solver,
    `multistep_dpm_solver_third_update`): r0 = h_{i-1}/h, r1 = h_{i-2}/h,
        D1_0 = (m_0 - m_1)/r0,  D1_1 = (m_1 - m_2)/r1,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1) ~ h x',   D2 = 2 (D1_0 - D1_1)/(r0 + r1) ~ h^2 x'',
        x_t = rho x_s - alpha_t phi_1 m_0 + alpha_t phi_2 D1 - alpha_t phi_3 D2.
    The authors' code (and diffusers') has D2 without the factor 2, i.e. h^2 x'' / 2: its local
    error is then O(h^3) and the method second order (measured on Gaussian data: local orders
    3.0 against 4.0 here; the tests check the step is exact on quadratic D).
UniPC-bh2, Zhao et al. 2023, "UniPC", Sec. 3 (UniP-p predictor, UniC-p corrector), as in their
    implementation (wl-zhao/UniPC, `multistep_uni_pc_bh_update`) with B(h) = e^{-h} - 1 ('bh2',
    data prediction): r_k = (lambda_{i-1-k} - lambda_s)/h, D1_k = (m_k - m_0)/r_k (k = 1..p-1),
    r_p = 1, b_j = (-h) phi_{j+1}(-h) j! / B(h), R_jk = r_k^{j-1};
        predictor  x~ = rho x_s - alpha_t B m_0 - alpha_t B sum_k rho^p_k D1_k,
                   rho^p solving R[:p-1, :p-1] rho^p = b[:p-1] (rho^p = 1/2 for p = 2: the 2M step);
        corrector  x_t = rho x_s - alpha_t B m_0
                         - alpha_t B (sum_k rho^c_k D1_k + rho^c_p (m_t - m_0)),
                   m_t = D(x~, t), rho^c solving R rho^c = b (rho^c = 1/2 for p = 1);
    m_t is the history's next value, so the corrector costs no evaluation; it raises the order
    from p to p + 1.
Each step's update is linear in (x_s, m_0, m_1, m_2[, m_t]); its coefficients are computed on
the host in float64 (the grid is static) and the compiled loop is one lax.scan.

Order and warm-up: step i uses order min(order, i) (the first steps have fewer past values:
DPM-Solver's and UniPC's warm-up), and with lower_order_final also min(., K + 1 - i) over the K
evaluations, as the authors recommend for few steps (DPM-Solver: only when K < 10; UniPC:
always).  A first-order first step leaves 3M a global O(h^2) term proportional to D' at the
start, small where the data estimate barely moves at high noise (and UniPC's corrected first
step is of order 2).

Grid and ends.  num_steps = K network evaluations, at K grid times t_0 < ... < t_{K-1}: K - 1
solver steps, then the last step to t = 1 (lambda = +inf, alpha = 1, sigma = 0), where every
update above reduces to its first-order part x = m_{K-1}: the model's data estimate at t_{K-1}
(the "denoise to zero" of DPM-Solver's code, here counted inside K).  Where the grid lives:
    DDPM models: K of their T discrete steps, the network only at times it was trained at;
        spacing 'logsnr' (default: nearest to uniform in lambda from step T-1 to step 0, the
        DPM-Solver authors' recommendation for low-resolution data), 'linspace' (time-uniform,
        from step T-1 to step 0, their 'time_uniform'), 'leading' or 'trailing' (as DDIM,
        `timegrids.discrete_steps`); coefficients from the exact alpha-bar table.
    Continuous paths (flow matching): K times from t_lo to t_hi, spacing 'logsnr' (default) or
        'linspace'; lambda is -inf at t = 0 and +inf at t = 1 on cond-OT / cosine paths, so the
        grid starts at t_min > 0 and ends at t_max < 1, by default where lambda = -5 and 5
        (`logsnr.bounds`: t = 0.0067 and 0.9933 on cond-OT), the source samples taken as x at
        t_min (an O(alpha_{t_min}) mismatch, the same as a DDPM model's prior).
nfe = K for every model.  Deterministic: the key is unused.
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import paths as paths_lib
from flowmatch import schedules as schedules_lib
from flowmatch import timegrids
from flowmatch.sampling import logsnr
from flowmatch.sampling.model import ModelFn
from flowmatch.sampling.records import Samples

# method -> (update rule, default order, lower_order_final's step-count limit (None: always))
METHODS = {"dpmpp_2m": ("dpmpp", 2, 10), "dpmpp_3m": ("dpmpp", 3, 10), "unipc": ("unipc", 2, None)}
SPACINGS = ("logsnr", "linspace", "leading", "trailing")
CONTINUOUS_SPACINGS = ("logsnr", "linspace")
OPTIONS = ("spacing", "lower_order_final", "t_min", "t_max", "clip_denoised")
UNIPC_OPTIONS = OPTIONS + ("order",)
_HISTORY = 3  # past data predictions kept (order 3 needs m_0, m_1, m_2)


def check_options(method: str, *, spacing="logsnr", lower_order_final=True, t_min=None,
                  t_max=None, clip_denoised=False, order=None) -> None:
    """Validates the settings that need no model (host side); ValueError lists what is allowed."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    for name, value in (("lower_order_final", lower_order_final), ("clip_denoised", clip_denoised)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if order is not None and (method != "unipc" or isinstance(order, bool)
                              or order not in (1, 2, 3)):
        raise ValueError(f"order is an option of unipc only, 1, 2 or 3 (its predictor's order; "
                         f"the corrector adds one), got {order!r} for {method}")
    for name, value in (("t_min", t_min), ("t_max", t_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a time in [0, 1] or None, got {value!r}")


def grid(model: ModelFn, num_steps: int, spacing: str = "logsnr", t_min=None, t_max=None):
    """(times [K] float64 ascending, the DDPM steps [K] or None): the evaluation times."""
    K = int(num_steps)
    if logsnr.is_discrete(model):
        if t_min is not None or t_max is not None:
            raise ValueError("t_min / t_max are for continuous paths; a DDPM model's solver runs "
                             "on its own steps (choose them with spacing=...)")
        sched = model.path.schedule
        if spacing == "logsnr":
            steps = logsnr.logsnr_steps(sched, K)
        else:
            steps = timegrids.discrete_steps(sched.num_timesteps, K, "uniform", spacing)
        steps = steps[::-1].copy()  # noisiest (t = 0 side) first
        return np.asarray(sched.time(steps), np.float64), steps
    if spacing not in CONTINUOUS_SPACINGS:
        raise ValueError(f"spacing {spacing!r} picks a DDPM model's discrete steps; for a "
                         f"continuous path choose one of: {', '.join(CONTINUOUS_SPACINGS)}")
    t_lo, t_hi = logsnr.bounds(model, t_min, t_max)
    if spacing == "linspace":
        return np.linspace(t_lo, t_hi, K) if K > 1 else np.array([t_lo]), None
    return logsnr.uniform_logsnr_times(model, K, t_lo, t_hi), None


def step_orders(num_steps: int, order: int, lower_order_final: bool, limit) -> list[int]:
    """The order of each of the K - 1 solver steps i = 1..K-1 (see the module docstring)."""
    K = int(num_steps)
    final = lower_order_final and (limit is None or K < limit)
    return [min(order, i, K + 1 - i) if final else min(order, i) for i in range(1, K)]


def _dpmpp(h, hist_h, p):
    """DPM-Solver++ step of order p (1-3) as weights on (m_0, m_1, m_2), times alpha_t.

    h: the step in lambda; hist_h: (h_{i-1}, h_{i-2}), the previous steps."""
    m = np.eye(_HISTORY)
    phi_1 = math.expm1(-h)
    if p == 1:  # DPM-Solver++(1) (Lu et al. 2022b), DDIM
        return -phi_1 * m[0]
    r0 = hist_h[0] / h
    if p == 2:  # Algorithm 2 of Lu et al. 2022b
        return -phi_1 * ((1.0 + 0.5 / r0) * m[0] - (0.5 / r0) * m[1])
    r1 = hist_h[1] / h  # third order (module docstring): D1 ~ h x', D2 ~ h^2 x''
    d1_0, d1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return -phi_1 * m[0] + phi_2 * d1 - phi_3 * d2


def _unipc(h, hist_lam, p):
    """UniPC-bh2 step of order p (1-3): (predictor weights on (m_0, m_1, m_2), corrector weights
    on (m_0, m_1, m_2, m_t)), times alpha_t (Zhao et al. 2023; module docstring).

    hist_lam: lambda at t_{i-1}, t_{i-2}, t_{i-3} (as many as the order needs)."""
    m = np.eye(_HISTORY + 1)  # m_0, m_1, m_2, m_t
    z = -h  # data prediction integrates e^{-(lambda_t - tau)}: the argument is -h
    bh = math.expm1(z)  # B(h) of 'bh2'
    rks = [(hist_lam[k] - hist_lam[0]) / h for k in range(1, p)] + [1.0]
    d1s = [(m[k] - m[0]) / rks[k - 1] for k in range(1, p)]
    zphi, fact, b = math.expm1(z) / z - 1.0, 1.0, []  # z phi_2(z)
    for j in range(1, p + 1):  # b_j = z phi_{j+1}(z) j! / B(h)
        b.append(zphi * fact / bh)
        fact *= j + 1
        zphi = zphi / z - 1.0 / fact
    R = np.array([[r ** (j - 1) for r in rks] for j in range(1, p + 1)])
    base = -bh * m[0]
    pred = base
    if p >= 2:
        rho_p = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], np.array(b[:-1]))
        pred = base - bh * sum(r * d for r, d in zip(rho_p, d1s))
    rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, np.array(b))
    corr = base - bh * (sum(r * d for r, d in zip(rho_c[:-1], d1s)) + rho_c[-1] * (m[3] - m[0]))
    return pred[:_HISTORY], corr


def coefficients(s: schedules_lib.ScheduleOutput, orders, rule: str) -> dict:
    """Per-step float64 arrays [K - 1] from the grid's schedule values [K]: 'a' (on x_s), 'p'
    [K - 1, 3] (predictor weights on m_0, m_1, m_2) and, for UniPC, 'c' [K - 1, 4] (corrector
    weights on m_0, m_1, m_2, m_t)."""
    lam = logsnr.logsnr(s)
    if not np.all(np.isfinite(lam)):
        raise ValueError(f"log-SNR must be finite on the grid, got {lam}: move t_min / t_max "
                         "inside (0, 1)")
    a, p, c = [], [], []
    for i, q in enumerate(orders, start=1):
        h = lam[i] - lam[i - 1]
        alpha = s.alpha[i]
        a.append(s.sigma[i] / s.sigma[i - 1])
        if rule == "dpmpp":
            hist_h = [lam[i - 1 - j] - lam[i - 2 - j] for j in range(q - 1)]
            p.append(alpha * _dpmpp(h, hist_h, q))
        else:
            pred, corr = _unipc(h, [lam[i - 1 - j] for j in range(q)], q)
            p.append(alpha * pred)
            c.append(alpha * corr)
    out = dict(a=np.array(a), p=np.array(p).reshape(-1, _HISTORY))
    if rule == "unipc":
        out["c"] = np.array(c).reshape(-1, _HISTORY + 1)
    return out


def dpm_solver_sampler(model: ModelFn, *, num_steps: int, method: str | None = None,
                       order: int | None = None, spacing: str = "logsnr",
                       lower_order_final: bool = True, t_min: float | None = None,
                       t_max: float | None = None, clip_denoised: bool = False):
    """sample(params, x0 [n, ...], key, cond=None) -> Samples (see the module docstring).

    method: 'dpmpp_2m', 'dpmpp_3m' or 'unipc'; or method=None with order (1, 2, 3): DPM-Solver++
    of that order (order 1 is DDIM).  unipc's order is its predictor's (default 2: order 3 with
    the corrector).  num_steps = K >= 1 network evaluations (at most T for a DDPM model).
    clip_denoised clips the data estimates to [-1, 1] (images).  key is unused.
    """
    if method is None:
        rule, limit = "dpmpp", 10
        if order not in (1, 2, 3):
            raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order!r}")
    else:
        check_options(method, spacing=spacing, lower_order_final=lower_order_final, t_min=t_min,
                      t_max=t_max, clip_denoised=clip_denoised,
                      order=order if method == "unipc" else None)
        rule, default_order, limit = METHODS[method]
        order = order or default_order
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    times, steps = grid(model, num_steps, spacing, t_min, t_max)
    s = logsnr.schedule_at(model, times, steps)
    coeffs = coefficients(s, step_orders(num_steps, order, lower_order_final, limit), rule)
    corrector = rule == "unipc"

    def estimate(params, x, t, sched, cond):
        """The data prediction D(x, t), with the grid's schedule values at t."""
        pred, _ = model.predict(params, x, t, cond)
        x1 = paths_lib.endpoints(schedules_lib.ScheduleOutput(*sched), pred, x, model.prediction,
                                 model.path.eps)[0]
        return jnp.clip(x1, -1.0, 1.0) if clip_denoised else x1

    def sample(params, x0, key, cond=None):
        del key
        dt = x0.dtype
        sched = [jnp.asarray(v, dt) for v in s]
        m0 = estimate(params, x0, jnp.asarray(times[0], dt), [v[0] for v in sched], cond)
        hist = (m0,) + (jnp.zeros_like(m0),) * (_HISTORY - 1)

        def step(carry, c):
            x, hist = carry
            x_new = c["a"] * x + sum(c["p"][j] * hist[j] for j in range(_HISTORY))
            m_new = estimate(params, x_new, c["t"], c["sched"], cond)
            if corrector:
                x_new = c["a"] * x + sum(c["c"][j] * hist[j] for j in range(_HISTORY)) + (
                    c["c"][_HISTORY] * m_new)
            return (x_new, (m_new,) + hist[:-1]), None

        if num_steps > 1:
            xs = {name: jnp.asarray(v, dt) for name, v in coeffs.items()}
            xs["t"] = jnp.asarray(times[1:], dt)
            xs["sched"] = [v[1:] for v in sched]
            (_, hist), _ = lax.scan(step, (x0, hist), xs)
        # the last step, to t = 1 (sigma = 0): the data estimate at t_{K-1}
        return Samples(x=hist[0], nfe=jnp.asarray(num_steps, jnp.int32),
                       success=jnp.all(jnp.isfinite(hist[0])),
                       steps=jnp.asarray(num_steps, jnp.int32))

    return sample
