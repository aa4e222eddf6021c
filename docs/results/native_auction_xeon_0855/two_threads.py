"""Throughput of the exact coupling (couple, native auction; 25 moons-vs-Gaussian batches of 256 a call)
from one thread against two threads calling at once, on the 2-core machine."""
import sys, time, threading
sys.path.insert(0, "/work/main")
import jax, jax.numpy as jnp, numpy as np
from flowmatch import couplings as C
from flowmatch.data import toy2d
B = 25
x1 = jnp.asarray(toy2d.moons(jax.random.PRNGKey(0), 256 * B)).reshape(B, 256, 2)
x0 = 4 * jax.random.normal(jax.random.PRNGKey(1), (B, 256, 2))
f = jax.jit(lambda a, b: jax.lax.map(lambda t: C.couple("exact", *t).index, (a, b)))
f(x1, x0).block_until_ready()
def run(n): 
    for _ in range(n): f(x1, x0).block_until_ready()
for rep in range(3):
    t = time.perf_counter(); run(8); one = time.perf_counter() - t
    ths = [threading.Thread(target=run, args=(8,)) for _ in range(2)]
    t = time.perf_counter(); [h.start() for h in ths]; [h.join() for h in ths]; two = time.perf_counter() - t
    print(f"one thread {one * 1e3 / (8 * B):.3f} ms per coupling; two threads: {two * 1e3 / (16 * B):.3f} ms per coupling (throughput x{one * 2 / two:.2f})")
