"""Explicit Runge-Kutta ODE integrators: fixed grids and adaptive step-size control.

Solves dx/dt = v(t, x) from t0 to t1 (either direction) for a state x that is any pytree of
float arrays; a batch is one system.  The integrators know nothing about models, paths or
training.  Project convention: t = 0 noise, t = 1 data, so sampling runs 0 -> 1 and inversion
(data -> noise) runs 1 -> 0.

    sol = solve(v, x0, method="rk4", num_steps=8)                # fixed grid, lax.scan
    sol = solve(v, x0, method="dopri5", rtol=1e-5, atol=1e-5)    # adaptive, lax.while_loop
    check(sol)                                                    # host side: raises on failure

Each method is a validated `ButcherTableau`; one generic explicit-RK stepper runs them all, so
adding a solver is adding a tableau.  `solve` traces to a single loop: call it inside `jax.jit`
(one XLA program, no host round trip per step); it also works under `vmap` (one solve, with
its own step sizes, per example).

Failure is never silent: `sol.status` is SUCCESS (0) or one of the codes in STATUS_MESSAGES
(`sol.success` is `status == 0`); on failure `sol.x` is the state at the time `sol.t` reached.
Check it with `check(sol)` outside jit (raises RuntimeError), or use `sol.success` inside.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from fractions import Fraction
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import timegrids

# -- Butcher tableaus ------------------------------------------------------------------------------

_COEF_TOL = 1e-12  # consistency tolerance for decimal coefficients (Tsit5 is given to ~16 digits)


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method with s stages, validated on construction.

    Stage i: k_i = v(t + c_i h, x + h sum_{j<i} a_ij k_j); step: x + h sum_i b_i k_i.  An
    embedded pair also gives b_err = b - b_hat, so h sum_i b_err_i k_i estimates the local error
    of the order-`err_order` solution b_hat; the step always advances with b (local
    extrapolation).  `a` holds the strictly lower triangle, row i with (at most) i entries.

    Derived: `fsal` (first same as last: c_s = 1 and the last row of A equals b, so the last
    stage is v at the new state, i.e. the next step's first stage) and `fixed_stages` (stages a
    fixed-grid step evaluates: trailing stages with b_i = 0 only serve the error estimate).
    """

    name: str
    order: int
    c: tuple
    a: tuple
    b: tuple
    b_err: tuple | None = None
    err_order: int | None = None
    fsal: bool = dataclasses.field(init=False)
    fixed_stages: int = dataclasses.field(init=False)

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"Butcher tableau {self.name!r}: {msg}")

        s = len(self.b)
        if s < 1 or len(self.c) != s or len(self.a) != s:
            fail(f"c, a and b need one entry per stage; got {len(self.c)}, {len(self.a)}, {s}")
        if not (isinstance(self.order, int) and self.order >= 1):
            fail(f"order must be an integer >= 1, got {self.order!r}")
        rows = []
        for i, row in enumerate(self.a):
            if len(row) > s or any(x != 0 for x in row[i:]):
                fail(f"row {i} of A has entries on or above the diagonal; only explicit methods "
                     "(A strictly lower triangular) are supported")
            row = tuple(float(x) for x in row[:i]) + (0.0,) * (i - len(row[:i]))
            rows.append(row)
            if abs(math.fsum(row) - float(self.c[i])) > _COEF_TOL * max(1.0, sum(map(abs, row))):
                fail(f"row {i} of A sums to {math.fsum(row)!r}, but c[{i}] = {self.c[i]!r}")
        b = tuple(float(x) for x in self.b)
        if abs(math.fsum(b) - 1.0) > _COEF_TOL * max(1.0, sum(map(abs, b))):
            fail(f"weights b sum to {math.fsum(b)!r}, not 1")
        b_err = None
        if (self.b_err is None) != (self.err_order is None):
            fail("an embedded pair needs both b_err and err_order")
        if self.b_err is not None:
            b_err = tuple(float(x) for x in self.b_err)
            if len(b_err) != s:
                fail(f"b_err needs {s} entries, got {len(b_err)}")
            if abs(math.fsum(b_err)) > _COEF_TOL * max(1.0, sum(map(abs, b_err))):
                fail(f"error weights b_err sum to {math.fsum(b_err)!r}, not 0")
            if not (isinstance(self.err_order, int) and 1 <= self.err_order < self.order):
                fail(f"err_order must be an integer in [1, order), got {self.err_order!r}")
        c = tuple(float(x) for x in self.c)
        fsal = (s >= 2 and c[-1] == 1.0 and b[-1] == 0.0
                and all(abs(x - y) <= _COEF_TOL for x, y in zip(rows[-1], b)))
        fixed_stages = 1 + max(i for i, x in enumerate(b) if x != 0.0)
        for name, val in (("a", tuple(rows)), ("b", b), ("c", c), ("b_err", b_err),
                          ("fsal", fsal), ("fixed_stages", fixed_stages)):
            object.__setattr__(self, name, val)

    @property
    def num_stages(self) -> int:
        return len(self.b)

    @property
    def embedded(self) -> bool:
        """True when the method has an error estimate, i.e. can step adaptively."""
        return self.b_err is not None


