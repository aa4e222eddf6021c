"""Minibatch couplings and source distributions: the auction against scipy's optimum, Sinkhorn
marginals and sampling, classes, the trainer's pairing (same pairs on 1 and 8 devices, jit and
pmap), and training from a non-normal source with each coupling.

Multi-device runs happen in a subprocess running this file as a script (the device count of a
process is fixed when JAX starts), as in tests/test_parallel.py.
"""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.optimize
from configs_util import (  # noqa: E402  (tests/ on sys.path)
    load_config, override, simulated_devices_env)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _points(rng, n, d, shift=0.0):
    return (rng.normal(size=(n, d)) + shift).astype(np.float32)


def _optimum(cost):
    cost = np.asarray(cost, np.float64)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return cost[rows, cols].sum(), cols


@functools.lru_cache(maxsize=None)
def _jitted(name):
    """One jitted `couplings.<name>` (exact_assignment or couple) for the whole file, so tests
    that solve problems of the same size and settings share one compilation (the auction's
    programs take 1-6 s each to compile on XLA:CPU, and run in milliseconds)."""
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    static = {"exact_assignment": ("tolerance", "bidders"), "couple": ("name", "num_iters")}
    return jax.jit(getattr(couplings, name), static_argnames=static[name])


def _solve(cost, bidders=None, tolerance=None):
    """`couplings.exact_assignment`, jitted once per (n, min(bidders, n), tolerance): the auction
    uses min(bidders, n) slots, so passing that is the same program under a shared cache key."""
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    n = np.shape(cost)[0]
    bidders = couplings.DEFAULT_BIDDERS if bidders is None else bidders
    tolerance = couplings.DEFAULT_TOLERANCE if tolerance is None else tolerance
    return _jitted("exact_assignment")(cost, bidders=min(bidders, n), tolerance=tolerance)


# -- exact assignment ----------------------------------------------------------------------------


def test_exact_assignment_reaches_scipys_optimum():
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    same = 0
    # n = 5 (fewer rows than bidders) and 64 are sizes other tests solve too (shared programs).
    cases = [(n, d) for n, d in ((5, 2), (64, 2), (64, 10), (256, 2)) for _ in range(2)]
    for n, d in cases:
        x1, x0 = _points(rng, n, d), _points(rng, n, d, shift=1.0)
        cost = np.asarray(couplings.squared_distances(x1, x0), np.float64)
        result = _solve(cost.astype(np.float32))
        index = np.asarray(result.index)
        assert sorted(index) == list(range(n)), (n, d)  # a permutation
        assert bool(result.converged)
        best, cols = _optimum(cost)
        ours = cost[np.arange(n), index].sum()
        # The stated guarantee: mean pair cost within tolerance x (max C - min C) of the optimum
        # (plus float32 round-off of the costs themselves).
        bound = couplings.DEFAULT_TOLERANCE * (cost.max() - cost.min()) + 1e-6 * cost.mean()
        assert (ours - best) / n <= bound, (n, d, ours, best)
        same += bool(np.array_equal(index, cols))
    assert same >= len(cases) - 2  # in practice the very permutation scipy finds


def test_exact_assignment_degenerate_inputs():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    one = _solve(jnp.ones((1, 1)))
    assert list(np.asarray(one.index)) == [0] and bool(one.converged)
    # All costs equal (identical points): any permutation is optimal; it must be one.  (64 and
    # 128 rows: the sizes of the scipy and mean-pair-cost tests, whose programs these reuse.)
    ties = _solve(jnp.zeros((64, 64)))
    assert sorted(np.asarray(ties.index)) == list(range(64)) and bool(ties.converged)
    # NaN input: still a permutation, flagged as not converged.
    bad = _jitted("couple")("exact", jnp.full((128, 2), jnp.nan), jnp.zeros((128, 2)),
                            uniforms=jnp.zeros((128,)), num_iters=100)
    assert sorted(np.asarray(bad.index)) == list(range(128)) and not bool(bad.converged)


