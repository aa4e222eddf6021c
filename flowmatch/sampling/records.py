"""The one result record of every sampler."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class Samples:
    """x: [n, ...] the samples (t = 1, data space); nfe: int32, the sampler's evaluations of the
    model (calls of `ModelFn.predict`: the solver's count);
    success: bool (False only for a failed adaptive ODE solve, see `integrators.Solution`);
    x0: [n, ...] the source samples they started from, when asked for (reflow's pairs), or None;
    steps: int32, the steps taken (an adaptive solve's accepted steps; K for a K-step sampler);
    passes: int32, the network passes: nfe x 2 for a guided model (each evaluation runs the
    conditional and the unconditional pass), nfe otherwise (`ModelFn.network_passes`); None
    where the sampler was not built through `Components.make_sampler` / `with_passes`."""

    x: jax.Array
    nfe: jax.Array
    success: jax.Array
    x0: jax.Array | None = None
    steps: jax.Array | None = None
    passes: jax.Array | None = None


def with_passes(sampler, model):
    """The sampler with `passes` filled in on its Samples: model.network_passes(nfe)."""

    def sample(params, x0, key, cond=None):
        out = sampler(params, x0, key, cond)
        return out.replace(passes=model.network_passes(out.nfe))

    return sample
