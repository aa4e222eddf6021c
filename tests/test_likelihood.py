"""Tests for flowmatch.likelihood: closed-form Gaussian flows, divergences, Hutchinson bias, bpd."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from configs_util import QUICK_COMPILE  # noqa: E402  (tests/ on sys.path)
from flowmatch import integrators, likelihood, timegrids


def _jit(fn, **kw):
    """fn as one quickly compiled program (run eagerly, every op outside a solver's loop would be
    dispatched, and compiled for its shape, on its own)."""
    return jax.jit(fn, compiler_options=QUICK_COMPILE, **kw)


def _ll(v, x, **kw):
    """likelihood.log_likelihood(v, x, **kw), jitted (v and the keywords closed over)."""
    return _jit(functools.partial(likelihood.log_likelihood, v, **kw))(x)

# -- test problems ---------------------------------------------------------------------------------


def gauss_flow(mu, s):
    """x0 ~ N(0, I) -> x1 ~ N(mu, diag(s^2)) along x_t = t x1 + (1 - t) x0 (independent coupling).

    mu, s: [1, ...] (one example's shape, with a leading 1 to broadcast over the batch).
    Marginal velocity mu + c_t (x - t mu), c_t = (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2);
    the flow map is x(t) = t mu + sigma_t x(0), so x(1) = mu + s x(0).
    """

    def v(t, x):
        c = (t * s**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s**2)
        return mu + c * (x - t * mu)

    return v


def gauss_logpdf(x, mu, s):
    """log N(x; mu, diag(s^2)) per example: x [B, ...] -> [B]."""
    lp = -0.5 * ((x - mu) / s) ** 2 - jnp.log(s) - 0.5 * math.log(2 * math.pi)
    return jnp.sum(lp.reshape(x.shape[0], -1), axis=-1)


def mlp_flow(dim, seed=0, dtype=jnp.float64):
    """A nonlinear per-example field on [B, ...] with a dense, non-symmetric Jacobian."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w1 = jax.random.normal(k1, (dim, 16), dtype) / math.sqrt(dim)
    w2 = jax.random.normal(k2, (16, dim), dtype) / 4.0
    b = jax.random.normal(k3, (1, 16), dtype)

    def v(t, x):
        flat = x.reshape(x.shape[0], dim)
        out = jnp.tanh(flat @ w1 + t * b) @ w2 - 0.3 * flat
        return out.reshape(x.shape)

    return v


def _data(shape, seed=1, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# -- closed form: Gaussian-to-Gaussian flow --------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 5])
def test_gaussian_flow_dopri5_matches_closed_form(dim):
    with jax.enable_x64(True):
        mu = jnp.linspace(-1.0, 1.5, dim)[None]
        s = jnp.linspace(0.4, 1.7, dim)[None] if dim > 2 else jnp.full((1, dim), 0.5)
        x = mu + s * _data((8, dim))
        ll = jax.jit(functools.partial(likelihood.log_likelihood, gauss_flow(mu, s),
                                       method="dopri5", rtol=1e-6, atol=1e-6,
                                       return_solution=True), compiler_options=QUICK_COMPILE)
        res = ll(x)
        assert res.logp.shape == (8,) and res.logp.dtype == jnp.float64
        assert bool(res.success) and int(res.status) == integrators.SUCCESS
        np.testing.assert_allclose(res.logp, gauss_logpdf(x, mu, s), atol=1e-4, rtol=0)
        np.testing.assert_allclose(res.z, (x - mu) / s, atol=1e-4)  # the inverse flow map
        np.testing.assert_allclose(res.logp, res.log_pz + res.delta_logp, rtol=1e-12)
        assert 10 < int(res.nfe) < 500


def test_gaussian_flow_rk4_fixed_grid():
    with jax.enable_x64(True):
        mu, s = jnp.array([[1.0, -0.5]]), jnp.array([[0.5, 1.3]])
        x = mu + s * _data((6, 2))
        v = gauss_flow(mu, s)
        res = _ll(v, x, method="rk4", num_steps=64, return_solution=True)
        np.testing.assert_allclose(res.logp, gauss_logpdf(x, mu, s), atol=1e-4, rtol=0)
        assert int(res.nfe) == integrators.nfe_for("rk4", 64)
        # Any decreasing grid from 1 to 0 works too.
        grid = timegrids.uniform(64, 1.0, 0.0)
        np.testing.assert_allclose(
            _ll(v, x, method="rk4", time_grid=grid), res.logp, rtol=1e-12)


def test_image_shaped_gaussian_flow():
    with jax.enable_x64(True):
        shape = (1, 2, 3, 3)  # [B, H, W, C] with per-pixel means and scales
        mu = jnp.linspace(-0.8, 0.8, 18).reshape(shape)
        s = jnp.linspace(0.3, 1.2, 18)[::-1].reshape(shape)
        x = mu + s * _data((4, 2, 3, 3))
        v = gauss_flow(mu, s)
        want = gauss_logpdf(x, mu, s)
        logp = _ll(v, x, method="rk4", num_steps=32)
        assert logp.shape == (4,)
        np.testing.assert_allclose(logp, want, atol=1e-4, rtol=0)
        # Jitted adaptive Hutchinson with a traced key; Rademacher probes are exact for a
        # diagonal Jacobian (eps_d^2 = 1).
        hut = jax.jit(lambda x, key: likelihood.log_likelihood(
            v, x, method="dopri5", rtol=1e-6, atol=1e-6, divergence="hutchinson", key=key,
            num_probes=2, return_solution=True), compiler_options=QUICK_COMPILE)(
                x, jax.random.key(0))
        assert bool(hut.success) and hut.z.shape == x.shape
        np.testing.assert_allclose(hut.logp, want, atol=1e-4, rtol=0)


def test_float32_and_chunked_exact():
    mu, s = jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[0.7, 1.1, 0.4]])
    x = mu + s * _data((5, 3), dtype=jnp.float32)
    logp = _ll(gauss_flow(mu, s), x, method="rk4", num_steps=32, chunk_size=2)
    assert logp.dtype == jnp.float32
    np.testing.assert_allclose(logp, gauss_logpdf(x, mu, s), atol=2e-3, rtol=0)


