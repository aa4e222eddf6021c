"""Column minima, row minima, a finite maximum and block sums of a [256, 256] matrix in forms, each\ninside a compiled loop of 100 (none_a: the loop alone).  python docs/results/sinkhorn_xeon_2230/reductions.py"""
import time, statistics, jax, jax.numpy as jnp
from jax import lax
import numpy as np
c0 = jax.random.uniform(jax.random.key(0), (256, 256)); f = jax.random.uniform(jax.random.key(1), (256,))
def colmin_a(c): return jnp.min(c - f[:, None], axis=0)
def colmin_tree(c):
    x = c - f[:, None]
    while x.shape[0] > 1:
        h = x.shape[0] // 2
        x = jnp.minimum(x[:h], x[h:])
    return x[0]
def colmin_tree8(c):
    x = c - f[:, None]
    while x.shape[0] > 8:
        h = x.shape[0] // 2
        x = jnp.minimum(x[:h], x[h:])
    return jnp.min(x, axis=0)
def colmin_variadic(c):
    x = c - f[:, None]
    def comb(a, b):
        return (jnp.minimum(a[0], b[0]), jnp.minimum(a[1], b[1]))
    r = lax.reduce((x, x), (jnp.float32(jnp.inf), jnp.float32(jnp.inf)), comb, (0,))
    return r[0]
def colmin_T(c): return jnp.min((c - f[:, None]).T, axis=1)
def rowmin_a(c): return jnp.min(c, axis=1)
def rowmin_variadic(c):
    comb = lambda a, b: (jnp.minimum(a[0], b[0]), jnp.minimum(a[1], b[1]))
    return lax.reduce((c, c), (jnp.float32(jnp.inf),) * 2, comb, (1,))[0]
def gmax_a(c): return jnp.max(jnp.where(jnp.isfinite(c), c, 0.0))
def gmax_variadic(c):
    x = jnp.where(jnp.isfinite(c), c, 0.0)
    comb = lambda a, b: (jnp.maximum(a[0], b[0]), jnp.maximum(a[1], b[1]))
    return lax.reduce((x, x), (jnp.float32(-jnp.inf),) * 2, comb, (0, 1))[0]
def blocks_a(c): return jnp.sum(c.reshape(256, 16, 16), axis=2)
def blocks_variadic(c):
    x = c.reshape(256, 16, 16)
    comb = lambda a, b: (a[0] + b[0], a[1] + b[1])
    return lax.reduce((x, x), (jnp.float32(0),) * 2, comb, (2,))[0]
def none_a(c): return c[0]
V = dict(none_a=none_a, colmin_a=colmin_a, colmin_tree=colmin_tree, colmin_tree8=colmin_tree8, colmin_variadic=colmin_variadic, colmin_T=colmin_T,
         rowmin_a=rowmin_a, rowmin_variadic=rowmin_variadic, gmax_a=gmax_a, gmax_variadic=gmax_variadic,
         blocks_a=blocks_a, blocks_variadic=blocks_variadic)
def loop(fn):
    @jax.jit
    def run(c):
        def body(i, carry):
            c, acc = carry
            r = fn(c)
            return c + 1e-7, acc + jnp.sum(r)
        return lax.fori_loop(0, 100, body, (c, jnp.float32(0)))[1]
    return run
fs = {k: loop(v) for k, v in V.items()}
for k, v in V.items():
    base = k.split("_")[0] + "_a"
    print(k, np.abs(np.asarray(jax.jit(v)(c0)) - np.asarray(jax.jit(V[base])(c0))).max())
res = {k: [] for k in fs}
for k in fs: fs[k](c0).block_until_ready()
for _ in range(10):
    for k, fn in fs.items():
        t = time.perf_counter(); fn(c0).block_until_ready(); res[k].append((time.perf_counter() - t) / 100 * 1e6)
for k in fs: print(f"{k:18s} {statistics.median(res[k]):8.2f} us/iter")
