"""jax.random.permutation against rng.permutation (equal, and ms a call, medians of 20): 100
batches of 256 (a train call's moons draw, vmapped), then single permutations of growing n, all
through the fast path (FAST_PERMUTATION_MAX lifted for the measurement).

    python docs/results/toy_batches_xeon_2330/bigperm.py
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from flowmatch import rng  # noqa: E402

rng.FAST_PERMUTATION_MAX = 10**9


def ms(f, *a, n=20):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*a))
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e3


keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(100))
ref = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, 256)))
new = jax.jit(jax.vmap(lambda k: rng.permutation(k, 256)))
print(f"100 x 256  equal {bool((ref(keys) == new(keys)).all())}  jax {ms(ref, keys):.2f} ms"
      f"  rng.permutation {ms(new, keys):.2f} ms")
for n in (4096, 8192, 16384, 65536, 100000):
    k = jax.random.PRNGKey(n)
    ref = jax.jit(lambda k, n=n: jax.random.permutation(k, n))
    new = jax.jit(lambda k, n=n: rng.permutation(k, n))
    print(f"{n:9d}  equal {bool((ref(k) == new(k)).all())}  jax {ms(ref, k):.2f} ms"
          f"  rng.permutation {ms(new, k):.2f} ms")
