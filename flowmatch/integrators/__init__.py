"""ODE integrators: explicit Runge-Kutta (fixed grids, adaptive steps) and Adams-Bashforth.

Solves dx/dt = v(t, x) from t0 to t1 (either direction) for a state x that is any pytree of
float arrays; a batch is one system.  The integrators know nothing about models, paths or
training.  Project convention: t = 0 noise, t = 1 data, so sampling runs 0 -> 1 and inversion
(data -> noise) runs 1 -> 0.

    sol = solve(v, x0, method="rk4", num_steps=8)                # fixed grid, lax.scan
    sol = solve(v, x0, method="dopri5", rtol=1e-5, atol=1e-5)    # adaptive, lax.while_loop
    check(sol)                                                    # host side: raises on failure

Each Runge-Kutta method is a validated `ButcherTableau`; one generic explicit-RK stepper runs
them all, so adding a solver is adding a tableau.  Adams-Bashforth methods ab2, ab3, ab4
(`AdamsBashforth`) take one evaluation per step on fixed grids, after a Runge-Kutta warm start;
their NFE is not linear in the steps: use `nfe_for` and `steps_for_budget`.

`solve` traces to loops on device (lax.scan / lax.while_loop): call it inside `jax.jit` (one
XLA program, no host round trip per step); it also works under `vmap` (one solve, with its own
step sizes, per example).

Failure is never silent: `sol.status` is SUCCESS (0) or one of the codes in STATUS_MESSAGES
(`sol.success` is `status == 0`); on failure `sol.x` is the state at the time `sol.t` reached.
Check it with `check(sol)` outside jit (raises RuntimeError), or use `sol.success` inside.

Modules (one idea each):
    tableaus      Butcher tableaus, validated on construction (data only)
    methods       the registry of names, NFE counts of fixed-grid solves, steps for a budget
    runge_kutta   the generic explicit-RK step and the fixed-grid solve (lax.scan)
    controller    step-size control: PIController.init / adapt_step_size
    adaptive      the adaptive loop (lax.while_loop): step, ask the controller, keep or reject
    multistep     Adams-Bashforth methods: variable-step weights, the fixed-grid solve
    solution      the Solution record, status codes and `check`
    arguments     argument validation; leaves: the state as a flat list of arrays
    api           `solve`, the public front
"""

from flowmatch.integrators.api import solve
from flowmatch.integrators.arguments import check_arguments
from flowmatch.integrators.controller import PIController
from flowmatch.integrators.methods import ADAPTIVE_METHODS, METHODS, nfe_for, steps_for_budget
from flowmatch.integrators.multistep import AB2, AB3, AB4, MULTISTEP, AdamsBashforth
from flowmatch.integrators.solution import (MAX_STEPS_REACHED, NONFINITE, STATUS_MESSAGES,
                                            STEP_SIZE_TOO_SMALL, SUCCESS, Solution, check)
from flowmatch.integrators.tableaus import (BOSH3, DOPRI5, EULER, HEUN, MIDPOINT, RALSTON, RK3,
                                            RK4, TABLEAUS, TSIT5, ButcherTableau)

__all__ = [
    "AB2", "AB3", "AB4", "ADAPTIVE_METHODS", "BOSH3", "DOPRI5", "EULER", "HEUN",
    "MAX_STEPS_REACHED", "METHODS", "MIDPOINT", "MULTISTEP", "NONFINITE", "RALSTON", "RK3", "RK4",
    "STATUS_MESSAGES", "STEP_SIZE_TOO_SMALL", "SUCCESS", "TABLEAUS", "TSIT5", "AdamsBashforth",
    "ButcherTableau", "PIController", "Solution", "check", "check_arguments", "nfe_for", "solve",
    "steps_for_budget",
]