def _minus(x, y):
    return tuple(p - q for p, q in zip(x, y))


_F = Fraction

# Euler (1768): order 1.
EULER = ButcherTableau("euler", 1, c=(0,), a=((),), b=(1,))
# Explicit midpoint rule (Runge 1895): order 2.
MIDPOINT = ButcherTableau("midpoint", 2, c=(0, _F(1, 2)), a=((), (_F(1, 2),)), b=(0, 1))
# Heun's method, the explicit trapezoidal rule (Heun 1900): order 2.
HEUN = ButcherTableau("heun", 2, c=(0, 1), a=((), (1,)), b=(_F(1, 2), _F(1, 2)))
# Ralston (1962), the second-order method with minimal error bound: c2 = 2/3.
RALSTON = ButcherTableau("ralston", 2, c=(0, _F(2, 3)), a=((), (_F(2, 3),)),
                         b=(_F(1, 4), _F(3, 4)))
# Kutta's (1901) third-order method (Hairer, Norsett & Wanner, Solving ODEs I, Table II.1.1).
RK3 = ButcherTableau("rk3", 3, c=(0, _F(1, 2), 1), a=((), (_F(1, 2),), (-1, 2)),
                     b=(_F(1, 6), _F(2, 3), _F(1, 6)))
# The classic fourth-order Runge-Kutta method (Kutta 1901).
RK4 = ButcherTableau("rk4", 4, c=(0, _F(1, 2), _F(1, 2), 1),
                     a=((), (_F(1, 2),), (0, _F(1, 2)), (0, 0, 1)),
                     b=(_F(1, 6), _F(1, 3), _F(1, 3), _F(1, 6)))

# Bogacki & Shampine (1989), "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4). FSAL.
_BS3_B = (_F(2, 9), _F(1, 3), _F(4, 9), 0)
_BS3_BHAT = (_F(7, 24), _F(1, 4), _F(1, 3), _F(1, 8))
BOSH3 = ButcherTableau(
    "bosh3", 3, c=(0, _F(1, 2), _F(3, 4), 1),
    a=((), (_F(1, 2),), (0, _F(3, 4)), _BS3_B[:3]),
    b=_BS3_B, b_err=_minus(_BS3_B, _BS3_BHAT), err_order=2)

# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comput. Appl. Math.
# 6(1), RK5(4)7M; also Hairer, Norsett & Wanner, Solving ODEs I, Table II.5.2.  FSAL.
_DP5_B = (_F(35, 384), 0, _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84), 0)
_DP5_BHAT = (_F(5179, 57600), 0, _F(7571, 16695), _F(393, 640), _F(-92097, 339200),
             _F(187, 2100), _F(1, 40))
DOPRI5 = ButcherTableau(
    "dopri5", 5, c=(0, _F(1, 5), _F(3, 10), _F(4, 5), _F(8, 9), 1, 1),
    a=((),
       (_F(1, 5),),
       (_F(3, 40), _F(9, 40)),
       (_F(44, 45), _F(-56, 15), _F(32, 9)),
       (_F(19372, 6561), _F(-25360, 2187), _F(64448, 6561), _F(-212, 729)),
       (_F(9017, 3168), _F(-355, 33), _F(46732, 5247), _F(49, 176), _F(-5103, 18656)),
       _DP5_B[:6]),
    b=_DP5_B, b_err=_minus(_DP5_B, _DP5_BHAT), err_order=4)

# Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Comput. Math. Appl. 62(2), Table 1.  FSAL.  The paper lists b - b_hat directly;
# tests check b against the fifth-order and b - b_err against the fourth-order conditions.
_TS5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
          -3.290069515436081, 2.324710524099774, 0.0)
TSIT5 = ButcherTableau(
    "tsit5", 5, c=(0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1),
    a=((),
       (0.161,),
       (-0.008480655492356989, 0.335480655492357),
       (2.897153057105493, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
        -0.028269050394068383),
       _TS5_B[:6]),
    b=_TS5_B,
    b_err=(-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
           -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 1.0 / 66.0),
    err_order=4)

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, MIDPOINT, HEUN, RALSTON, RK3, RK4, BOSH3, DOPRI5, TSIT5)}
METHODS: tuple[str, ...] = tuple(TABLEAUS)
ADAPTIVE_METHODS: tuple[str, ...] = tuple(n for n, t in TABLEAUS.items() if t.embedded)

# -- Solution and status codes ---------------------------------------------------------------------

SUCCESS = 0
MAX_STEPS_REACHED = 1
STEP_SIZE_TOO_SMALL = 2
NONFINITE = 3
STATUS_MESSAGES = {
    SUCCESS: "reached t1",
    MAX_STEPS_REACHED: "max_steps attempted steps were taken before reaching t1; raise max_steps "
                       "or loosen rtol/atol",
    STEP_SIZE_TOO_SMALL: "the step size fell below the time resolution (a stiff or singular "
                         "problem, or v returned NaN/inf)",
    NONFINITE: "the final state contains NaN or inf (v returned non-finite values, or a fixed "
               "grid too coarse for a stiff problem)",
}
_RUNNING = -1


@flax.struct.dataclass
class Solution:
    """Result of `solve`.

    x: the state at t1 (at `t` on failure), same structure, shapes and dtypes as x0.
    t: scalar, the time reached (t1 on success).
    nfe: int32 scalar, the exact number of evaluations of v (rejected steps and the initial
        step-size probe included).
    num_accepted, num_rejected: int32 scalars, steps taken (fixed grid: num_steps and 0).
    status: int32 scalar, SUCCESS (0) or a failure code in STATUS_MESSAGES.
    ts: [M] save times, xs: x's structure with leaves [M, ...] (None unless saved): fixed grid
        with save_trajectory=True gives the grid (M = num_steps + 1); adaptive with save_at gives
        the state at exactly those times.
    Under vmap every field gains the batch axis.
    """

    x: Any
    t: jax.Array
    nfe: jax.Array
    num_accepted: jax.Array
    num_rejected: jax.Array
    status: jax.Array
    ts: jax.Array | None = None
    xs: Any = None

    @property
    def success(self) -> jax.Array:
        """Boolean (per example under vmap): True where the solve reached t1 with a finite state."""
        return self.status == SUCCESS


def check(sol: Solution) -> Solution:
    """Host-side check: returns sol unchanged if every solve succeeded, else raises RuntimeError.

    Works on batched (vmapped) solutions; call it outside jit, on concrete values.
    """
    status = np.asarray(sol.status)
    if np.all(status == SUCCESS):
        return sol
    bad = status != SUCCESS
    codes, counts = np.unique(status[bad], return_counts=True)
    reasons = "; ".join(f"{n} x status {c}: {STATUS_MESSAGES.get(int(c), 'unknown status')}"
                        for c, n in zip(codes, counts))
    where = "" if status.ndim == 0 else f" ({int(bad.sum())} of {status.size} solves)"
    t_reached = np.asarray(sol.t)[bad] if status.ndim else np.asarray(sol.t)
    raise RuntimeError(
        f"ODE solve failed{where}: {reasons}. Stopped at t = {np.min(t_reached)!r}"
        f"{'' if status.ndim == 0 else ' (earliest)'}, after nfe = {np.max(np.asarray(sol.nfe))}.")


