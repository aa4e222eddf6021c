"""Tests for flowmatch.ddpm: schedules against the papers, steps against hand formulas, samplers on
Gaussian data with the exact noise predictor, the loss, the time mapping and the bound."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from flowmatch import ddpm, integrators

MU = np.array([[0.5, -1.0]])   # data N(MU, SD^2) per dimension, [1, D]
SD = np.array([[0.5, 1.5]])


def exact_eps(s, mu=MU, sd=SD):
    """E[eps | x_t] for data N(mu, sd^2) at continuous t: b (x - a mu) / (a^2 sd^2 + b^2), with
    a = sqrt(abar(t)), b = sqrt(1 - abar(t)) from the continuous schedule (= abar_i at t_i)."""
    vp = ddpm.vp_schedule(s)

    def predict(x, t):
        o = vp(t[:, None])
        a, b = o.alpha, o.sigma
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return predict


def standardized_normal(key, shape):
    """N(0, I) draws with exactly zero sample mean and unit sample std per dimension."""
    z = np.asarray(jax.random.normal(key, shape), np.float64)
    return jnp.asarray((z - z.mean(0)) / z.std(0), jnp.float32)


def check_moments(x, mu, sd, *, n_se=4.0, var_rtol=0.05):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    np.testing.assert_allclose(x.mean(0), mu[0], atol=n_se * sd[0].max() / math.sqrt(n))
    np.testing.assert_allclose(x.var(0), sd[0] ** 2, rtol=var_rtol)


# -- schedules -------------------------------------------------------------------------------------


def test_linear_schedule_matches_ho_et_al():
    s = ddpm.make_schedule("linear", num_timesteps=1000)
    f = s.float64
    assert s.num_timesteps == 1000 and s.betas.shape == (1000,) and s.betas.dtype == jnp.float32
    assert f.betas[0] == 1e-4 and f.betas[-1] == 0.02
    np.testing.assert_allclose(np.diff(f.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    np.testing.assert_allclose(f.alphas_cumprod, np.cumprod(1.0 - f.betas), rtol=1e-14)
    np.testing.assert_allclose(f.alphas_cumprod_prev[1:], f.alphas_cumprod[:-1], rtol=0)
    assert f.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_allclose(f.alphas_cumprod[-1], 4.036e-5, rtol=1e-3)  # the usual value
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1"):
        np.testing.assert_allclose(getattr(s, name), getattr(f, name).astype(np.float32), rtol=0)
    # other T: the endpoints scale by 1000 / T (Nichol & Dhariwal); explicit ones are kept
    f500 = ddpm.make_schedule("linear", 500).float64
    np.testing.assert_allclose(f500.betas[[0, -1]], [2e-4, 0.04], rtol=1e-12)
    f50 = ddpm.make_schedule("linear", 50, beta_start=1e-3, beta_end=0.05).float64
    np.testing.assert_allclose(f50.betas[[0, -1]], [1e-3, 0.05], rtol=1e-12)


def test_cosine_schedule_matches_nichol_dhariwal():
    T = 1000
    f = ddpm.make_schedule("cosine", T).float64

    def fbar(tau, s=0.008):
        return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2

    expected = np.array([fbar((i + 1) / T) / fbar(0.0) for i in range(T)])
    capped = f.betas >= 0.999
    assert capped.sum() >= 1 and capped[-1] and f.betas[-1] == 0.999 and np.all(f.betas <= 0.999)
    first_cap = int(np.argmax(capped))
    np.testing.assert_allclose(f.alphas_cumprod[:first_cap], expected[:first_cap], rtol=1e-10)
    prev = np.append(1.0, expected[:-1])
    np.testing.assert_allclose(f.betas[~capped], (1 - expected / prev)[~capped], rtol=1e-9)
    np.testing.assert_allclose(f.alphas_cumprod, np.cumprod(1 - f.betas), rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_is_the_gaussian_conditional(name):
    """Eq. 7 coefficients against q(x_{i-1} | x_i, x0) derived by conditioning, by hand.

    x_{i-1} = a' x0 + b' e1, x_i = sqrt(alpha_i) x_{i-1} + sqrt(beta_i) e2, so
    E[x_{i-1} | x_i, x0] = a' x0 + sqrt(alpha_i) b'^2 / (1 - abar_i) (x_i - sqrt(abar_i) x0),
    Var = b'^2 - alpha_i b'^4 / (1 - abar_i).
    """
    T = 200
    s = ddpm.make_schedule(name, T)
    f = s.float64
    betas = [float(b) for b in f.betas]
    for i in (0, 1, 7, 100, T - 1):
        abar = math.prod(1 - b for b in betas[: i + 1])
        abar_prev = math.prod(1 - b for b in betas[:i])
        alpha, bp2 = 1 - betas[i], 1 - abar_prev
        k = math.sqrt(alpha) * bp2 / (1 - abar)
        coef1 = math.sqrt(abar_prev) - k * math.sqrt(abar)  # multiplies x0
        var = bp2 - alpha * bp2**2 / (1 - abar)
        np.testing.assert_allclose(f.posterior_mean_coef1[i], coef1, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(f.posterior_mean_coef2[i], k, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(f.posterior_variance[i], var, rtol=1e-8, atol=1e-15)
    assert f.posterior_variance[0] == 0.0
    np.testing.assert_allclose(f.posterior_log_variance_clipped,
                               np.log(np.append(f.posterior_variance[1], f.posterior_variance[1:])))
    # and through the public function, per example
    x0 = jnp.array([[0.3], [-0.7]])
    xi = jnp.array([[1.1], [0.2]])
    i = jnp.array([7, 0])
    mean, var, log_var = ddpm.posterior_mean_variance(s, x0, xi, i)
    np.testing.assert_allclose(mean[:, 0], [f.posterior_mean_coef1[7] * 0.3
                                            + f.posterior_mean_coef2[7] * 1.1, -0.7], rtol=1e-6)
    assert var.shape == (2, 1) and var[1, 0] == 0.0 and np.isfinite(log_var).all()


def test_respace_keeps_marginals():
    s = ddpm.make_schedule("cosine", 100)
    f = s.float64
    same = ddpm.respace(s, np.arange(100)).float64
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef2"):
        np.testing.assert_allclose(getattr(same, name), getattr(f, name), rtol=1e-12, atol=1e-15)
    ts = ddpm.respaced_timesteps(100, 7)
    r = ddpm.respace(s, ts).float64
    np.testing.assert_allclose(r.alphas_cumprod, f.alphas_cumprod[ts], rtol=1e-10)
    prev = np.append(1.0, f.alphas_cumprod[ts][:-1])
    np.testing.assert_allclose(r.betas, 1 - f.alphas_cumprod[ts] / prev, rtol=1e-12)


# -- time mapping and timestep subsequences --------------------------------------------------------


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_continuous_discrete_round_trip(T):
    i = np.arange(T)
    t_np = ddpm.continuous_time(i, T)
    np.testing.assert_allclose(t_np[[0, -1]], [1 - 1 / T, 0.0], atol=1e-15)
    assert np.all(np.diff(t_np) < 0) and t_np.min() >= 0 and t_np.max() < 1
    t32 = ddpm.continuous_time(jnp.asarray(i), T)
    assert t32.dtype == jnp.float32
    np.testing.assert_array_equal(ddpm.discrete_index(t32, T), i)
    np.testing.assert_array_equal(ddpm.discrete_index(jnp.asarray(t_np, jnp.float32), T), i)
    np.testing.assert_array_equal(ddpm.discrete_index(jnp.array([1.0, 0.0, 1.5, -0.2]), T),
                                  [0, T - 1, 0, T - 1])
    with jax.enable_x64(True):
        t64 = ddpm.continuous_time(jnp.asarray(i), T)
        assert t64.dtype == jnp.float64
        np.testing.assert_array_equal(ddpm.discrete_index(t64, T), i)


def test_timesteps_lin_et_al_table_2():
    # Lin et al. 2024, Table 2 (T = 1000, 10 steps), there 1-based: linspace 1, 112, ..., 1000;
    # leading 1, 101, ..., 901; trailing 100, 200, ..., 1000.
    np.testing.assert_array_equal(ddpm.respaced_timesteps(1000, 10, spacing="linspace"),
                                  np.round(np.linspace(1, 1000, 10)) - 1)
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 10, spacing="leading"),
                                  np.arange(1, 1000, 100) - 1)
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 10, spacing="trailing"),
                                  np.arange(100, 1001, 100) - 1)
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 3, spacing="trailing"),
                                  [332, 666, 999])
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 50), np.arange(0, 1000, 20))
    for skip in ddpm.SKIPS:
        for spacing in ddpm.SPACINGS:
            np.testing.assert_array_equal(ddpm.respaced_timesteps(37, 37, skip, spacing),
                                          np.arange(37))
            for K in (1, 2, 5, 30):
                ts = ddpm.respaced_timesteps(37, K, skip, spacing)
                assert len(ts) == K and ts[0] >= 0 and ts[-1] <= 36
                assert np.all(np.diff(ts) > 0)
                if spacing == "leading":
                    assert ts[0] == 0
                if spacing == "trailing" or (spacing == "linspace" and K > 1):
                    assert ts[-1] == 36
    quad = ddpm.ddim_timesteps(1000, 10, skip="quadratic")
    np.testing.assert_array_equal(quad, np.floor((np.arange(10) / 10) ** 2 * 1000 + 1e-9))


# -- conversions and single steps ------------------------------------------------------------------


def test_prediction_conversions_round_trip():
    s = ddpm.make_schedule("cosine", 1000)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = jax.random.normal(k1, (6, 4, 4, 3))
    eps = jax.random.normal(k2, x0.shape)
    i = jnp.array([0, 1, 10, 500, 900, 998])
    x_i = ddpm.q_sample(s, x0, i, eps)
    v = ddpm.v_target(s, x0, i, eps)
    close = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ddpm.predict_x0_from_v(s, x_i, i, v), x0, **close)
    np.testing.assert_allclose(ddpm.predict_eps_from_v(s, x_i, i, v), eps, **close)
    np.testing.assert_allclose(ddpm.predict_x0_from_eps(s, x_i, i, eps), x0, rtol=1e-3,
                               atol=1e-3)  # 1 / sqrt(abar) at i = 998 amplifies rounding
    np.testing.assert_allclose(ddpm.predict_eps_from_x0(s, x_i, i, x0), eps, rtol=1e-3, atol=1e-3)
    for prediction, pred in (("eps", eps), ("x0", x0), ("v", v)):
        got_x0, got_eps = ddpm.to_x0_eps(s, x_i, i, pred, prediction)
        np.testing.assert_allclose(got_x0, x0, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got_eps, eps, rtol=1e-3, atol=1e-3)
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 by hand
    f = s.float64
    np.testing.assert_allclose(
        v[3], math.sqrt(f.alphas_cumprod[500]) * eps[3]
        - math.sqrt(1 - f.alphas_cumprod[500]) * x0[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_step_matches_ho_algorithm_2(variance):
    """x_{i-1} = (x_i - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i) + sigma_i z; no z at i = 0"""
    s = ddpm.make_schedule("linear", 1000)
    f = s.float64
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    i = jnp.array([0, 1, 2, 250, 999])
    x = jax.random.normal(k1, (5, 3))
    eps = jax.random.normal(k2, (5, 3))
    z = jax.random.normal(k3, (5, 3))
    got = jax.jit(lambda x, eps, z: ddpm.p_sample_step(s, x, i, eps, z, variance=variance))(
        x, eps, z)
    ii = np.asarray(i)
    b, a, abar = f.betas[ii, None], f.alphas[ii, None], f.alphas_cumprod[ii, None]
    sig2 = f.posterior_variance[ii, None] if variance == "fixed_small" else b
    sig = np.where(ii[:, None] == 0, 0.0, np.sqrt(sig2))
    want = (np.asarray(x, np.float64) - b / np.sqrt(1 - abar) * np.asarray(eps)) / np.sqrt(a)
    want = want + sig * np.asarray(z)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[0], ddpm.predict_x0_from_eps(s, x, i, eps)[0])


def test_ddim_step_matches_song_et_al_eq_12():
    s = ddpm.make_schedule("cosine", 1000)
    f = s.float64
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    x = jax.random.normal(k1, (4, 2))
    eps = jax.random.normal(k2, (4, 2))
    z = jax.random.normal(k3, (4, 2))
    i = jnp.array([999, 500, 20, 3])
    i_prev = jnp.array([979, 480, 0, -1])
    abar = f.alphas_cumprod[np.asarray(i), None]
    abar_p = np.append(f.alphas_cumprod, 1.0)[np.asarray(i_prev), None]  # index -1 -> abar = 1
    x64, e64, z64 = (np.asarray(a, np.float64) for a in (x, eps, z))
    x0 = (x64 - np.sqrt(1 - abar) * e64) / np.sqrt(abar)
    for eta in (0.0, 0.7):
        sig = eta * np.sqrt((1 - abar_p) / (1 - abar)) * np.sqrt(1 - abar / abar_p)
        want = np.sqrt(abar_p) * x0 + np.sqrt(1 - abar_p - sig**2) * e64 + sig * z64
        got = ddpm.ddim_step(s, x, i, i_prev, eps, z if eta else None, eta=eta)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # eta = 1 over consecutive steps is the ancestral step with the posterior variance
    j = jnp.array([900, 400, 5, 1])
    np.testing.assert_allclose(ddpm.ddim_step(s, x, j, j - 1, eps, z, eta=1.0),
                               ddpm.p_sample_step(s, x, j, eps, z), rtol=2e-4, atol=2e-4)


def test_clip_denoised_clips_the_x0_prediction():
    s = ddpm.make_schedule("linear", 100)
    x = jnp.full((2, 3), 5.0)
    i = jnp.array([0, 50])
    r = ddpm.p_mean_variance(s, x, i, jnp.zeros_like(x), clip_denoised=True)
    np.testing.assert_array_equal(r.x0, 1.0)
    np.testing.assert_array_equal(r.mean[0], 1.0)  # the last step returns the clipped x0
    assert float(ddpm.p_mean_variance(s, x, i, jnp.zeros_like(x)).x0.max()) > 4.0


# -- the continuous VP path ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_vp_schedule_interpolates_the_discrete_one(name):
    T = 1000
    s = ddpm.make_schedule(name, T)
    vp = ddpm.vp_schedule(s)
    vp_jit = jax.jit(vp)
    with jax.enable_x64(True):
        t = jnp.asarray(ddpm.continuous_time(np.arange(T), T))
        o = vp_jit(t)
        np.testing.assert_allclose(o.alpha**2, s.float64.alphas_cumprod, rtol=1e-11)
        np.testing.assert_allclose(o.sigma**2, 1 - s.float64.alphas_cumprod, rtol=1e-11)
        one = vp(jnp.float64(1.0))
        np.testing.assert_allclose([one.alpha, one.sigma, one.d_alpha], [1.0, 0.0, 0.0], atol=0)
        assert np.isfinite(one.d_sigma)
        fine = jnp.linspace(0.0, 1.0, 20001)
        o = vp_jit(fine)
        np.testing.assert_allclose(o.alpha**2 + o.sigma**2, 1.0, atol=1e-14)
        assert np.all(np.diff(o.alpha) >= 0) and np.all(np.diff(o.sigma) <= 0)
        assert np.all(np.isfinite(np.stack(o)))
        t0 = jnp.array([0.0, 0.0004, 0.2371, 0.5, 0.9, 0.9983, 0.99995])
        _, tangent = jax.jit(lambda u: jax.jvp(lambda u: tuple(vp(u)[:2]), (u,),
                                               (jnp.ones_like(u),)))(t0)
        oo = vp_jit(t0)
        np.testing.assert_allclose(tangent[0], oo.d_alpha, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(tangent[1], oo.d_sigma, rtol=1e-9, atol=1e-12)
    o32 = vp(jnp.float32(0.0))
    np.testing.assert_allclose(o32.alpha, math.sqrt(s.float64.alphas_cumprod[-1]), rtol=1e-5)


@pytest.mark.parametrize("prediction", ddpm.PREDICTIONS)
def test_pf_ode_velocity_agrees_across_predictions(prediction):
    """Every parametrisation of the same (x0, eps) gives d_alpha x0 + d_sigma eps."""
    obj = ddpm.DDPM("cosine", 200, prediction=prediction)
    vp = obj.vp
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    x0 = jax.random.normal(k1, (5, 2, 2, 1))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0.0, 0.1, 0.5, 0.93, 0.995])
    o = vp(t[:, None, None, None])
    x = o.alpha * x0 + o.sigma * eps
    pred = {"eps": eps, "x0": x0, "v": o.alpha * eps - o.sigma * x0}[prediction]
    np.testing.assert_allclose(obj.velocity(pred, x, t), o.d_alpha * x0 + o.d_sigma * eps,
                               rtol=2e-4, atol=2e-4)
    if prediction != "x0":
        assert np.isfinite(obj.velocity(pred, x, jnp.ones((5,)))).all()


# -- samplers on Gaussian data with the exact predictor --------------------------------------------


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_1000_steps_recovers_gaussian(variance):
    s = ddpm.make_schedule("linear", 1000)
    x_T = jax.random.normal(jax.random.PRNGKey(10), (10000, 2))
    out = jax.jit(lambda k, x: ddpm.ancestral_sample(exact_eps(s), s, k, x, variance=variance))(
        jax.random.PRNGKey(11), x_T)
    assert int(out.nfe) == 1000 and bool(out.success)
    check_moments(out.x, MU, SD)


def gaussian_chain(steps, mu, sd):
    """Exact output mean / var of a chain of affine-Gaussian steps x' = P x + Q + n z, started
    from N(0, 1), where each step is given by (P(mu, sd), Q(mu, sd), n^2)."""
    m, v = np.zeros_like(mu), np.ones_like(mu)
    for P, Q, n2 in steps:
        m, v = P * m + Q, P**2 * v + n2
    return m, v


def test_respaced_ancestral_matches_its_exact_output_distribution():
    """100 respaced steps: the sample moments match the chain's exact moments (computed here from
    Ho et al. Algorithm 2 on the respaced betas), which are near, not at, the data's."""
    s = ddpm.make_schedule("cosine", 1000)
    ts = ddpm.respaced_timesteps(1000, 100)
    abar = s.float64.alphas_cumprod[ts]
    abar_p = np.append(1.0, abar[:-1])
    steps = []
    for k in range(len(ts) - 1, -1, -1):
        A, Ap = abar[k], abar_p[k]
        beta, a, b = 1 - A / Ap, math.sqrt(A), math.sqrt(1 - A)
        g = b / (A * SD**2 + 1 - A)  # eps = g (x - a mu)
        c = beta / b / math.sqrt(1 - beta)
        steps.append((1 / math.sqrt(1 - beta) - c * g, c * g * a * MU,
                      0.0 if k == 0 else beta * (1 - Ap) / (1 - A)))
    m, v = gaussian_chain(steps, MU, SD)
    np.testing.assert_allclose(m, MU, atol=0.02)
    np.testing.assert_allclose(v, SD**2, rtol=0.15)
    x_T = jax.random.normal(jax.random.PRNGKey(12), (10000, 2))
    out = jax.jit(lambda k, x: ddpm.ancestral_sample(exact_eps(s), s, k, x, num_steps=100))(
        jax.random.PRNGKey(13), x_T)
    assert int(out.nfe) == 100
    check_moments(out.x, m, np.sqrt(v), var_rtol=0.04)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_50_steps_is_the_exact_affine_map_and_recovers_gaussian(spacing):
    """For Gaussian data DDIM (eta = 0) is affine in x_T: compare with the map composed by hand
    from eq. 12; 50 steps are within a few percent of the data's std (first-order scheme)."""
    s = ddpm.make_schedule("linear", 1000)
    x_T = standardized_normal(jax.random.PRNGKey(14), (4000, 2))
    out = jax.jit(lambda x: ddpm.ddim_sample(exact_eps(s), s, None, x, num_steps=50,
                                             spacing=spacing))(x_T)
    assert int(out.nfe) == 50
    ts = ddpm.ddim_timesteps(1000, 50, spacing=spacing)
    abar = s.float64.alphas_cumprod[ts]
    P, Q = np.ones_like(MU), np.zeros_like(MU)
    for A, Ap in zip(abar[::-1], np.append(abar[::-1][1:], 1.0)):
        a, b = math.sqrt(A), math.sqrt(1 - A)
        g = b / (A * SD**2 + 1 - A)
        p = math.sqrt(Ap) * (1 - b * g) / a + math.sqrt(1 - Ap) * g
        q = (math.sqrt(Ap) * b * g - math.sqrt(1 - Ap) * g * a) * MU
        P, Q = p * P, p * Q + q
    np.testing.assert_allclose(out.x, P * np.asarray(x_T) + Q, rtol=1e-4, atol=1e-4)
    x = np.asarray(out.x)
    np.testing.assert_allclose(x.mean(0), MU[0], atol=0.02)
    np.testing.assert_allclose(x.std(0), SD[0], rtol=0.07)


