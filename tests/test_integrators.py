"""Tests for flowmatch.integrators: tableaus, convergence orders, adaptive control, NFE, pytrees."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from flowmatch import integrators, timegrids

# -- test problems (closed forms) ------------------------------------------------------------------

# (a) dy/dt = -t y, y(t) = y0 exp(-t^2 / 2), integrated over [0, 2].
DECAY_T = 2.0
DECAY_Y0 = np.array([1.0, -2.0])


def decay_v(t, y):
    return -t * y


# (b) Gaussian-to-Gaussian flow: x0 ~ N(0, I) -> x1 ~ N(MU, S^2 I) along x_t = t x1 + (1 - t) x0.
# Marginal velocity mu + (d/dt log sigma_t) (x - t mu), sigma_t^2 = (1 - t)^2 + t^2 s^2;
# the flow map is x(t) = t mu + sigma_t x(0), so x(1) = mu + s x(0).
MU = np.array([1.0, -0.5])
S = 0.5
GAUSS_X0 = np.array([0.3, -1.2])


def gauss_v(t, x):
    return MU + ((t * S**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * S**2)) * (x - t * MU)


def gauss_x1(x0):
    return MU + S * x0


class Counter:
    """Counts evaluations of v at run time (host callback) and records the times."""

    def __init__(self, v):
        self.v, self.n, self.ts = v, 0, []

    def _hit(self, t):
        self.n += 1
        self.ts.append(float(t))

    def __call__(self, t, x):
        jax.debug.callback(self._hit, t)
        return self.v(t, x)

    def count(self):
        jax.effects_barrier()
        return self.n


# -- tableaus --------------------------------------------------------------------------------------


def _grow(tree):
    """All rooted trees obtained by adding one leaf to `tree` (canonical: sorted child tuples)."""
    out = [tuple(sorted(tree + ((),)))]
    for i, child in enumerate(tree):
        for g in _grow(child):
            out.append(tuple(sorted(tree[:i] + (g,) + tree[i + 1:])))
    return out


def _trees_up_to(order):
    levels = [{()}]
    for _ in range(order - 1):
        levels.append({g for t in levels[-1] for g in _grow(t)})
    return [t for level in levels for t in level]


def _size(tree):
    return 1 + sum(_size(c) for c in tree)


def _gamma(tree):
    return _size(tree) * math.prod(_gamma(c) for c in tree)


def _phi(tree, a):
    """Elementary weight vector: prod over children of A @ phi(child) (ones for a leaf)."""
    out = np.ones(a.shape[0])
    for c in tree:
        out = out * (a @ _phi(c, a))
    return out


def _order_residual(tab, weights, order):
    s = tab.num_stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, :len(row)] = row
    w = np.asarray(weights)
    return max(abs(w @ _phi(t, a) - 1.0 / _gamma(t)) for t in _trees_up_to(order))


def test_rooted_tree_counts():
    # 1, 1, 2, 4, 9 trees of orders 1..5: 17 order conditions for order 5.
    assert len(_trees_up_to(5)) == 17


@pytest.mark.parametrize("name", integrators.METHODS)
def test_tableau_satisfies_order_conditions(name):
    tab = integrators.TABLEAUS[name]
    assert _order_residual(tab, tab.b, tab.order) < 1e-12
    # ... and not those of the next order (the nominal order is the true one).
    assert _order_residual(tab, tab.b, tab.order + 1) > 1e-6
    if tab.embedded:
        b_hat = np.subtract(tab.b, tab.b_err)
        assert _order_residual(tab, b_hat, tab.err_order) < 1e-12
        assert _order_residual(tab, b_hat, tab.err_order + 1) > 1e-6


def test_tableau_properties():
    fsal = {n for n, t in integrators.TABLEAUS.items() if t.fsal}
    assert fsal == {"bosh3", "dopri5", "tsit5"}
    assert set(integrators.ADAPTIVE_METHODS) == {"bosh3", "dopri5", "tsit5"}
    assert integrators.METHODS == ("euler", "midpoint", "heun", "ralston", "rk3", "rk4", "bosh3",
                                   "dopri5", "tsit5")
    expected_nfe = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk3": 3, "rk4": 4,
                    "bosh3": 3, "dopri5": 6, "tsit5": 6}
    for name, per_step in expected_nfe.items():
        assert integrators.nfe_for(name, 10) == 10 * per_step


@pytest.mark.parametrize("kwargs, match", [
    (dict(c=(0, 0.5), a=((), (0.4,)), b=(0, 1)), "row 1 of A sums"),
    (dict(c=(0, 0.5), a=((0.1,), (0.5,)), b=(0, 1)), "explicit"),
    (dict(c=(0, 0.5), a=((), (0.5,)), b=(0.5, 0.6)), "sum to"),
    (dict(c=(0, 1), a=((), (1,)), b=(0.5, 0.5), b_err=(0.5, 0.0), err_order=1), "sum to"),
    (dict(c=(0, 1), a=((), (1,)), b=(0.5, 0.5), b_err=(0.5, -0.5)), "both b_err and err_order"),
])
def test_invalid_tableau_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        integrators.ButcherTableau("bad", 2, **kwargs)


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
    """Fitted order (forward, reverse) from the error at the end of each grid in _STEPS.

    One compilation per method and problem: every uniform grid is padded to the same length with
    zero-length steps at its end point (exact no-ops: h = 0), and all grids and both directions
    run in one vmap.
    """
    steps = _STEPS[problem][integrators.TABLEAUS[method].order]
    if problem == "decay":
        v, t_end, start, end = decay_v, DECAY_T, DECAY_Y0, DECAY_Y0 * np.exp(-DECAY_T**2 / 2)
    else:
        v, t_end, start, end = gauss_v, 1.0, GAUSS_X0, gauss_x1(GAUSS_X0)
    length = max(steps) + 1
    grids, x0s = [], []
    for t0, t1, x0 in ((0.0, t_end, start), (t_end, 0.0, end)):
        for n in steps:
            g = np.asarray(timegrids.uniform(n, t0, t1))
            grids.append(np.concatenate([g, np.full(length - n - 1, t1)]))
            x0s.append(x0)
    run = jax.jit(jax.vmap(lambda g, x: integrators.solve(v, x, method=method, time_grid=g).x))
    xs = np.asarray(run(jnp.asarray(np.stack(grids)), jnp.asarray(np.stack(x0s))))
    errors = np.max(np.abs(xs - np.stack([end] * len(steps) + [start] * len(steps))), axis=1)
    fwd, rev = errors[:len(steps)], errors[len(steps):]
    return tuple(-np.polyfit(np.log(steps), np.log(e), 1)[0] for e in (fwd, rev))


@pytest.mark.parametrize("method", integrators.METHODS)
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


# -- adaptive stepping -----------------------------------------------------------------------------


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


@pytest.mark.parametrize("method", integrators.METHODS)
def test_fixed_grid_nfe_counted_exactly(method):
    counter = Counter(gauss_v)
    n = 5
    sol = jax.jit(lambda x: integrators.solve(counter, x, method=method, num_steps=n))(
        jnp.asarray(GAUSS_X0, jnp.float32))
    assert counter.count() == int(sol.nfe) == integrators.nfe_for(method, n)
    assert int(sol.num_accepted) == n and int(sol.num_rejected) == 0
    assert min(counter.ts) >= 0.0 and max(counter.ts) <= 1.0


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


# -- states, dtypes, transformations ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(method="rk4", num_steps=16),
                                    dict(method="dopri5", rtol=1e-6, atol=1e-6)])
def test_pytree_state(kwargs):
    x0 = {"a": jnp.ones((3,)), "b": {"c": jnp.full((2, 2), 2.0)}}

    def v(t, x):
        return jax.tree.map(lambda y: -t * y, x)

    sol = jax.jit(lambda x: integrators.solve(v, x, **kwargs))(x0)
    assert jax.tree.structure(sol.x) == jax.tree.structure(x0)
    np.testing.assert_allclose(sol.x["a"], np.exp(-0.5) * np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(sol.x["b"]["c"], 2 * np.exp(-0.5) * np.ones((2, 2)), rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(method="heun", num_steps=8),
                                    dict(method="tsit5", rtol=1e-3, atol=1e-3)])
def test_dtypes_preserved(kwargs):
    for dtype, tol in ((jnp.float32, 1e-3), (jnp.bfloat16, 5e-2)):
        x0 = {"x": jnp.asarray(GAUSS_X0, dtype), "y": jnp.ones((2, 3), dtype)}

        def v(t, x):
            # float32 time times a bfloat16 state promotes; the solver casts back.
            return {"x": gauss_v(t, x["x"]), "y": -t * x["y"]}

        sol = jax.jit(lambda x: integrators.solve(v, x, **kwargs))(x0)
        assert sol.x["x"].dtype == dtype and sol.x["y"].dtype == dtype
        assert bool(sol.success)
        np.testing.assert_allclose(np.asarray(sol.x["x"], np.float32), gauss_x1(GAUSS_X0),
                                   atol=tol * 10)
    with jax.enable_x64(True):
        sol = integrators.solve(decay_v, jnp.ones(2, jnp.float32), **kwargs)
        assert sol.x.dtype == jnp.float32  # float64 time does not promote a float32 state


def test_vmap_solves_each_example():
    x0s = jnp.stack([jnp.asarray(GAUSS_X0, jnp.float32), jnp.array([3.0, 0.1]),
                     jnp.array([-2.0, 2.0])])

    def one(x):
        return integrators.solve(gauss_v, x, method="dopri5", rtol=1e-6, atol=1e-6)

    batched = jax.jit(jax.vmap(one))(x0s)
    assert batched.x.shape == (3, 2) and batched.nfe.shape == (3,)
    for i in range(3):
        single = jax.jit(one)(x0s[i])
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-6)
        assert int(batched.nfe[i]) == int(single.nfe)
        np.testing.assert_allclose(batched.x[i], gauss_x1(np.asarray(x0s[i])), atol=1e-4)
    fixed = jax.jit(jax.vmap(lambda x: integrators.solve(gauss_v, x, method="rk4", num_steps=8)))
    np.testing.assert_allclose(fixed(x0s).x, gauss_x1(np.asarray(x0s)), atol=1e-3)


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


def test_derivatives():
    # d/da of y(1) for dy/dt = -a t y, y(0) = 1: -exp(-a / 2) / 2 at a = 1.
    def y1(a, **kw):
        return integrators.solve(lambda t, y: -a * t * y, jnp.ones(()), **kw).x

    expected = -0.5 * np.exp(-0.5)
    np.testing.assert_allclose(jax.grad(lambda a: y1(a, method="rk4", num_steps=16))(1.0),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(
        jax.jacfwd(lambda a: y1(a, method="tsit5", rtol=1e-7, atol=1e-7))(1.0), expected,
        rtol=1e-5)


def test_zero_length_interval():
    x0 = jnp.ones(2)
    sol = jax.jit(lambda x: integrators.solve(decay_v, x, method="dopri5", rtol=1e-5, atol=1e-5,
                                              t0=0.3, t1=0.3))(x0)
    assert bool(sol.success)
    np.testing.assert_array_equal(sol.x, x0)


# -- argument errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="rk5", num_steps=4), "unknown integrator 'rk5'; choose one of: euler, midpoint"),
    (dict(method="rk4", rtol=1e-3, atol=1e-3), "fixed-step and takes no rtol/atol; drop them"),
    (dict(method="dopri5"), "needs rtol and atol"),
    (dict(method="rk4"), "pass num_steps or time_grid"),
    (dict(method="rk4", num_steps=4, time_grid=jnp.linspace(0, 1, 5)), "not both"),
    (dict(method="dopri5", rtol=1e-3, atol=1e-3, num_steps=4), "tolerances .* and a fixed grid"),
    (dict(method="dopri5", rtol=1e-3), "both rtol and atol"),
    (dict(method="dopri5", rtol=-1e-3, atol=1e-3), "rtol must be a positive"),
    (dict(method="euler", num_steps=0), "num_steps must be an integer >= 1"),
    (dict(method="euler", num_steps=2.5), "num_steps must be an integer >= 1"),
    (dict(method="euler", time_grid=jnp.array([0.0, 0.6, 0.4, 1.0])), "monotonic"),
    (dict(method="euler", time_grid=jnp.array([0.5])), "at least 2 points"),
    (dict(method="euler", time_grid=jnp.array([0.0, 1.0]), t1=0.5), "disagrees with time_grid"),
    (dict(method="dopri5", rtol=1e-3, atol=1e-3, max_steps=0), "max_steps"),
    (dict(method="euler", num_steps=4, first_step=0.1), "first_step only applies"),
    (dict(method="dopri5", rtol=1e-3, atol=1e-3, save_trajectory=True), "pass save_at"),
    (dict(method="euler", num_steps=4, save_at=jnp.array([0.5])), "save_at is for adaptive"),
    (dict(method="dopri5", rtol=1e-3, atol=1e-3, save_at=jnp.array([0.5, 0.2])),
     "strictly monotonic"),
    (dict(method="dopri5", rtol=1e-3, atol=1e-3, save_at=jnp.array([0.5, 1.5])), "inside"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        integrators.solve(decay_v, jnp.ones(2), **kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match="float arrays"):
        integrators.solve(decay_v, jnp.ones(2, jnp.int32), method="euler", num_steps=2)
    with pytest.raises(ValueError, match="same structure|structure and shapes"):
        integrators.solve(lambda t, x: x[:1], jnp.ones(2), method="euler", num_steps=2)
    with pytest.raises(ValueError, match="num_steps"):
        integrators.nfe_for("rk4", 0)
    with pytest.raises(ValueError, match="invalid PIController"):
        integrators.PIController(min_factor=2.0)
    # check_arguments validates without tracing anything.
    assert integrators.check_arguments("tsit5", rtol=1e-4, atol=1e-4) is integrators.TSIT5
