import sys, time
sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from flowmatch.data import toy2d
from flowmatch import threefry
def timeit(f, *a, n=200):
    jax.block_until_ready(f(*a))
    t = time.perf_counter()
    for _ in range(n): r = f(*a)
    jax.block_until_ready(r)
    return (time.perf_counter() - t) / n * 1e3
keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(100))
perm = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, 256)))
unif = jax.jit(jax.vmap(lambda k: jax.random.uniform(k, (256, 1))))
sortk = jax.jit(jax.vmap(lambda k: jnp.argsort(jax.random.bits(k, (256,)))))
full = jax.jit(jax.vmap(lambda k: toy2d.sample_labeled("moons", k, 256) if hasattr(toy2d, "sample_labeled") else None))
print("perm ms", timeit(perm, keys))
print("argsort bits ms", timeit(sortk, keys))
print("uniform ms", timeit(unif, keys))
print([n for n in dir(toy2d) if not n.startswith("__")][:40])
