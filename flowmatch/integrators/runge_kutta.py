"""The generic explicit Runge-Kutta step, and the fixed-grid solve built on it.

One step of any `ButcherTableau` from (t, y) to t_next = t + h:

    k_i = v(t + c_i h, y + h sum_{j<i} a_ij k_j),    y_next = y + h sum_i b_i k_i,

with the error estimate h sum_i b_err_i k_i for embedded pairs.  States are leaf lists
(`leaves.py`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flowmatch.integrators.leaves import all_finite, lincomb
from flowmatch.integrators.solution import NONFINITE, SUCCESS, Solution
from flowmatch.integrators.tableaus import ButcherTableau


class RKStep(NamedTuple):
    """One explicit Runge-Kutta step's results (leaf lists).

    y1: the state at t_next.
    y_error: h sum_i b_err_i k_i, the local error estimate (None unless asked for).
    ks: the stages evaluated; ks[0] = v(t, y), and for an FSAL pair taking all stages
        ks[-1] = v(t_next, y1), the next step's first stage.
    """

    y1: list
    y_error: list | None
    ks: list


def stage_time(t, t_next, h, c):
    """t + c h; c = 0 and c = 1 land exactly on the interval ends (the FSAL stage is then
    bit-exact)."""
    if c == 0.0:
        return t
    if c == 1.0:
        return t_next
    return t + c * h


def rk_step(f: Callable, tab: ButcherTableau, y, t, t_next, h, *, k1=None,
            num_stages: int | None = None, error: bool = False) -> RKStep:
    """One step of `tab` for dy/dt = f(t, y) from t to t_next (h = t_next - t, passed in so the
    caller decides how a shortened step is rounded).

    y: leaf list; t, t_next, h: scalars (time dtype).  k1: f(t, y) if already known (it is then
    not evaluated again).  num_stages: evaluate only the first stages (default all; a fixed
    grid skips trailing stages with b_i = 0).  error: also return the embedded error estimate.
    Evaluates f num_stages times, or num_stages - 1 times given k1.
    """
    n = tab.num_stages if num_stages is None else num_stages
    ks = [] if k1 is None else [k1]
    y_stage = y
    for i in range(len(ks), n):
        y_stage = lincomb(y, h, tab.a[i], ks)
        ks.append(f(stage_time(t, t_next, h, tab.c[i]), y_stage))
    if tab.fsal and n == tab.num_stages:
        y1 = y_stage  # the last stage's argument is the step's result
    else:
        y1 = lincomb(y, h, tab.b[:n], ks)
    y_error = lincomb(None, h, tab.b_err, ks) if error else None
    return RKStep(y1=y1, y_error=y_error, ks=ks)


def solve_fixed(f: Callable, tab: ButcherTableau, y0, grid, *, save: bool,
                unroll: int = 1) -> Solution:
    """Steps `tab` along grid [N + 1] (monotonic; repeated points are no-op steps) in a lax.scan.

    y0: leaf list.  Returns a Solution over leaf lists (x: leaves at grid[-1]; xs: leaves
    [N + 1, ...] when save) with nfe = tab.fixed_stages * N.
    """
    n = tab.fixed_stages

    def step(ys, tt):
        t, t_next = tt
        ys_next = rk_step(f, tab, ys, t, t_next, t_next - t, num_stages=n).y1
        return ys_next, (ys_next if save else None)

    y1, traj = lax.scan(step, y0, (grid[:-1], grid[1:]), unroll=unroll)
    steps = grid.shape[0] - 1
    xs = None
    if save:
        xs = [jnp.concatenate([y[None], tr], axis=0) for y, tr in zip(y0, traj)]
    return Solution(
        x=y1, t=grid[-1], nfe=jnp.asarray(n * steps, jnp.int32),
        num_accepted=jnp.asarray(steps, jnp.int32), num_rejected=jnp.asarray(0, jnp.int32),
        status=finite_status(y1), ts=grid if save else None, xs=xs)


def finite_status(ys) -> jax.Array:
    """SUCCESS if every leaf is finite, else NONFINITE (int32 scalar)."""
    return jnp.where(all_finite(ys), SUCCESS, NONFINITE).astype(jnp.int32)
