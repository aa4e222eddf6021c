"""Exact log-likelihoods of a flow by the instantaneous change of variables; bits per dimension.

The flow dx/dt = v(t, x) carries noise x(0) ~ p0 = N(0, I) at t = 0 to data at t = 1.  Along a
trajectory the density obeys (Chen et al. 2018, "Neural ODEs"; Grathwohl et al. 2019, "FFJORD")

    d/dt log p_t(x_t) = -div v(t, x_t),   so   log p1(x) = log p0(z) - int_0^1 div v(t, x_t) dt,

where x_t is the trajectory through x_1 = x and z = x_0.  We integrate BACKWARDS, from the data x
at t = 1 to the noise z at t = 0, the augmented state (x_t, a_t) with

    dx/dt = v(t, x),   da/dt = +div v(t, x),   a_1 = 0,

so that a_0 = int_1^0 div dt = -int_0^1 div dt and log p1(x) = log N(z; 0, I) + a_0.

    logp = log_likelihood(v, x, method="dopri5", rtol=1e-6, atol=1e-6)          # [B] nats
    res = log_likelihood(v, x, method="rk4", num_steps=32, divergence="hutchinson", key=key,
                         return_solution=True)                                   # res.nfe, ...
    bpd = bits_per_dim(v, images_uint8, key, method="dopri5", rtol=1e-5, atol=1e-5)   # [B]

Batch assumption: v(t, x) takes x [B, ...] and the batch is one system for the solver, but the
divergence is per example: example b's velocity must depend on example b's coordinates only (no
batch statistics, no attention across the batch).  The exact divergence relies on it (it probes
all examples with the same basis vector at once); Hutchinson stays unbiased without it, with
extra variance.

Everything here is a pure function of arrays and traces into one XLA program: wrap a call in
`jax.jit` with v and the keyword configuration closed over (see `log_likelihood`).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import integrators

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@flax.struct.dataclass
class LikelihoodResult:
    """Result of `log_likelihood(..., return_solution=True)`.

    logp: [B] log p1(x) in nats, NaN for the whole batch if the solve failed.
    z: [B, ...] the noise x_0 the data was mapped to.
    log_pz: [B] log N(z; 0, I).
    delta_logp: [B] a_0 = -int_0^1 div v(t, x_t) dt, so logp = log_pz + delta_logp.
    solution: the integrators.Solution of the augmented state (x_t, a_t); its nfe counts
        evaluations of the augmented field (each is one forward pass of v plus D (exact) or
        num_probes (Hutchinson) Jacobian-vector products).
    """

    logp: jax.Array
    z: jax.Array
    log_pz: jax.Array
    delta_logp: jax.Array
    solution: integrators.Solution

    @property
    def nfe(self) -> jax.Array:
        return self.solution.nfe

    @property
    def status(self) -> jax.Array:
        """int32, integrators.SUCCESS (0) or a code in integrators.STATUS_MESSAGES."""
        return self.solution.status

    @property
    def success(self) -> jax.Array:
        return self.solution.success


# -- divergence ------------------------------------------------------------------------------------


def _check_divergence(divergence, key, probe, num_probes, chunk_size):
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of: "
                         f"{', '.join(DIVERGENCES)}")
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("divergence='hutchinson' draws its probes from a PRNG key: pass "
                             "key=jax.random.key(...) (or use divergence='exact')")
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}; choose one of: {', '.join(PROBES)}")
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")


def draw_probes(key, x_shape, dtype, *, probe: str = "rademacher", num_probes: int = 1):
    """Hutchinson probes eps [num_probes, *x_shape] with E[eps eps^T] = I.

    rademacher: entries +-1 with probability 1/2 (lowest variance: exact for diagonal Jacobians);
    gaussian: standard normal entries.
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of: {', '.join(PROBES)}")
    shape = (num_probes, *x_shape)
    if probe == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


