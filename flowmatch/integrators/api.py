"""The public front: `solve` validates, flattens the state, runs a loop, restores the state."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from flowmatch import timegrids
from flowmatch.integrators import multistep, runge_kutta
from flowmatch.integrators.adaptive import solve_adaptive
from flowmatch.integrators.arguments import check_arguments, check_grid, check_save_at
from flowmatch.integrators.controller import PIController
from flowmatch.integrators.leaves import flat_field
from flowmatch.integrators.solution import Solution


def solve(v: Callable, x0, *, method="euler", num_steps: int | None = None, time_grid=None,
          t0=0.0, t1=1.0, rtol: float | None = None, atol: float | None = None,
          max_steps: int = 4096, first_step: float | None = None, save_trajectory: bool = False,
          save_at=None, controller: PIController = PIController(), unroll: int = 1,
          error_on=None) -> Solution:
    """Integrates dx/dt = v(t, x) from t0 to t1 (either direction).  Call inside jax.jit.

    v: (t, x) -> dx/dt, t a scalar array, x and the result pytrees like x0 (the result is cast
        to x0's dtypes).
    x0: pytree of float arrays (any shapes; a batch is one system).  bfloat16 states are stepped
        in bfloat16; time, step sizes and error norms use at least float32.
    method: a name in METHODS, a ButcherTableau or an AdamsBashforth.
    Fixed grid (any method): num_steps (uniform from t0 to t1) or time_grid [N + 1] (any
        monotonic grid, e.g. from flowmatch.timegrids; it sets the endpoints, so leave t0/t1
        out; repeated points are zero-length no-op steps).  lax.scan; nfe == nfe_for(method, N);
        unroll is passed to lax.scan.  Differentiable in reverse mode.  Adams-Bashforth ab2 /
        ab3 / ab4 (fixed grids only): one evaluation per step after k - 1 warm-start steps of
        heun / rk3 / rk4, with variable-step weights computed from the grid (see `multistep`).
    Adaptive (embedded pairs: bosh3, dopri5, tsit5): rtol and atol.  lax.while_loop with PI
        control (`controller`) on the error norm RMS(err / (atol + rtol max(|x_old|, |x_new|)));
        the first step from the Hairer-Norsett-Wanner heuristic (one extra evaluation) unless
        first_step (a positive magnitude) is given; FSAL pairs cost s - 1 evaluations per
        attempted step; the last step is shortened to land exactly on t1.  At most max_steps
        attempted steps, else status MAX_STEPS_REACHED.  Forward-mode differentiable (jvp,
        jacfwd; step sizes are held fixed); not reverse mode (lax.while_loop).
    error_on (adaptive; ignored on a fixed grid): None (all of the state), or a pytree of bools
        with x0's structure or a prefix of it: the parts whose error the step control measures
        (the first-step heuristic included).  The others ride along on the same steps without
        error control: a quadrature of the solution, e.g. the path energy of
        `flowmatch.diagnostics.straightness.solve_with_energy`, which then leaves the steps,
        and so x, exactly those of a solve of x alone.
    Saving: save_trajectory=True on a fixed grid returns ts = grid and xs at every grid point.
        Adaptive: save_at [M] (strictly monotonic from t0 towards t1, inside [t0, t1]) returns
        xs at exactly those times: the stepper shortens steps to land on them (no interpolation,
        so saved states have full accuracy; each save time inside the interval may add a step).

    Returns a Solution; check `sol.success` / `check(sol)` (see the package docstring).
    Raises ValueError at call time for unknown methods and inconsistent arguments.
    """
    tab = check_arguments(method, num_steps=num_steps, time_grid=time_grid, rtol=rtol, atol=atol,
                          max_steps=max_steps, first_step=first_step)
    leaves0, treedef = _flatten_state(x0)
    f = flat_field(v, treedef, leaves0)
    if rtol is None:
        if save_at is not None:
            raise ValueError("save_at is for adaptive stepping; on a fixed grid use "
                             "save_trajectory=True (put the times you need into time_grid)")
        grid = _fixed_grid(num_steps, time_grid, t0, t1)
        stepper = multistep if isinstance(tab, multistep.AdamsBashforth) else runge_kutta
        sol = stepper.solve_fixed(f, tab, leaves0, grid, save=save_trajectory, unroll=unroll)
    else:
        if save_trajectory and save_at is None:
            raise ValueError("adaptive steps are not known in advance: pass save_at=[times] to "
                             "save the state at those times (or use num_steps / time_grid)")
        t0a, t1a, save_at = _adaptive_times(t0, t1, save_at)
        sol = solve_adaptive(f, tab, leaves0, t0a, t1a, rtol=rtol, atol=atol,
                             max_steps=max_steps, first_step=first_step, save_at=save_at,
                             controller=controller, measured=_measured(error_on, x0))
    return sol.replace(x=jax.tree.unflatten(treedef, sol.x),
                       xs=None if sol.xs is None else jax.tree.unflatten(treedef, sol.xs))


def _flatten_state(x0):
    """(leaf list of float arrays, treedef) of x0; ValueError for empty or non-float states."""
    leaves0, treedef = jax.tree.flatten(x0)
    if not leaves0:
        raise ValueError("x0 has no arrays to integrate")
    leaves0 = [jnp.asarray(l) for l in leaves0]
    for l in leaves0:
        if not jnp.issubdtype(l.dtype, jnp.floating):
            raise ValueError(f"x0 leaves must be float arrays, got dtype {l.dtype}")
    return leaves0, treedef


def _measured(error_on, x0) -> tuple[bool, ...] | None:
    """error_on (a pytree prefix of x0 of bools) as one bool per leaf of x0, in leaf order; None
    for all of them.  ValueError when it does not fit x0 or selects nothing."""
    if error_on is None:
        return None
    try:
        per_part = jax.tree.map(lambda on, part: (bool(on),) * len(jax.tree.leaves(part)),
                                error_on, x0)
    except ValueError as e:
        raise ValueError(f"error_on must be a pytree of bools with x0's structure or a prefix "
                         f"of it: {e}") from None
    measured = tuple(jax.tree.leaves(per_part))
    if not any(measured):
        raise ValueError("error_on selects no part of the state: the step control needs at "
                         "least one part to measure")
    return None if all(measured) else measured


def _time_dtype(*xs):
    """Time, step sizes and error norms: the arguments' float dtype, at least float32."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _fixed_grid(num_steps, time_grid, t0, t1):
    """The grid [N + 1] of a fixed-grid solve, validated (time dtype: at least float32)."""
    if time_grid is None:
        return timegrids.uniform(num_steps, t0, t1)
    grid = jnp.asarray(time_grid)
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        grid = grid.astype(jnp.asarray(0.0).dtype)
    grid = grid.astype(_time_dtype(grid))
    check_grid(grid, t0, t1)
    return grid


def _adaptive_times(t0, t1, save_at):
    """t0, t1 and save_at in the time dtype (at least float32), validated."""
    tdt = _time_dtype(jnp.asarray(0.0).dtype, t0, t1)
    t0a = jnp.asarray(t0, tdt)
    t1a = jnp.asarray(t1, tdt)
    if t0a.ndim or t1a.ndim:
        raise ValueError(f"t0 and t1 must be scalars, got shapes {t0a.shape} and {t1a.shape}")
    if save_at is not None:
        save_at = jnp.asarray(save_at, tdt)
        check_save_at(save_at, t0a, t1a)
    return t0a, t1a, save_at