# -- step-size controller --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PIController:
    """PI step-size control (Gustafsson 1991; Hairer & Wanner, Solving ODEs II, Sec. IV.2).

    With k = err_order + 1 and err the scaled RMS error norm (accept when err <= 1):
      accepted: factor = safety * err^(-alpha / k) * err_prev^(beta / k), clipped to
                [min_factor, max_factor], and at most 1 right after a rejection;
      rejected: factor = max(min_factor, safety * err^(-1 / k))  (plain I control).
    err_prev is the previous accepted step's error, floored at 1e-4 as in Hairer's DOPRI5.
    Defaults: the suggested alpha = 0.7, beta = 0.4 and the usual safety 0.9, factors in
    [0.2, 10].  alpha = 1, beta = 0 is classic I control (as in scipy's RK45).
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    alpha: float = 0.7
    beta: float = 0.4

    def __post_init__(self):
        if not (0 < self.safety <= 1 and 0 < self.min_factor < 1 < self.max_factor
                and self.alpha > 0 and self.beta >= 0):
            raise ValueError(
                f"invalid PIController {self}: need 0 < safety <= 1, 0 < min_factor < 1 < "
                "max_factor, alpha > 0, beta >= 0")


# -- argument checking -----------------------------------------------------------------------------


def _concrete(x):
    """x as a NumPy value, or None when it is traced (checks that need values are skipped)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _tableau(method) -> ButcherTableau:
    if isinstance(method, ButcherTableau):
        return method
    tab = TABLEAUS.get(method) if isinstance(method, str) else None
    if tab is None:
        raise ValueError(f"unknown integrator {method!r}; choose one of: {', '.join(METHODS)} "
                         "(or pass a ButcherTableau)")
    return tab


def _check_positive(name, value):
    c = _concrete(value)
    if c is not None and not (c.ndim == 0 and np.isfinite(c) and c > 0):
        raise ValueError(f"{name} must be a positive scalar, got {value!r}")


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_arguments(method, *, num_steps=None, time_grid=None, rtol=None, atol=None,
                    max_steps=4096, first_step=None) -> ButcherTableau:
    """Validates a method / grid / tolerance combination (host side, no tracing); returns the
    tableau.  `solve` calls it; call it early to fail before compiling anything."""
    tab = _tableau(method)
    adaptive = rtol is not None or atol is not None
    on_grid = num_steps is not None or time_grid is not None
    if adaptive and not tab.embedded:
        raise ValueError(
            f"method {tab.name!r} is fixed-step and takes no rtol/atol; drop them (and pass "
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
        _check_count("max_steps", max_steps)
        if first_step is not None:
            _check_positive("first_step", first_step)
    else:
        if first_step is not None:
            raise ValueError("first_step only applies to adaptive stepping (rtol/atol); on a "
                             "fixed grid the steps are given")
        if num_steps is not None:
            _check_count("num_steps", num_steps)
    return tab


def _check_grid(grid, t0, t1) -> None:
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"time_grid must be 1-D with at least 2 points, got shape {grid.shape}")
    g = _concrete(grid)
    if g is None:
        return
    d = np.diff(g)
    if not (np.all(d >= 0) or np.all(d <= 0)) or not np.all(np.isfinite(g)):
        i = int(np.argmax(np.sign(d) * np.sign(g[-1] - g[0]) < 0))
        raise ValueError(
            f"time_grid must be monotonic (increasing or decreasing) and finite; it turns at "
            f"index {i + 1}: {g[max(i - 1, 0):i + 3]}")
    for name, val, default, end in (("t0", t0, 0.0, g[0]), ("t1", t1, 1.0, g[-1])):
        c = _concrete(val)
        if c is not None and c != default and np.asarray(c, g.dtype) != end:
            raise ValueError(f"{name}={val!r} disagrees with time_grid, which runs from {g[0]} to "
                             f"{g[-1]}; leave t0/t1 out when passing a grid")


def nfe_for(method, num_steps: int) -> int:
    """The exact number of v evaluations of a fixed-grid solve with num_steps steps.

    fixed_stages per step: the b-weighted stages only.  For an FSAL pair the last stage (b_s = 0)
    is exactly the next step's first stage; skipping it costs the same as reusing it (s - 1 per
    step: 6 for dopri5 / tsit5, 3 for bosh3), without carrying it.
    """
    tab = _tableau(method)
    _check_count("num_steps", num_steps)
    return tab.fixed_stages * int(num_steps)