def test_ddim_eta_1_recovers_gaussian():
    s = ddpm.make_schedule("linear", 1000)
    x_T = jax.random.normal(jax.random.PRNGKey(15), (10000, 2))
    out = jax.jit(lambda k, x: ddpm.ddim_sample(exact_eps(s), s, k, x, num_steps=200, eta=1.0,
                                                spacing="trailing"))(jax.random.PRNGKey(16), x_T)
    check_moments(out.x, MU, SD, var_rtol=0.08)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_pf_ode_dopri5_recovers_gaussian(name):
    """velocity_fn + integrators.solve from t = 0 to t = 1: the flow map of Gaussian data is
    affine, so standardized x_T lands on the data's mean and std up to the solver tolerance (and
    the prior mismatch N(0, I) vs q(x_{T-1}), sqrt(abar_{T-1}) |mu| <= 0.01)."""
    s = ddpm.make_schedule(name, 1000)
    x_T = standardized_normal(jax.random.PRNGKey(17), (2000, 2))
    v = ddpm.velocity_fn(exact_eps(s), s)
    sol = jax.jit(lambda x: integrators.solve(v, x, method="dopri5", rtol=1e-5, atol=1e-5,
                                              t0=0.0, t1=1.0))(x_T)
    integrators.check(sol)
    x = np.asarray(sol.x, np.float64)
    np.testing.assert_allclose(x.mean(0), MU[0], atol=0.012)
    np.testing.assert_allclose(x.std(0), SD[0], rtol=2e-3)
    assert int(sol.nfe) < 200


