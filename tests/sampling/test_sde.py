"""SDE sampling (sde_euler, sde_heun) on Gaussian data with the exact model: the marginals of
every diffusion choice, Euler-Maruyama's weak order, the step by hand, the ODE limit, keys."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import objectives, paths, rng, sampling
from flowmatch.sampling import logsnr, sde
from gaussian_oracle import MU, SD, check_moments, exact_apply, standardized_normal


def flow_model(schedule="cond_ot", prediction="velocity"):
    path = paths.make_path(schedule)
    return sampling.ModelFn(exact_apply(path, prediction), path, prediction)


def ddpm_model(prediction="eps"):
    obj = objectives.DDPM("linear", 1000, prediction=prediction)
    return sampling.ModelFn.from_objective(exact_apply(obj.path, obj.parametrisation), obj)


MODELS = {"flow": flow_model, "ddpm": ddpm_model}


def check_covariance(x, n_se=4.0):
    x = np.asarray(x, np.float64)
    cov = np.cov(x.T)[0, 1]
    assert abs(cov) < n_se * SD[0, 0] * SD[0, 1] / math.sqrt(x.shape[0]), cov


@pytest.mark.parametrize("kind,diffusion", [("flow", d) for d in sde.DIFFUSIONS]
                         + [("ddpm", "sigma"), ("ddpm", "score_sde")])
def test_every_diffusion_keeps_the_marginals(kind, diffusion):
    """The SDE has the model's marginals for any g: with the exact field, 64 Heun steps and the
    Tweedie last step land on the data's mean and covariance within Monte-Carlo error (10k
    samples).  (The 'mean' last step adds no noise over its interval: a variance bias of
    g^2 h, 6% here for 'constant' g; see the next test.)"""
    model = MODELS[kind]()
    x0 = standardized_normal(jax.random.PRNGKey(1), (10000, 2))
    out = jax.jit(sampling.make_sampler(model, "sde_heun", num_steps=64, diffusion=diffusion,
                                        last_step="tweedie"))(None, x0, rng.seed_stream(0, "sde"))
    assert int(out.nfe) == 2 * 64 - 1 and int(out.steps) == 64 and bool(out.success)
    check_moments(out.x, MU, SD, var_rtol=0.05)
    check_covariance(out.x)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_mean_last_step_lands_on_the_data(kind):
    """The default: Euler-Maruyama, diffusion 'sigma' (g vanishes at the data end), a drift-only
    last step and, for the DDPM model, its denoising evaluation at t_end (nfe N + 1)."""
    model = MODELS[kind]()
    x0 = standardized_normal(jax.random.PRNGKey(2), (10000, 2))
    out = jax.jit(sampling.make_sampler(model, "sde_euler", num_steps=200))(
        None, x0, rng.seed_stream(1, "sde"))
    assert int(out.nfe) == 200 + model.denoises == sampling.nfe("sde_euler", 200, model)
    check_moments(out.x, MU, SD, var_rtol=0.05)


def test_euler_maruyama_has_weak_order_one():
    """|Var[x] - sd^2| / sd^2 (both dimensions, 50k standardized samples, one key for every N)
    falls like 1/N: slope 1 +- 0.35 over N = 8..64 (diffusion 'sigma', cond-OT)."""
    model = flow_model()
    x0 = standardized_normal(jax.random.PRNGKey(3), (50000, 2))
    key = rng.seed_stream(2, "sde")
    steps = np.array([8, 16, 32, 64])
    errors = []
    for n in steps:
        x = np.asarray(jax.jit(sampling.make_sampler(model, "sde_euler", num_steps=int(n)))(
            None, x0, key).x, np.float64)
        errors.append(np.mean(np.abs(x.var(0) / SD[0] ** 2 - 1.0)))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - 1.0) < 0.35, (errors, slope)


def test_stochastic_heun_is_far_more_accurate_than_euler_maruyama():
    """At 16 steps Heun's variance bias (weak order 2 here) is a small fraction of EM's."""
    model = flow_model()
    x0 = standardized_normal(jax.random.PRNGKey(4), (20000, 2))
    key = rng.seed_stream(3, "sde")
    bias = {}
    for method in sde.METHODS:
        x = np.asarray(jax.jit(sampling.make_sampler(model, method, num_steps=16))(
            None, x0, key).x, np.float64)
        bias[method] = np.mean(np.abs(x.var(0) / SD[0] ** 2 - 1.0))
    assert bias["sde_euler"] > 0.08 and bias["sde_heun"] < bias["sde_euler"] / 4, bias


def test_euler_maruyama_steps_by_hand():
    """Two steps written out: x1 = x0 + h (v - k x0_hat) + g sqrt(h) z_0 with z_0 =
    normal(fold_in(key, 0)), then the drift-only last step; k = g^2 / (2 sigma), g = sigma_t
    ('sigma', scale 1.5), i.e. the drift is v + (g^2 / 2) score with score = -x0_hat / sigma."""
    model = flow_model("cosine", "x1")
    x = jax.random.normal(jax.random.PRNGKey(5), (6, 2))
    key = rng.seed_stream(4, "sde")
    out = sampling.make_sampler(model, "sde_euler", num_steps=2, diffusion_scale=1.5)(
        None, x, key)
    want = np.asarray(x, np.float64)
    for t, z in ((0.0, jax.random.normal(jax.random.fold_in(key, 0), x.shape)), (0.5, None)):
        xt = jnp.asarray(want, jnp.float32)
        pred = model.apply(None, xt, jnp.full((6,), t), None)
        v = np.asarray(model.path.velocity(pred, xt, jnp.full((6,), t), "x1"), np.float64)
        score = np.asarray(model.path.convert(pred, xt, jnp.full((6,), t), "x1", "score"))
        g = 1.5 * math.cos(math.pi * t / 2)
        want = want + 0.5 * (v + 0.5 * g * g * score)
        if z is not None:
            want = want + g * math.sqrt(0.5) * np.asarray(z, np.float64)
    np.testing.assert_allclose(out.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule,prediction,steps", [("cond_ot", "velocity", (1, 13)),
                                                      ("cosine", "x1", (13,))])
def test_diffusion_zero_is_the_euler_ode_sampler_bit_for_bit(schedule, prediction, steps):
    model = flow_model(schedule, prediction)
    x0 = jax.random.normal(jax.random.PRNGKey(6), (256, 2))
    for n in steps:
        out = jax.jit(sampling.make_sampler(model, "sde_euler", num_steps=n, diffusion_scale=0.0))(
            None, x0, jax.random.PRNGKey(0))
        ode = jax.jit(sampling.make_sampler(model, "euler", num_steps=n))(None, x0, None)
        np.testing.assert_array_equal(out.x, ode.x)
        assert int(out.nfe) == int(ode.nfe) == n


def test_diffusion_zero_on_a_ddpm_model_is_its_euler_pf_sampler():
    """Same steps, same final denoising evaluation (nfe N + 1).  Not bit for bit: an eps model's
    data estimate at t = 0 divides by alpha = 0.0063, which magnifies the last-ulp differences
    of XLA's fusions of the schedule (measured: 1e-6)."""
    model = ddpm_model()
    x0 = jax.random.normal(jax.random.PRNGKey(7), (256, 2))
    for n in (13,):
        out = jax.jit(sampling.make_sampler(model, "sde_euler", num_steps=n, diffusion_scale=0.0))(
            None, x0, jax.random.PRNGKey(0))
        ode = jax.jit(sampling.make_sampler(model, "euler", num_steps=n))(None, x0, None)
        np.testing.assert_allclose(out.x, ode.x, rtol=1e-5, atol=1e-5)
        assert int(out.nfe) == int(ode.nfe) == n + 1