def _adversarial_costs():
    """(name, cost [n, n] float32) cases for the auction: ties, extreme ranges, odd sizes.  The
    cases share four sizes (2, 5, 39 = 3 x 13, 100 = 4 x 25: below, not dividing and dividing
    the bidder counts of the test below), so the auction compiles four programs per bidder
    count, not one per case."""
    rng = np.random.default_rng(3)
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    sq = lambda a, b: np.asarray(couplings.squared_distances(a, b))
    n = 39
    dup = _points(rng, n // 3, 2)
    far = _points(rng, n, 3) * 1e3
    far[0] += 1e6  # one outlier: every other cost is a tiny fraction of the range
    only = np.full((5, 5), np.inf, np.float32)  # a single allowed column per row
    only[np.arange(5), rng.permutation(5)] = rng.uniform(size=5)
    return [
        ("duplicated points", sq(np.repeat(dup, 3, 0), np.tile(dup, (3, 1)))),
        ("tiny range", (1.0 + 1e-4 * rng.uniform(size=(n, n))).astype(np.float32)),
        ("large range and an outlier", sq(far, _points(rng, n, 3) * 1e3)),
        ("integer costs, many ties", rng.integers(0, 4, size=(n, n)).astype(np.float32)),
        ("two rows", np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)),
        ("five rows", _points(rng, 5, 5)),
        ("a single allowed column per row", only),
        ("clustered: moons vs 8gaussians", sq(toy2d.moons(jax.random.PRNGKey(4), 100),
                                              toy2d.eight_gaussians(jax.random.PRNGKey(5), 100))),
    ]


@pytest.mark.parametrize("bidders", [1, 3, 4, 32])
def test_exact_assignment_is_optimal_to_the_tolerance_on_adversarial_costs(bidders):
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    tol = couplings.DEFAULT_TOLERANCE
    for name, cost in _adversarial_costs():
        n = cost.shape[0]
        result = _solve(cost, bidders)
        index = np.asarray(result.index)
        assert sorted(index) == list(range(n)) and bool(result.converged), name
        c = np.asarray(cost, np.float64)
        finite = np.isfinite(c)
        best, _ = _optimum(np.where(finite, c, 1e30))
        spread = c[finite].max() - c[finite].min()
        gap = (c[np.arange(n), index].sum() - best) / n
        # Within tolerance x range, plus float32 round-off of the scaled costs and prices.
        assert gap <= (tol + 2e-7) * spread + 1e-7 * abs(best / n), (name, gap, spread)
        if name.startswith("integer") or name.startswith("a single"):
            assert gap == 0, name  # n * tolerance < 1: only the optimum qualifies


def test_the_tolerance_bounds_the_mean_pair_cost_and_sets_the_work():
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    n = 64  # the size of the over-relaxed Sinkhorn test's points and of a scipy test's problems
    cost = np.asarray(couplings.squared_distances(
        toy2d.moons(jax.random.PRNGKey(6), n), toy2d.eight_gaussians(jax.random.PRNGKey(7), n)),
        np.float64)
    best, _ = _optimum(cost)
    spread = cost.max() - cost.min()
    gaps, rounds = [], []
    for tol in (3e-2, 1e-3, 1e-6):
        result = _solve(cost.astype(np.float32), tolerance=tol)
        gap = (cost[np.arange(n), np.asarray(result.index)].sum() - best) / n
        assert gap <= (tol + 2e-7) * spread, (tol, gap / spread)
        gaps.append(gap)
        rounds.append(int(result.rounds))
    assert gaps[0] > 0  # the coarse tolerance is used, not a no-op
    assert rounds[0] < rounds[1] < rounds[2]  # each factor of tolerance costs phases


def test_top2_reductions_agree_with_sorting_ties_included():
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, 37)).astype(np.float32)
    x[1, [3, 20]] = x[1].max() + 1.0  # a tie for the best: lowest index, second == best
    x[2, :] = -np.inf
    x[2, 5] = 0.0  # one finite entry: second best -inf
    expected = (x.max(1), np.argmax(x, 1), np.sort(x, 1)[:, -2])
    for got in (jax.jit(couplings._top2)(x),  # pylint: disable=protected-access
                jax.jit(jax.vmap(couplings._top2))(x)):  # pylint: disable=protected-access
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(g), e)


def test_per_class_pairs_stay_in_their_class_and_are_optimal_within_it():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(1)
    n = 48
    x1, x0 = _points(rng, n, 2), _points(rng, n, 2)
    labels = rng.integers(0, 4, n)
    uniforms = rng.uniform(size=n)
    index = {}
    for name in ("exact", "sinkhorn"):
        pair = jax.jit(lambda a, b, y, u, name=name: couplings.couple(
            name, a, b, labels=y, uniforms=u).index)
        index[name] = np.asarray(pair(x1, x0, jnp.asarray(labels), jnp.asarray(uniforms)))
        assert np.array_equal(labels[index[name]], labels), name
    cost = np.asarray(couplings.squared_distances(x1, x0), np.float64)
    index = index["exact"]
    for k in range(4):  # the optimum of each class's own problem
        rows = np.flatnonzero(labels == k)
        best, _ = _optimum(cost[np.ix_(rows, rows)])
        assert cost[rows, index[rows]].sum() <= best + 1e-4


