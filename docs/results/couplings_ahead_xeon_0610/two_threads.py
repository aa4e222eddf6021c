# Do two jitted programs on ONE CPU device overlap when called from two Python threads?
import sys, time, threading; sys.path.insert(0, "/work/main")
import jax, jax.numpy as jnp, numpy as np
from flowmatch import couplings as C
from flowmatch.experiments import speed, cli
bs = speed.coupling_batches(256, 8)
x1, x0, u = bs[0]
coup = jax.jit(lambda x1, x0: C.couple("exact", x1, x0).index)
cfg = cli.load_config_file("/work/main/configs/torchcfm_moons.py")
tr = speed.make_trainer(cfg, steps_per_call=100)
jax.block_until_ready(coup(x1, x0)); jax.block_until_ready(tr.call()["loss"])
def steps(n):
    for _ in range(n): jax.block_until_ready(tr.call()["loss"])
def couples(n):
    for _ in range(n): jax.block_until_ready(coup(x1, x0))
for r in range(3):
    t = time.perf_counter(); steps(10); ts = time.perf_counter() - t
    t = time.perf_counter(); couples(200); tc = time.perf_counter() - t
    t = time.perf_counter()
    th = threading.Thread(target=couples, args=(200,)); th.start(); steps(10); th.join()
    tb = time.perf_counter() - t
    print(f"steps alone {ts:.3f} s, couplings alone {tc:.3f} s, both in two threads {tb:.3f} s (sum {ts+tc:.3f})")
