"""The adaptive solve: one lax.while_loop of "take a step, ask the controller, keep or reject".

Steps an embedded Runge-Kutta pair (`runge_kutta.rk_step`) from t0 to t1, sized by a step-size
controller (`controller.PIController`); steps are shortened to land exactly on each save time
and on t1.  States are leaf lists (`leaves.py`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flowmatch.integrators.controller import PIController, PIState
from flowmatch.integrators.leaves import all_finite
from flowmatch.integrators.runge_kutta import rk_step
from flowmatch.integrators.solution import (MAX_STEPS_REACHED, NONFINITE, RUNNING,
                                            STEP_SIZE_TOO_SMALL, SUCCESS, Solution)
from flowmatch.integrators.tableaus import ButcherTableau


class LoopState(NamedTuple):
    """The while_loop carry."""

    t: jax.Array             # time reached
    y: list                  # state at t
    k1: list                 # f(t, y), the next attempt's first stage
    h: jax.Array             # signed step the controller proposes next
    controller: PIState
    num_accepted: jax.Array
    num_rejected: jax.Array
    nfe: jax.Array
    status: jax.Array        # RUNNING until done, then a code in solution.STATUS_MESSAGES
    save_idx: jax.Array      # index of the next save time (== number saved so far)
    xs: list                 # leaves [M, ...] of the states saved so far ([] without save_at)


def _initial_saves(save_at, t0, t1, y0):
    """(targets [M + 1]: the save times then t1, save buffers, index of the first pending one).

    Save times equal to t0 are filled with y0 at once."""
    if save_at is None:
        return t1[None], [], jnp.asarray(0, jnp.int32)
    n_save = save_at.shape[0]
    at_start = save_at == t0
    xs = [jnp.where(at_start.reshape((n_save,) + (1,) * y.ndim),
                    jnp.broadcast_to(y[None], (n_save,) + y.shape), jnp.zeros_like(y[None]))
          for y in y0]
    return jnp.concatenate([save_at, t1[None]]), xs, jnp.sum(at_start).astype(jnp.int32)


def _record(xs, save_idx, do_save, y):
    """Writes leaves y into row save_idx of the buffers xs where do_save; advances the index."""
    n_save = xs[0].shape[0]
    idx = jnp.minimum(save_idx, n_save - 1)
    xs = [lax.dynamic_update_index_in_dim(
        buf, jnp.where(do_save, yn, lax.dynamic_index_in_dim(buf, idx, 0, False)), idx, 0)
        for buf, yn in zip(xs, y)]
    return xs, save_idx + do_save.astype(jnp.int32)


def _status(t, t1, h_next, attempts, max_steps):
    """SUCCESS at t1; else a failure code, or RUNNING (int32 scalar)."""
    t_sg = lax.stop_gradient(t)
    min_h = 10 * jnp.abs(jnp.nextafter(t_sg, lax.stop_gradient(t1)) - t_sg)
    status = jnp.where(
        t == t1, SUCCESS,
        jnp.where(attempts >= max_steps, MAX_STEPS_REACHED,
                  jnp.where(jnp.abs(h_next) < min_h, STEP_SIZE_TOO_SMALL, RUNNING)))
    return status.astype(jnp.int32)


def solve_adaptive(f: Callable, tab: ButcherTableau, y0, t0, t1, *, rtol, atol, max_steps: int,
                   first_step, save_at, controller: PIController,
                   measured: tuple[bool, ...] | None = None) -> Solution:
    """Integrates dy/dt = f(t, y) from t0 to t1 with the embedded pair `tab`.

    y0: leaf list; t0, t1: scalars in the time dtype; save_at: None or [M] times (validated by
    the caller).  nfe = 1 (f(t0, y0)) + the controller's init probe + (s - 1) per attempted step
    (+ 1 per accepted step for a pair that is not FSAL).  measured: one bool per leaf, the
    leaves the controller sees (None: all); its first-step probe then moves the measured leaves
    only, the others held at y0.  Returns a Solution over leaf lists.
    """
    direction = jnp.sign(t1 - t0)
    s = tab.num_stages
    k1 = f(t0, y0)

    def seen(leaves):
        return list(leaves) if measured is None else [l for l, m in zip(leaves, measured) if m]

    def f_seen(t, y_seen):  # f on the measured leaves (all of them unless `measured`)
        if measured is None:
            return f(t, y_seen)
        it = iter(y_seen)
        return seen(f(t, [next(it) if m else y for y, m in zip(y0, measured)]))

    h, ctrl = controller.init(f_seen, t0, t1, seen(y0), seen(k1), rtol=rtol, atol=atol,
                              err_order=tab.err_order, first_step=first_step)
    targets, xs, save_idx = _initial_saves(save_at, t0, t1, y0)
    init = LoopState(
        t=t0, y=list(y0), k1=k1, h=h, controller=ctrl, num_accepted=jnp.asarray(0, jnp.int32),
        num_rejected=jnp.asarray(0, jnp.int32),
        nfe=jnp.asarray(1 + controller.evaluations_at_init(first_step), jnp.int32),
        status=jnp.where(t0 == t1, SUCCESS, RUNNING).astype(jnp.int32), save_idx=save_idx, xs=xs)

    def body(st: LoopState) -> LoopState:
        target = targets[st.save_idx]
        dist = target - st.t
        landed = direction * (st.h - dist) >= 0  # |h| >= distance left: land exactly on target
        h = jnp.where(landed, dist, st.h)
        t_new = jnp.where(landed, target, st.t + h)
        step = rk_step(f, tab, st.y, st.t, t_new, h, k1=st.k1, error=True)
        accept, h_next, ctrl = controller.adapt_step_size(
            st.controller, h=h, proposal=st.h, landed=landed, y0=seen(st.y), y1=seen(step.y1),
            y_error=seen(step.y_error))
        if tab.fsal:
            k1_new, nfe = step.ks[-1], st.nfe + (s - 1)
        else:
            k1_new = lax.cond(accept, lambda: f(t_new, step.y1), lambda: st.k1)
            nfe = st.nfe + (s - 1) + accept.astype(jnp.int32)

        def pick(new, old):
            return [jnp.where(accept, a, b) for a, b in zip(new, old)]

        t_next = jnp.where(accept, t_new, st.t)
        xs, save_idx = st.xs, st.save_idx
        if save_at is not None:
            xs, save_idx = _record(st.xs, st.save_idx,
                                   accept & landed & (st.save_idx < save_at.shape[0]), step.y1)
        num_accepted = st.num_accepted + accept.astype(jnp.int32)
        num_rejected = st.num_rejected + (~accept).astype(jnp.int32)
        return LoopState(
            t=t_next, y=pick(step.y1, st.y), k1=pick(k1_new, st.k1), h=h_next, controller=ctrl,
            num_accepted=num_accepted, num_rejected=num_rejected, nfe=nfe,
            status=_status(t_next, t1, h_next, num_accepted + num_rejected, max_steps),
            save_idx=save_idx, xs=xs)

    st = lax.while_loop(lambda st: st.status == RUNNING, body, init)
    status = jnp.where((st.status == SUCCESS) & ~all_finite(st.y), NONFINITE, st.status)
    return Solution(x=st.y, t=st.t, nfe=st.nfe, num_accepted=st.num_accepted,
                    num_rejected=st.num_rejected, status=status, ts=save_at,
                    xs=None if save_at is None else st.xs)