# -- Sinkhorn --------------------------------------------------------------------------------------


def test_sinkhorn_marginals_and_convergence_to_the_exact_plan():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(2)
    n = 32
    cost = couplings.squared_distances(_points(rng, n, 2), _points(rng, n, 2, 0.5))
    plan = couplings.sinkhorn(cost, reg=0.05, num_iters=200)
    p = np.exp(np.asarray(plan.log_plan, np.float64))
    np.testing.assert_allclose(plan.plan, p, rtol=1e-4, atol=1e-12)  # scaling form = log form
    np.testing.assert_allclose(  # the factored form the coupling samples from is the plan
        np.asarray(plan.u)[:, None] * np.asarray(plan.kernel) * np.asarray(plan.v)[None, :],
        plan.plan, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(p.sum(1), np.full(n, 1 / n), rtol=1e-4)  # fitted last: exact
    np.testing.assert_allclose(p.sum(0), np.full(n, 1 / n), rtol=1e-3)
    assert float(plan.marginal_error) < 1e-3
    best, _ = _optimum(cost)
    c = np.asarray(cost, np.float64)
    transport = [float((np.exp(np.asarray(couplings.sinkhorn(cost, reg=r, num_iters=k).log_plan,
                                          np.float64)) * c).sum() * n)
                 for r, k in ((0.1, 100), (0.01, 300), (0.001, 3000))]
    # Smaller reg: closer to the optimal transport cost, from above.
    assert transport[0] > transport[1] > transport[2] >= best * (1 - 1e-4)
    assert transport[2] < best * 1.05
    # Forbidden (infinite) entries get no mass.
    masked = couplings.sinkhorn(couplings.class_cost(cost, jnp.arange(n) % 2), reg=0.05,
                                num_iters=50)
    p = np.exp(np.asarray(masked.log_plan))
    assert p[np.arange(n)[:, None] % 2 != np.arange(n)[None, :] % 2].max() == 0.0
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-4)


def test_over_relaxed_sinkhorn_reaches_the_same_plan_in_fewer_iterations():
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    n = 64
    cost = couplings.squared_distances(toy2d.moons(jax.random.PRNGKey(0), n),
                                       toy2d.eight_gaussians(jax.random.PRNGKey(1), n))
    solve = jax.jit(lambda c, w, tol, k: couplings.sinkhorn(
        c, reg=0.01, num_iters=k, tolerance=tol, relaxation=w), static_argnums=(1, 2, 3))
    plain, relaxed = solve(cost, 1.0, 1e-5, 2000), solve(cost, 1.7, 1e-5, 2000)
    # The same fixed point (the entropic plan), each stopped at a column error <= 1e-5.
    assert float(plain.marginal_error) < 2e-5 and float(relaxed.marginal_error) < 2e-5
    np.testing.assert_allclose(relaxed.plan, plain.plan, atol=1e-6)
    assert 3 * int(relaxed.iterations) < int(plain.iterations)
    # tolerance 0: exactly num_iters; a tolerance stops earlier, rows are fitted exactly.
    assert int(solve(cost, 1.7, 0.0, 7).iterations) == 7
    loose = solve(cost, 1.7, 1e-2, 50)
    assert int(loose.iterations) < 50 and float(loose.marginal_error) <= 1e-2
    np.testing.assert_allclose(np.asarray(loose.plan).sum(1), np.full(n, 1 / n), rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 3), (6, 5), (12, 7), (250, 3), (256, 256)])
def test_column_minima_by_halves_are_the_column_minima(shape):
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    x = np.random.default_rng(shape[0]).normal(size=shape).astype(np.float32)
    x[::3, ::2] = np.inf  # forbidden pairs (class costs) stay +inf unless a column has a value
    x[:, -1] = np.inf
    np.testing.assert_array_equal(couplings._column_min(x), x.min(axis=0))


