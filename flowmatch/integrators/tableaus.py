"""Explicit Runge-Kutta methods as data: validated Butcher tableaus and the built-in registry.

A method is its tableau; `runge_kutta.rk_step` runs any of them, so adding a solver is adding a
tableau here.  Nothing in this module computes with arrays.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

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
