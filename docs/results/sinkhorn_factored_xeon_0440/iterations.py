import sys, time, statistics
sys.path.insert(0, ".")
import numpy as np, jax, jax.numpy as jnp
from jax import lax
from flowmatch import couplings as C, rng
from flowmatch.data import toy2d
base = rng.seed_stream(0, "coupling_batches")
keys = [jax.random.fold_in(base, i) for i in range(8)]
X1 = jnp.stack([toy2d.moons(rng.stream(k, "x1"), 256) for k in keys])
X0 = jnp.stack([toy2d.eight_gaussians(rng.stream(k, "x0"), 256) for k in keys])
U = jnp.stack([jax.random.uniform(rng.stream(k, "uniforms"), (256,)) for k in keys])
kw = C.CouplingSettings(name="sinkhorn").kwargs()
fns = {}
for iters in (1, 14, 28):
    k2 = dict(kw, num_iters=iters, sinkhorn_tolerance=0.0)
    fns[iters] = jax.jit(lambda X1, X0, U, k2=k2: lax.map(lambda a: C.couple("sinkhorn", a[0], a[1], uniforms=a[2], **k2).index, (X1, X0, U)))
fns["default"] = jax.jit(lambda X1, X0, U: lax.map(lambda a: C.couple("sinkhorn", a[0], a[1], uniforms=a[2], **kw).index, (X1, X0, U)))
fns["cost only"] = jax.jit(lambda X1, X0, U: lax.map(lambda a: C.squared_distances(a[0], a[1])[0], (X1, X0, U)))
for f in fns.values(): jax.block_until_ready(f(X1, X0, U))
ts = {n: [] for n in fns}
for r in range(30):
    for n, f in fns.items():
        t = time.perf_counter(); jax.block_until_ready(f(X1, X0, U)); ts[n].append(time.perf_counter() - t)
for n, t in ts.items():
    print(f"{str(n):10s} {statistics.median(t)/8*1e6:8.1f} us per batch")
