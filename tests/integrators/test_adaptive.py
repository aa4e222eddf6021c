"""Adaptive stepping: tolerances met, NFE counted exactly, the controller, failures, save_at."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ode_problems import (DECAY_T, DECAY_Y0, GAUSS_X0, MU, S, Counter, decay_v, gauss_v,
                          gauss_x1)
from scipy.integrate import solve_ivp

from flowmatch import integrators


@pytest.mark.parametrize("method", integrators.ADAPTIVE_METHODS)
@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
def test_adaptive_meets_tolerance(method, tol):
    with jax.enable_x64(True):
        cases = [
            (decay_v, DECAY_Y0, 0.0, DECAY_T, DECAY_Y0 * np.exp(-DECAY_T**2 / 2)),
            (gauss_v, GAUSS_X0, 0.0, 1.0, gauss_x1(GAUSS_X0)),
            (gauss_v, gauss_x1(GAUSS_X0), 1.0, 0.0, GAUSS_X0),  # inversion: data -> noise
        ]
        runs = {v: jax.jit(lambda x, t0, t1, v=v: integrators.solve(
            v, x, method=method, rtol=tol, atol=tol, t0=t0, t1=t1)) for v in (decay_v, gauss_v)}
        for v, x0, t0, t1, exact in cases:
            sol = runs[v](jnp.asarray(x0), t0, t1)
            integrators.check(sol)
            assert float(sol.t) == t1  # the last step lands exactly on t1
            assert np.max(np.abs(np.asarray(sol.x) - exact)) < 10 * tol
            # FSAL: s - 1 = (stages - 1) evaluations per attempted step, + f(t0) + the probe.
            s = integrators.TABLEAUS[method].num_stages
            attempts = int(sol.num_accepted) + int(sol.num_rejected)
            assert int(sol.nfe) == 2 + (s - 1) * attempts


def test_dopri5_nfe_in_line_with_scipy():
    with jax.enable_x64(True):
        ref = solve_ivp(gauss_v, (0.0, 1.0), GAUSS_X0, method="RK45", rtol=1e-6, atol=1e-6)
        run = jax.jit(lambda x, c: integrators.solve(gauss_v, x, method="dopri5", rtol=1e-6,
                                                     atol=1e-6, controller=c), static_argnums=1)
        ours = run(jnp.asarray(GAUSS_X0), integrators.PIController())
        i_ctrl = run(jnp.asarray(GAUSS_X0), integrators.PIController(alpha=1.0, beta=0.0))
    print(f"\ndopri5 rtol=atol=1e-6 on the Gaussian flow: NFE ours (PI) {int(ours.nfe)}, "
          f"ours (I control) {int(i_ctrl.nfe)}, scipy RK45 {ref.nfev}")
    assert ref.success and bool(ours.success)
    assert abs(int(ours.nfe) - ref.nfev) <= 30
    # With scipy's I controller the step sequence is the same algorithm: NFE within a step.
    assert abs(int(i_ctrl.nfe) - ref.nfev) <= 6
    np.testing.assert_allclose(np.asarray(ours.x), ref.y[:, -1], atol=1e-5)


@pytest.mark.parametrize("method", integrators.ADAPTIVE_METHODS)
def test_adaptive_nfe_counted_exactly(method):
    s = integrators.TABLEAUS[method].num_stages
    with jax.enable_x64(True):
        for first_step, probe in ((None, 1), (0.05, 0)):
            counter = Counter(gauss_v)
            sol = jax.jit(lambda x: integrators.solve(
                counter, x, method=method, rtol=1e-7, atol=1e-7, first_step=first_step))(
                jnp.asarray(GAUSS_X0))
            attempts = int(sol.num_accepted) + int(sol.num_rejected)
            assert counter.count() == int(sol.nfe) == 1 + probe + (s - 1) * attempts
            # v is never evaluated outside [t0, t1], the probe included.
            assert min(counter.ts) >= 0.0 and max(counter.ts) <= 1.0


def test_rejected_steps_are_counted():
    # A first step far too large must be rejected; it still costs evaluations.
    counter = Counter(decay_v)
    with jax.enable_x64(True):
        sol = integrators.solve(counter, jnp.asarray(DECAY_Y0), method="dopri5", rtol=1e-9,
                                atol=1e-9, t1=DECAY_T, first_step=1.0)
    assert int(sol.num_rejected) >= 1
    assert counter.count() == int(sol.nfe) == 1 + 6 * (int(sol.num_accepted)
                                                       + int(sol.num_rejected))


def test_non_fsal_embedded_tableau():
    # Heun-Euler 2(1): not FSAL, so an accepted step needs v at the new state (one more eval).
    heun_euler = integrators.ButcherTableau(
        "heun_euler", 2, c=(0, 1), a=((), (1,)), b=(0.5, 0.5), b_err=(-0.5, 0.5), err_order=1)
    assert heun_euler.embedded and not heun_euler.fsal
    counter = Counter(gauss_v)
    with jax.enable_x64(True):
        sol = jax.jit(lambda x: integrators.solve(counter, x, method=heun_euler, rtol=1e-5,
                                                  atol=1e-5))(jnp.asarray(GAUSS_X0))
        integrators.check(sol)
    expected = 2 + int(sol.num_accepted) + int(sol.num_rejected) + int(sol.num_accepted)
    assert counter.count() == int(sol.nfe) == expected
    assert np.max(np.abs(np.asarray(sol.x) - gauss_x1(GAUSS_X0))) < 1e-3


def test_max_steps_failure_is_signalled():
    sol = jax.jit(lambda x: integrators.solve(gauss_v, x, method="dopri5", rtol=1e-8, atol=1e-8,
                                              max_steps=3))(jnp.asarray(GAUSS_X0, jnp.float32))
    assert int(sol.status) == integrators.MAX_STEPS_REACHED
    assert not bool(sol.success)
    assert int(sol.num_accepted) + int(sol.num_rejected) == 3
    assert 0.0 < float(sol.t) < 1.0
    with pytest.raises(RuntimeError, match="max_steps"):
        integrators.check(sol)


def test_nonfinite_velocity_is_signalled():
    def bad_v(t, x):
        return jnp.where(t > 0.5, jnp.nan, 1.0) * x

    x0 = jnp.ones((3,), jnp.float32)
    adaptive = jax.jit(lambda x: integrators.solve(bad_v, x, method="tsit5", rtol=1e-5,
                                                   atol=1e-5))(x0)
    assert int(adaptive.status) == integrators.STEP_SIZE_TOO_SMALL
    assert float(adaptive.t) <= 0.5
    fixed = jax.jit(lambda x: integrators.solve(bad_v, x, method="rk4", num_steps=4))(x0)
    assert int(fixed.status) == integrators.NONFINITE
    for sol in (adaptive, fixed):
        with pytest.raises(RuntimeError, match="ODE solve failed"):
            integrators.check(sol)
    # Batched: reports how many failed.
    batched = jax.vmap(lambda x: integrators.solve(
        lambda t, y: jnp.where(y[0] > 0, 1.0, jnp.nan) * y, x, method="euler", num_steps=2))(
        jnp.array([[1.0, 1.0], [-1.0, 1.0]]))
    with pytest.raises(RuntimeError, match="1 of 2 solves"):
        integrators.check(batched)


def test_adaptive_save_at():
    with jax.enable_x64(True):
        save_at = jnp.array([0.0, 0.25, 0.5, 0.9, 1.0])
        sol = jax.jit(lambda x: integrators.solve(gauss_v, x, method="dopri5", rtol=1e-8,
                                                  atol=1e-8, save_at=save_at))(
            jnp.asarray(GAUSS_X0))
        assert sol.xs.shape == (5, 2) and sol.ts.shape == (5,)
        ts = np.asarray(save_at)
        sigma = np.sqrt((1 - ts) ** 2 + ts**2 * S**2)
        np.testing.assert_allclose(sol.xs, ts[:, None] * MU + sigma[:, None] * GAUSS_X0,
                                   atol=1e-7)
        np.testing.assert_array_equal(sol.xs[-1], sol.x)
        # Backwards, with interior save times only.
        back = jax.jit(lambda x: integrators.solve(
            gauss_v, x, method="tsit5", rtol=1e-8, atol=1e-8, t0=1.0, t1=0.0,
            save_at=jnp.array([0.75, 0.5])))(jnp.asarray(gauss_x1(GAUSS_X0)))
        ts = np.array([0.75, 0.5])
        sigma = np.sqrt((1 - ts) ** 2 + ts**2 * S**2)
        np.testing.assert_allclose(back.xs, ts[:, None] * MU + sigma[:, None] * GAUSS_X0,
                                   atol=1e-7)
        np.testing.assert_allclose(back.x, GAUSS_X0, atol=1e-7)


def test_zero_length_interval():
    x0 = jnp.ones(2)
    sol = jax.jit(lambda x: integrators.solve(decay_v, x, method="dopri5", rtol=1e-5, atol=1e-5,
                                              t0=0.3, t1=0.3))(x0)
    assert bool(sol.success)
    np.testing.assert_array_equal(sol.x, x0)


@pytest.mark.parametrize("method", integrators.ADAPTIVE_METHODS)
def test_parts_left_out_of_the_error_control_ride_on_the_same_steps(method):
    # A quadrature q' = g(t, x) riding along with error_on=(True, False) leaves the steps, and
    # so x, exactly those of x alone, however stiff q is; measured, it changes them.  q is
    # integrated on those steps to the method's order: exact for a polynomial within it.
    with jax.enable_x64(True):
        x0 = jnp.asarray(GAUSS_X0)

        def both(t, state, scale):
            x, _ = state
            return gauss_v(t, x), scale * jnp.sin(40.0 * t) * jnp.ones(()) + 3 * t**2

        alone = jax.jit(lambda x: integrators.solve(gauss_v, x, method=method, rtol=1e-6,
                                                    atol=1e-6))(x0)
        state0 = (x0, jnp.zeros(()))
        for scale, error_on in ((1e3, (True, False)), (0.0, (True, False))):
            sol = jax.jit(lambda s, sc=scale, on=error_on: integrators.solve(
                lambda t, y: both(t, y, sc), s, method=method, rtol=1e-6, atol=1e-6,
                error_on=on))(state0)
            np.testing.assert_array_equal(sol.x[0], alone.x)
            assert int(sol.num_accepted) == int(alone.num_accepted)
            assert int(sol.nfe) == int(alone.nfe)
            if scale == 0.0:  # q(1) = ∫ 3 t^2 dt = 1, within the method's order
                np.testing.assert_allclose(float(sol.x[1]), 1.0, rtol=1e-12)
        measured = jax.jit(lambda s: integrators.solve(
            lambda t, y: both(t, y, 1e3), s, method=method, rtol=1e-6, atol=1e-6))(state0)
        assert int(measured.num_accepted) > int(alone.num_accepted)


def test_error_on_must_fit_the_state_and_select_something():
    state = (jnp.ones(2), jnp.zeros(()))
    kw = dict(method="dopri5", rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="selects no part"):
        integrators.solve(lambda t, y: y, state, error_on=(False, False), **kw)
    with pytest.raises(ValueError, match="prefix"):
        integrators.solve(lambda t, y: y, state, error_on=(True, False, True), **kw)
    # A full selection is the default; on a fixed grid error_on changes nothing.
    a = integrators.solve(lambda t, y: y, state, error_on=(True, True), **kw)
    b = integrators.solve(lambda t, y: y, state, **kw)
    np.testing.assert_array_equal(a.x[0], b.x[0])
    assert int(a.nfe) == int(b.nfe)
