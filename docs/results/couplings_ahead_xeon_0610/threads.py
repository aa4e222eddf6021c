import sys, time; sys.path.insert(0, "/work/main")
import jax, numpy as np
from flowmatch import threefry
from flowmatch.experiments import speed, cli, coupling_speed as cs
threefry.unroll_hot_programs()
base = cli.load_config_file("/work/main/configs/moons.py")
K = 50
name = sys.argv[1]; threads = [int(t) for t in sys.argv[2:]]
trs = {}
for t in threads:
    c = cs.flowmatch_config(base, dict(name=name, ahead_threads=t), batch_size=256, hidden_sizes=(64, 64, 64), steps_per_call=K)
    trs[t] = speed.make_trainer(c, steps_per_call=K)
    for _ in range(3): jax.block_until_ready(trs[t].call()["loss"])
res = {t: [] for t in threads}
for r in range(10):
    for t, tr in trs.items():
        t0 = time.perf_counter(); jax.block_until_ready(tr.call()["loss"]); res[t].append(time.perf_counter() - t0)
for t in threads: print(name, "threads", t, "median steps/s %.0f" % (K / np.median(res[t])), "best %.0f" % (K / np.min(res[t])))