# -- the stepper -----------------------------------------------------------------------------------


def _lincomb(y, h, coeffs, ks):
    """Leafwise y + h * sum_j coeffs[j] * ks[j] (y=None: no y term), skipping zero coefficients.

    y, ks[j]: lists of leaves; h: scalar.  Each leaf stays in its own dtype; XLA fuses the sum.
    """
    terms = [(float(c), k) for c, k in zip(coeffs, ks) if c != 0.0]
    if not terms:
        return list(y) if y is not None else [jnp.zeros_like(k) for k in ks[0]]
    out = []
    for i, ref in enumerate(y if y is not None else ks[0]):
        acc = None
        for c, k in terms:
            term = k[i] if c == 1.0 else c * k[i]
            acc = term if acc is None else acc + term
        inc = h.astype(ref.dtype) * acc
        out.append(inc if y is None else ref + inc)
    return out


def _stage_time(t, t_next, h, c):
    # c = 0 and c = 1 land exactly on the interval ends (the FSAL stage is then bit-exact).
    if c == 0.0:
        return t
    if c == 1.0:
        return t_next
    return t + c * h


def _wrap(v, treedef, leaves0):
    """v on flat leaf lists, with dx/dt cast to the state's dtypes and its shapes checked."""
    specs = [(l.shape, l.dtype) for l in leaves0]

    def f(t, ys):
        out = v(t, jax.tree.unflatten(treedef, ys))
        out_leaves, out_def = jax.tree.flatten(out)
        if out_def != treedef or any(jnp.shape(o) != s for o, (s, _) in zip(out_leaves, specs)):
            raise ValueError(
                "v(t, x) must return dx/dt with x's structure and shapes: expected "
                f"{jax.tree.unflatten(treedef, [s for s, _ in specs])}, got "
                f"{jax.tree.unflatten(out_def, [jnp.shape(o) for o in out_leaves])}")
        return [jnp.asarray(o).astype(d) for o, (_, d) in zip(out_leaves, specs)]

    return f


def _all_finite(ys):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(y)) for y in ys]))


def _solve_fixed(f, tab, y0, grid, save, unroll):
    n = tab.fixed_stages
    b = tab.b[:n]

    def step(ys, tt):
        t, t_next = tt
        h = t_next - t
        ks = []
        for i in range(n):
            ks.append(f(_stage_time(t, t_next, h, tab.c[i]), _lincomb(ys, h, tab.a[i], ks)))
        ys_next = _lincomb(ys, h, b, ks)
        return ys_next, (ys_next if save else None)

    y1, traj = lax.scan(step, y0, (grid[:-1], grid[1:]), unroll=unroll)
    status = jnp.where(_all_finite(y1), SUCCESS, NONFINITE).astype(jnp.int32)
    steps = grid.shape[0] - 1
    xs = None
    if save:
        xs = [jnp.concatenate([y[None], tr], axis=0) for y, tr in zip(y0, traj)]
    return y1, grid[-1], n * steps, steps, status, xs


def _rms(leaves, n, dtype):
    sq = [jnp.sum(jnp.square(l.astype(dtype))) for l in leaves]
    return jnp.sqrt(sum(sq[1:], sq[0]) / n)


class _State(NamedTuple):
    t: jax.Array
    y: list
    k1: list           # v(t, y), reused by the next attempt (and, for FSAL, refreshed for free)
    h: jax.Array       # signed step proposal
    err_prev: jax.Array
    rejected_last: jax.Array
    num_accepted: jax.Array
    num_rejected: jax.Array
    nfe: jax.Array
    status: jax.Array
    save_idx: jax.Array
    xs: list


