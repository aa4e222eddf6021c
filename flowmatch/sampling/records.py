"""The one result record of every sampler."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class Samples:
    """x: [n, ...] the samples (t = 1, data space); nfe: int32, the sampler's network evaluations;
    success: bool (False only for a failed adaptive ODE solve, see `integrators.Solution`);
    x0: [n, ...] the source samples they started from, when asked for (reflow's pairs), or None;
    steps: int32, the steps taken (an adaptive solve's accepted steps; K for a K-step sampler)."""

    x: jax.Array
    nfe: jax.Array
    success: jax.Array
    x0: jax.Array | None = None
    steps: jax.Array | None = None
