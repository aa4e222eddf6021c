"""Explicit linear multistep methods: Adams-Bashforth of orders 2, 3 and 4 on any fixed grid.

The k-step Adams-Bashforth method integrates the polynomial that interpolates the last k
evaluations f_j = f(tau_j, y_j) over the current step (Hairer, Norsett & Wanner, Solving ODEs I,
Sec. III.1; variable step sizes: Sec. III.5):

    y_{n+1} = y_n + sum_{j=0}^{k-1} w_j f_{n-j},    w_j = int_{t_n}^{t_{n+1}} l_j(t) dt,

l_j the Lagrange basis polynomial through the nodes tau_0 = t_n, ..., tau_{k-1} = t_{n-k+1}.
On a uniform grid w_j = h beta_j with the classic coefficients (AB2: 3/2, -1/2; ...); on any
other grid the weights are computed exactly, per step, from the grid inside the compiled loop.
One evaluation of f per step, after k - 1 warm-start steps of an explicit Runge-Kutta method of
the same order (whose first stages give the first k - 1 history values).  States are leaf lists.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flowmatch.integrators.runge_kutta import finite_status, rk_step
from flowmatch.integrators.solution import Solution
from flowmatch.integrators.tableaus import HEUN, RK3, RK4, ButcherTableau


@dataclasses.dataclass(frozen=True)
class AdamsBashforth:
    """The k-step explicit Adams-Bashforth method (order k), warm-started by `starter`.

    A solve of N steps takes min(N, k - 1) steps of `starter` (each evaluating its
    fixed_stages stages), then one evaluation of f per remaining step.  With N <= k - 1 every
    step is a starter step.
    """

    name: str
    order: int
    starter: ButcherTableau

    def __post_init__(self):
        if not (isinstance(self.order, int) and self.order >= 2):
            raise ValueError(f"Adams-Bashforth {self.name!r}: order must be an integer >= 2 "
                             f"(order 1 is Euler: use 'euler'), got {self.order!r}")
        if self.starter.order < self.order:
            raise ValueError(
                f"Adams-Bashforth {self.name!r} of order {self.order} needs a warm-start method "
                f"of at least that order; {self.starter.name!r} has order {self.starter.order}")

    @property
    def embedded(self) -> bool:
        """False: no error estimate, so fixed grids only."""
        return False

    @property
    def warm_steps(self) -> int:
        return self.order - 1

    def nfe(self, num_steps: int) -> int:
        """Evaluations of f for num_steps steps: warm start + one per multistep step."""
        warm = min(num_steps, self.warm_steps)
        return warm * self.starter.fixed_stages + (num_steps - warm)


# Warm starts of the same order: Heun (order 2), Kutta's third-order method, classic RK4.
AB2 = AdamsBashforth("ab2", 2, starter=HEUN)
AB3 = AdamsBashforth("ab3", 3, starter=RK3)
AB4 = AdamsBashforth("ab4", 4, starter=RK4)
MULTISTEP: dict[str, AdamsBashforth] = {m.name: m for m in (AB2, AB3, AB4)}


def adams_bashforth_weights(nodes, valid, t, t_next) -> jax.Array:
    """w_j = int_t^{t_next} l_j(s) ds for the Lagrange basis l_j through the valid nodes.

    nodes: [k] times, nodes[0] = t (the current point), then earlier evaluation times, most
    recent first; valid: [k] bool (valid[0] True), invalid nodes are left out of the
    interpolation (their weight is 0, and the others are those of the lower-order method);
    t, t_next: scalars.  Valid nodes must be distinct.  Returns [k] in the nodes' dtype; exact
    up to rounding: with d_m = nodes[m] - t and h = t_next - t,
    w_j = sum_p c_jp h^{p+1} / (p + 1), c_j the coefficients of prod_{m != j} (s - d_m) /
    (d_j - d_m).  Weights are 0 when h = 0.
    """
    k = nodes.shape[0]
    d = nodes - t
    h = t_next - t
    # Factor m of basis polynomial j is a_jm + b_jm s; 1 (a = 1, b = 0) for m = j or an invalid
    # node (the where keeps gradients finite there).
    use = valid[:, None] & valid[None, :] & ~jnp.eye(k, dtype=bool)
    gap = jnp.where(use, d[:, None] - d[None, :], 1.0)
    a = jnp.where(use, -d[None, :] / gap, 1.0)
    b = jnp.where(use, 1.0 / gap, 0.0)
    coeffs = jnp.zeros((k, k), d.dtype).at[:, 0].set(1.0)  # [j, degree], lowest degree first
    for m in range(k):  # degree stays <= k - 1: at most k - 1 factors have b != 0
        times_s = jnp.concatenate([jnp.zeros((k, 1), d.dtype), coeffs[:, :-1]], axis=1)
        coeffs = a[:, m:m + 1] * coeffs + b[:, m:m + 1] * times_s
    h_powers = [h]
    for _ in range(k - 1):
        h_powers.append(h_powers[-1] * h)
    integrals = jnp.stack(h_powers) / jnp.arange(1, k + 1, dtype=d.dtype)  # int_0^h s^p ds
    return jnp.where(valid, jnp.sum(coeffs * integrals[None, :], axis=1), 0.0)


class History(NamedTuple):
    """The scan carry: the state and the last k - 1 evaluations before it.

    y: leaf list at the current time; times: [k - 1] evaluation times, most recent first;
    fs: k - 1 leaf lists, f at those times; count: int32, how many entries are valid (the
    rest are placeholders until the warm start has filled them).
    """

    y: list
    times: jax.Array
    fs: tuple
    count: jax.Array


def _push(hist: History, y1, t, f_t, h) -> History:
    """History after a step of length h from t (f_t = f(t, y)) to the state y1.

    A zero-length step (h == 0) adds no node, so the valid nodes stay distinct."""
    moved = h != 0
    times = jnp.where(moved, jnp.concatenate([t[None], hist.times[:-1]]), hist.times)
    fs = tuple([jnp.where(moved, new, old) for new, old in zip(shifted, kept)]
               for shifted, kept in zip((f_t,) + hist.fs[:-1], hist.fs))
    count = jnp.where(moved, jnp.minimum(hist.count + 1, len(hist.fs)), hist.count)
    return History(y=y1, times=times, fs=fs, count=count.astype(jnp.int32))


def solve_fixed(f: Callable, method: AdamsBashforth, y0, grid, *, save: bool,
                unroll: int = 1) -> Solution:
    """Steps `method` along grid [N + 1] (monotonic; repeated points are no-op steps).

    Two lax.scans: min(N, k - 1) warm-start Runge-Kutta steps, then the multistep steps.  A
    zero-length step adds no history node, so one inside the warm start leaves the first
    multistep steps with fewer nodes (a lower order) until the history has k - 1 again.
    y0: leaf list.  Returns a Solution over leaf lists with nfe = method.nfe(N).
    """
    k = method.order
    starter = method.starter
    steps = grid.shape[0] - 1
    warm = min(steps, method.warm_steps)

    def warm_step(hist: History, tt):
        t, t_next = tt
        h = t_next - t
        step = rk_step(f, starter, hist.y, t, t_next, h, num_stages=starter.fixed_stages)
        return _push(hist, step.y1, t, step.ks[0], h), (step.y1 if save else None)

    def ab_step(hist: History, tt):
        t, t_next = tt
        h = t_next - t
        f_t = f(t, hist.y)
        valid = jnp.concatenate([jnp.ones((1,), bool), jnp.arange(k - 1) < hist.count])
        w = adams_bashforth_weights(jnp.concatenate([t[None], hist.times]), valid, t, t_next)
        y1 = []
        for i, y in enumerate(hist.y):
            terms = [w[j].astype(y.dtype) * fj[i] for j, fj in enumerate((f_t,) + hist.fs)]
            y1.append(y + sum(terms[1:], terms[0]))
        return _push(hist, y1, t, f_t, h), (y1 if save else None)

    hist = History(y=list(y0), times=jnp.zeros((k - 1,), grid.dtype),
                   fs=tuple([jnp.zeros_like(y) for y in y0] for _ in range(k - 1)),
                   count=jnp.asarray(0, jnp.int32))
    hist, warm_traj = lax.scan(warm_step, hist, (grid[:warm], grid[1:warm + 1]), unroll=unroll)
    trajs = [warm_traj]
    if steps > warm:
        hist, ab_traj = lax.scan(ab_step, hist, (grid[warm:-1], grid[warm + 1:]), unroll=unroll)
        trajs.append(ab_traj)
    xs = None
    if save:
        xs = [jnp.concatenate([y[None]] + [tr[i] for tr in trajs], axis=0)
              for i, y in enumerate(y0)]
    return Solution(
        x=hist.y, t=grid[-1], nfe=jnp.asarray(method.nfe(steps), jnp.int32),
        num_accepted=jnp.asarray(steps, jnp.int32), num_rejected=jnp.asarray(0, jnp.int32),
        status=finite_status(hist.y), ts=grid if save else None, xs=xs)