def _solve_adaptive(f, tab, y0, t0, t1, rtol, atol, max_steps, first_step, save_at, ctrl):
    tdt = t0.dtype  # time, step size and error norms (>= float32)
    direction = jnp.sign(t1 - t0)
    n_total = sum(y.size for y in y0)
    rtol = jnp.asarray(rtol, tdt)
    atol = jnp.asarray(atol, tdt)
    k_exp = tab.err_order + 1
    s = tab.num_stages

    def scale(*ys):
        m = jnp.abs(ys[0].astype(tdt))
        for y in ys[1:]:
            m = jnp.maximum(m, jnp.abs(y.astype(tdt)))
        return atol + rtol * m

    k1 = f(t0, y0)
    nfe = jnp.asarray(1, jnp.int32)
    span = jnp.abs(t1 - t0)
    if first_step is None:
        # Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4 "Starting step size" (one probe).
        sc = [scale(y) for y in y0]
        d0 = _rms([y.astype(tdt) / c for y, c in zip(y0, sc)], n_total, tdt)
        d1 = _rms([k.astype(tdt) / c for k, c in zip(k1, sc)], n_total, tdt)
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
        h0 = jnp.minimum(h0, span)  # the probe never leaves [t0, t1]
        k_probe = f(t0 + direction * h0, _lincomb(y0, direction * h0, (1.0,), [k1]))
        d2 = _rms([(kp.astype(tdt) - k.astype(tdt)) / c for kp, k, c in zip(k_probe, k1, sc)],
                  n_total, tdt) / h0
        dmax = jnp.maximum(d1, d2)
        h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / dmax) ** (1.0 / k_exp))
        h = jnp.minimum(100 * h0, h1)
        nfe = nfe + 1
    else:
        h = jnp.asarray(first_step, tdt)
    # Step sizes are control decisions, not functions to differentiate.
    h = lax.stop_gradient(direction * jnp.minimum(h, span).astype(tdt))

    if save_at is None:
        targets = t1[None]
        xs, save_idx, n_save = [], jnp.asarray(0, jnp.int32), 0
    else:
        n_save = save_at.shape[0]
        targets = jnp.concatenate([save_at, t1[None]])
        at_start = save_at == t0
        xs = [jnp.where(at_start.reshape((n_save,) + (1,) * y.ndim),
                        jnp.broadcast_to(y[None], (n_save,) + y.shape), jnp.zeros_like(y[None]))
              for y in y0]
        save_idx = jnp.sum(at_start).astype(jnp.int32)

    init = _State(t=t0, y=list(y0), k1=k1, h=h, err_prev=jnp.asarray(1.0, tdt),
                  rejected_last=jnp.asarray(False), num_accepted=jnp.asarray(0, jnp.int32),
                  num_rejected=jnp.asarray(0, jnp.int32), nfe=nfe,
                  status=jnp.where(t0 == t1, SUCCESS, _RUNNING).astype(jnp.int32),
                  save_idx=save_idx, xs=xs)

    def body(st: _State) -> _State:
        target = targets[st.save_idx]
        dist = target - st.t
        clipped = direction * (st.h - dist) >= 0  # |h| >= distance left: land exactly on target
        h = jnp.where(clipped, dist, st.h)
        t_new = jnp.where(clipped, target, st.t + h)
        ks = [st.k1]
        y_stage = st.y
        for i in range(1, s):
            y_stage = _lincomb(st.y, h, tab.a[i], ks)
            ks.append(f(_stage_time(st.t, t_new, h, tab.c[i]), y_stage))
        y_new = y_stage if tab.fsal else _lincomb(st.y, h, tab.b, ks)
        err_leaves = _lincomb(None, h, tab.b_err, ks)
        err = _rms([e.astype(tdt) / scale(y, yn) for e, y, yn in zip(err_leaves, st.y, y_new)],
                   n_total, tdt)

        err = lax.stop_gradient(err)
        finite = jnp.isfinite(err)
        accept = finite & (err <= 1.0)
        safe_err = jnp.where(finite & (err > 0), err, 1.0)
        fac_acc = ctrl.safety * safe_err ** (-ctrl.alpha / k_exp) * st.err_prev ** (
            ctrl.beta / k_exp)
        fac_acc = jnp.where(err == 0, ctrl.max_factor, fac_acc)
        fac_acc = jnp.clip(fac_acc, ctrl.min_factor, ctrl.max_factor)
        fac_acc = jnp.where(st.rejected_last, jnp.minimum(fac_acc, 1.0), fac_acc)
        fac_rej = jnp.where(finite, jnp.maximum(ctrl.min_factor,
                                                ctrl.safety * safe_err ** (-1.0 / k_exp)),
                            ctrl.min_factor)
        h_next = h * jnp.where(accept, fac_acc, fac_rej).astype(tdt)
        # A step shortened to land on a save time or t1 does not shrink the next proposal.
        h_next = jnp.where(accept & clipped & (jnp.abs(st.h) > jnp.abs(h_next)), st.h, h_next)

        if tab.fsal:
            k1_new = ks[-1]
            nfe = st.nfe + (s - 1)
        else:
            k1_new = lax.cond(accept, lambda: f(t_new, y_new), lambda: st.k1)
            nfe = st.nfe + (s - 1) + accept.astype(jnp.int32)

        def pick(new, old):
            return [jnp.where(accept, a, b) for a, b in zip(new, old)]

        t_next = jnp.where(accept, t_new, st.t)
        xs = st.xs
        save_idx = st.save_idx
        if n_save:
            do_save = accept & clipped & (st.save_idx < n_save)
            idx = jnp.minimum(st.save_idx, n_save - 1)
            xs = [lax.dynamic_update_index_in_dim(
                buf, jnp.where(do_save, yn, lax.dynamic_index_in_dim(buf, idx, 0, False)), idx, 0)
                for buf, yn in zip(xs, y_new)]
            save_idx = save_idx + do_save.astype(jnp.int32)
        num_accepted = st.num_accepted + accept.astype(jnp.int32)
        num_rejected = st.num_rejected + (~accept).astype(jnp.int32)
        t_sg = lax.stop_gradient(t_next)
        min_h = 10 * jnp.abs(jnp.nextafter(t_sg, lax.stop_gradient(t1)) - t_sg)
        status = jnp.where(
            t_next == t1, SUCCESS,
            jnp.where(num_accepted + num_rejected >= max_steps, MAX_STEPS_REACHED,
                      jnp.where(jnp.abs(h_next) < min_h, STEP_SIZE_TOO_SMALL, _RUNNING)))
        return _State(
            t=t_next, y=pick(y_new, st.y), k1=pick(k1_new, st.k1), h=h_next,
            err_prev=jnp.where(accept, jnp.maximum(err, 1e-4), st.err_prev),
            rejected_last=~accept, num_accepted=num_accepted, num_rejected=num_rejected, nfe=nfe,
            status=status.astype(jnp.int32), save_idx=save_idx, xs=xs)

    st = lax.while_loop(lambda st: st.status == _RUNNING, body, init)
    status = jnp.where((st.status == SUCCESS) & ~_all_finite(st.y), NONFINITE, st.status)
    return st.y, st.t, st.nfe, st.num_accepted, st.num_rejected, status, st.xs


