"""Step-size control for embedded Runge-Kutta pairs, apart from the stepper.

A controller is a small frozen (hashable) object of settings with two pure functions:

    h, state = controller.init(f, t0, t1, y0, k1, rtol=..., atol=..., err_order=..., first_step=...)
    accept, h_next, state = controller.adapt_step_size(state, h=..., proposal=..., landed=...,
                                                       y0=..., y1=..., y_error=...)

so the adaptive loop is: take a step, ask the controller, keep or reject.  Errors are measured
as the scaled RMS norm  err = RMS(y_error / (atol + rtol max(|y0|, |y1|)))  in the time dtype;
a step is accepted when err <= 1.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from flowmatch.integrators.leaves import lincomb


def _rms(leaves, n, dtype):
    sq = [jnp.sum(jnp.square(l.astype(dtype))) for l in leaves]
    return jnp.sqrt(sum(sq[1:], sq[0]) / n)


def _scale(rtol, atol, *ys):
    """atol + rtol max_i |ys_i| for one leaf, in the tolerances' dtype."""
    dtype = rtol.dtype
    m = jnp.abs(ys[0].astype(dtype))
    for y in ys[1:]:
        m = jnp.maximum(m, jnp.abs(y.astype(dtype)))
    return atol + rtol * m


def _size(leaves) -> int:
    return sum(l.size for l in leaves)


@flax.struct.dataclass
class PIState:
    """What `PIController` carries from step to step.

    err_prev: the last accepted step's error norm (floored at 1e-4); rejected_last: whether the
    last attempt was rejected; rtol, atol: scalars in the time dtype; err_order: the order of
    the embedded (lower-order) solution, static.
    """

    err_prev: jax.Array
    rejected_last: jax.Array
    rtol: jax.Array
    atol: jax.Array
    err_order: int = flax.struct.field(pytree_node=False)


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

    @staticmethod
    def evaluations_at_init(first_step) -> int:
        """Evaluations of f that `init` spends: the heuristic's one probe, none given first_step."""
        return 1 if first_step is None else 0

    def init(self, f: Callable, t0, t1, y0, k1, *, rtol, atol, err_order: int,
             first_step=None) -> tuple[jax.Array, PIState]:
        """The signed first step and the initial state.

        f: (t, leaf list) -> leaf list; t0, t1: scalars in the time dtype (>= float32); y0, k1:
        leaf lists, k1 = f(t0, y0).  first_step: a positive magnitude, or None for Hairer's
        heuristic (one probe evaluation of f, see `initial_step_size`).  The step never
        exceeds |t1 - t0| and carries no gradient (a control decision).
        """
        tdt = t0.dtype
        rtol = jnp.asarray(rtol, tdt)
        atol = jnp.asarray(atol, tdt)
        span = jnp.abs(t1 - t0)
        if first_step is None:
            h = initial_step_size(f, t0, t1, y0, k1, rtol=rtol, atol=atol, order=err_order + 1)
        else:
            h = jnp.asarray(first_step, tdt)
        h = lax.stop_gradient(jnp.sign(t1 - t0) * jnp.minimum(h, span).astype(tdt))
        state = PIState(err_prev=jnp.asarray(1.0, tdt), rejected_last=jnp.asarray(False),
                        rtol=rtol, atol=atol, err_order=err_order)
        return h, state

    def adapt_step_size(self, state: PIState, *, h, proposal, landed, y0, y1,
                        y_error) -> tuple[jax.Array, jax.Array, PIState]:
        """Accept or reject the step just taken, and size the next one.

        h: the signed step taken; proposal: the step this controller proposed (|h| < |proposal|
        when the loop shortened the step to land on a save time or t1, flagged by `landed`);
        y0, y1, y_error: leaf lists, the step's start, result and error estimate.
        Returns (accept, h_next, state): a step shortened to land does not shrink the next
        proposal; a non-finite error is a rejection with the smallest factor.
        """
        tdt = state.rtol.dtype
        k = state.err_order + 1
        err = _rms([e.astype(tdt) / _scale(state.rtol, state.atol, a, b)
                    for e, a, b in zip(y_error, y0, y1)], _size(y0), tdt)
        err = lax.stop_gradient(err)
        finite = jnp.isfinite(err)
        accept = finite & (err <= 1.0)
        safe_err = jnp.where(finite & (err > 0), err, 1.0)
        fac_acc = self.safety * safe_err ** (-self.alpha / k) * state.err_prev ** (self.beta / k)
        fac_acc = jnp.where(err == 0, self.max_factor, fac_acc)
        fac_acc = jnp.clip(fac_acc, self.min_factor, self.max_factor)
        fac_acc = jnp.where(state.rejected_last, jnp.minimum(fac_acc, 1.0), fac_acc)
        fac_rej = jnp.where(finite, jnp.maximum(self.min_factor,
                                                self.safety * safe_err ** (-1.0 / k)),
                            self.min_factor)
        h_next = h * jnp.where(accept, fac_acc, fac_rej).astype(tdt)
        h_next = jnp.where(accept & landed & (jnp.abs(proposal) > jnp.abs(h_next)), proposal,
                           h_next)
        state = state.replace(err_prev=jnp.where(accept, jnp.maximum(err, 1e-4), state.err_prev),
                              rejected_last=~accept)
        return accept, h_next, state


def initial_step_size(f: Callable, t0, t1, y0, k1, *, rtol, atol, order: int) -> jax.Array:
    """Starting step magnitude (Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4).

    With sc = atol + rtol |y0|: d0 = RMS(y0 / sc), d1 = RMS(k1 / sc); h0 = 0.01 d0 / d1 (1e-6
    when either is tiny), capped at |t1 - t0| so the probe stays in [t0, t1]; one Euler probe
    gives d2 = RMS((f(t0 + h0, y0 + h0 k1) - k1) / sc) / h0, and
    h = min(100 h0, (0.01 / max(d1, d2))^(1 / order)).  One evaluation of f.
    """
    tdt = t0.dtype
    n = _size(y0)
    direction = jnp.sign(t1 - t0)
    sc = [_scale(rtol, atol, y) for y in y0]
    d0 = _rms([y.astype(tdt) / c for y, c in zip(y0, sc)], n, tdt)
    d1 = _rms([k.astype(tdt) / c for k, c in zip(k1, sc)], n, tdt)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    h0 = jnp.minimum(h0, jnp.abs(t1 - t0))
    k_probe = f(t0 + direction * h0, lincomb(y0, direction * h0, (1.0,), [k1]))
    d2 = _rms([(kp.astype(tdt) - k.astype(tdt)) / c for kp, k, c in zip(k_probe, k1, sc)],
              n, tdt) / h0
    dmax = jnp.maximum(d1, d2)
    h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / dmax) ** (1.0 / order))
    return jnp.minimum(100 * h0, h1)
