"""The Sinkhorn coupling alone, before and after this change, interleaved in one process.

Usage, from the repository root: PYTHONPATH=. python docs/results/sinkhorn_xeon_2230/ab_coupling.py
OLD_COUPLINGS_PY (the file before: git show 83e556b:flowmatch/couplings.py > /tmp/couplings_83e556b.py)
Eight batches of 256 moons vs 256 8gaussians points (speed.coupling_seconds' draws), all eight
under one jitted lax.map per call; 40 interleaved calls of each, median seconds per batch.
Also the pairs drawn (must be the same) and, at smaller reg, iterations and costs of both.
"""
import importlib.util
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from flowmatch import couplings as new
from flowmatch import rng
from flowmatch.data import toy2d

spec = importlib.util.spec_from_file_location("couplings_before", sys.argv[1])
old = sys.modules["couplings_before"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)

base = rng.seed_stream(0, "coupling_batches")
keys = [jax.random.fold_in(base, i) for i in range(8)]
x1 = jnp.stack([toy2d.moons(rng.stream(k, "x1"), 256) for k in keys])
x0 = jnp.stack([toy2d.eight_gaussians(rng.stream(k, "x0"), 256) for k in keys])
u = jnp.stack([jax.random.uniform(rng.stream(k, "uniforms"), (256,)) for k in keys])
fns = {name: jax.jit(lambda a, b, c, m=m: lax.map(
    lambda z: m.couple("sinkhorn", z[0], z[1], uniforms=z[2]).index, (a, b, c)))
    for name, m in (("before", old), ("after", new))}
print("the same pairs:", bool(jnp.all(fns["before"](x1, x0, u) == fns["after"](x1, x0, u))))
for reg in (0.01, 1e-3, 1e-4):
    for name, m in (("before", old), ("after", new)):
        solve = jax.jit(lambda c, m=m: m.sinkhorn(c, reg=reg, num_iters=2000, tolerance=1e-3,
                                                  relaxation=1.7))
        plans = [solve(m.squared_distances(x1[i], x0[i])) for i in range(3)]
        print(f"reg {reg:g}, tolerance 1e-3, {name}: iterations "
              f"{[int(p.iterations) for p in plans]}, column error "
              f"{[round(float(p.marginal_error), 5) for p in plans]}, transport cost "
              f"{[round(float(jnp.sum(p.plan * m.squared_distances(x1[i], x0[i]))), 4) for i, p in enumerate(plans)]}")
times = {name: [] for name in fns}
for fn in fns.values():
    jax.block_until_ready(fn(x1, x0, u))
for _ in range(40):
    for name, fn in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(x1, x0, u))
        times[name].append((time.perf_counter() - t) / 8)
for name, t in times.items():
    print(f"{name}: {statistics.median(t) * 1e6:.1f} us a batch (median of 40 calls of 8)")