# -- public entry point ----------------------------------------------------------------------------


def solve(v: Callable, x0, *, method="euler", num_steps: int | None = None, time_grid=None,
          t0=0.0, t1=1.0, rtol: float | None = None, atol: float | None = None,
          max_steps: int = 4096, first_step: float | None = None, save_trajectory: bool = False,
          save_at=None, controller: PIController = PIController(), unroll: int = 1) -> Solution:
    """Integrates dx/dt = v(t, x) from t0 to t1 (either direction).  Call inside jax.jit.

    v: (t, x) -> dx/dt, t a scalar array, x and the result pytrees like x0 (the result is cast
        to x0's dtypes).
    x0: pytree of float arrays (any shapes; a batch is one system).  bfloat16 states are stepped
        in bfloat16; time, step sizes and error norms use at least float32.
    method: a name in METHODS or a ButcherTableau.
    Fixed grid (any method): num_steps (uniform from t0 to t1) or time_grid [N + 1] (any
        monotonic grid, e.g. from flowmatch.timegrids; it sets the endpoints, so leave t0/t1
        out; repeated points are zero-length no-op steps).  lax.scan; nfe == nfe_for(method, N);
        unroll is passed to lax.scan.  Differentiable in reverse mode.
    Adaptive (embedded pairs: bosh3, dopri5, tsit5): rtol and atol.  lax.while_loop with PI
        control (`controller`) on the error norm RMS(err / (atol + rtol max(|x_old|, |x_new|)));
        the first step from the Hairer-Norsett-Wanner heuristic (one extra evaluation) unless
        first_step (a positive magnitude) is given; FSAL pairs cost s - 1 evaluations per
        attempted step; the last step is shortened to land exactly on t1.  At most max_steps
        attempted steps, else status MAX_STEPS_REACHED.  Forward-mode differentiable (jvp,
        jacfwd; step sizes are held fixed); not reverse mode (lax.while_loop).
    Saving: save_trajectory=True on a fixed grid returns ts = grid and xs at every grid point.
        Adaptive: save_at [M] (strictly monotonic from t0 towards t1, inside [t0, t1]) returns
        xs at exactly those times: the stepper shortens steps to land on them (no interpolation,
        so saved states have full accuracy; each save time inside the interval may add a step).

    Returns a Solution; check `sol.success` / `check(sol)` (see the module docstring).
    Raises ValueError at call time for unknown methods and inconsistent arguments.
    """
    tab = check_arguments(method, num_steps=num_steps, time_grid=time_grid, rtol=rtol, atol=atol,
                          max_steps=max_steps, first_step=first_step)
    leaves0, treedef = jax.tree.flatten(x0)
    if not leaves0:
        raise ValueError("x0 has no arrays to integrate")
    leaves0 = [jnp.asarray(l) for l in leaves0]
    for l in leaves0:
        if not jnp.issubdtype(l.dtype, jnp.floating):
            raise ValueError(f"x0 leaves must be float arrays, got dtype {l.dtype}")
    f = _wrap(v, treedef, leaves0)
    default_float = jnp.asarray(0.0).dtype

    def time_dtype(*xs):
        return jnp.promote_types(jnp.result_type(*xs), jnp.float32)

    adaptive = rtol is not None
    if not adaptive:
        if save_at is not None:
            raise ValueError("save_at is for adaptive stepping; on a fixed grid use "
                             "save_trajectory=True (put the times you need into time_grid)")
        if time_grid is None:
            grid = timegrids.uniform(num_steps, t0, t1)
        else:
            grid = jnp.asarray(time_grid)
            if not jnp.issubdtype(grid.dtype, jnp.floating):
                grid = grid.astype(default_float)
            grid = grid.astype(time_dtype(grid))
            _check_grid(grid, t0, t1)
        y1, t_end, nfe, steps, status, xs = _solve_fixed(f, tab, leaves0, grid, save_trajectory,
                                                         unroll)
        return Solution(
            x=jax.tree.unflatten(treedef, y1), t=t_end, nfe=jnp.asarray(nfe, jnp.int32),
            num_accepted=jnp.asarray(steps, jnp.int32), num_rejected=jnp.asarray(0, jnp.int32),
            status=status, ts=grid if save_trajectory else None,
            xs=None if xs is None else jax.tree.unflatten(treedef, xs))

    if save_trajectory and save_at is None:
        raise ValueError("adaptive steps are not known in advance: pass save_at=[times] to save "
                         "the state at those times (or use num_steps / time_grid)")
    tdt = time_dtype(default_float, t0, t1)
    t0a = jnp.asarray(t0, tdt)
    t1a = jnp.asarray(t1, tdt)
    if t0a.ndim or t1a.ndim:
        raise ValueError(f"t0 and t1 must be scalars, got shapes {t0a.shape} and {t1a.shape}")
    if save_at is not None:
        save_at = jnp.asarray(save_at, tdt)
        if save_at.ndim != 1 or save_at.shape[0] < 1:
            raise ValueError(f"save_at must be a 1-D array of times, got shape {save_at.shape}")
        sa, a, b = _concrete(save_at), _concrete(t0a), _concrete(t1a)
        if sa is not None and a is not None and b is not None:
            d = np.sign(b - a)
            if not (np.all(np.diff(sa) * d > 0) and np.all((sa - a) * d >= 0)
                    and np.all((b - sa) * d >= 0)):
                raise ValueError(f"save_at must be strictly monotonic from t0={t0} towards "
                                 f"t1={t1} and inside [t0, t1], got {sa}")
    y1, t_end, nfe, n_acc, n_rej, status, xs = _solve_adaptive(
        f, tab, leaves0, t0a, t1a, rtol, atol, max_steps, first_step, save_at, controller)
    return Solution(
        x=jax.tree.unflatten(treedef, y1), t=t_end, nfe=nfe, num_accepted=n_acc,
        num_rejected=n_rej, status=status, ts=save_at,
        xs=None if save_at is None else jax.tree.unflatten(treedef, xs))