# -- divergence ------------------------------------------------------------------------------------


def test_exact_divergence_is_jacobian_trace_on_images():
    with jax.enable_x64(True):
        x = _data((3, 4, 4, 3))
        v = mlp_flow(48)

        @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
        def check(x):
            dx, div = likelihood.velocity_and_divergence(v, 0.3, x)
            jac = jax.vmap(jax.jacfwd(lambda y: v(0.3, y[None])[0].reshape(-1)))(x)
            # 7 does not divide D = 48 (a padded chunk); 100 > D is one chunk.
            chunked = [likelihood.velocity_and_divergence(v, 0.3, x, chunk_size=c)[1]
                       for c in (1, 7, 100)]
            return dx, div, jnp.trace(jac.reshape(3, 48, 48), axis1=1, axis2=2), chunked

        dx, div, trace, chunked = check(x)
        np.testing.assert_allclose(dx, v(0.3, x), rtol=1e-12)
        np.testing.assert_allclose(div, trace, rtol=1e-10)
        for div_c in chunked:
            np.testing.assert_allclose(div_c, div, rtol=1e-10)


def test_hutchinson_is_unbiased():
    """Mean over keys of the Hutchinson log-likelihood equals the exact one on the same grid."""
    with jax.enable_x64(True):
        dim, n_keys = 3, 400
        v = mlp_flow(dim)
        x = _data((4, dim))
        kw = dict(method="rk4", num_steps=8)
        exact = _ll(v, x, **kw)

        @functools.partial(jax.jit, static_argnums=(1, 2), compiler_options=QUICK_COMPILE)
        def estimates(keys, probe, num_probes):  # [K, B]
            return jax.vmap(lambda key: likelihood.log_likelihood(
                v, x, divergence="hutchinson", key=key, probe=probe, num_probes=num_probes,
                **kw))(keys)

        keys = jax.random.split(jax.random.key(42), n_keys)
        std = {}
        for probe in likelihood.PROBES:
            one, four = estimates(keys, probe, 1), estimates(keys, probe, 4)
            for est in (one, four):
                se = jnp.std(est, axis=0) / math.sqrt(n_keys)
                assert jnp.all(jnp.abs(jnp.mean(est, axis=0) - exact) < 4 * se + 1e-12), probe
            std[probe] = jnp.std(one, axis=0)
            assert float(jnp.min(std[probe])) > 1e-3  # the field is really non-diagonal
            # Averaging 4 probes divides the variance by 4.
            ratio = jnp.std(four, axis=0) / std[probe]
            assert jnp.all((ratio > 0.3) & (ratio < 0.75)), (probe, ratio)
            assert 0.4 < float(jnp.mean(ratio)) < 0.6, (probe, ratio)
        # Var(eps^T J eps) = 2 |sym J|_F^2 for Gaussian probes, minus 2 sum_d J_dd^2 for Rademacher.
        assert jnp.all(std["gaussian"] > std["rademacher"])