def velocity_and_divergence(v: Callable, t, x, *, probes=None, chunk_size: int | None = None):
    """(v(t, x) [B, ...], per-example divergence [B]) of a batched velocity field.

    One forward pass (jax.linearize), then Jacobian-vector products J u with J = dv/dx:
    probes=None: the exact trace sum_d e_d^T J e_d over the D = prod(x.shape[1:]) basis vectors
        e_d (one e_d serves the whole batch, hence the no-mixing assumption of the module
        docstring).  Cost: D JVPs, about D extra forward passes, memory ~ chunk * B * D for the
        tangents; chunk_size=None does all D in one vmap, else lax.map over chunks of that many
        dimensions (for large D).
    probes [P, *x.shape]: the Hutchinson estimate (1/P) sum_p eps_p^T J eps_p, one JVP per probe;
        unbiased when E[eps eps^T] = I.
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must be a batch [B, ...], got a scalar of shape {x.shape}")
    batch = x.shape[0]
    dim = math.prod(x.shape[1:])
    dx, jvp = jax.linearize(lambda y: v(t, y), x)
    dx = dx.astype(x.dtype)

    def jvps(tangents):  # [n, *x.shape] -> [n, B, D]
        out = jax.vmap(jvp)(tangents).astype(x.dtype)
        return out.reshape(tangents.shape[0], batch, dim)

    if probes is not None:
        probes = jnp.asarray(probes, x.dtype)
        if probes.shape[1:] != x.shape:
            raise ValueError(f"probes must have shape [P, *x.shape] = [P, {x.shape}], got "
                             f"{probes.shape}")
        flat = probes.reshape(probes.shape[0], batch, dim)
        return dx, jnp.mean(jnp.sum(flat * jvps(probes), axis=-1), axis=0)

    def chunk_trace(idx):  # idx [C] dimension indices (>= dim: padding, contributes 0)
        basis = jax.nn.one_hot(idx, dim, dtype=x.dtype)                     # [C, D]
        tangents = jnp.broadcast_to(basis[:, None, :], (idx.shape[0], batch, dim))
        return jnp.einsum("cbd,cd->b", jvps(tangents.reshape(idx.shape[0], *x.shape)), basis)

    if chunk_size is None or chunk_size >= dim:
        return dx, chunk_trace(jnp.arange(dim))
    num_chunks = -(-dim // chunk_size)
    idx = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)
    return dx, jnp.sum(lax.map(chunk_trace, idx), axis=0)


# -- log-likelihood --------------------------------------------------------------------------------


def standard_normal_logpdf(z):
    """log N(z; 0, I) per example: -|z|^2 / 2 - (D / 2) log(2 pi).  z: [B, ...] -> [B]."""
    z = jnp.asarray(z)
    dim = math.prod(z.shape[1:])
    sq = jnp.sum(jnp.square(z).reshape(z.shape[0], dim), axis=-1)
    return -0.5 * sq - 0.5 * dim * math.log(2 * math.pi)


def _concrete(x):
    """x as a NumPy array, or None when it is traced (value checks are then skipped)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_time_grid(time_grid):
    grid = _concrete(time_grid)
    if grid is None or grid.ndim != 1 or grid.shape[0] < 2:
        return  # traced (or malformed: integrators.solve says what is wrong)
    if grid[0] != 1.0 or grid[-1] != 0.0:
        raise ValueError(f"time_grid must run from the data at t = 1 down to the noise at t = 0, "
                         f"got {grid[0]} ... {grid[-1]}; e.g. pass timegrids.uniform(n, 1.0, 0.0)"
                         " or grid[::-1] of a grid from 0 to 1")