def test_keys_same_key_same_samples_other_key_other_samples():
    model = flow_model()
    x0 = jax.random.normal(jax.random.PRNGKey(8), (64, 2))
    for method in sde.METHODS:
        s = jax.jit(sampling.make_sampler(model, method, num_steps=10, diffusion="constant"))
        a, b, c = (s(None, x0, k).x for k in (rng.seed_stream(0, "s"), rng.seed_stream(0, "s"),
                                               rng.seed_stream(1, "s")))
        np.testing.assert_array_equal(a, b)
        assert np.abs(np.asarray(a) - np.asarray(c)).min() > 0
    with pytest.raises(ValueError, match="pass a key"):
        sampling.make_sampler(model, "sde_euler", num_steps=3)(None, x0, None)


def test_score_sde_diffusion_is_the_paths_own():
    """g^2 = 2 sigma^2 d lambda / dt: 2 (1 - t) / t on cond-OT; d log alpha^2 / dt (DDPM's beta
    in continuous time) on the variance-preserving cosine path."""
    t = np.linspace(0.05, 0.95, 7)
    for schedule, want in (("cond_ot", 2 * (1 - t) / t),
                           ("cosine", math.pi / np.tan(math.pi * t / 2))):
        model = flow_model(schedule)
        with jax.enable_x64(True):
            s = logsnr.schedule_at(model, t)
        g, k = sde.diffusion_coefficients("score_sde", 1.0, s, t)
        np.testing.assert_allclose(g ** 2, want, rtol=1e-10)
        np.testing.assert_allclose(k, g ** 2 / (2 * s.sigma), rtol=1e-10)


def test_singular_ends_are_kept_off_the_grid():
    """score_sde is infinite at t = 0 on cond-OT: the grid starts inside (lambda = -5); asked to
    start at 0 it says what to do."""
    model = flow_model()
    t_lo = float(logsnr.time_at_logsnr(model, -5.0)[0])
    assert abs(t_lo - 1 / (1 + math.exp(5))) < 1e-6
    times = np.asarray(sde._grid(model, 8, "logsnr", None, None, True))
    assert times[0] == np.float32(t_lo) and times[-1] == 1.0 and np.all(np.diff(times) > 0)
    with pytest.raises(ValueError, match="t_min > 0"):
        sampling.make_sampler(model, "sde_euler", num_steps=8, diffusion="score_sde",
                              grid="uniform", t_min=0.0)
