"""Adams-Bashforth methods: weights, convergence orders on uniform and non-uniform grids,
exactness on polynomials, exact NFE (warm start included), budgets, transformations, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ode_problems import GAUSS_X0, Counter, gauss_v, gauss_x1, measured_orders

from flowmatch import integrators, timegrids
from flowmatch.integrators.multistep import adams_bashforth_weights

AB = ("ab2", "ab3", "ab4")
ORDER = {"ab2": 2, "ab3": 3, "ab4": 4}

# -- weights ---------------------------------------------------------------------------------------

# Constant-step coefficients beta_j of AB2-AB4 (Hairer, Norsett & Wanner, Solving ODEs I, III.1).
CLASSIC = {2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
           4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_uniform_weights_are_the_classic_coefficients(k):
    with jax.enable_x64(True):
        for h in (0.1, -0.1):  # forward and backward
            nodes = jnp.asarray([0.5 - j * h for j in range(k)])
            w = adams_bashforth_weights(nodes, jnp.ones(k, bool), nodes[0], nodes[0] + h)
            np.testing.assert_allclose(np.asarray(w) / h, CLASSIC[k], rtol=1e-13)
        # Invalid (not yet filled) history entries: the lower-order method, weight 0 for them.
        valid = jnp.asarray([True, True] + [False] * (k - 2))
        w = adams_bashforth_weights(jnp.asarray([0.5, 0.4] + [0.0] * (k - 2)), valid, 0.5, 0.6)
        np.testing.assert_allclose(np.asarray(w) / 0.1, CLASSIC[2] + (0.0,) * (k - 2),
                                   rtol=1e-13)
        # A zero-length step has zero weights.
        w = adams_bashforth_weights(nodes, jnp.ones(k, bool), nodes[0], nodes[0])
        np.testing.assert_array_equal(w, np.zeros(k))


# -- convergence order -----------------------------------------------------------------------------

# Step counts in each method's asymptotic regime and above float64 round-off (checked by printing
# local slopes over 16..1024 steps).  The regime starts late for AB3 on the EDM grid and for AB4
# everywhere: AB4's error has a large h^5 term on both problems (our AB4 agrees with a plain
# NumPy AB4 to 4e-16, so this is the method, not the implementation).
_AB_STEPS = {"ab2": (32, 64, 128, 256), "ab3": (128, 256, 512, 1024),
             "ab4": (384, 512, 768, 1024)}


@pytest.mark.parametrize("method", AB)
def test_convergence_order(method):
    with jax.enable_x64(True):
        measured = {}
        for grid in ("uniform", "edm"):
            for p in ("decay", "gauss"):
                fwd, rev = measured_orders(method, p, _AB_STEPS[method], grid=grid)
                measured[grid, p, False], measured[grid, p, True] = fwd, rev
    print(f"\n{method} nominal {ORDER[method]}  " + "  ".join(
        f"{g}/{p}{'(rev)' if r else ''} {o:.2f}" for (g, p, r), o in measured.items()))
    for key, order in measured.items():
        assert abs(order - ORDER[method]) < 0.3, (method, key, order)


@pytest.mark.parametrize("method", AB)
def test_exact_on_polynomials(method):
    """ABk with its warm start integrates dx/dt = p(t), deg p <= k - 1, exactly on any grid (a
    sharp test of the variable-step weights); degree k is not integrated exactly."""
    k = ORDER[method]
    rng = np.random.default_rng(0)
    inner = np.sort(rng.uniform(0.0, 1.0, 10))
    grid = np.concatenate([[0.0], inner, [1.0]])  # 11 steps, neighbour step ratios up to 9
    coeffs = rng.normal(size=k + 1)

    x0 = np.full((2,), 0.7)
    # One compilation: the coefficients (highest degree first, leading zeros) are an argument.
    run = jax.jit(lambda c, g: integrators.solve(
        lambda t, x: jnp.polyval(c, t) * jnp.ones_like(x), jnp.asarray(x0), method=method,
        time_grid=g).x)

    def error(deg, g):
        c = np.concatenate([np.zeros(k - deg), coeffs[:deg + 1]])
        antideriv = np.polyint(c)
        exact = x0 + np.polyval(antideriv, g[-1]) - np.polyval(antideriv, g[0])
        return np.max(np.abs(np.asarray(run(jnp.asarray(c), jnp.asarray(g))) - exact))

    with jax.enable_x64(True):
        for g in (grid, grid[::-1]):
            # Rounding only (the weights of a grid this uneven amplify it a little) ...
            assert max(error(d, g) for d in range(k)) < 1e-12
            # ... while one degree more gives an error of 1e-3 or so.
            assert error(k, g) > 1e-5


def test_repeated_grid_points():
    """A repeated point in the multistep phase is an exact no-op; in the warm start it lowers
    the order of the next steps but stays accurate (no division by a zero node gap)."""
    x0 = jnp.asarray(GAUSS_X0, jnp.float32)
    grid = np.asarray(timegrids.uniform(12))
    run = jax.jit(lambda x, g: integrators.solve(gauss_v, x, method="ab4", time_grid=g).x)
    plain = run(x0, grid)
    np.testing.assert_array_equal(run(x0, np.insert(grid, [6, 9, 9], grid[[6, 9, 9]])), plain)
    early = run(x0, np.insert(grid, 1, grid[1]))
    assert np.all(np.isfinite(early))
    error = np.max(np.abs(np.asarray(early) - gauss_x1(GAUSS_X0)))
    assert error < 4 * np.max(np.abs(np.asarray(plain) - gauss_x1(GAUSS_X0))), error


# -- NFE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", AB)
def test_nfe_counted_exactly(method):
    k = ORDER[method]
    for n in sorted({1, k - 1, k, 7}):
        counter = Counter(gauss_v)
        sol = jax.jit(lambda x: integrators.solve(counter, x, method=method, num_steps=n))(
            jnp.asarray(GAUSS_X0, jnp.float32))
        assert counter.count() == int(sol.nfe) == integrators.nfe_for(method, n), n
        assert int(sol.num_accepted) == n and int(sol.num_rejected) == 0
        # k stages per warm-start step (heun, rk3, rk4), then one evaluation per step.
        assert int(sol.nfe) == (k * n if n < k else k * (k - 1) + n - (k - 1))
    assert integrators.nfe_for("ab4", 10) == 3 * 4 + 7


def test_steps_for_budget():
    for method in integrators.METHODS:
        for budget in range(0, 40):
            fits = [n for n in range(1, 41) if integrators.nfe_for(method, n) <= budget]
            assert integrators.steps_for_budget(method, budget) == (max(fits) if fits else None)
    assert integrators.steps_for_budget("ab4", 11) == 2
    assert integrators.steps_for_budget("ab4", 20) == 11
    assert integrators.steps_for_budget("rk4", 3) is None
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="nfe_budget must be an integer >= 0"):
            integrators.steps_for_budget("ab2", bad)


# -- states, dtypes, transformations ---------------------------------------------------------------


def test_vmap_jit_and_trajectory():
    x0s = jnp.stack([jnp.asarray(GAUSS_X0, jnp.float32), jnp.array([3.0, 0.1]),
                     jnp.array([-2.0, 2.0])])
    grids = jnp.stack([timegrids.uniform(16), timegrids.edm(16, rho=2.0),
                       timegrids.shifted(16, 2.0)])

    def v(t, s):
        return {"p": gauss_v(t, s["p"]), "q": -t * s["q"]}

    def one(x, g):
        return integrators.solve(v, {"p": x, "q": x[:1]}, method="ab3", time_grid=g,
                                 save_trajectory=True)

    batched = jax.jit(jax.vmap(one))(x0s, grids)
    assert batched.xs["p"].shape == (3, 17, 2) and batched.xs["q"].shape == (3, 17, 1)
    assert batched.nfe.shape == (3,) and np.all(np.asarray(batched.nfe) == 3 * 2 + 14)
    for i in range(3):
        single = jax.jit(one)(x0s[i], grids[i])
        np.testing.assert_allclose(batched.x["p"][i], single.x["p"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(single.xs["p"][0], x0s[i])
        np.testing.assert_array_equal(single.xs["p"][-1], single.x["p"])
        np.testing.assert_array_equal(single.ts, grids[i])
        np.testing.assert_allclose(single.x["p"], gauss_x1(np.asarray(x0s[i])), atol=2e-2)
    # Fewer steps than the warm start: the trajectory is the starter's.
    short = integrators.solve(gauss_v, x0s[0], method="ab4", num_steps=2, save_trajectory=True)
    rk4 = integrators.solve(gauss_v, x0s[0], method="rk4", num_steps=2, save_trajectory=True)
    np.testing.assert_allclose(short.xs, rk4.xs, rtol=1e-6)


@pytest.mark.parametrize("method", AB)
def test_dtypes_preserved(method):
    for dtype, tol in ((jnp.float32, 1e-3), (jnp.bfloat16, 5e-2)):
        x0 = {"x": jnp.asarray(GAUSS_X0, dtype), "y": jnp.ones((2, 3), dtype)}

        def v(t, x):
            return {"x": gauss_v(t, x["x"]), "y": -t * x["y"]}

        sol = jax.jit(lambda x: integrators.solve(v, x, method=method, num_steps=16))(x0)
        assert sol.x["x"].dtype == dtype and sol.x["y"].dtype == dtype
        assert bool(sol.success)
        np.testing.assert_allclose(np.asarray(sol.x["x"], np.float32), gauss_x1(GAUSS_X0),
                                   atol=tol * 10)


def test_reverse_mode_derivatives():
    # y(T) = exp(-a T^2 / 2) for dy/dt = -a t y, y(0) = 1: dy/da = -T^2 y / 2, dy/dT = -a T y.
    def y_end(a, t_end):
        grid = t_end * timegrids.edm(24, rho=2.0)
        return integrators.solve(lambda t, y: -a * t * y, jnp.ones(()), method="ab4",
                                 time_grid=grid).x

    da, dt = jax.jit(jax.grad(y_end, argnums=(0, 1)))(1.0, 1.0)
    np.testing.assert_allclose(da, -0.5 * np.exp(-0.5), rtol=1e-4)
    np.testing.assert_allclose(dt, -np.exp(-0.5), rtol=1e-4)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="ab3", rtol=1e-3, atol=1e-3),
     r"'ab3' is fixed-step and takes no rtol/atol \(an Adams-Bashforth multistep method runs on "
     r"a fixed grid only\); drop them .* adaptive method: bosh3, dopri5, tsit5"),
    (dict(method="ab2"), "'ab2' is fixed-step: pass num_steps or time_grid"),
    (dict(method="ab4", num_steps=4, first_step=0.1), "first_step only applies"),
    (dict(method="ab5", num_steps=4),
     "unknown integrator 'ab5'; choose one of: euler, .*, tsit5, ab2, ab3, ab4"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        integrators.solve(gauss_v, jnp.ones(2), **kwargs)


def test_method_definitions():
    assert integrators.check_arguments("ab4", num_steps=3) is integrators.AB4
    assert set(integrators.MULTISTEP) == set(AB) and not set(AB) & set(integrators.ADAPTIVE_METHODS)
    for name, starter in (("ab2", "heun"), ("ab3", "rk3"), ("ab4", "rk4")):
        assert integrators.MULTISTEP[name].starter is integrators.TABLEAUS[starter]
    with pytest.raises(ValueError, match="order 1 is Euler"):
        integrators.AdamsBashforth("ab1", 1, starter=integrators.EULER)
    with pytest.raises(ValueError, match="warm-start method of at least that order"):
        integrators.AdamsBashforth("ab3h", 3, starter=integrators.HEUN)
