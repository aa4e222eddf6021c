"""What a solve returns: the `Solution` record, its status codes and the host-side `check`."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np

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
RUNNING = -1  # inside the adaptive loop only: not yet done


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
