"""Exposure bias: the estimator on the exact velocity field of Gaussian data (whose sampling
states have the training marginals) and on deliberately biased fields, and the corrections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import integrators, paths, sampling
from flowmatch.diagnostics import exposure

MU, S, DIM = 0.7, 0.5, 16
PATH = paths.make_path("cond_ot")


def _gauss(t, x):
    """Posterior means (x1_hat, x0_hat) for x1 ~ N(MU, S^2 I) on the cond-OT path."""
    var = t**2 * S**2 + (1 - t) ** 2
    r = x - t * MU
    return MU + (t * S**2 / var) * r, ((1 - t) / var) * r


def _exact(t, x):
    x1, x0 = _gauss(t, x)
    return x1 - x0


def _biased(delta):
    # Removes (1 - delta) of the noise the exact field removes: delta > 0 leaves the states
    # noisier than the schedule says.
    def v(t, x):
        x1, x0 = _gauss(t, x)
        return x1 - (1.0 - delta) * x0

    return v


@pytest.fixture(scope="module")
def gauss_calibration():
    n = 2048
    data = MU + S * jax.random.normal(jax.random.PRNGKey(3), (n, DIM))
    noise = jax.random.normal(jax.random.PRNGKey(4), (n, DIM))
    return exposure.calibrate(_exact, PATH, data, noise, taus=np.linspace(0, 1, 65)), noise


def test_calibration_matches_closed_form(gauss_calibration):
    cal, _ = gauss_calibration
    tau = cal.taus
    exact = (1 - tau) ** 4 / (tau**2 * S**2 + (1 - tau) ** 2)  # sigma^4 / Var(x_tau)
    np.testing.assert_allclose(cal.stat, exact, rtol=0.03, atol=1e-6)
    assert np.all(np.diff(cal.envelope) <= 0)


def test_exact_field_has_nominal_noise_level(gauss_calibration):
    cal, noise = gauss_calibration
    tr = exposure.trajectory_statistic(_exact, PATH, noise, method="rk4", num_steps=16)
    rows = exposure.profile(cal, PATH, tr.ts, tr.stat, tr.stat_se)
    assert rows[0]["t_eff"] == pytest.approx(0.0, abs=1e-6)  # same noise: identical states
    inner = [r for r in rows if 0 < r["t"] < 1]
    for r in inner:
        assert r["ratio"] == pytest.approx(1.0, abs=0.02), r
        assert r["t_eff"] == pytest.approx(r["t"], abs=0.02), r
    assert exposure.summarize(rows)["mean_abs_log_ratio"] < 0.01


@pytest.mark.parametrize("delta, sign", [(0.3, 1), (-0.3, -1)])
def test_biased_field_is_detected_with_its_sign(gauss_calibration, delta, sign):
    cal, noise = gauss_calibration
    tr = exposure.trajectory_statistic(_biased(delta), PATH, noise, method="rk4", num_steps=16,
                                       v_model=_exact)
    rows = [r for r in exposure.profile(cal, PATH, tr.ts, tr.stat, tr.stat_se)
            if 0.2 <= r["t"] <= 0.9]
    assert all(sign * (r["ratio"] - 1.0) > 0.02 for r in rows), rows
    assert all(sign * (r["t"] - r["t_eff"]) > 0 for r in rows)


def test_effective_time_on_a_flat_stretch():
    taus = np.linspace(0, 1, 11)
    stat = np.where(taus < 0.5, 1.0, 2.0 * (1.0 - taus))  # flat on [0, 0.5], then falls
    cal = exposure.Calibration(taus=taus, stat=stat, stat_se=np.full(11, 0.01),
                               envelope=np.minimum.accumulate(stat), sigma=1 - taus)
    # Plain inversion lands at the end of the plateau; the nominal time is kept when consistent.
    assert exposure.effective_time(cal, 1.0) == pytest.approx(0.0)
    assert exposure.effective_time(cal, np.array([1.0]), np.array([0.3]))[0] == 0.3
    # A clear mismatch goes to the nearest time consistent within 2 standard errors: the
    # near edge of r = 0.6 +- 0.02 on the falling stretch, 2 (1 - tau) = 0.62.
    t_eff = exposure.effective_time(cal, np.array([0.6]), np.array([0.3]))[0]
    assert t_eff == pytest.approx(0.69, abs=1e-9)


def test_time_shifted_solve_without_shift_is_the_plain_solve():
    x0 = jax.random.normal(jax.random.PRNGKey(5), (8, DIM))
    grid = exposure.uniform_grid(5)
    for method in ("euler", "heun", "rk4"):
        plain = integrators.solve(_exact, x0, method=method, num_steps=5).x
        x, nfe = jax.jit(lambda x: exposure.time_shifted_solve(
            _exact, x, method=method, grid=grid, eval_times=grid[:-1]))(x0)
        np.testing.assert_allclose(x, plain, rtol=1e-6, atol=1e-6)
        assert nfe == integrators.nfe_for(method, 5)


def test_time_shift_schedule_and_euler_step():
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    tau = exposure.time_shift_schedule(grid, [0.3, 0.0, 0.6, 0.7, 1.0], max_shift=0.5)
    np.testing.assert_allclose(tau, [0.0, 0.125, 0.6, 0.7])  # tau_0 fixed; 0.0 clipped
    # Euler from a shifted time: x + (t_next - tau) v(tau, x).
    x0 = jnp.ones((2, DIM))
    x, _ = exposure.time_shifted_solve(_exact, x0, method="euler", grid=grid[:2],
                                       eval_times=np.array([0.1]))
    np.testing.assert_allclose(x, x0 + 0.15 * _exact(0.1, x0), rtol=1e-6)


def test_noise_scaling():
    x = jax.random.normal(jax.random.PRNGKey(6), (4, DIM))
    np.testing.assert_allclose(exposure.scale_noise(_exact, PATH, 1.0)(0.3, x), _exact(0.3, x),
                               rtol=1e-5, atol=1e-6)
    x1, x0 = _gauss(0.3, x)
    np.testing.assert_allclose(exposure.scale_noise(_exact, PATH, 2.0)(0.3, x), x1 - x0 / 2,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, match", [("warp", "unknown correction"),
                                         ("eps_scale", "needs a factor"),
                                         ("eps_scale=x", "not a number"),
                                         ("time_shift=2", "takes no factor")])
def test_bad_corrections(spec, match):
    with pytest.raises(ValueError, match=match):
        exposure.parse_correction(spec)
    assert exposure.parse_correction("eps_scale=1.020").name == "eps_scale=1.02"


def _velocity_model(v, t_end=1.0):
    """A sampling.ModelFn whose network is the closed-form velocity v (params unused)."""
    return sampling.ModelFn(apply=lambda params, x, t, cond: v(t[:, None], x), path=PATH,
                            prediction="velocity", t_end=t_end)


def test_noise_scaled_model_samples_the_scaled_field():
    x0 = jax.random.normal(jax.random.PRNGKey(9), (8, DIM))
    model = exposure.noise_scaled_model(_velocity_model(_exact), 1.5)
    got = sampling.make_sampler(model, "heun", num_steps=6)(None, x0, None).x
    want = integrators.solve(exposure.scale_noise(_exact, PATH, 1.5), x0, method="heun",
                             num_steps=6).x
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t_end", [1.0, 0.9])
def test_time_shifted_sampler_without_shift_is_the_registry_sampler(t_end):
    """With eval_times = the grid's own times, time-shifted sampling is the registry's ODE
    sampler, also for a model that stops at t_end < 1 and denoises there (one more NFE)."""
    x0 = jax.random.normal(jax.random.PRNGKey(10), (8, DIM))
    model = _velocity_model(_exact, t_end)
    grid = exposure.uniform_grid(5, t_end)
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(t_end)
    for method in ("euler", "rk4"):
        shifted = exposure.time_shifted_sampler(model, method=method, eval_times=grid[:-1])
        plain = sampling.make_sampler(model, method, num_steps=5)
        a, b = jax.jit(shifted)(None, x0, None), jax.jit(plain)(None, x0, None)
        np.testing.assert_allclose(a.x, b.x, rtol=1e-5, atol=1e-5)
        assert int(a.nfe) == int(b.nfe) == sampling.nfe(method, 5, model) and bool(a.success)


def test_trajectory_to_t1(gauss_calibration):
    _, noise = gauss_calibration
    tr = exposure.trajectory_statistic(_exact, PATH, noise[:64], method="euler", num_steps=4,
                                       t1=0.8)
    np.testing.assert_allclose(tr.ts, [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-7)
    assert tr.stat.shape == tr.stat_se.shape == (5,)
