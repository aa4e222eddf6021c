"""Objectives: flow matching and DDPM losses as maths (zero at the exact predictor, the
documented Monte-Carlo average), time samplers, and DDPM's parametrisations on its path."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import objectives, paths, schedules

@pytest.mark.parametrize("prediction", paths.PREDICTIONS)
def test_loss_vanishes_for_the_exact_predictor_of_a_point_mass(prediction):
    # Data = a point mass c: on the cond-OT path x_t determines x0 = (x_t - t c) / (1 - t), so the
    # exact predictor of each parametrisation has zero loss.
    c = jnp.array([[1.5, -0.5]])
    obj = objectives.FlowMatching(paths.make_path("cond_ot"), prediction=prediction, t_max=0.99)

    def predict(x_t, t):
        t = t[:, None]
        x0 = (x_t - t * c) / (1 - t)
        x1 = jnp.broadcast_to(c, x_t.shape)
        return {"velocity": c - x0, "x1": x1, "x0": x0, "v": t * x0 - (1 - t) * x1}[prediction]

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
    with pytest.raises(ValueError, match="velocity, x1, x0, v"):
        objectives.FlowMatching(paths.make_path(), prediction="score")
    with pytest.raises(ValueError, match="uniform, logit_normal"):
        objectives.sample_time(jax.random.PRNGKey(0), 4, "beta")
    with pytest.raises(ValueError, match="flow_matching"):
        objectives.build_objective("ddim", path=paths.make_path())


# -- DDPM ------------------------------------------------------------------------------------------


def point_mass_predictor(obj, c):
    """The exact network output when all data equal c, at DDPM's steps (the table's
    coefficients): the noise (x_i - a c) / b, the data c, or v."""
    s = obj.schedule

    def predict(x, t):
        co = s.at_steps(s.step(t))
        a, b = co.alpha[:, None], co.sigma[:, None]
        eps = (x - a * c) / b
        return {"eps": eps, "x0": jnp.broadcast_to(c, x.shape), "v": a * eps - b * c}[
            obj.prediction]

    return predict


@pytest.mark.parametrize("prediction", tuple(objectives.DDPM_PREDICTIONS))
def test_ddpm_loss_is_zero_at_the_exact_predictor_of_a_point_mass(prediction):
    obj = objectives.DDPM("linear", 1000, prediction=prediction)
    c = jnp.array([[0.25, -0.5, 0.75]])
    x1 = jnp.broadcast_to(c, (512, 3))
    loss, aux = jax.jit(lambda x, k: obj.loss(point_mass_predictor(obj, c), x, k))(
        x1, jax.random.PRNGKey(0))
    assert aux["loss"] == loss
    assert float(loss) < 1e-8
    bad, _ = jax.jit(lambda x, k: obj.loss(
        lambda x, t: point_mass_predictor(obj, c)(x, t) + 0.1, x, k))(x1, jax.random.PRNGKey(0))
    np.testing.assert_allclose(bad, 0.01, rtol=1e-3)


def test_ddpm_loss_is_the_documented_monte_carlo_average():
    obj = objectives.DDPM("cosine", 10, prediction="x0")
    key = jax.random.PRNGKey(1)
    x1 = jax.random.normal(jax.random.PRNGKey(2), (64, 4, 4, 1))
    zero, _ = jax.jit(obj.loss, static_argnums=0)(lambda x, t: jnp.zeros_like(x), x1, key)
    np.testing.assert_allclose(zero, jnp.mean(x1**2), rtol=1e-6)
    # the network sees t = 1 - (i + 1) / T with i uniform on {0..T-1}: E[t^2] over that grid
    n = 40000
    got, _ = jax.jit(obj.loss, static_argnums=0)(
        lambda x, t: jnp.broadcast_to(t[:, None], x.shape), jnp.zeros((n, 1)), key)
    grid = obj.schedule.time(np.arange(10))
    np.testing.assert_allclose(got, np.mean(grid**2), atol=4 * np.std(grid**2) / math.sqrt(n))
    eps_obj = objectives.DDPM("cosine", 10)
    g = jax.jit(jax.grad(lambda w: eps_obj.loss(lambda x, t: w * x, jnp.ones((64, 1)), key)[0]))(
        0.0)
    assert np.isfinite(g) and g != 0.0


def test_ddpm_speaks_the_path_vocabulary():
    """DDPM's published names map onto the path's: eps = the noise x0, x0 = the data x1, v = v;
    its path is the VP path of its betas, and t_end is its last step's time."""
    obj = objectives.DDPM("cosine", 100, "v")
    assert obj == objectives.DDPM("cosine", 100, "v") and hash(obj) == hash(
        objectives.DDPM("cosine", 100, "v")) and obj != objectives.DDPM("cosine", 100, "eps")
    assert [objectives.DDPM(prediction=p).parametrisation for p in ("eps", "x0", "v")] == [
        "x0", "x1", "v"]
    assert isinstance(obj.path.schedule, schedules.DiscreteVPSchedule)
    assert obj.t_end == pytest.approx(1 - 1 / 100)
    assert objectives.FlowMatching(paths.make_path()).t_end == 1.0


@pytest.mark.parametrize("prediction", tuple(objectives.DDPM_PREDICTIONS))
def test_ddpm_velocity_agrees_across_parametrisations(prediction):
    """Every parametrisation of the same (data, noise) gives d_alpha x1 + d_sigma x0, and the
    noise and v parametrisations stay finite at t = 1."""
    obj = objectives.DDPM("cosine", 200, prediction=prediction)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    data = jax.random.normal(k1, (5, 2, 2, 1))
    noise = jax.random.normal(k2, data.shape)
    t = jnp.array([0.0, 0.1, 0.5, 0.93, 0.995])
    o = obj.schedule(t[:, None, None, None])
    x = o.alpha * data + o.sigma * noise
    pred = {"eps": noise, "x0": data, "v": o.alpha * noise - o.sigma * data}[prediction]
    np.testing.assert_allclose(obj.velocity(pred, x, t), o.d_alpha * data + o.d_sigma * noise,
                               rtol=2e-4, atol=2e-4)
    if prediction != "x0":
        assert np.isfinite(obj.velocity(pred, x, jnp.ones((5,)))).all()


def test_ddpm_errors():
    with pytest.raises(ValueError, match="choose one of: eps, x0, v"):
        objectives.DDPM(prediction="velocity")
    with pytest.raises(ValueError, match="objective.beta_schedule"):
        objectives.DDPM(beta_schedule="sigmoid")


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), "0.1", True])
def test_label_dropout_must_be_a_probability_below_one(value):
    for make in (lambda **k: objectives.FlowMatching(paths.make_path(), **k), objectives.DDPM):
        with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\).*"
                                             "objective.label_dropout"):
            make(label_dropout=value)


def test_label_dropout_is_a_setting_of_both_objectives():
    assert "label_dropout" in objectives.objective_fields("flow_matching")
    assert "label_dropout" in objectives.objective_fields("ddpm")
    assert objectives.DDPM(label_dropout=0.5).label_dropout == 0.5
    assert objectives.FlowMatching(paths.make_path()).label_dropout == 0.0