def test_differentiable_on_fixed_grid():
    """d/dmu of the flow's log-likelihood matches the closed form (x - mu) / s^2."""
    with jax.enable_x64(True):
        s = jnp.array([[0.5, 1.3]])
        x = _data((3, 2))

        def total(mu):
            return jnp.sum(likelihood.log_likelihood(gauss_flow(mu, s), x, method="rk4",
                                                     num_steps=64))

        mu = jnp.array([[0.2, -0.4]])
        np.testing.assert_allclose(_jit(jax.grad(total))(mu),
                                   jnp.sum((x - mu) / s**2, axis=0)[None], atol=1e-4)


# -- errors and failures ---------------------------------------------------------------------------


def test_log_prior_for_a_non_normal_source():
    """dx/dt = c x maps p0 to p1(x) = p0(x e^-c) e^-(c D): closed form for any p0; here p0 is a
    two-component Gaussian mixture (not N(0, I)), and also 8gaussians' own log_prob."""
    from flowmatch import sources
    c, dim = 0.7, 2
    v = lambda t, y: c * y

    def mixture(z):
        comp = lambda m: jnp.sum(-0.5 * (z - m) ** 2, axis=-1) + 2 * float(norm.logpdf(0.0))
        return jnp.logaddexp(comp(1.5), comp(-1.5)) - math.log(2.0)

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(3), (64, dim), jnp.float64) * 2.0
        logp = _ll(v, x, method="dopri5", rtol=1e-10, atol=1e-10, log_prior=mixture)
        np.testing.assert_allclose(logp, mixture(x * math.exp(-c)) - c * dim, rtol=1e-7,
                                   atol=1e-7)
    x = np.asarray(x, np.float32)
    p0 = sources.from_config(dict(name="8gaussians"), (2,))
    logp = _ll(v, x, method="rk4", num_steps=64, log_prior=p0.log_prob)
    np.testing.assert_allclose(logp, p0.log_prob(x * math.exp(-c)) - c * dim, rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="one log-density per example"):
        likelihood.log_likelihood(v, x, method="euler", num_steps=2, log_prior=lambda z: z)


def test_argument_errors():
    v, x = (lambda t, x: -x), jnp.zeros((3, 2))
    ll = functools.partial(likelihood.log_likelihood, v, x)
    with pytest.raises(ValueError, match="unknown divergence 'trace'; choose one of: exact"):
        ll(method="rk4", num_steps=4, divergence="trace")
    with pytest.raises(ValueError, match="pass key="):
        ll(method="rk4", num_steps=4, divergence="hutchinson")
    with pytest.raises(ValueError, match="unknown probe 'sphere'"):
        ll(method="rk4", num_steps=4, divergence="hutchinson", key=jax.random.key(0),
           probe="sphere")
    with pytest.raises(ValueError, match="num_probes"):
        ll(method="rk4", num_steps=4, divergence="hutchinson", key=jax.random.key(0),
           num_probes=0)
    with pytest.raises(ValueError, match="unknown integrator 'rk5'; choose one of: euler"):
        ll(method="rk5", num_steps=4)
    with pytest.raises(ValueError, match="needs rtol and atol"):
        ll(method="dopri5")
    with pytest.raises(ValueError, match="from the data at t = 1 down to the noise"):
        ll(method="rk4", time_grid=timegrids.uniform(4, 0.0, 1.0))
    with pytest.raises(ValueError, match="float batch"):
        likelihood.log_likelihood(v, jnp.zeros((3, 2), jnp.int32), method="rk4", num_steps=4)
    with pytest.raises(ValueError, match="num_dims"):
        likelihood.nats_to_bpd(jnp.zeros(3), 0)