@pytest.mark.parametrize("prediction", ddpm.PREDICTIONS)
def test_pf_ode_sample_rk4_100_steps(prediction):
    """pf_ode_sample: rk4, 100 steps to continuous_time(0), then one denoising call; the exact
    predictor in each parametrisation."""
    s = ddpm.make_schedule("linear", 1000)
    vp = ddpm.vp_schedule(s)
    eps_fn = exact_eps(s)

    def predict(x, t):
        eps = eps_fn(x, t)
        o = vp(t[:, None])
        x0 = (x - o.sigma * eps) / o.alpha
        return {"eps": eps, "x0": x0, "v": o.alpha * eps - o.sigma * x0}[prediction]

    x_T = standardized_normal(jax.random.PRNGKey(18), (2000, 2))
    out = jax.jit(lambda x: ddpm.pf_ode_sample(predict, s, x, prediction=prediction,
                                               method="rk4", num_steps=100))(x_T)
    assert int(out.nfe) == 401 and bool(out.success)
    x = np.asarray(out.x, np.float64)
    np.testing.assert_allclose(x.mean(0), MU[0], atol=0.012)
    np.testing.assert_allclose(x.std(0), SD[0], rtol=3e-3)


# -- the training objective ------------------------------------------------------------------------


def point_mass_predictor(obj, c):
    """The exact predictor when all data equal c: x0 = c, eps = (x_i - a c) / b at i(t)."""
    s = obj.schedule

    def predict(x, t):
        i = ddpm.discrete_index(t, s.num_timesteps)
        a = s.sqrt_alphas_cumprod[i][:, None]
        b = s.sqrt_one_minus_alphas_cumprod[i][:, None]
        eps = (x - a * c) / b
        return {"eps": eps, "x0": jnp.broadcast_to(c, x.shape), "v": a * eps - b * c}[
            obj.prediction]

    return predict


