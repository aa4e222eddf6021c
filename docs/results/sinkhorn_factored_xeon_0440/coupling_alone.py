"""The Sinkhorn coupling alone on the benchmark's 8 batches of 256 (speed.coupling_batches: moons vs
8gaussians), all 8 under one lax.map, us per batch.

  python coupling_alone.py PAIRS.npy      couplings.couple at its defaults, median of 40 calls; its
                                          pairs saved to PAIRS.npy (to compare two trees)
  python coupling_alone.py --iterations   tolerance 0 and 1, 14 or 28 iterations, the default, and
                                          the cost matrix alone: medians of 30 interleaved rounds

Run from the repository root with PYTHONPATH set to it."""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import couplings as C
from flowmatch.experiments import speed

X1, X0, U = (jnp.stack(parts) for parts in zip(*speed.coupling_batches()))
kw = C.CouplingSettings(name="sinkhorn").kwargs()


def over_batches(one):
    return jax.jit(lambda X1, X0, U: lax.map(lambda a: one(*a), (X1, X0, U)))


def coupling(**settings):
    return over_batches(lambda x1, x0, u: C.couple("sinkhorn", x1, x0, uniforms=u,
                                                  **settings).index)


def per_batch(fn):
    t = time.perf_counter()
    jax.block_until_ready(fn(X1, X0, U))
    return (time.perf_counter() - t) / X1.shape[0]


if sys.argv[1] == "--iterations":
    fns = {iters: coupling(**dict(kw, num_iters=iters, sinkhorn_tolerance=0.0))
           for iters in (1, 14, 28)}
    fns["default"] = coupling(**kw)
    fns["cost only"] = over_batches(lambda x1, x0, u: C.squared_distances(x1, x0)[0])
    for f in fns.values():
        per_batch(f)
    ts = {n: [] for n in fns}
    for _ in range(30):
        for n, f in fns.items():
            ts[n].append(per_batch(f))
    for n, t in ts.items():
        print(f"{str(n):10s} {statistics.median(t) * 1e6:8.1f} us per batch")
else:
    f = coupling(**kw)
    np.save(sys.argv[1], np.asarray(f(X1, X0, U)))
    ts = [per_batch(f) for _ in range(40)]
    print(f"sinkhorn coupling alone: {statistics.median(ts) * 1e6:.1f} us per batch "
          f"(best {min(ts) * 1e6:.1f})")