def test_failed_solve_gives_nan_and_status():
    v, x = (lambda t, x: jnp.sin(5 * t) * x), jnp.ones((3, 2))
    res = _ll(v, x, method="dopri5", rtol=1e-7, atol=1e-7, max_steps=2, return_solution=True)
    assert int(res.status) == integrators.MAX_STEPS_REACHED and not bool(res.success)
    assert jnp.all(jnp.isnan(res.logp))
    with pytest.raises(RuntimeError, match="max_steps"):
        integrators.check(res.solution)


# -- bits per dimension ----------------------------------------------------------------------------


def test_nats_to_bpd_formula():
    d = 12
    # A uniform density on [-1, 1]^D, p = 2^-D, spreads 8-bit data over 256 levels: 8 bits/dim.
    np.testing.assert_allclose(likelihood.nats_to_bpd(-d * math.log(2.0), d, bin_width=2 / 256),
                               8.0, rtol=1e-6)
    np.testing.assert_allclose(likelihood.nats_to_bpd(jnp.array([-d * math.log(2.0)]), d), [1.0],
                               rtol=1e-6)


def test_dequantize_maps_levels_into_their_bins():
    k = jnp.arange(256, dtype=jnp.uint8).reshape(4, 8, 8, 1)
    xq = likelihood.dequantize(k, jax.random.key(0))
    assert xq.dtype == jnp.float32 and xq.shape == k.shape
    lo = 2 * k.astype(jnp.float32) / 256 - 1
    assert jnp.all((xq >= lo) & (xq < lo + 2 / 256))
    # Floats in [-1, 1] (x = k / 127.5 - 1) are the same images.
    xf = likelihood.dequantize(k.astype(jnp.float32) / 127.5 - 1, jax.random.key(0))
    np.testing.assert_array_equal(xf, xq)
    with pytest.raises(ValueError, match="levels in"):
        likelihood.dequantize(jnp.array([[0, 256]]), jax.random.key(0))
    with pytest.raises(ValueError, match="off the grid"):  # already dequantized
        likelihood.dequantize(xq, jax.random.key(0))
    with pytest.raises(ValueError, match="num_bits"):
        likelihood.dequantize(k, jax.random.key(0), num_bits=0)


def test_bits_per_dim_matches_hand_computation():
    with jax.enable_x64(True):
        mu, s = jnp.array([[0.1, -0.2, 0.3]]), jnp.array([[0.5, 0.6, 0.4]])
        k = jax.random.randint(jax.random.key(5), (6, 3), 0, 256).astype(jnp.uint8)
        key = jax.random.key(9)
        kw = dict(method="rk4", num_steps=32, dtype=jnp.float64)
        bpd, res = _jit(lambda k: likelihood.bits_per_dim(gauss_flow(mu, s), k, key,
                                                          return_solution=True, **kw))(k)
        u = jax.random.uniform(jax.random.split(key)[0], k.shape, jnp.float64)
        xq = (k + u) / 128 - 1
        hand = -(gauss_logpdf(xq, mu, s) + 3 * math.log(2 / 256)) / (3 * math.log(2))
        assert bpd.shape == (6,) and bool(res.success)
        np.testing.assert_allclose(bpd, hand, atol=1e-5)
        # Diagonal Jacobian: Rademacher Hutchinson is exact; the same key gives the same u.
        hut = _jit(lambda k: likelihood.bits_per_dim(gauss_flow(mu, s), k, key,
                                                     divergence="hutchinson", **kw))(k)
        np.testing.assert_allclose(hut, bpd, rtol=1e-10)