@pytest.mark.parametrize("prediction", ddpm.PREDICTIONS)
def test_loss_is_zero_at_the_exact_predictor_of_a_point_mass(prediction):
    obj = ddpm.DDPM("linear", 1000, prediction=prediction)
    c = jnp.array([[0.25, -0.5, 0.75]])
    x1 = jnp.broadcast_to(c, (512, 3))
    loss, aux = jax.jit(lambda x, k: obj.loss(point_mass_predictor(obj, c), x, k))(
        x1, jax.random.PRNGKey(0))
    assert aux["loss"] == loss
    assert float(loss) < 1e-8
    # any other predictor is penalised
    bad, _ = jax.jit(lambda x, k: obj.loss(
        lambda x, t: point_mass_predictor(obj, c)(x, t) + 0.1, x, k))(x1, jax.random.PRNGKey(0))
    np.testing.assert_allclose(bad, 0.01, rtol=1e-3)


def test_loss_is_the_documented_monte_carlo_average():
    obj = ddpm.DDPM("cosine", 10, prediction="x0")
    key = jax.random.PRNGKey(1)
    x1 = jax.random.normal(jax.random.PRNGKey(2), (64, 4, 4, 1))
    zero, _ = jax.jit(obj.loss, static_argnums=0)(lambda x, t: jnp.zeros_like(x), x1, key)
    np.testing.assert_allclose(zero, jnp.mean(x1**2), rtol=1e-6)
    # the network sees t = 1 - (i + 1) / T with i uniform on {0..T-1}: E[t^2] over that grid
    n = 40000
    got, _ = jax.jit(obj.loss, static_argnums=0)(
        lambda x, t: jnp.broadcast_to(t[:, None], x.shape), jnp.zeros((n, 1)), key)
    grid = ddpm.continuous_time(np.arange(10), 10)
    np.testing.assert_allclose(got, np.mean(grid**2), atol=4 * np.std(grid**2) / math.sqrt(n))
    # gradients flow to the network
    eps_obj = ddpm.DDPM("cosine", 10)
    g = jax.jit(jax.grad(lambda w: eps_obj.loss(lambda x, t: w * x, jnp.ones((64, 1)), key)[0]))(
        0.0)
    assert np.isfinite(g) and g != 0.0


