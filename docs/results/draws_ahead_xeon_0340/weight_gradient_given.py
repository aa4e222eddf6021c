import time, numpy as np, jax, jax.numpy as jnp
from jax import lax
M, K, N = 256, 64, 64
x = jnp.asarray(np.random.randn(M, K).astype(np.float32)); g = jnp.asarray(np.random.randn(M, N).astype(np.float32))
xt = jnp.asarray(np.asarray(x).T.copy())
R = 200
def loop(f):
    def run(x, g, xt):
        def body(i, acc):
            return acc + f(x + acc[0, 0] * 1e-9, g, xt + acc[0, 0] * 1e-9)
        return lax.fori_loop(0, R, body, jnp.zeros((K, N)))
    return jax.jit(run)
forms = {
  "contract rows (flax)": lambda x, g, xt: lax.dot_general(x, g, (((0,), (0,)), ((), ()))),
  "given x^T [K,M]@[M,N]": lambda x, g, xt: xt @ g,
  "x.T @ g": lambda x, g, xt: x.T @ g,
  "fwd-like [M,K]@[K,N]": lambda x, g, xt: (x @ g[:K, :]) [:K],
}
fs = {n: loop(f) for n, f in forms.items()}
for n, f in fs.items(): jax.block_until_ready(f(x, g, xt))
for r in range(2):
    for n, f in fs.items():
        ts = []
        for _ in range(10):
            t = time.perf_counter(); jax.block_until_ready(f(x, g, xt)); ts.append(time.perf_counter() - t)
        print(f"{n:24s} {np.median(ts)/R*1e6:7.2f} us")
f = fs["given x^T [K,M]@[M,N]"]
txt = f.lower(x, g, xt).compile().as_text()
import re
print([l.strip()[:160] for l in txt.splitlines() if " dot(" in l or "ynn" in l.lower()][:6])
