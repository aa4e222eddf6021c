"""Paths: the conditional target, conversions between every parametrisation, the posterior."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from flowmatch import paths, schedules

SCHEDULES = [
    schedules.CondOTSchedule(),
    schedules.CondOTSchedule(sigma_min=1e-2),
    schedules.CosineSchedule(),
    schedules.PolynomialSchedule(2.0),
    schedules.PolynomialSchedule(3.5),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_conditional_target_is_time_derivative_of_path(sched):
    with jax.enable_x64(True):
        path = paths.AffinePath(sched)
        k0, k1, kt = jax.random.split(jax.random.PRNGKey(0), 3)
        x0 = jax.random.normal(k0, (16, 3, 2), jnp.float64)
        x1 = jax.random.normal(k1, (16, 3, 2), jnp.float64)
        t = jax.random.uniform(kt, (16,), jnp.float64, 0.05, 0.95)
        h = 1e-6
        fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
        np.testing.assert_allclose(path.sample(x0, x1, t).dx_t, fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
@pytest.mark.parametrize("src,dst", list(itertools.permutations(paths.PREDICTIONS, 2)))
def test_conversions_round_trip_and_agree_with_truth(sched, src, dst):
    with jax.enable_x64(True):
        path = paths.AffinePath(sched)
        k0, k1, kt = jax.random.split(jax.random.PRNGKey(1), 3)
        x0 = jax.random.normal(k0, (32, 4), jnp.float64)
        x1 = jax.random.normal(k1, (32, 4), jnp.float64)
        t = jax.random.uniform(kt, (32,), jnp.float64, 0.02, 0.98)
        ps = path.sample(x0, x1, t)
        truth = {"velocity": ps.dx_t, "x1": x1, "x0": x0,
                 "v": ps.alpha * x0 - ps.sigma * x1}
        converted = path.convert(truth[src], ps.x_t, t, src, dst)
        np.testing.assert_allclose(converted, truth[dst], rtol=1e-9, atol=1e-9)
        back = path.convert(converted, ps.x_t, t, dst, src)
        np.testing.assert_allclose(back, truth[src], rtol=1e-9, atol=1e-9)


def test_velocity_conversion_exact_at_endpoints():
    # velocity <-> endpoints uses a determinant that never vanishes: exact even at t = 0 and 1.
    path = paths.make_path("cond_ot")
    x0 = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
    x1 = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
    for tv in (0.0, 1.0):
        t = jnp.full((8,), tv)
        ps = path.sample(x0, x1, t)
        got_x1, got_x0 = path.to_endpoints(ps.dx_t, ps.x_t, t, "velocity")
        np.testing.assert_allclose(got_x1, x1, atol=1e-6)
        np.testing.assert_allclose(got_x0, x0, atol=1e-6)




def test_score_is_the_gaussian_score_of_the_marginal():
    """Data N(mu, sd^2): p_t = N(a mu, a^2 sd^2 + s^2), whose score -(x - a mu) / var is what
    `convert(..., 'score')` gives from the exact velocity."""
    with jax.enable_x64(True):
        path = paths.AffinePath(schedules.CosineSchedule())
        mu, sd = 0.7, 1.3
        x = jnp.linspace(-3, 3, 11, dtype=jnp.float64)[:, None]
        t = jnp.full((11,), 0.37, jnp.float64)
        s = path.at(t, x)
        var = s.alpha**2 * sd**2 + s.sigma**2
        x0 = s.sigma * (x - s.alpha * mu) / var
        x1 = mu + s.alpha * sd**2 * (x - s.alpha * mu) / var
        v = paths.from_endpoints(s, x1, x0, "velocity")
        np.testing.assert_allclose(path.convert(v, x, t, "velocity", "score"),
                                   -(x - s.alpha * mu) / var, rtol=1e-12)


@pytest.mark.parametrize("sched", [schedules.CondOTSchedule(), schedules.CosineSchedule(),
                                   schedules.discrete_vp("cosine", 200)], ids=repr)
def test_posterior_is_the_gaussian_conditional(sched):
    """q(x_b | x_a, x1) by conditioning the joint Gaussian of (x_b, x_a) given x1, by hand:
    x_b = a_b x1 + s_b e, x_a = a_a x1 + s_a (r e + sqrt(1 - r^2) e') with r chosen so that
    x_a | x_b is the forward transition; compared on times a < b in float64."""
    with jax.enable_x64(True):
        ta, tb = jnp.float64(0.3), jnp.float64(0.55)
        sa, sb = sched(ta), sched(tb)
        c_a, c_1, var, s2 = paths.posterior(sa, sb)
        ratio = float(sa.alpha / sb.alpha)
        # joint of (x_a, x_b) given x1: cov(x_a, x_b) = ratio s_b^2, var(x_a) = s_a^2
        cov, vb, va = ratio * float(sb.sigma) ** 2, float(sb.sigma) ** 2, float(sa.sigma) ** 2
        np.testing.assert_allclose(c_a, cov / va, rtol=1e-12)
        np.testing.assert_allclose(c_1, float(sb.alpha) - cov / va * float(sa.alpha), rtol=1e-12)
        np.testing.assert_allclose(var, vb - cov**2 / va, rtol=1e-10)
        np.testing.assert_allclose(s2, va - ratio**2 * vb, rtol=1e-12)


def test_posterior_of_adjacent_ddpm_steps_is_ho_et_al_eq_7():
    s = schedules.discrete_vp("linear", 1000)
    abar = s.alphas_cumprod
    i = np.array([1, 2, 250, 999])
    prev = abar[i - 1]
    beta = 1 - abar[i] / prev
    sa = schedules.ScheduleOutput(np.sqrt(abar[i]), np.sqrt(1 - abar[i]), None, None)
    sb = schedules.ScheduleOutput(np.sqrt(prev), np.sqrt(1 - prev), None, None)
    c_a, c_1, var, s2 = paths.posterior(sa, sb)
    np.testing.assert_allclose(c_1, beta * np.sqrt(prev) / (1 - abar[i]), rtol=1e-10)
    np.testing.assert_allclose(c_a, (1 - prev) * np.sqrt(1 - beta) / (1 - abar[i]), rtol=1e-10)
    np.testing.assert_allclose(var, beta * (1 - prev) / (1 - abar[i]), rtol=1e-9)
    np.testing.assert_allclose(s2, beta, rtol=1e-9)
