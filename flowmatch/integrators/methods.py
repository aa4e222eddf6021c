"""The method registry: names -> methods, and what a fixed-grid solve costs in evaluations."""

from __future__ import annotations

import numbers

from flowmatch.integrators.multistep import MULTISTEP, AdamsBashforth
from flowmatch.integrators.tableaus import TABLEAUS, ButcherTableau

Method = ButcherTableau | AdamsBashforth
METHODS: tuple[str, ...] = tuple(TABLEAUS) + tuple(MULTISTEP)
ADAPTIVE_METHODS: tuple[str, ...] = tuple(n for n, t in TABLEAUS.items() if t.embedded)


def check_count(name, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def lookup(method) -> Method:
    """The method named `method` (a name in METHODS), or `method` itself if it is a
    ButcherTableau or an AdamsBashforth."""
    if isinstance(method, (ButcherTableau, AdamsBashforth)):
        return method
    found = (TABLEAUS.get(method) or MULTISTEP.get(method)) if isinstance(method, str) else None
    if found is None:
        raise ValueError(f"unknown integrator {method!r}; choose one of: {', '.join(METHODS)} "
                         "(or pass a ButcherTableau or an AdamsBashforth)")
    return found


def nfe_for(method, num_steps: int) -> int:
    """The exact number of v evaluations of a fixed-grid solve with num_steps steps.

    Runge-Kutta: fixed_stages per step, the b-weighted stages only.  For an FSAL pair the last
    stage (b_s = 0) is exactly the next step's first stage; skipping it costs the same as
    reusing it (s - 1 per step: 6 for dopri5 / tsit5, 3 for bosh3), without carrying it.
    Adams-Bashforth of order k: min(N, k - 1) warm-start steps of its Runge-Kutta starter
    (k stages each for ab2 / ab3 / ab4), then one per step: ab4 with N >= 3 costs 12 + (N - 3),
    with N < 3 it costs 4 N.
    """
    m = lookup(method)
    check_count("num_steps", num_steps)
    if isinstance(m, AdamsBashforth):
        return m.nfe(int(num_steps))
    return m.fixed_stages * int(num_steps)


def steps_for_budget(method, nfe_budget: int) -> int | None:
    """The largest num_steps with nfe_for(method, num_steps) <= nfe_budget; None when even one
    step costs more.  (nfe_for grows with num_steps, but not linearly for multistep methods.)"""
    m = lookup(method)
    if (isinstance(nfe_budget, bool) or not isinstance(nfe_budget, numbers.Integral)
            or nfe_budget < 0):
        raise ValueError(f"nfe_budget must be an integer >= 0, got {nfe_budget!r}")
    budget = int(nfe_budget)
    if isinstance(m, AdamsBashforth):
        per_warm = m.starter.fixed_stages
        warm_cost = m.warm_steps * per_warm
        steps = budget // per_warm if budget <= warm_cost else m.warm_steps + budget - warm_cost
    else:
        steps = budget // m.fixed_stages
    return steps if steps >= 1 else None
