"""Straightness and path energy: closed forms for straight, accelerating and rotating flows."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import integrators
from flowmatch.diagnostics import straightness


def _metrics(v, x0, **kwargs):
    sol = jax.jit(lambda x: straightness.solve_with_energy(v, x, **kwargs))(x0)
    x1, energy = sol.x
    return straightness.path_metrics(x0, x1, energy), x1


@pytest.mark.parametrize("kwargs", [dict(method="euler", num_steps=1),
                                    dict(method="rk4", num_steps=8),
                                    dict(method="dopri5", rtol=1e-6, atol=1e-6)])
def test_constant_velocity_is_straight(kwargs):
    c = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (32, 3))
    m, x1 = _metrics(lambda t, x: c, x0, **kwargs)
    np.testing.assert_allclose(x1, x0 + c, rtol=1e-5, atol=1e-5)
    assert abs(m["straightness"]) < 1e-4 * m["displacement"]
    assert m["energy_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert m["path_energy"] == pytest.approx(float(jnp.mean(jnp.sum(c**2, 1))), rel=1e-5)


def test_straight_path_at_varying_speed():
    # x(t) = x0 + t^2 c: a straight line, but Liu's S = |c|^2 ∫(1 - 2t)^2 dt = |c|^2 / 3 and the
    # energy ratio ∫ 4 t^2 dt = 4/3 (RK4 integrates these polynomials exactly).
    c = jnp.array([[3.0, -1.0], [0.5, 2.0]])
    m, _ = _metrics(lambda t, x: 2.0 * t * c, jnp.zeros_like(c), method="rk4", num_steps=4)
    sq = float(jnp.mean(jnp.sum(c**2, 1)))
    assert m["straightness"] == pytest.approx(sq / 3.0, rel=1e-5)
    assert m["energy_ratio"] == pytest.approx(4.0 / 3.0, rel=1e-5)


def test_rotation_closed_form_and_liu_definition():
    # v = w J x rotates by angle w: |v| = w |x0|, |x1 - x0|^2 = 2 (1 - cos w) |x0|^2.
    w = 2.0
    J = jnp.array([[0.0, -1.0], [1.0, 0.0]])
    with jax.enable_x64(True):
        x0 = jax.random.normal(jax.random.PRNGKey(2), (16, 2), jnp.float64)
        v = lambda t, x: w * x @ J.T.astype(x.dtype)
        m, x1 = _metrics(v, x0, method="dopri5", rtol=1e-10, atol=1e-10)
        r2 = float(jnp.mean(jnp.sum(x0**2, 1)))
        assert m["path_energy"] == pytest.approx(w**2 * r2, rel=1e-8)
        assert m["straightness"] == pytest.approx((w**2 - 2 * (1 - math.cos(w))) * r2, rel=1e-7)
        assert m["energy_ratio"] == pytest.approx(w**2 / (2 * (1 - math.cos(w))), rel=1e-8)
        # Liu's integral taken literally, by quadrature on a dense saved trajectory.
        sol = jax.jit(lambda x: integrators.solve(v, x, method="rk4", num_steps=1000,
                                                  save_trajectory=True))(x0)
        d = sol.xs[-1] - sol.xs[0]
        integrand = jnp.mean(jnp.sum((d[None] - v(None, sol.xs)) ** 2, -1), -1)  # [T]
        direct = np.trapezoid(np.asarray(integrand), np.asarray(sol.ts))
        assert direct == pytest.approx(m["straightness"], rel=1e-5)


def test_npe_and_bad_shapes():
    x0 = np.zeros((4, 2))
    x1 = np.ones((4, 2))
    m = straightness.path_metrics(x0, x1, np.full(4, 3.0), w2_squared=2.0)
    assert m["npe"] == pytest.approx(0.5) and m["energy_ratio"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="energy"):
        straightness.path_metrics(x0, x1, np.ones(3))


def test_straightness_is_never_negative_and_unavailable_where_the_rule_has_negative_weights():
    """A spinning, accelerating field on 1-2 coarse steps: every method with non-negative
    weights gives S >= 0 (a sum of squares); Dopri5 and Tsit5's own quadratures go negative
    there (by thousands), so they are reported as unavailable (NaN), never as a number."""
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(256, 2)), jnp.float32)
    negative_seen = set()
    for w in (2.0,):
        a = jnp.array([[0.0, -w], [w, 0.0]])
        v = lambda t, x, a=a: x @ a.T * (1 + 3 * t)  # noqa: E731
        for method in ("euler", "midpoint", "heun", "ralston", "rk3", "rk4", "bosh3", "dopri5",
                       "tsit5", "ab2", "ab3"):
            positive = straightness.positive_quadrature(method)
            assert positive == (method not in ("dopri5", "tsit5", "ab2", "ab3")), method
            for n in (1, 2):
                x1, e = straightness.solve_with_energy(v, x0, method=method, num_steps=n).x
                raw = float(np.mean(np.asarray(e, np.float64))
                            - np.mean(np.sum(np.square(np.asarray(x1 - x0, np.float64)), 1)))
                pm = straightness.path_metrics(x0, x1, e, positive=positive)
                if positive:
                    assert pm["straightness"] >= 0 and pm["energy_ratio"] >= 1, (method, w, n)
                else:
                    assert math.isnan(pm["straightness"]) and math.isnan(pm["energy_ratio"])
                    negative_seen |= {method} if raw < 0 else set()
    assert {"dopri5", "tsit5"} <= negative_seen
    assert straightness.positive_quadrature("dopri5", adaptive=True)
