"""DDPM's ancestral and DDIM samplers on the path: against Ho et al.'s Algorithm 2 and Song et
al.'s eq. 12 by hand, and on Gaussian data with the exact model (known output distributions)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import objectives, paths, rng, sampling, timegrids
from gaussian_oracle import MU, SD, check_moments, exact_apply, standardized_normal


def ddpm_model(name="linear", T=1000, prediction="eps", apply=None):
    obj = objectives.DDPM(name, T, prediction=prediction)
    apply = apply or exact_apply(obj.path, obj.parametrisation)
    return sampling.ModelFn.from_objective(apply, obj), obj


def test_ancestral_chain_is_ho_et_al_algorithm_2():
    """K respaced steps with a fixed noise predictor, step by step in float64 from the respaced
    betas: x <- (x - beta / sqrt(1 - abar) eps) / sqrt(1 - beta) + sigma z, no z at the last."""
    T, K = 1000, 6
    net = lambda params, x, t, cond: jnp.sin(3 * x) * 0.5 + t[:, None]  # noqa: E731
    model, obj = ddpm_model("linear", T, "eps", apply=net)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    key = jax.random.PRNGKey(1)
    for variance in ("fixed_small", "fixed_large"):
        out = jax.jit(sampling.make_sampler(model, "ancestral", num_steps=K, variance=variance))(
            None, x_T, key)
        ts = timegrids.discrete_steps(T, K)
        abar = obj.schedule.alphas_cumprod[ts]
        prev = np.append(1.0, abar[:-1])
        x = np.asarray(x_T, np.float64)
        for k in range(K - 1, -1, -1):
            t = obj.schedule.time(ts[k])
            eps = np.asarray(net(None, jnp.asarray(x, jnp.float32), jnp.full((5,), t, jnp.float32),
                                 None), np.float64)
            beta = 1 - abar[k] / prev[k]
            x = (x - beta / math.sqrt(1 - abar[k]) * eps) / math.sqrt(1 - beta)
            var = beta * (1 - prev[k]) / (1 - abar[k]) if variance == "fixed_small" else beta
            if k > 0:
                z = np.asarray(jax.random.normal(jax.random.fold_in(key, k), x.shape), np.float64)
                x = x + math.sqrt(var) * z
        assert int(out.nfe) == K
        np.testing.assert_allclose(out.x, x, rtol=2e-4, atol=2e-4)


def test_ddim_chain_is_song_et_al_eq_12():
    T, K = 1000, 5
    net = lambda params, x, t, cond: jnp.cos(2 * x) * 0.3 - t[:, None]  # noqa: E731
    model, obj = ddpm_model("cosine", T, "eps", apply=net)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    key = jax.random.PRNGKey(3)
    ts = timegrids.discrete_steps(T, K, spacing="leading")
    abar = obj.schedule.alphas_cumprod[ts][::-1]
    abar_p = np.append(abar[1:], 1.0)
    for eta in (0.0, 0.7):
        out = jax.jit(sampling.make_sampler(model, "ddim", num_steps=K, eta=eta))(None, x_T, key)
        x = np.asarray(x_T, np.float64)
        for j, (A, Ap) in enumerate(zip(abar, abar_p)):
            t = obj.schedule.time(ts[::-1][j])
            e = np.asarray(net(None, jnp.asarray(x, jnp.float32), jnp.full((4,), t, jnp.float32),
                               None), np.float64)
            x0 = (x - math.sqrt(1 - A) * e) / math.sqrt(A)
            sig = eta * math.sqrt((1 - Ap) / (1 - A) * (1 - A / Ap))
            x = math.sqrt(Ap) * x0 + math.sqrt(max(1 - Ap - sig**2, 0.0)) * e
            if eta:
                k = K - 1 - j
                x = x + sig * np.asarray(jax.random.normal(jax.random.fold_in(key, k), x.shape))
        np.testing.assert_allclose(out.x, x, rtol=5e-4, atol=5e-4)


def test_clip_denoised_clips_the_data_estimate():
    model, _ = ddpm_model("linear", 100, "eps",
                          apply=lambda p, x, t, c: jnp.zeros_like(x))  # the data estimate is x/a
    x = jnp.full((2, 3), 5.0)
    clipped = sampling.make_sampler(model, "ddim", num_steps=1, clip_denoised=True)(None, x, None)
    np.testing.assert_array_equal(clipped.x, 1.0)
    free = sampling.make_sampler(model, "ddim", num_steps=1)(None, x, None)
    assert float(free.x.max()) > 4.0


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_1000_steps_recovers_gaussian(variance):
    model, _ = ddpm_model("linear", 1000)
    x_T = jax.random.normal(jax.random.PRNGKey(10), (10000, 2))
    out = jax.jit(sampling.make_sampler(model, "ancestral", variance=variance))(
        None, x_T, jax.random.PRNGKey(11))
    assert int(out.nfe) == 1000 and bool(out.success)
    check_moments(out.x, MU, SD)


def test_respaced_ancestral_matches_its_exact_output_distribution():
    """100 respaced steps of the exact model: the chain is affine-Gaussian, so its output moments
    are known in closed form (near, not at, the data's); the samples match them."""
    model, obj = ddpm_model("cosine", 1000)
    ts = timegrids.discrete_steps(1000, 100)
    abar = obj.schedule.alphas_cumprod[ts]
    abar_p = np.append(1.0, abar[:-1])
    m, v = np.zeros_like(MU), np.ones_like(MU)
    for k in range(len(ts) - 1, -1, -1):
        A, Ap = abar[k], abar_p[k]
        beta, a, b = 1 - A / Ap, math.sqrt(A), math.sqrt(1 - A)
        g = b / (A * SD**2 + 1 - A)  # eps = g (x - a mu)
        c = beta / b / math.sqrt(1 - beta)
        P, Q, n2 = 1 / math.sqrt(1 - beta) - c * g, c * g * a * MU, (
            0.0 if k == 0 else beta * (1 - Ap) / (1 - A))
        m, v = P * m + Q, P**2 * v + n2
    np.testing.assert_allclose(m, MU, atol=0.02)
    x_T = jax.random.normal(jax.random.PRNGKey(12), (10000, 2))
    out = jax.jit(sampling.make_sampler(model, "ancestral", num_steps=100))(
        None, x_T, jax.random.PRNGKey(13))
    assert int(out.nfe) == 100
    check_moments(out.x, m, np.sqrt(v), var_rtol=0.04)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_50_steps_is_the_exact_affine_map(spacing):
    """For Gaussian data DDIM (eta = 0) is affine in x_T: compare with the map composed by hand
    from eq. 12; 50 steps land within a few percent of the data's std (first order)."""
    model, obj = ddpm_model("linear", 1000)
    x_T = standardized_normal(jax.random.PRNGKey(14), (4000, 2))
    out = jax.jit(sampling.make_sampler(model, "ddim", num_steps=50, spacing=spacing))(
        None, x_T, None)
    assert int(out.nfe) == 50
    abar = obj.schedule.alphas_cumprod[timegrids.discrete_steps(1000, 50, spacing=spacing)]
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
    model, _ = ddpm_model("linear", 1000)
    x_T = jax.random.normal(jax.random.PRNGKey(15), (10000, 2))
    out = jax.jit(sampling.make_sampler(model, "ddim", num_steps=200, eta=1.0,
                                        spacing="trailing"))(None, x_T, jax.random.PRNGKey(16))
    check_moments(out.x, MU, SD, var_rtol=0.08)


@pytest.mark.parametrize("prediction", ["velocity", "x1"])
def test_discrete_samplers_on_a_flow_matching_model(prediction):
    """The same samplers on a continuous path (cond-OT, the exact model of Gaussian data): DDIM
    with eta = 0 and many steps reaches the data distribution, and so does ancestral sampling."""
    path = paths.make_path("cond_ot")
    model = sampling.ModelFn(exact_apply(path, prediction), path, prediction)
    x0 = standardized_normal(jax.random.PRNGKey(20), (8000, 2))
    ddim = jax.jit(sampling.make_sampler(model, "ddim", num_steps=200))(None, x0, None)
    check_moments(ddim.x, MU, SD, var_rtol=0.03)
    anc = jax.jit(sampling.make_sampler(model, "ancestral", num_steps=200))(
        None, x0, jax.random.PRNGKey(21))
    check_moments(anc.x, MU, SD, var_rtol=0.08)


def test_noise_keys_follow_the_documented_streams():
    """Step k's noise is normal(fold_in(key, k)): two keys give different samples, one key the
    same, and deterministic DDIM ignores the key."""
    model, _ = ddpm_model("linear", 100)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    anc = jax.jit(sampling.make_sampler(model, "ancestral", num_steps=10))
    a, b, c = (anc(None, x, k).x for k in (rng.seed_stream(0, "s"), rng.seed_stream(0, "s"),
                                            rng.seed_stream(1, "s")))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    ddim = jax.jit(sampling.make_sampler(model, "ddim", num_steps=10))
    np.testing.assert_array_equal(ddim(None, x, jax.random.PRNGKey(0)).x,
                                  ddim(None, x, jax.random.PRNGKey(1)).x)
