import sys, time; sys.path.insert(0, "/work/main")
import jax, numpy as np
from flowmatch import threefry
from flowmatch.experiments import speed, cli, coupling_speed as cs
threefry.unroll_hot_programs()
base = cli.load_config_file("/work/main/configs/moons.py")
K = 10
c = cs.flowmatch_config(base, dict(name="sinkhorn", ahead_threads=int(sys.argv[1])), batch_size=256, hidden_sizes=(64, 64, 64), steps_per_call=K)
tr = speed.make_trainer(c, steps_per_call=K)
for _ in range(3): jax.block_until_ready(tr.call()["loss"])
torch_run = cs.torchcfm_runner(batch_size=256, width=64, steps_per_call=K)
M = np.zeros((15, 12))
for r in range(15):
    torch_run()
    for i in range(12):
        t0 = time.perf_counter(); jax.block_until_ready(tr.call()["loss"]); M[r, i] = time.perf_counter() - t0
print("threads", sys.argv[1], "ms per call, i-th call after a torch call (median of 15):", np.round(np.median(M, 0) * 1e3, 2))
