"""The Sinkhorn coupling alone (couplings.couple, lax.map over 8 moons-vs-8gaussians batches of 256), median
of 40 calls, and its pairs (saved for comparison)."""
import sys, time, statistics
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
f = jax.jit(lambda X1, X0, U: lax.map(lambda a: C.couple("sinkhorn", a[0], a[1], uniforms=a[2], **kw).index, (X1, X0, U)))
idx = np.asarray(f(X1, X0, U)); np.save(sys.argv[1], idx)
ts = []
for _ in range(40):
    t = time.perf_counter(); jax.block_until_ready(f(X1, X0, U)); ts.append(time.perf_counter() - t)
print(f"sinkhorn coupling alone: {statistics.median(ts)/8*1e6:.1f} us per batch (best {min(ts)/8*1e6:.1f})")