def test_objective_is_hashable_and_converts_predictions():
    a, b = ddpm.DDPM("cosine", 100, "v"), ddpm.DDPM("cosine", 100, "v")
    assert a == b and hash(a) == hash(b) and a != ddpm.DDPM("cosine", 100, "eps")
    s = a.schedule
    x0 = jnp.ones((3, 2))
    eps = -jnp.ones((3, 2))
    i = jnp.array([0, 50, 99])
    x_i = ddpm.q_sample(s, x0, i, eps)
    got_x0, got_eps = a.to_x0_eps(ddpm.v_target(s, x0, i, eps), x_i, i)
    np.testing.assert_allclose(got_x0, x0, rtol=1e-5)
    np.testing.assert_allclose(got_eps, eps, rtol=1e-5)
    # the schedule is a pytree: it can be a jit argument
    np.testing.assert_allclose(jax.jit(ddpm.q_sample)(s, x0, i, eps), x_i)


# -- the variational bound -------------------------------------------------------------------------


def test_discretized_gaussian_is_a_distribution_over_levels():
    with jax.enable_x64(True):
        levels = jnp.arange(256, dtype=jnp.float64) / 127.5 - 1.0
        loglik = jax.jit(ddpm.discretized_gaussian_log_likelihood)
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
    lp32 = ddpm.discretized_gaussian_log_likelihood(jnp.array([1.0, -1.0, 0.0]), 0.0, -9.0)
    assert np.all(np.isfinite(lp32)) and lp32[2] > -1e-6


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_vlb_of_a_point_mass_oracle_is_prior_plus_decoder(prediction):
    """With the exact predictor for data = c, every L_i (i >= 1) vanishes; L_T and L_0 are closed
    form: KL(N(a c, 1 - abar) || N(0, 1)) and -log P(bin of c | N(c, beta~_1))."""
    T = 50
    obj = ddpm.DDPM("cosine", T, prediction=prediction)
    s, f = obj.schedule, obj.schedule.float64
    levels = np.array([0, 100, 200, 255])
    c = jnp.asarray(levels / 127.5 - 1.0, jnp.float32)[None]
    x = jnp.broadcast_to(c, (3, 4))
    out = jax.jit(lambda x, k: ddpm.vlb_bits_per_dim(
        point_mass_predictor(obj, c), s, x, k, prediction=prediction))(x, jax.random.PRNGKey(0))
    assert out.nfe == T and out.terms.shape == (3, T - 1)
    np.testing.assert_allclose(out.kl, 0.0, atol=1e-6 if prediction == "x0" else 1e-3)
    cc = levels / 127.5 - 1.0
    abar = f.alphas_cumprod[-1]
    prior = 0.5 * (-1 - math.log(1 - abar) + (1 - abar) + abar * cc**2)
    sd, h = math.sqrt(f.posterior_variance[1]), 1 / 255
    dec = -np.log(2 * norm.cdf(h / sd) - 1) * np.ones(4)
    dec[[0, -1]] = -norm.logcdf(h / sd)
    d_ln2 = 4 * math.log(2)
    np.testing.assert_allclose(out.prior, prior.sum() / d_ln2, rtol=1e-5)
    np.testing.assert_allclose(out.decoder, dec.sum() / d_ln2, rtol=1e-4)
    np.testing.assert_allclose(out.total, out.prior + out.decoder + out.kl, rtol=1e-6)


