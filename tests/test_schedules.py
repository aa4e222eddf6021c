"""Schedules: derivatives against jax.jvp, endpoints, and DDPM's discrete schedules against the
papers (Ho et al. 2020; Nichol & Dhariwal 2021) as a continuous VP path."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import schedules

SCHEDULES = [
    schedules.CondOTSchedule(),
    schedules.CondOTSchedule(sigma_min=1e-2),
    schedules.CosineSchedule(),
    schedules.PolynomialSchedule(2.0),
    schedules.PolynomialSchedule(3.5),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_schedule_derivatives_match_jvp(sched):
    with jax.enable_x64(True):
        ts = jnp.linspace(0.01, 0.99, 37, dtype=jnp.float64)
        for t in ts:
            out, tangent = jax.jvp(lambda s: tuple(sched(s)[:2]), (t,), (jnp.ones_like(t),))
            s = sched(t)
            np.testing.assert_allclose(tangent[0], s.d_alpha, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(tangent[1], s.d_sigma, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(out[0], s.alpha, rtol=1e-14)


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_schedule_endpoints(sched):
    with jax.enable_x64(True):
        s0, s1 = sched(jnp.float64(0.0)), sched(jnp.float64(1.0))
        np.testing.assert_allclose([s0.alpha, s0.sigma, s1.alpha], [0.0, 1.0, 1.0], atol=1e-15)
        expected = getattr(sched, "sigma_min", 0.0)
        np.testing.assert_allclose(s1.sigma, expected, atol=1e-15)


def test_cosine_is_variance_preserving():
    s = schedules.CosineSchedule()(jnp.linspace(0, 1, 11))
    np.testing.assert_allclose(s.alpha**2 + s.sigma**2, 1.0, atol=1e-6)


# -- DDPM's discrete schedules ----------------------------------------------------------------------


def test_linear_betas_match_ho_et_al():
    s = schedules.discrete_vp("linear", 1000)
    betas = s.betas
    assert s.num_timesteps == 1000
    np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-10)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-7)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1.0 - betas), rtol=1e-14)
    np.testing.assert_allclose(s.alphas_cumprod[-1], 4.036e-5, rtol=1e-3)  # the usual value
    # other T: the endpoints scale by 1000 / T (Nichol & Dhariwal); explicit ones are kept
    np.testing.assert_allclose(schedules.make_betas("linear", 500)[[0, -1]], [2e-4, 0.04],
                               rtol=1e-12)
    b50 = schedules.make_betas("linear", 50, beta_start=1e-3, beta_end=0.05)
    np.testing.assert_allclose(b50[[0, -1]], [1e-3, 0.05], rtol=1e-12)


def test_cosine_betas_match_nichol_dhariwal():
    T = 1000
    betas = schedules.make_betas("cosine", T)
    abar = np.cumprod(1 - betas)

    def fbar(tau, s=0.008):
        return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2

    expected = np.array([fbar((i + 1) / T) / fbar(0.0) for i in range(T)])
    capped = betas >= 0.999
    assert capped.sum() >= 1 and capped[-1] and betas[-1] == 0.999 and np.all(betas <= 0.999)
    first_cap = int(np.argmax(capped))
    np.testing.assert_allclose(abar[:first_cap], expected[:first_cap], rtol=1e-10)
    prev = np.append(1.0, expected[:-1])
    np.testing.assert_allclose(betas[~capped], (1 - expected / prev)[~capped], rtol=1e-9)


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_step_time_round_trip(T):
    s = schedules.DiscreteVPSchedule.from_betas(np.full(T, 0.01))
    i = np.arange(T)
    t_np = s.time(i)
    np.testing.assert_allclose(t_np[[0, -1]], [1 - 1 / T, 0.0], atol=1e-15)
    assert np.all(np.diff(t_np) < 0) and t_np.min() >= 0 and t_np.max() < 1
    t32 = s.time(jnp.asarray(i))
    assert t32.dtype == jnp.float32
    np.testing.assert_array_equal(s.step(t32), i)
    np.testing.assert_array_equal(s.step(jnp.asarray(t_np, jnp.float32)), i)
    np.testing.assert_array_equal(s.step(jnp.array([1.0, 0.0, 1.5, -0.2])), [0, T - 1, 0, T - 1])
    with jax.enable_x64(True):
        t64 = s.time(jnp.asarray(i))
        assert t64.dtype == jnp.float64
        np.testing.assert_array_equal(s.step(t64), i)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_discrete_vp_interpolates_the_steps(name):
    """alpha^2 = abar_i at every step (the table and the cubic), alpha = 1, sigma = 0 at t = 1,
    variance preserving and monotone in between, derivatives against jax.jvp."""
    T = 1000
    s = schedules.discrete_vp(name, T)
    call = jax.jit(s)
    with jax.enable_x64(True):
        o = call(jnp.asarray(s.time(np.arange(T))))
        np.testing.assert_allclose(o.alpha**2, s.alphas_cumprod, rtol=1e-11)
        np.testing.assert_allclose(o.sigma**2, 1 - s.alphas_cumprod, rtol=1e-11)
        table = s.at_steps(np.arange(T), jnp.float64)
        np.testing.assert_allclose(table.alpha, o.alpha, rtol=1e-12)
        np.testing.assert_allclose(table.d_alpha, o.d_alpha, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(table.d_sigma, o.d_sigma, rtol=1e-9, atol=1e-12)
        one = s(jnp.float64(1.0))
        np.testing.assert_allclose([one.alpha, one.sigma, one.d_alpha], [1.0, 0.0, 0.0], atol=0)
        assert np.isfinite(one.d_sigma)
        o = call(jnp.linspace(0.0, 1.0, 20001))
        np.testing.assert_allclose(o.alpha**2 + o.sigma**2, 1.0, atol=1e-14)
        assert np.all(np.diff(o.alpha) >= 0) and np.all(np.diff(o.sigma) <= 0)
        t0 = jnp.array([0.0, 0.0004, 0.2371, 0.5, 0.9, 0.9983, 0.99995])
        _, tangent = jax.jit(lambda u: jax.jvp(lambda u: tuple(s(u)[:2]), (u,),
                                               (jnp.ones_like(u),)))(t0)
        oo = call(t0)
        np.testing.assert_allclose(tangent[0], oo.d_alpha, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(tangent[1], oo.d_sigma, rtol=1e-9, atol=1e-12)
    # float32 table: sqrt computed in float64, then rounded
    t32 = s.at_steps(np.array([0, T - 1]))
    np.testing.assert_array_equal(
        t32.alpha, np.sqrt(s.alphas_cumprod[[0, -1]]).astype(np.float32))
    np.testing.assert_allclose(s(jnp.float32(0.0)).alpha, math.sqrt(s.alphas_cumprod[-1]),
                               rtol=1e-5)


def test_clear_errors():
    cases = [
        (lambda: schedules.make_betas("quadratic", 100), "choose one of: linear, cosine"),
        (lambda: schedules.make_betas("linear", 1), "num_timesteps must be an integer >= 2"),
        (lambda: schedules.make_betas("linear", 10), "use T >= 21"),
        (lambda: schedules.make_betas("cosine", 100, beta_end=0.1),
         "accepts: ['offset', 'max_beta']"),
        (lambda: schedules.DiscreteVPSchedule.from_betas([0.5, 1.5]), "values in (0, 1)"),
        (lambda: schedules.make_schedule("sigmoid"), "choose one of: cond_ot, cosine, polynomial"),
        (lambda: schedules.make_schedule("cosine", sigma_min=0.1), "accepts"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError) as err:
            fn()
        assert msg in str(err.value), (msg, str(err.value))