def log_likelihood(v: Callable, x, *, method: str = "dopri5", num_steps: int | None = None,
                   time_grid=None, rtol: float | None = None, atol: float | None = None,
                   max_steps: int = 4096, divergence: str = "exact", key=None,
                   probe: str = "rademacher", num_probes: int = 1,
                   chunk_size: int | None = None, return_solution: bool = False,
                   log_prior: Callable | None = None):
    """log p1(x) in nats under the flow of v from p0 at t = 0 (N(0, I) by default): [B].

    Integrates (x, a) from t = 1 (a = 0) to t = 0 with dx/dt = v(t, x), da/dt = div v(t, x)
    (module docstring), then logp = log p0(z) + a_0 = log p0(z) - int_0^1 div v dt.

    v: (t, x) -> dx/dt, t a scalar, x [B, ...]; examples must not interact (module docstring).
    x: [B, ...] float data at t = 1 (D = prod(x.shape[1:]) dimensions per example).
    method, num_steps | time_grid | rtol and atol, max_steps: passed to `integrators.solve`
        with t0 = 1, t1 = 0 (fixed grid or adaptive; a time_grid must run from 1 to 0).
        Adaptive control sees the log-density term too.
    divergence: "exact" (D JVPs per evaluation; small D) or "hutchinson" (num_probes JVPs).
    key, probe, num_probes: Hutchinson probes ("rademacher" or "gaussian"), drawn once from key
        and held fixed over the whole solve (FFJORD); each evaluation averages num_probes
        estimates eps^T (dv/dx) eps.  With a fixed grid the result is unbiased for the same
        grid's exact-divergence result; adaptive steps depend weakly on the probes.
    chunk_size: exact divergence only: dimensions per vmapped chunk (None: all at once).
    return_solution: False -> logp; True -> a LikelihoodResult (logp, z, nfe, status, ...).
    log_prior: z [B, ...] -> log p0(z) [B] in nats, for a source other than N(0, I) (e.g. a
        run's `Experiment.source_dist.log_prob`); None: the standard normal.
    Reverse-mode differentiable (e.g. maximum-likelihood training) on fixed grids only; the
    adaptive solver's while_loop allows forward mode only.

    Failure is never silent: if the solve fails, logp is NaN and the result's status says why
    (integrators.check(result.solution) raises with the reason, outside jit).

    jit: x, key, rtol, atol and time_grid may be traced; v, method, num_steps, max_steps,
    divergence, probe, num_probes, chunk_size, return_solution and log_prior must be static, e.g.
        jax.jit(functools.partial(log_likelihood, v, method="rk4", num_steps=32)).
    """
    _check_divergence(divergence, key, probe, num_probes, chunk_size)
    if time_grid is not None:
        _check_time_grid(time_grid)
    # Fail before tracing anything on bad method / grid / tolerance combinations.
    integrators.check_arguments(method, num_steps=num_steps, time_grid=time_grid, rtol=rtol,
                                atol=atol, max_steps=max_steps)
    x = jnp.asarray(x)
    if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float batch [B, ...], got shape {x.shape} and dtype "
                         f"{x.dtype}")
    probes = None
    if divergence == "hutchinson":
        probes = draw_probes(key, x.shape, x.dtype, probe=probe, num_probes=num_probes)

    def augmented(t, state):
        y, _ = state
        return velocity_and_divergence(v, t, y, probes=probes, chunk_size=chunk_size)

    state1 = (x, jnp.zeros(x.shape[:1], x.dtype))
    if time_grid is None:
        sol = integrators.solve(augmented, state1, method=method, num_steps=num_steps, t0=1.0,
                                t1=0.0, rtol=rtol, atol=atol, max_steps=max_steps)
    else:
        sol = integrators.solve(augmented, state1, method=method, time_grid=time_grid,
                                max_steps=max_steps)
    z, delta = sol.x
    log_pz = (standard_normal_logpdf if log_prior is None else log_prior)(z)
    if log_pz.shape != x.shape[:1]:
        raise ValueError(f"log_prior must return one log-density per example, shape "
                         f"{x.shape[:1]}; got shape {log_pz.shape}")
    logp = jnp.where(sol.success, log_pz + delta, jnp.nan).astype(x.dtype)
    if not return_solution:
        return logp
    return LikelihoodResult(logp=logp, z=z, log_pz=log_pz, delta_logp=delta, solution=sol)


# -- bits per dimension ----------------------------------------------------------------------------


