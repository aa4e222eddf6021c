"""Schedules, paths and objectives: derivatives, conversions and losses as maths."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from flowmatch import objectives, paths, schedules

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
        truth = {"velocity": ps.dx_t, "x1": x1, "x0": x0}
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


@pytest.mark.parametrize("prediction", paths.PREDICTIONS)
def test_loss_vanishes_for_the_exact_predictor_of_a_point_mass(prediction):
    # Data = a point mass c: on the cond-OT path x_t determines x0 = (x_t - t c) / (1 - t), so the
    # exact predictor of each parametrisation has zero loss.
    c = jnp.array([[1.5, -0.5]])
    obj = objectives.FlowMatching(paths.make_path("cond_ot"), prediction=prediction, t_max=0.99)

    def predict(x_t, t):
        t = t[:, None]
        x0 = (x_t - t * c) / (1 - t)
        return {"velocity": c - x0, "x1": jnp.broadcast_to(c, x_t.shape), "x0": x0}[prediction]

    x1 = jnp.broadcast_to(c, (256, 2))
    loss, aux = obj.loss(predict, x1, jax.random.PRNGKey(0))
    assert float(loss) < 1e-8
    bad, _ = obj.loss(lambda x_t, t: jnp.zeros_like(x_t), x1, jax.random.PRNGKey(0))
    assert float(bad) > 0.1
    assert set(aux) == {"loss"}


def test_time_samplers():
    key = jax.random.PRNGKey(0)
    u = objectives.sample_time(key, 100_000, "uniform")
    ln = objectives.sample_time(key, 100_000, "logit_normal")
    for t in (u, ln):
        assert t.shape == (100_000,) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.002
    # sigmoid(N(0, 1)) is symmetric about 1/2 and more concentrated than U[0, 1).
    assert abs(float(ln.mean()) - 0.5) < 0.01 and float(ln.var()) < 1 / 12 - 0.02
    shifted = objectives.sample_time(key, 1000, "uniform", t_min=0.2, t_max=0.4)
    assert float(shifted.min()) >= 0.2 and float(shifted.max()) <= 0.4


def test_errors_name_allowed_values():
    with pytest.raises(ValueError, match="choose one of: cond_ot, cosine, polynomial"):
        schedules.make_schedule("sigmoid")
    with pytest.raises(ValueError, match="accepts"):
        schedules.make_schedule("cosine", sigma_min=0.1)
    with pytest.raises(ValueError, match="velocity, x1, x0"):
        objectives.FlowMatching(paths.make_path(), prediction="score")
    with pytest.raises(ValueError, match="uniform, logit_normal"):
        objectives.sample_time(jax.random.PRNGKey(0), 4, "beta")
    with pytest.raises(ValueError, match="flow_matching"):
        objectives.build_objective("ddim", path=paths.make_path())
