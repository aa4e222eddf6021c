"""The public front `solve`: pytree states, dtypes, vmap, derivatives, argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ode_problems import GAUSS_X0, decay_v, gauss_v, gauss_x1

from flowmatch import integrators


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
        # Round-off only (vmapped and single programs vectorise differently; one coordinate
        # ends near 0, where a relative bound alone is meaningless): same steps, same NFE.
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-6, atol=1e-6)
        assert int(batched.nfe[i]) == int(single.nfe)
        np.testing.assert_allclose(batched.x[i], gauss_x1(np.asarray(x0s[i])), atol=1e-4)
    fixed = jax.jit(jax.vmap(lambda x: integrators.solve(gauss_v, x, method="rk4", num_steps=8)))
    np.testing.assert_allclose(fixed(x0s).x, gauss_x1(np.asarray(x0s)), atol=1e-3)


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