def test_bits_per_dim_on_uniform_data():
    """Uniform 8-bit data has 8 bits/dim of entropy: any flow's bpd is >= 8 (and thus >= 0).

    With k uniform and u ~ U[0, 1), x' is uniform on [-1, 1)^D, so under N(0, scale^2 I) the
    expected bpd is 7 + (1 / (6 scale^2) + log(2 pi scale^2) / 2) / log 2; and by Jensen each
    example's bpd estimates an upper bound on its exact discrete NLL (Gaussian bin masses).
    """
    with jax.enable_x64(True):
        n, d = 2048, 2
        k = jax.random.randint(jax.random.key(11), (n, d), 0, 256)
        bpd_fn = jax.jit(lambda s: likelihood.bits_per_dim(
            gauss_flow(jnp.zeros((1, d)), s), k, jax.random.key(12), method="rk4", num_steps=32,
            dtype=jnp.float64), compiler_options=QUICK_COMPILE)
        for scale in (0.2, 0.6, 2.0):
            bpd = bpd_fn(jnp.full((1, d), scale))
            mean, se = float(jnp.mean(bpd)), float(jnp.std(bpd)) / math.sqrt(n)
            nats = 1 / (6 * scale**2) + 0.5 * math.log(2 * math.pi * scale**2)
            expected = 7 + nats / math.log(2)
            assert abs(mean - expected) < 4 * se, scale
            assert mean > 8 - 3 * se and expected > 8
            kk = np.asarray(k, np.float64)
            mass = norm.cdf(((kk + 1) / 128 - 1) / scale) - norm.cdf((kk / 128 - 1) / scale)
            discrete = -np.sum(np.log2(mass), axis=1) / d
            gap = np.asarray(bpd) - discrete
            assert gap.mean() > -3 * gap.std() / math.sqrt(n), scale
            assert abs(gap.mean()) < 0.01, scale


# -- DDPM's variational bound ----------------------------------------------------------------------


def test_discretized_gaussian_is_a_distribution_over_levels():
    from scipy.stats import norm
    with jax.enable_x64(True):
        levels = jnp.arange(256, dtype=jnp.float64) / 127.5 - 1.0
        loglik = jax.jit(likelihood.discretized_gaussian_log_likelihood,
                         compiler_options=QUICK_COMPILE)
        for mean, log_scale in ((0.1, -2.0), (-0.97, -5.0), (0.999, -6.0), (3.0, -1.0)):
            lp = loglik(levels, jnp.float64(mean), jnp.float64(log_scale))
            np.testing.assert_allclose(jnp.sum(jnp.exp(lp)), 1.0, rtol=1e-10)
            sd, h = math.exp(log_scale), 1 / 255
            lv = np.asarray(levels)
            with np.errstate(divide="ignore"):  # differences of the tail nearer the bin
                want = np.log(np.where(
                    lv > mean, norm.sf(lv - h, mean, sd) - norm.sf(lv + h, mean, sd),
                    norm.cdf(lv + h, mean, sd) - norm.cdf(lv - h, mean, sd)))
            want[0] = norm.logcdf(-1 + h, mean, sd)
            want[-1] = norm.logsf(1 - h, mean, sd)
            ok = np.isfinite(want) & (want > -600)
            np.testing.assert_allclose(np.asarray(lp)[ok], want[ok], rtol=1e-7, atol=1e-9)
            assert np.all(np.isfinite(lp))
    lp32 = likelihood.discretized_gaussian_log_likelihood(jnp.array([1.0, -1.0, 0.0]), 0.0, -9.0)
    assert np.all(np.isfinite(lp32)) and lp32[2] > -1e-6


