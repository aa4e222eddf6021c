"""The method registry: names -> methods, and what a fixed-grid solve costs in evaluations."""

from __future__ import annotations

import numbers

from flowmatch.integrators.tableaus import TABLEAUS, ButcherTableau

METHODS: tuple[str, ...] = tuple(TABLEAUS)
ADAPTIVE_METHODS: tuple[str, ...] = tuple(n for n, t in TABLEAUS.items() if t.embedded)


def check_count(name, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def lookup(method) -> ButcherTableau:
    """The method named `method` (a name in METHODS), or `method` itself if it is a tableau."""
    if isinstance(method, ButcherTableau):
        return method
    tab = TABLEAUS.get(method) if isinstance(method, str) else None
    if tab is None:
        raise ValueError(f"unknown integrator {method!r}; choose one of: {', '.join(METHODS)} "
                         "(or pass a ButcherTableau)")
    return tab


def nfe_for(method, num_steps: int) -> int:
    """The exact number of v evaluations of a fixed-grid solve with num_steps steps.

    fixed_stages per step: the b-weighted stages only.  For an FSAL pair the last stage (b_s = 0)
    is exactly the next step's first stage; skipping it costs the same as reusing it (s - 1 per
    step: 6 for dopri5 / tsit5, 3 for bosh3), without carrying it.
    """
    tab = lookup(method)
    check_count("num_steps", num_steps)
    return tab.fixed_stages * int(num_steps)
