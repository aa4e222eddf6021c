"""Butcher tableaus: order conditions (rooted trees), derived properties, validation."""

import math

import numpy as np
import pytest

from flowmatch import integrators


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


@pytest.mark.parametrize("name", integrators.TABLEAUS)
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
                                   "dopri5", "tsit5", "ab2", "ab3", "ab4")
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
