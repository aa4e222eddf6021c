"""The explicit Runge-Kutta stepper on fixed grids: convergence orders, NFE, grids, trajectories."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ode_problems import GAUSS_X0, MU, S, Counter, gauss_v, gauss_x1, measured_orders

from flowmatch import integrators, timegrids

# -- convergence order on a fixed grid -------------------------------------------------------------

# Step counts in each method's asymptotic regime and above float64 round-off (checked by printing
# local slopes over 16..256 steps).
_STEPS = {
    "decay": {1: (32, 64, 128, 256), 2: (32, 64, 128, 256), 3: (16, 32, 64, 128),
              4: (32, 64, 128, 256), 5: (64, 96, 128, 192, 256)},
    "gauss": {1: (32, 64, 128, 256), 2: (32, 64, 128, 256), 3: (16, 32, 64, 128),
              4: (32, 64, 128, 256), 5: (48, 64, 80, 96)},
}


def _measured_orders(method, problem):
    """Fitted order (forward, reverse) from the error at the end of each uniform grid in _STEPS."""
    return measured_orders(method, problem, _STEPS[problem][integrators.TABLEAUS[method].order])


@pytest.mark.parametrize("method", integrators.TABLEAUS)
def test_convergence_order(method):
    nominal = integrators.TABLEAUS[method].order
    with jax.enable_x64(True):
        measured = {}
        for p in ("decay", "gauss"):
            measured[p, False], measured[p, True] = _measured_orders(method, p)
    print(f"\n{method:8s} nominal {nominal}  " + "  ".join(
        f"{p}{'(rev)' if r else ''} {o:.2f}" for (p, r), o in measured.items()))
    for (problem, reverse), order in measured.items():
        expected = nominal
        if method == "midpoint" and problem == "gauss":
            # Superconvergence, not a bug: on this flow the midpoint rule's h^2 global-error term
            # is proportional to [r'/24 + r^2/8]_0^1 + int_0^1 r^3/6 dt with r = d log sigma_t/dt,
            # which vanishes identically over [0, 1] (checked with quadrature for several s).
            expected = 3
        assert abs(order - expected) < 0.3, (method, problem, reverse, order)


@pytest.mark.parametrize("method", integrators.METHODS)
def test_fixed_grid_nfe_counted_exactly(method):
    counter = Counter(gauss_v)
    n = 5
    sol = jax.jit(lambda x: integrators.solve(counter, x, method=method, num_steps=n))(
        jnp.asarray(GAUSS_X0, jnp.float32))
    assert counter.count() == int(sol.nfe) == integrators.nfe_for(method, n)
    assert int(sol.num_accepted) == n and int(sol.num_rejected) == 0
    assert min(counter.ts) >= 0.0 and max(counter.ts) <= 1.0


def test_fixed_trajectory():
    x0 = {"p": jnp.asarray(GAUSS_X0, jnp.float32), "q": jnp.ones((4, 2))}

    def v(t, x):
        return {"p": gauss_v(t, x["p"]), "q": -t * x["q"]}

    sol = jax.jit(lambda x: integrators.solve(v, x, method="rk4", num_steps=10,
                                              save_trajectory=True, unroll=2))(x0)
    assert sol.ts.shape == (11,) and sol.xs["p"].shape == (11, 2)
    assert sol.xs["q"].shape == (11, 4, 2)
    assert float(sol.ts[0]) == 0.0 and float(sol.ts[-1]) == 1.0
    np.testing.assert_array_equal(sol.xs["p"][0], x0["p"])
    np.testing.assert_array_equal(sol.xs["p"][-1], sol.x["p"])
    ts = np.asarray(sol.ts, np.float64)
    sigma = np.sqrt((1 - ts) ** 2 + ts**2 * S**2)
    np.testing.assert_allclose(sol.xs["p"], ts[:, None] * MU + sigma[:, None] * GAUSS_X0,
                               atol=1e-4)
    no_traj = integrators.solve(v, x0, method="rk4", num_steps=10)
    assert no_traj.ts is None and no_traj.xs is None


def test_time_grids():
    x0 = jnp.asarray(GAUSS_X0, jnp.float32)
    on_grid = jax.jit(lambda x, g: integrators.solve(gauss_v, x, method="heun", time_grid=g))
    by_steps = jax.jit(lambda x: integrators.solve(gauss_v, x, method="heun", num_steps=32))(x0)
    np.testing.assert_array_equal(by_steps.x, on_grid(x0, timegrids.uniform(32)).x)
    for grid in (timegrids.edm(32, rho=2.0), timegrids.shifted(32, 3.0), np.linspace(0, 1, 33)):
        sol = on_grid(x0, jnp.asarray(grid))
        np.testing.assert_allclose(sol.x, gauss_x1(GAUSS_X0), atol=2e-3)
        assert int(sol.nfe) == integrators.nfe_for("heun", 32)
    # Backwards (inversion) on a reversed grid.
    back = on_grid(jnp.asarray(gauss_x1(GAUSS_X0), jnp.float32),
                   timegrids.edm(32, rho=2.0, t0=1.0, t1=0.0))
    np.testing.assert_allclose(back.x, GAUSS_X0, atol=2e-3)
