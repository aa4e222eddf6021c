"""Tests for flowmatch.timegrids: endpoints, monotonicity, formulas, direction reversal."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import timegrids

GRIDS = [("uniform", {}), ("edm", {"rho": 7.0}), ("edm", {"rho": 3.0}),
         ("shifted", {"shift": 3.0}), ("shifted", {"shift": 0.5})]


@pytest.mark.parametrize("kind, kw", GRIDS)
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0), (0.2, 0.9)])
def test_endpoints_exact_and_monotonic(kind, kw, t0, t1):
    n = 8  # few enough steps that even rho = 7 stays strictly monotonic in float32
    ts = timegrids.make_grid(kind, n, t0=t0, t1=t1, **kw)
    assert ts.shape == (n + 1,) and ts.dtype == jnp.float32
    assert ts[0] == np.float32(t0) and ts[-1] == np.float32(t1)
    d = np.diff(np.asarray(ts)) * np.sign(t1 - t0)
    assert np.all(d > 0)


@pytest.mark.parametrize("kind, kw", GRIDS)
def test_many_steps_float64_strictly_monotonic(kind, kw):
    with jax.enable_x64(True):
        ts = np.asarray(timegrids.make_grid(kind, 64, **kw))
    assert ts.dtype == np.float64 and np.all(np.diff(ts) > 0)


@pytest.mark.parametrize("kind, kw", GRIDS)
def test_direction_reversal(kind, kw):
    fwd = timegrids.make_grid(kind, 13, **kw)
    bwd = timegrids.make_grid(kind, 13, t0=1.0, t1=0.0, **kw)
    np.testing.assert_array_equal(np.asarray(bwd), np.asarray(fwd)[::-1])


def test_uniform():
    np.testing.assert_allclose(timegrids.uniform(4, t0=0.5, t1=1.0),
                               [0.5, 0.625, 0.75, 0.875, 1.0])


def test_edm_rho_spacing_formula():
    with jax.enable_x64(True):
        n, rho = 10, 7.0
        ts = np.asarray(timegrids.edm(n, rho=rho))
        i = np.arange(n + 1)
        # Karras et al. (2022) eq. 5 on sigma = 1 - t from sigma_max = 1 to sigma_min = 0.
        sigma = (1.0 + i / n * (0.0 - 1.0)) ** rho
        np.testing.assert_allclose(ts, 1.0 - sigma, rtol=0, atol=1e-15)
        # Uniform in (1 - t)^(1/rho) on a sub-interval too; steps shrink towards data (t = 1).
        sub = np.asarray(timegrids.edm(n, rho=rho, t0=0.3, t1=0.95))
        np.testing.assert_allclose(np.diff((1 - sub) ** (1 / rho)),
                                   ((0.05) ** (1 / rho) - 0.7 ** (1 / rho)) / n, atol=1e-12)
        assert np.all(np.diff(np.diff(ts)) < 0)
        np.testing.assert_allclose(timegrids.edm(n, rho=1.0), timegrids.uniform(n), atol=1e-15)


def test_shift_formula():
    with jax.enable_x64(True):
        n, k = 10, 3.0
        ts = np.asarray(timegrids.shifted(n, k))
        u = np.arange(n + 1) / n
        # SD3 (Esser et al. 2024): s' = k s / (1 + (k - 1) s) with s = 0 data; here t = 1 - s.
        s = 1.0 - u
        np.testing.assert_allclose(ts, 1.0 - k * s / (1.0 + (k - 1.0) * s), atol=1e-15)
        np.testing.assert_allclose(ts, u / (k - (k - 1.0) * u), atol=1e-15)
        # shift > 1 moves every interior point towards noise (t = 0); shift 1 is uniform.
        assert np.all(ts[1:-1] < u[1:-1])
        assert np.all(np.asarray(timegrids.shifted(n, 1.0 / k))[1:-1] > u[1:-1])
        np.testing.assert_allclose(timegrids.shifted(n, 1.0), u, atol=1e-15)


def test_traced_endpoints():
    ts = jax.jit(lambda a, b: timegrids.edm(4, t0=a, t1=b))(0.0, 1.0)
    np.testing.assert_allclose(ts, timegrids.edm(4))


@pytest.mark.parametrize("call, match", [
    (lambda: timegrids.make_grid("cosine", 4), "unknown time grid 'cosine'; choose one of: "
                                               "uniform, edm, shifted"),
    (lambda: timegrids.uniform(0), "num_steps must be an integer >= 1"),
    (lambda: timegrids.uniform(2.0), "num_steps must be an integer >= 1"),
    (lambda: timegrids.edm(4, rho=0.0), "rho must be > 0"),
    (lambda: timegrids.edm(4, t1=1.5), "t1 <= 1"),
    (lambda: timegrids.shifted(4, shift=-1.0), "shift must be > 0"),
    (lambda: timegrids.shifted(4, shift=2.0, t0=-0.5), r"t0 in \[0, 1\]"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_discrete_steps_lin_et_al_table_2():
    # Lin et al. 2024, Table 2 (T = 1000, 10 steps), there 1-based: linspace 1, 112, ..., 1000;
    # leading 1, 101, ..., 901; trailing 100, 200, ..., 1000.
    steps = timegrids.discrete_steps
    np.testing.assert_array_equal(steps(1000, 10, spacing="linspace"),
                                  np.round(np.linspace(1, 1000, 10)) - 1)
    np.testing.assert_array_equal(steps(1000, 10, spacing="leading"), np.arange(1, 1000, 100) - 1)
    np.testing.assert_array_equal(steps(1000, 10, spacing="trailing"),
                                  np.arange(100, 1001, 100) - 1)
    np.testing.assert_array_equal(steps(1000, 3, spacing="trailing"), [332, 666, 999])
    np.testing.assert_array_equal(steps(1000, 50, spacing="leading"), np.arange(0, 1000, 20))
    for skip in timegrids.SKIPS:
        for spacing in timegrids.SPACINGS:
            np.testing.assert_array_equal(steps(37, 37, skip, spacing), np.arange(37))
            for K in (1, 2, 5, 30):
                ts = steps(37, K, skip, spacing)
                assert len(ts) == K and ts[0] >= 0 and ts[-1] <= 36
                assert np.all(np.diff(ts) > 0)
                if spacing == "leading":
                    assert ts[0] == 0
                if spacing == "trailing" or (spacing == "linspace" and K > 1):
                    assert ts[-1] == 36
    quad = steps(1000, 10, skip="quadratic", spacing="leading")
    np.testing.assert_array_equal(quad, np.floor((np.arange(10) / 10) ** 2 * 1000 + 1e-9))
    for args, msg in (((100, 101), "num_steps must be an integer in [1, T=100]"),
                      ((100, 0), "num_steps must be an integer in [1, T=100]")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            steps(*args)
    with pytest.raises(ValueError, match="uniform, quadratic"):
        steps(100, 10, skip="cubic")
    with pytest.raises(ValueError, match="leading, trailing"):
        steps(100, 10, spacing="middle")
