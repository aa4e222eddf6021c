"""Validation of `solve`'s arguments at the boundary (host side; value checks skip traced values).

Every error is a ValueError that says what was given, what is allowed and what to do.
"""

from __future__ import annotations

import jax
import numpy as np

from flowmatch.integrators.methods import ADAPTIVE_METHODS, Method, check_count, lookup
from flowmatch.integrators.multistep import AdamsBashforth


def concrete(x):
    """x as a NumPy value, or None when it is traced (checks that need values are skipped)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_positive(name, value):
    c = concrete(value)
    if c is not None and not (c.ndim == 0 and np.isfinite(c) and c > 0):
        raise ValueError(f"{name} must be a positive scalar, got {value!r}")


def check_arguments(method, *, num_steps=None, time_grid=None, rtol=None, atol=None,
                    max_steps=4096, first_step=None) -> Method:
    """Validates a method / grid / tolerance combination (host side, no tracing); returns the
    method (a ButcherTableau or an AdamsBashforth).  `solve` calls it; call it early to fail
    before compiling anything."""
    tab = lookup(method)
    adaptive = rtol is not None or atol is not None
    on_grid = num_steps is not None or time_grid is not None
    if adaptive and not tab.embedded:
        why = (" (an Adams-Bashforth multistep method runs on a fixed grid only)"
               if isinstance(tab, AdamsBashforth) else "")
        raise ValueError(
            f"method {tab.name!r} is fixed-step and takes no rtol/atol{why}; drop them (and pass "
            f"num_steps or time_grid) or choose an adaptive method: {', '.join(ADAPTIVE_METHODS)}")
    if num_steps is not None and time_grid is not None:
        raise ValueError("pass num_steps or time_grid, not both")
    if adaptive and on_grid:
        raise ValueError(
            f"got both tolerances (rtol={rtol!r}, atol={atol!r}) and a fixed grid; pass rtol and "
            "atol for adaptive stepping, or num_steps / time_grid for a fixed grid")
    if not adaptive and not on_grid:
        if tab.embedded:
            raise ValueError(
                f"method {tab.name!r} needs rtol and atol for adaptive stepping (e.g. rtol=1e-5, "
                "atol=1e-5), or num_steps / time_grid for a fixed grid")
        raise ValueError(f"method {tab.name!r} is fixed-step: pass num_steps or time_grid")
    if adaptive:
        if rtol is None or atol is None:
            raise ValueError(f"adaptive stepping needs both rtol and atol, got rtol={rtol!r}, "
                             f"atol={atol!r}")
        _check_positive("rtol", rtol)
        _check_positive("atol", atol)
        check_count("max_steps", max_steps)
        if first_step is not None:
            _check_positive("first_step", first_step)
    else:
        if first_step is not None:
            raise ValueError("first_step only applies to adaptive stepping (rtol/atol); on a "
                             "fixed grid the steps are given")
        if num_steps is not None:
            check_count("num_steps", num_steps)
    return tab


def check_grid(grid, t0, t1) -> None:
    """grid [N + 1], N >= 1: monotonic, finite, and agreeing with t0 / t1 where those are given
    (not their defaults 0 and 1)."""
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"time_grid must be 1-D with at least 2 points, got shape {grid.shape}")
    g = concrete(grid)
    if g is None:
        return
    d = np.diff(g)
    if not (np.all(d >= 0) or np.all(d <= 0)) or not np.all(np.isfinite(g)):
        i = int(np.argmax(np.sign(d) * np.sign(g[-1] - g[0]) < 0))
        raise ValueError(
            f"time_grid must be monotonic (increasing or decreasing) and finite; it turns at "
            f"index {i + 1}: {g[max(i - 1, 0):i + 3]}")
    for name, val, default, end in (("t0", t0, 0.0, g[0]), ("t1", t1, 1.0, g[-1])):
        c = concrete(val)
        if c is not None and c != default and np.asarray(c, g.dtype) != end:
            raise ValueError(f"{name}={val!r} disagrees with time_grid, which runs from {g[0]} to "
                             f"{g[-1]}; leave t0/t1 out when passing a grid")


def check_save_at(save_at, t0, t1) -> None:
    """save_at [M], M >= 1: strictly monotonic from t0 towards t1 and inside [t0, t1]."""
    if save_at.ndim != 1 or save_at.shape[0] < 1:
        raise ValueError(f"save_at must be a 1-D array of times, got shape {save_at.shape}")
    sa, a, b = concrete(save_at), concrete(t0), concrete(t1)
    if sa is None or a is None or b is None:
        return
    d = np.sign(b - a)
    if not (np.all(np.diff(sa) * d > 0) and np.all((sa - a) * d >= 0)
            and np.all((b - sa) * d >= 0)):
        raise ValueError(f"save_at must be strictly monotonic from t0={a} towards t1={b} and "
                         f"inside [t0, t1], got {sa}")
