"""The trainer of an image config at one and at ten steps per call, calls interleaved (medians of
6).  From the repository root: python docs/results/unet_loop_cpu_xeon_1930/steps_per_call.py configs/mnist.py"""
import sys, time, statistics, jax
sys.path.insert(0, ".")
from flowmatch.experiments import cli, speed
cfg = sys.argv[1] if len(sys.argv) > 1 else "configs/digits.py"
c = cli.load_config_file(cfg)
ks = (1, 10)
trs = {}
for k in ks:
    t0 = time.perf_counter(); trs[k] = speed.make_trainer(c, steps_per_call=k); jax.block_until_ready(trs[k].call())
    print("k", k, "first call", round(time.perf_counter() - t0, 2), "s", flush=True)
times = {k: [] for k in ks}
for r in range(6):
    for k in ks:
        t = time.perf_counter(); jax.block_until_ready(trs[k].call()); times[k].append((time.perf_counter() - t) / k)
for k in ks:
    print(cfg, "steps_per_call", k, "median ms/step", round(1e3 * statistics.median(times[k]), 2), [round(1e3*v,1) for v in times[k]])