def test_sinkhorn_stays_finite_and_exact_at_small_reg():
    # At reg 1e-4 the kernel of the starting potentials spans far more than float32's range,
    # so the solve depends on absorbing the scalings into the potentials as they grow (without
    # it this solve ends with a column error of 0.45 and a plan 7e17 off its log form).
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    n = 128
    cost = couplings.squared_distances(toy2d.moons(jax.random.PRNGKey(3), n),
                                       toy2d.eight_gaussians(jax.random.PRNGKey(4), n))
    solved = couplings.sinkhorn(cost, reg=1e-4, num_iters=20_000, tolerance=1e-4,
                                relaxation=1.7)
    p = np.asarray(solved.plan, np.float64)
    assert np.isfinite(p).all() and float(solved.marginal_error) <= 1e-4
    assert int(solved.iterations) < 20_000
    np.testing.assert_allclose(np.exp(np.asarray(solved.log_plan, np.float64)), p, atol=1e-3 / n)
    np.testing.assert_allclose(p.sum(1), np.full(n, 1 / n), rtol=1e-4)
    best, _ = _optimum(cost)
    transport = float((p * np.asarray(cost, np.float64)).sum() * n)
    assert best * (1 - 1e-4) <= transport < best * 1.002


def test_sinkhorn_matches_pots_log_domain_sinkhorn():
    ot = pytest.importorskip("ot")  # an outside oracle, absent from flowmatch's environment
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(5)
    n = 32
    cost = np.asarray(couplings.squared_distances(_points(rng, n, 2), _points(rng, n, 2, 1.0)),
                      np.float64)
    w = np.full(n, 1 / n)
    expected = ot.bregman.sinkhorn_log(w, w, cost / cost.max(), 0.02, numItermax=100_000,
                                       stopThr=1e-12)
    got = couplings.sinkhorn(cost.astype(np.float32), reg=0.02, num_iters=3000, tolerance=1e-6,
                             relaxation=couplings.DEFAULT_SINKHORN_RELAXATION)
    assert np.abs(np.asarray(got.plan, np.float64) - expected).sum() < 1e-4