def _ddpm_model(T, prediction, apply):
    from flowmatch import objectives, sampling
    obj = objectives.DDPM("cosine", T, prediction=prediction)
    return sampling.ModelFn.from_objective(apply, obj), obj


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_vlb_of_a_point_mass_oracle_is_prior_plus_decoder(prediction):
    """With the exact predictor for data = c, every L_i (i >= 1) vanishes; L_T and L_0 are closed
    form: KL(N(a c, 1 - abar) || N(0, 1)) and -log P(bin of c | N(c, posterior var_1))."""
    from scipy.stats import norm
    T = 50
    levels = np.array([0, 100, 200, 255])
    c = jnp.asarray(levels / 127.5 - 1.0, jnp.float32)[None]

    def apply(params, x, t, cond):
        co = obj.schedule.at_steps(obj.schedule.step(t))
        a, b = co.alpha[:, None], co.sigma[:, None]
        return (x - a * c) / b if prediction == "eps" else jnp.broadcast_to(c, x.shape)

    model, obj = _ddpm_model(T, prediction, apply)
    x = jnp.broadcast_to(c, (3, 4))
    out = jax.jit(lambda x, k: likelihood.vlb_bits_per_dim(model, None, x, k),
                  compiler_options=QUICK_COMPILE)(
        x, jax.random.PRNGKey(0))
    assert out.nfe == T and out.terms.shape == (3, T - 1)
    np.testing.assert_allclose(out.kl, 0.0, atol=1e-6 if prediction == "x0" else 1e-3)
    cc = levels / 127.5 - 1.0
    abar = obj.schedule.alphas_cumprod
    prior = 0.5 * (-1 - math.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * cc**2)
    beta1 = 1 - abar[1] / abar[0]
    sd, h = math.sqrt(beta1 * (1 - abar[0]) / (1 - abar[1])), 1 / 255
    dec = -np.log(2 * norm.cdf(h / sd) - 1) * np.ones(4)
    dec[[0, -1]] = -norm.logcdf(h / sd)
    d_ln2 = 4 * math.log(2)
    np.testing.assert_allclose(out.prior, prior.sum() / d_ln2, rtol=1e-5)
    np.testing.assert_allclose(out.decoder, dec.sum() / d_ln2, rtol=1e-4)
    np.testing.assert_allclose(out.total, out.prior + out.decoder + out.kl, rtol=1e-6)


def test_vlb_monte_carlo_subset_is_the_weighted_sum_of_the_same_terms():
    T = 40
    model, _ = _ddpm_model(T, "eps", lambda p, x, t, c: 0.5 * x)  # every term is positive
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 2, 2, 1)) / 127.5 - 1,
                    jnp.float32)
    key = jax.random.PRNGKey(4)
    vlb = jax.jit(lambda x, k, num_terms: likelihood.vlb_bits_per_dim(
        model, None, x, k, variance="fixed_large", num_terms=num_terms), static_argnums=2,
        compiler_options=QUICK_COMPILE)
    full = vlb(x, key, None)
    np.testing.assert_array_equal(full.term_index, np.arange(1, T))
    assert np.all(full.terms > 0)
    np.testing.assert_allclose(full.kl, full.terms.sum(1), rtol=1e-6)
    K = 7
    sub = vlb(x, key, K)
    idx = np.asarray(sub.term_index)
    assert sub.nfe == K + 1 and len(set(idx.tolist())) == K and idx.min() >= 1 and idx.max() < T
    np.testing.assert_allclose(sub.terms, full.terms[:, idx - 1], rtol=1e-5)
    np.testing.assert_allclose(sub.kl, (T - 1) / K * sub.terms.sum(1), rtol=1e-5)
    np.testing.assert_allclose(sub.prior, full.prior, rtol=1e-6)
    np.testing.assert_allclose(sub.decoder, full.decoder, rtol=1e-6)


def test_vlb_errors():
    from flowmatch import objectives, paths, sampling
    model, _ = _ddpm_model(10, "eps", lambda p, x, t, c: x)
    x = jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="num_terms must be None"):
        likelihood.vlb_bits_per_dim(model, None, x, jax.random.PRNGKey(0), num_terms=100)
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        likelihood.vlb_bits_per_dim(model, None, x, jax.random.PRNGKey(0), variance="learned")
    fm = sampling.ModelFn.from_objective(lambda p, x, t, c: x,
                                         objectives.FlowMatching(paths.make_path()))
    with pytest.raises(ValueError, match="needs a DDPM model"):
        likelihood.vlb_bits_per_dim(fm, None, x, jax.random.PRNGKey(0))