def nats_to_bpd(logp, num_dims: int, *, bin_width: float = 1.0):
    """Bits per dimension of a density logp (nats) on bins of width `bin_width` per dimension.

    bpd = -(logp + D log(bin_width)) / (D log 2): logp + D log(bin_width) is the log-density of
    the data in units where each quantisation bin has width 1 (change of variables x = w *
    bin_width).  For 8-bit images modelled in [-1, 1], bin_width = 2 / 256, i.e.
    bpd = -(logp + D log 2 - D log 256) / (D log 2) = -logp / (D log 2) + 7.
    bin_width = 1: plain conversion -logp / (D log 2).
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, (int, np.integer)) or num_dims < 1:
        raise ValueError(f"num_dims must be an integer >= 1, got {num_dims!r}")
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    logp = jnp.asarray(logp)
    return -(logp + num_dims * math.log(bin_width)) / (num_dims * math.log(2.0))


_GRID_TOL = 0.01  # float images may sit this far (in levels) off the 2^bits grid (rounding)


def _levels(x, num_bits):
    """Integer levels k in {0, ..., 2^bits - 1} from integer or [-1, 1] float images.

    Concrete inputs are checked (out-of-range levels, floats off the grid, e.g. [0, 1] or
    already dequantized images, raise); traced inputs are trusted.
    """
    top = 2**num_bits - 1
    x = jnp.asarray(x)
    c = _concrete(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        if c is not None and c.size and (c.min() < 0 or c.max() > top):
            raise ValueError(f"integer images must hold levels in [0, {top}] for num_bits="
                             f"{num_bits}, got values in [{c.min()}, {c.max()}]")
        return x, False
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"images must be integer levels or floats in [-1, 1], got dtype {x.dtype}")
    k = (x + 1) * (top / 2)
    if c is not None and c.size:
        kc = (c.astype(np.float64) + 1) * (top / 2)
        off = np.abs(kc - np.round(kc)).max()
        if kc.min() < -_GRID_TOL or kc.max() > top + _GRID_TOL or off > _GRID_TOL:
            raise ValueError(
                f"float images must be x = k / {top / 2} - 1 for integer levels k in [0, {top}] "
                f"(range [-1, 1], on the {num_bits}-bit grid); got values in [{c.min()}, "
                f"{c.max()}], up to {off:.3g} levels off the grid.  Pass the integer levels, "
                "or images that have not been dequantized or rescaled")
    return jnp.clip(jnp.round(k), 0, top), True


def dequantize(x, key, *, num_bits: int = 8, dtype=None):
    """Uniformly dequantized images in the model's space [-1, 1): x' = 2 (k + u) / 2^bits - 1.

    x: [B, ...] integer levels k in {0, ..., 2^bits - 1} (e.g. uint8), or floats in [-1, 1]
        from x = k / ((2^bits - 1) / 2) - 1 (rounded back to k).  u ~ U[0, 1)^D from key.
    dtype: of the result (default: x's float dtype, float32 for integer input).
    """
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 1 <= num_bits <= 16:
        raise ValueError(f"num_bits must be an integer in [1, 16], got {num_bits!r}")
    k, is_float = _levels(x, num_bits)
    if dtype is None:
        dtype = k.dtype if is_float else jnp.float32
    u = jax.random.uniform(key, k.shape, dtype)
    return 2 * (k.astype(dtype) + u) / 2**num_bits - 1


def bits_per_dim(v: Callable, x, key, *, num_bits: int = 8, dtype=None,
                 return_solution: bool = False, **likelihood_kwargs):
    """Per-example bits/dim [B] of discrete images under the flow: an upper bound on the NLL.

    x: [B, ...] integer levels k (e.g. uint8) or floats in [-1, 1] (see `dequantize`).
    With w = k + u, u ~ U[0, 1)^D (ku = the first half of jax.random.split(key); the second
    half draws Hutchinson probes if divergence="hutchinson"), the model sees x' = 2 w / 2^bits - 1,
    so log p(w) = log p(x') + D log(2 / 2^bits) and by Jensen
        -log2 P(k) = -log2 int_[0,1)^D p(k + u) du <= E_u[-log2 p(k + u)],
    i.e. bpd = -(log p(x') + D log 2 - D log 2^bits) / (D log 2) (`nats_to_bpd` with
    bin_width = 2 / 2^bits) estimates, with one u per example, a bound that is >= 0 in
    expectation for any proper density (a uniform density on [-1, 1]^D gives exactly num_bits).
    likelihood_kwargs: method, num_steps / rtol, atol, divergence, ... of `log_likelihood`.
    return_solution: True -> (bpd, LikelihoodResult).
    """
    if "key" in likelihood_kwargs:
        raise ValueError("bits_per_dim takes one key (for dequantization and probes); do not "
                         "pass key= twice")
    ku, kp = jax.random.split(key)
    xq = dequantize(x, ku, num_bits=num_bits, dtype=dtype)
    num_dims = math.prod(xq.shape[1:])
    res = log_likelihood(v, xq, key=kp, return_solution=True, **likelihood_kwargs)
    bpd = nats_to_bpd(res.logp, num_dims, bin_width=2.0 / 2**num_bits)
    return (bpd, res) if return_solution else bpd


# -- DDPM's variational bound ----------------------------------------------------------------------

VARIANCES = ("fixed_small", "fixed_large")


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
class BoundResult:
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


def _bound_tables(schedule, variance: str) -> dict:
    """float32 [T] arrays of the discrete schedule (computed in float64): alpha, sigma at every
    step, and the reverse step i -> i-1 (step -1: clean data): posterior coefficients c_a, c_1,
    the posterior log variance (step 0's, which is 0, clipped to step 1's as Ho et al. do) and the
    model's log variance."""
    from flowmatch import paths as paths_lib  # pylint: disable=g-import-not-at-top
    from flowmatch import schedules as schedules_lib  # pylint: disable=g-import-not-at-top
    abar = schedule.alphas_cumprod
    prev = np.append(1.0, abar[:-1])
    sa = schedules_lib.ScheduleOutput(np.sqrt(abar), np.sqrt(1.0 - abar), None, None)
    sb = schedules_lib.ScheduleOutput(np.sqrt(prev), np.sqrt(1.0 - prev), None, None)
    c_a, c_1, var, s2 = paths_lib.posterior(sa, sb)
    post_log_var = np.log(np.append(var[1], var[1:]))
    model_log_var = post_log_var if variance == "fixed_small" else np.log(np.append(var[1], s2[1:]))
    return {k: jnp.asarray(v, jnp.float32) for k, v in dict(
        alpha=sa.alpha, sigma=sa.sigma, c_a=c_a, c_1=c_1, post_log_var=post_log_var,
        model_log_var=model_log_var).items()}


def vlb_bits_per_dim(model, params, x, key, *, cond=None, variance: str = "fixed_small",
                     clip_denoised: bool = False, num_terms: int | None = None,
                     num_bits: int = 8) -> BoundResult:
    """The variational bound of a DDPM model (Ho et al. 2020, eq. 5) in bits/dim, 8-bit data.

    model: a `flowmatch.sampling.ModelFn` on a discrete schedule (`schedules.DiscreteVPSchedule`,
    steps i = 0..T-1 at times t_i); params, cond: its parameters and labels.  In the path's terms,
    with x_i = alpha_i x + sigma_i noise_i (noise of step i: fold_in(key, i)):
        -log p(x) <= L_T + sum_{i=1}^{T-1} L_i + L_0,
        L_T = KL(q(x_{T-1} | x) || N(0, I))                                        (no network)
        L_i = KL(q(x_{i-1} | x_i, x) || p(x_{i-1} | x_i)),  p: the posterior with the network's
              data estimate x1_hat (clipped to [-1, 1] if clip_denoised) in place of x
        L_0 = -log p(x | x_0): `discretized_gaussian_log_likelihood` at x1_hat, log scale half the
              model's log variance at step 0,
    each summed over dimensions and divided by D log 2.  variance: the model's reverse variance,
    'fixed_small' (the posterior's) or 'fixed_large' (beta_i; step 0: the posterior's at step 1).
    x: [B, ...] on the 2^bits grid of [-1, 1].  num_terms=None evaluates all T-1 KL terms plus
    L_0: T network calls of the batch.  num_terms=K < T-1 draws K distinct steps from 1..T-1
    uniformly (from fold_in(key, T)) and estimates the KL sum as (T-1)/K times their sum
    (unbiased; L_T and L_0, usually the largest, stay exact): K + 1 calls.
    """
    from flowmatch import paths as paths_lib  # pylint: disable=g-import-not-at-top
    from flowmatch import schedules as schedules_lib  # pylint: disable=g-import-not-at-top
    schedule = model.path.schedule
    if not isinstance(schedule, schedules_lib.DiscreteVPSchedule):
        raise ValueError("the variational bound needs a DDPM model (a discrete schedule); use "
                         "log_likelihood for flow-matching models")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
    T = schedule.num_timesteps
    tab = _bound_tables(schedule, variance)
    B, dt = x.shape[0], x.dtype
    to_bpd = 1.0 / (math.prod(x.shape[1:]) * math.log(2.0))

    def per_example(v):  # [B, ...] nats -> [B] bits/dim
        return jnp.sum(v.reshape(B, -1), axis=1) * to_bpd

    def step(i):
        """(x_i, posterior mean with x, with x1_hat) at step i (a traced scalar)."""
        at = lambda name: tab[name][i].astype(dt)
        x_i = at("alpha") * x + at("sigma") * jax.random.normal(jax.random.fold_in(key, i),
                                                                x.shape, dt)
        pred, _ = model.predict(params, x_i, schedule.time(i).astype(dt), cond)
        # the table's coefficients at the step (not the cubic between steps): exact at i
        x1_hat, _ = paths_lib.endpoints(schedule.at_steps(i, dt), pred, x_i, model.prediction,
                                        model.path.eps)
        if clip_denoised:
            x1_hat = jnp.clip(x1_hat, -1.0, 1.0)
        return x1_hat, at("c_a") * x_i + at("c_1") * x, at("c_a") * x_i + at("c_1") * x1_hat

    def kl_term(_, i):
        _, true_mean, model_mean = step(i)
        return None, per_example(normal_kl(true_mean, tab["post_log_var"][i].astype(dt),
                                           model_mean, tab["model_log_var"][i].astype(dt)))

    if num_terms is None:
        idx, weight = jnp.arange(1, T), 1.0
    else:
        if (isinstance(num_terms, bool) or not isinstance(num_terms, (int, np.integer))
                or not 1 <= num_terms <= T - 1):
            raise ValueError(f"num_terms must be None (all terms) or an integer in [1, T-1={T - 1}]"
                             f", got {num_terms!r}")
        idx = jax.random.choice(jax.random.fold_in(key, T), jnp.arange(1, T), (num_terms,),
                                replace=False)
        weight = (T - 1) / num_terms
    _, terms = lax.scan(kl_term, None, idx)  # [K, B]
    terms = terms.T
    x1_hat0, _, _ = step(jnp.asarray(0))
    decoder = -per_example(discretized_gaussian_log_likelihood(
        x, x1_hat0, 0.5 * tab["model_log_var"][0].astype(dt), num_bits=num_bits))
    a_last = tab["alpha"][T - 1].astype(dt)
    prior = per_example(normal_kl(a_last * x, jnp.log1p(-a_last * a_last), 0.0, 0.0))
    return BoundResult(total=prior + decoder + weight * jnp.sum(terms, axis=1), prior=prior,
                       decoder=decoder, kl=weight * jnp.sum(terms, axis=1), terms=terms,
                       term_index=idx, nfe=int(idx.shape[0]) + 1)