def test_sample_rows_draws_from_each_rows_conditional():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.0, 0.5]])
    m = 20_000
    u = jax.random.uniform(jax.random.PRNGKey(0), (m,))
    draws = np.asarray(couplings.sample_rows(jnp.asarray(np.repeat(probs, m // 2, 0)), u))
    for row in range(2):
        freq = np.bincount(draws[row * m // 2:(row + 1) * m // 2], minlength=3) / (m // 2)
        np.testing.assert_allclose(freq, probs[row], atol=0.015)
    assert not np.any(draws[m // 2:] == 1)  # zero mass is never drawn


@pytest.mark.parametrize("m", [1, 5, 16, 17, 100])
def test_sample_rows_is_the_inverse_cdf(m):
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(m)
    n = 300
    plan = (rng.uniform(size=(n, m)) ** 4 * (rng.uniform(size=(n, m)) < 0.6)).astype(np.float32)
    plan[:, m // 2] += 1e-3  # every row has mass
    u = rng.uniform(size=n).astype(np.float32)
    u[:3] = [0.0, 0.5, np.nextafter(np.float32(1), np.float32(0))]
    got = np.asarray(jax.jit(couplings.sample_rows)(plan, u))
    cdf = np.cumsum(plan.astype(np.float64), 1)
    expected = np.minimum(np.sum(cdf <= u[:, None] * cdf[:, -1:], 1), m - 1)
    assert np.all(plan[np.arange(n), got] > 0)  # zero mass is never drawn
    assert np.mean(got == expected) > 0.98  # float32 block sums may move a boundary draw


@pytest.mark.parametrize("m", [5, 16, 17, 256])
def test_sample_rows_with_a_column_scale_draws_from_the_scaled_rows(m):
    """sample_rows(kernel, u, column_scale=v) draws row i's column from kernel[i] * v (a Sinkhorn
    plan's conditional without its row scaling), as sample_rows of the formed product does up
    to float rounding at a block's boundary; a zero-scale column is never drawn."""
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(m)
    n = 400
    kernel = (rng.uniform(size=(n, m)) ** 3).astype(np.float32)
    scale = rng.uniform(0.1, 3.0, size=m).astype(np.float32)
    scale[m // 3] = 0.0
    u = rng.uniform(size=n).astype(np.float32)
    got = np.asarray(jax.jit(lambda k, s, u: couplings.sample_rows(k, u, column_scale=s))(
        kernel, scale, u))
    formed = np.asarray(jax.jit(couplings.sample_rows)(kernel * scale[None, :], u))
    assert np.mean(got == formed) > 0.98 and not np.any(got == m // 3)
    weights = kernel.astype(np.float64) * scale
    cdf = np.cumsum(weights, 1)
    expected = np.minimum(np.sum(cdf <= u[:, None] * cdf[:, -1:], 1), m - 1)
    assert np.mean(got == expected) > 0.98


def test_couplings_lower_the_mean_pair_cost():
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    n = 128
    x1 = toy2d.moons(jax.random.PRNGKey(0), n)
    x0 = toy2d.eight_gaussians(jax.random.PRNGKey(1), n)
    u = jax.random.uniform(jax.random.PRNGKey(2), (n,))
    cost = {name: float(_jitted("couple")(name, x1, x0, uniforms=u, num_iters=100).cost)
            for name in couplings.COUPLINGS}
    best, _ = _optimum(couplings.squared_distances(x1, x0))
    assert cost["independent"] > 2 * cost["sinkhorn"]
    assert cost["sinkhorn"] > cost["exact"] * (1 - 1e-6)
    np.testing.assert_allclose(cost["exact"], best / n, rtol=1e-5)


def test_bad_coupling_arguments_say_what_to_do():
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    with pytest.raises(ValueError, match="unknown coupling 'ot'; choose one of: independent"):
        couplings.couple("ot", np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="pass uniforms"):
        couplings.couple("sinkhorn", np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="square cost"):
        couplings.exact_assignment(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="coupling.scope"):
        couplings.CouplingSettings.from_config({"scope": "world"})
    with pytest.raises(ValueError, match=r"unknown coupling setting\(s\) \['reg'\]"):
        couplings.CouplingSettings.from_config({"reg": 0.1})
    with pytest.raises(ValueError, match="coupling.sinkhorn_relaxation must be in"):
        couplings.CouplingSettings.from_config({"sinkhorn_relaxation": 2.0})
    with pytest.raises(ValueError, match="coupling.sinkhorn_tolerance must be >= 0"):
        couplings.CouplingSettings.from_config({"sinkhorn_tolerance": -1e-3})
    with pytest.raises(ValueError, match="relaxation must be in"):
        couplings.sinkhorn(np.ones((2, 2)), reg=0.1, num_iters=5, relaxation=0.5)


# -- sources ---------------------------------------------------------------------------------------


def test_source_densities_and_samples():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import sources  # pylint: disable=g-import-not-at-top
    from flowmatch.data import toy2d  # pylint: disable=g-import-not-at-top
    key = jax.random.PRNGKey(0)
    p0 = sources.SourceDistribution("8gaussians", scale=0.5)
    np.testing.assert_array_equal(p0.sample(key, 64), 0.5 * toy2d.eight_gaussians(key, 64))
    # Densities integrate to 1 (a fine grid over the support).
    g = np.linspace(-6, 6, 241, dtype=np.float32)
    grid = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    cell = (g[1] - g[0]) ** 2
    for p in (p0, sources.SourceDistribution("normal", scale=1.5)):  # jitted (as compare.py)
        assert abs(float(jnp.sum(jnp.exp(jax.jit(p.log_prob)(grid)))) * cell - 1.0) < 2e-3, p
    z = np.array([[0.3, -1.2]], np.float32)
    np.testing.assert_allclose(sources.SourceDistribution("normal", example_shape=(2,))
                               .log_prob(z), -0.5 * (z**2).sum() - np.log(2 * np.pi), rtol=1e-6)
    with pytest.raises(ValueError, match="no tractable density"):
        sources.SourceDistribution("moons").log_prob(z)
    with pytest.raises(ValueError, match="2-D data set, but the data's examples have shape"):
        sources.SourceDistribution("8gaussians", example_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="unknown source distribution 'uniform'"):
        sources.SourceDistribution("uniform")


# -- the trainer -----------------------------------------------------------------------------------


def small_config(**overrides):
    config = load_config("moons")
    config.batch_size = 32
    config.model.hidden_sizes = (32, 32)
    return override(config, overrides)


def built(config):
    """(components, plan) of a training config as the trainer builds them (no data read)."""
    from flowmatch import training  # pylint: disable=g-import-not-at-top
    from flowmatch.training import runs  # pylint: disable=g-import-not-at-top
    settings = training.read_settings(config)
    comps = training.build(settings, runs._legacy_spec(config))  # pylint: disable=protected-access
    return comps, training.loop.make_plan(settings)


def drawing(comps, plan):
    """The trainer's draw(batch, first_index, step_key) for the run's coupling and source."""
    from flowmatch.training import step  # pylint: disable=g-import-not-at-top
    return step.make_draw(comps.objective, comps.source, comps.settings.coupling,
                          comps.settings.train.batch_size, plan)


def test_a_coupling_permutes_the_drawn_source_samples_and_pairs_from_a_file_stay():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    config = small_config(**{"coupling.name": "exact"})
    config.batch_size = 32
    comps, plan = built(config)
    plain_config = small_config()
    plain_config.batch_size = 32
    plain_comps, _ = built(plain_config)
    batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (32, 2)),
             "label": jnp.zeros((32,), jnp.int32)}
    key = jax.random.PRNGKey(2)
    coupled = jax.jit(drawing(comps, plan), static_argnums=1)(batch, 0, key)
    independent = jax.jit(drawing(plain_comps, plan), static_argnums=1)(batch, 0, key)
    # The same times, and the coupling's x0 are the independent draw's rows, re-paired.
    np.testing.assert_array_equal(coupled["times"], independent["times"])
    assert sorted(map(tuple, np.asarray(coupled["x0"]))) == sorted(
        map(tuple, np.asarray(independent["x0"])))
    cost = lambda x0: float(np.mean(np.sum((np.asarray(x0) - batch["x"]) ** 2, 1)))  # noqa
    assert cost(coupled["x0"]) < 0.7 * cost(independent["x0"])
    # x0 that comes with the batch (pairs from a file) is used as it is.
    given = dict(batch, x0=jnp.ones((32, 2)))
    np.testing.assert_array_equal(drawing(comps, plan)(given, 0, key)["x0"], 1.0)


def test_per_class_pairing_of_labelled_images_in_the_trainer():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch.training import step  # pylint: disable=g-import-not-at-top
    config = load_config("digits")
    config.coupling.name, config.coupling.per_class = "exact", True
    b = 24
    config.batch_size = b
    comps, plan = built(config)
    labels = jnp.arange(b, dtype=jnp.int32) % 3
    batch = {"x": jax.random.normal(jax.random.PRNGKey(0), (b, *comps.source.example_shape)),
             "label": labels}
    key = jax.random.PRNGKey(1)
    u = step.row_uniforms(key, b, int(np.prod(comps.source.example_shape)), 0, b)
    drawn = np.asarray(jax.jit(lambda x: step.draw_source(comps.source, b, x, u, 0, key))(
        batch["x"])).reshape(b, -1)
    paired = np.asarray(jax.jit(drawing(comps, plan), static_argnums=1)(batch, 0, key)["x0"])
    paired = paired.reshape(b, -1)
    for k in range(3):  # each class's rows get a permutation of that class's draws
        rows = np.flatnonzero(np.asarray(labels) == k)
        by_first = lambda a: a[np.argsort(a[:, 0])]  # noqa: E731
        np.testing.assert_allclose(by_first(paired[rows]), by_first(drawn[rows]), rtol=1e-5,
                                   atol=1e-6)  # the draw compiled in another program
    assert not np.allclose(paired, drawn)


# exact: tests/experiments/test_reproduce_ot.py trains with it (and checks the lower pair cost).
@pytest.mark.parametrize("coupling", ["sinkhorn"])
def test_training_from_8gaussians_with_a_coupling(coupling, tmp_path):
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import metrics, training  # pylint: disable=g-import-not-at-top
    config = small_config(**{"coupling.name": coupling, "source.name": "8gaussians"})
    state = training.train_and_evaluate(config, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert int(state.step) == config.num_train_steps
    assert all(np.isfinite(r["loss"]) and r["pair_cost"] > 0 for r in rows)
    assert np.isfinite(rows[-1]["tv"]) and rows[-1]["nonfinite"] == 0
    comps, _ = built(config)
    x0 = comps.source.sample(jax.random.PRNGKey(0), 16)
    out = comps.make_sampler("euler", 1)(state.ema_params, x0, jax.random.PRNGKey(1))
    assert bool(out.success) and out.x.shape == (16, 2)


@pytest.mark.parametrize("overrides,match", [
    ({"objective.name": "ddpm", "objective.prediction": "eps", "coupling.name": "exact"},
     "needs coupling.name='independent'"),
    ({"objective.name": "ddpm", "objective.prediction": "eps", "source.name": "8gaussians"},
     "source.name='normal'"),
    ({"coupling.per_class": True}, "has no labels; set coupling.per_class=False"),
    ({"coupling.name": "hungarian"}, "unknown coupling.name 'hungarian'"),
    ({"source.name": "gaussian"}, "unknown source distribution 'gaussian'"),
])
def test_bad_coupling_or_source_configs_fail_before_compiling(overrides, match):
    from flowmatch.checks import ConfigError  # pylint: disable=g-import-not-at-top
    with pytest.raises(ConfigError, match=match):
        built(small_config(**overrides))


# -- 1 vs 8 devices (subprocess) -------------------------------------------------------------------


COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def collectives_in_loops(hlo: str) -> int:
    """Collective operations inside while loops (bodies, conditions and what they call) of a
    compiled HLO module's text."""
    comps, name = {}, None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            comps[name] = []
        elif line.strip() == "}":
            name = None
        elif name is not None:
            comps[name].append(line)
    called = lambda text: re.findall(
        r"(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)|"
        r"branch_computations=\{([^}]*)\}", text)

    def names(line):
        out = []
        for single, several in called(line):
            out += [single] if single else [n.strip().lstrip("%") for n in several.split(",")]
        return out

    todo = [n for lines in comps.values() for line in lines if " while(" in line
            for n in names(line) if n in comps]
    seen = set()
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += [m for line in comps[n] for m in names(line) if m in comps]
    return sum(1 for n in seen for line in comps[n]
               if any(f" {op}(" in line or f" {op}-start(" in line for op in COLLECTIVES))


def worker(out):
    """On 8 simulated devices: the paired x0 of one global batch under each coupling, scope and
    parallel mode, with the 1-device result alongside; writes <out>/pairs.npz."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_numpy_rank_promotion", "raise")
    b = 32
    x1 = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (b, 2)) + 1.0)
    batch = {"x": x1, "label": np.zeros((b,), np.int32)}
    key = jax.random.PRNGKey(2)
    results = {}
    runs = [("exact", "global", m) for m in ("one", "sharding", "pmap")] + [
        ("exact", "local", "sharding")] + [
        ("sinkhorn", "global", m) for m in ("one", "sharding", "pmap")]
    for coupling, scope, mode in runs:
        config = small_config(**{"coupling.name": coupling, "coupling.scope": scope,
                                 "source.name": "8gaussians", "batch_size": b,
                                 "parallel.data_axis_size": 1 if mode == "one" else -1,
                                 "parallel.mode": "pmap" if mode == "pmap" else "sharding"})
        comps, plan = built(config)
        pair = drawing(comps, plan)
        if mode == "pmap":
            rows = b // plan.num_shards
            fn = jax.pmap(lambda bt, first, pair=pair: pair(bt, first, key)["x0"],
                axis_name=parallel.DATA_AXIS, devices=plan.devices)
            stacked = plan.put_batches(jax.tree.map(lambda v: v[None], batch))
            x0 = fn(jax.tree.map(lambda v: v[:, 0], stacked),
                    plan.shard_offsets(rows)).reshape(b, 2)
        else:
            fn = jax.jit(lambda bt, pair=pair: pair(bt, 0, key)["x0"],
                in_shardings=(plan.batch_sharding(),))
            placed = jax.tree.map(lambda v: jax.device_put(v, plan.batch_sharding()), batch)
            compiled = fn.lower(placed).compile()  # traced and lowered once: run and inspected
            x0 = compiled(placed)
            results[f"loop_collectives-{coupling}-{scope}-{mode}"] = np.int32(
                collectives_in_loops(compiled.as_text()))
        results[f"{coupling}-{scope}-{mode}"] = np.asarray(x0)
        results[f"devices-{coupling}-{scope}-{mode}"] = np.int32(plan.num_shards)
    # The trainer's compiled call, two steps, in each mode: a Sinkhorn coupling solved inside
    # it (its steps' draws made before the loop) or a call ahead on the host (`training.ahead`),
    # and the exact coupling with the local scope, inside or ahead in two threads.
    from flowmatch.experiments import speed  # pylint: disable=g-import-not-at-top
    calls = [("sinkhorn", "global", "one", 0)] + [
        ("sinkhorn", "global", m, t) for m in ("sharding", "pmap") for t in (0, 1)] + [
        ("exact", "local", "sharding", 0), ("exact", "local", "sharding", 2),
        ("exact", "local", "pmap", 2)]
    for coupling, scope, mode, threads in calls:
        config = small_config(**{"coupling.name": coupling, "coupling.scope": scope,
                                 "coupling.ahead_threads": threads, "source.name": "8gaussians",
                                 "batch_size": b, "steps_per_call": 2,
                                 "parallel.data_axis_size": 1 if mode == "one" else -1,
                                 "parallel.mode": "pmap" if mode == "pmap" else "sharding"})
        metrics = speed.make_trainer(config, steps_per_call=2).call()
        losses = np.asarray(metrics["loss"])
        results[f"train-losses-{coupling}-{scope}-{mode}-{threads}"] = (
            losses[0] if mode == "pmap" else losses)
    # The unpaired draws, for the local-scope check.
    pair = drawing(*built(small_config(**{
        "source.name": "8gaussians", "batch_size": b, "parallel.data_axis_size": 1})))
    results["independent"] = np.asarray(jax.jit(lambda bt: pair(bt, 0, key)["x0"])(batch))
    np.savez(os.path.join(out, "pairs.npz"), x1=x1, **results)


@pytest.fixture(scope="module")
def eight_device_pairs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pairs"))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps({"out": out})],
                          cwd=ROOT, env=simulated_devices_env(8), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with np.load(os.path.join(out, "pairs.npz")) as f:
        return dict(f)


@pytest.mark.parametrize("coupling", ["exact", "sinkhorn"])
def test_global_scope_gives_the_same_pairs_on_one_and_eight_devices(eight_device_pairs,
                                                                     coupling):
    r = eight_device_pairs
    one = r[f"{coupling}-global-one"]
    assert r[f"devices-{coupling}-global-sharding"] == 8
    np.testing.assert_array_equal(r[f"{coupling}-global-sharding"], one)
    np.testing.assert_array_equal(r[f"{coupling}-global-pmap"], one)
    if coupling == "exact":  # a permutation of the same draws
        np.testing.assert_array_equal(np.sort(one, 0), np.sort(r["independent"], 0))


@pytest.mark.parametrize("coupling", ["exact", "sinkhorn"])
def test_global_scope_solves_the_whole_batch_on_each_device(eight_device_pairs, coupling):
    """No collective inside the solver's loops under jit: each device runs the whole auction
    or Sinkhorn on the gathered batch (XLA's partitioner once split them over the mesh, with an
    all-reduce in each of the auction's thousands of rounds: 15x slower on 8 CPU devices)."""
    assert eight_device_pairs[f"loop_collectives-{coupling}-global-sharding"] == 0


def test_a_coupled_train_call_is_the_same_on_one_and_eight_devices(eight_device_pairs):
    """The trainer's call with a Sinkhorn coupling over the global batch, solved inside it or
    a call ahead on the host: the same losses under jit on 1 and 8 devices and under pmap, up
    to the order of float reductions; and so with the exact coupling on each device's rows."""
    r = eight_device_pairs
    one = r["train-losses-sinkhorn-global-one-0"]
    assert one.shape == (2,) and np.all(np.isfinite(one))
    for mode in ("sharding", "pmap"):
        for threads in (0, 1):
            np.testing.assert_allclose(r[f"train-losses-sinkhorn-global-{mode}-{threads}"], one,
                                       rtol=1e-5)
    local = r["train-losses-exact-local-sharding-0"]
    assert np.all(np.isfinite(local)) and not np.allclose(local, one)
    for mode, threads in (("sharding", 2), ("pmap", 2)):
        np.testing.assert_allclose(r[f"train-losses-exact-local-{mode}-{threads}"], local,
                                   rtol=1e-5)


def test_local_scope_pairs_within_each_devices_rows(eight_device_pairs):
    r = eight_device_pairs
    ind, local, x1 = r["independent"], r["exact-local-sharding"], r["x1"]
    for s in range(8):  # each device's 4 rows: a permutation of its own draws, optimal there
        rows = slice(s * 4, (s + 1) * 4)
        np.testing.assert_array_equal(np.sort(local[rows], 0), np.sort(ind[rows], 0))
        cost = np.mean(np.sum((local[rows] - x1[rows]) ** 2, 1))
        # scipy's optimum of the piece (the worker once solved each piece with the auction on one
        # device, a 2.3 s compilation, and compared with that)
        best, _ = _optimum(np.sum((x1[rows, None] - ind[None, rows]) ** 2, -1))
        np.testing.assert_allclose(cost, best / 4, rtol=1e-5)
    assert not np.array_equal(local, r["exact-global-one"])
    assert r["loop_collectives-exact-local-sharding"] == 0


if __name__ == "__main__":
    worker(json.loads(sys.argv[1])["out"])
