# Do two independent jitted programs dispatched from ONE thread (async dispatch) overlap on one CPU device?
import sys, time; sys.path.insert(0, "/work/main")
import jax, jax.numpy as jnp, numpy as np
from flowmatch import couplings as C
from flowmatch.experiments import speed, cli
bs = speed.coupling_batches(256, 8)
x1, x0, u = bs[0]
X1 = jnp.stack([x1] * 20); X0 = jnp.stack([x0] * 20)
coup = jax.jit(lambda X1, X0: jax.lax.map(lambda a: C.couple("exact", a[0], a[1]).index, (X1, X0)))
cfg = cli.load_config_file("/work/main/configs/torchcfm_moons.py")
tr = speed.make_trainer(cfg, steps_per_call=100)
jax.block_until_ready(coup(X1, X0)); jax.block_until_ready(tr.call()["loss"])
for r in range(3):
    t = time.perf_counter()
    for _ in range(5): jax.block_until_ready(tr.call()["loss"])
    ts = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(5): jax.block_until_ready(coup(X1, X0))
    tc = time.perf_counter() - t
    t = time.perf_counter()
    outs = []
    for _ in range(5):
        outs.append(coup(X1, X0)); outs.append(tr.call()["loss"])
    jax.block_until_ready(outs)
    tb = time.perf_counter() - t
    print(f"train calls alone {ts:.3f} s, couplings alone {tc:.3f} s, dispatched together {tb:.3f} s (sum {ts+tc:.3f})")