def test_vlb_monte_carlo_subset_is_the_weighted_sum_of_the_same_terms():
    T = 40
    s = ddpm.make_schedule("cosine", T)
    predict = lambda x, t: 0.5 * x  # a crude model: every term is positive
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 2, 2, 1)) / 127.5 - 1,
                    jnp.float32)
    key = jax.random.PRNGKey(4)
    vlb = jax.jit(lambda x, k, num_terms: ddpm.vlb_bits_per_dim(
        predict, s, x, k, variance="fixed_large", num_terms=num_terms), static_argnums=2)
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


# -- errors ----------------------------------------------------------------------------------------


def test_clear_errors():
    s = ddpm.make_schedule("linear", 100)
    x = jnp.zeros((2, 1))
    f = lambda x, t: x
    cases = [
        (lambda: ddpm.make_schedule("quadratic", 100), "choose one of: linear, cosine"),
        (lambda: ddpm.make_schedule("linear", 1), "num_timesteps must be an integer >= 2"),
        (lambda: ddpm.make_schedule("linear", 10), "use T >= 21"),
        (lambda: ddpm.make_schedule("cosine", 100, beta_end=0.1),
         "accepts: ['offset', 'max_beta']"),
        (lambda: ddpm.respaced_timesteps(100, 101), "num_steps must be an integer in [1, T=100]"),
        (lambda: ddpm.respaced_timesteps(100, 0), "num_steps must be an integer in [1, T=100]"),
        (lambda: ddpm.ddim_timesteps(100, 10, skip="cubic"), "choose one of: uniform, quadratic"),
        (lambda: ddpm.ddim_timesteps(100, 10, spacing="middle"), "leading, trailing"),
        (lambda: ddpm.ancestral_sample(f, s, jax.random.PRNGKey(0), x, num_steps=200),
         "[1, T=100]"),
        (lambda: ddpm.ancestral_sample(f, s, jax.random.PRNGKey(0), x, variance="learned"),
         "choose one of: fixed_small, fixed_large"),
        (lambda: ddpm.ddim_sample(f, s, None, x, num_steps=10, eta=0.5), "pass a key"),
        (lambda: ddpm.ddim_sample(f, s, None, x, num_steps=10, eta=-1.0), "eta must be"),
        (lambda: ddpm.DDPM(prediction="velocity"), "choose one of: eps, x0, v"),
        (lambda: ddpm.DDPM(beta_schedule="sigmoid"), "objective.beta_schedule"),
        (lambda: ddpm.respace(s, [3, 3, 5]), "strictly increasing"),
        (lambda: ddpm.pf_ode_sample(f, s, x, method="dopri5"), "needs rtol and atol"),
        (lambda: ddpm.vlb_bits_per_dim(f, s, x, jax.random.PRNGKey(0), num_terms=100),
         "num_terms must be None"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=None) as err:
            fn()
        assert msg in str(err.value), (msg, str(err.value))


# -- end to end ------------------------------------------------------------------------------------


def test_smoke_train_and_sample_an_mlp():
    """DDPM.loss trains a small MLP on 2-D Gaussian data; every sampler, and the project's ODE
    sampler (sampling.make_sampler through DDPM.velocity), runs it."""
    import optax

    from flowmatch import models, sampling

    obj = ddpm.DDPM("linear", 100)
    s = obj.schedule
    model = models.build_model("mlp", hidden_sizes=(64, 64), time_embed_dim=32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))[
        "params"]
    tx = optax.adam(3e-3)

    def step(carry, key):
        params, opt = carry
        k_data, k_loss = jax.random.split(key)
        x1 = MU + SD * jax.random.normal(k_data, (256, 2))
        loss, grads = jax.value_and_grad(lambda p: obj.loss(
            lambda x, t: model.apply({"params": p}, x, t), x1, k_loss)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), loss

    keys = jax.random.split(jax.random.PRNGKey(1), 600)
    (params, _), losses = jax.jit(lambda c, k: jax.lax.scan(step, c, k))(
        (params, tx.init(params)), keys)
    assert float(losses[-100:].mean()) < 0.8 * float(losses[:20].mean())

    predict = lambda x, t: model.apply({"params": params}, x, t)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (2000, 2))
    outs = jax.jit(lambda k, x: (
        ddpm.ancestral_sample(predict, s, k, x),
        ddpm.ddim_sample(predict, s, None, x, num_steps=20, spacing="trailing"),
        ddpm.pf_ode_sample(predict, s, x, method="rk4", num_steps=20)))(
            jax.random.PRNGKey(3), x_T)
    apply_fn = lambda p, x, t, cond: model.apply({"params": p}, x, t)
    sample = sampling.make_sampler(apply_fn, obj, (2,), method="heun", num_steps=20)
    x_fm, nfe, ok = sample(params, jax.random.PRNGKey(4), 2000)
    assert [int(o.nfe) for o in outs] + [int(nfe)] == [100, 20, 81, 40] and bool(ok)
    for x in [o.x for o in outs] + [x_fm]:
        x = np.asarray(x)
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x.mean(0), MU[0], atol=0.3)
