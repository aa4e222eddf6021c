"""digits U-Net train step: plain jitted (1 step/call), lax.scan of 10 with the written-out
convolution gradients, lax.scan of 2 with jax's own (the state before this change); interleaved.
From the repository root: python docs/results/unet_loop_cpu_xeon_1930/ab_scan.py"""
import sys, time, statistics, jax
sys.path.insert(0, ".")
from flowmatch.experiments import cli, speed, speed_unet
from flowmatch.models import precision
c = cli.load_config_file("configs/digits.py")
shape = (8, 8, 1); B = c.batch_size
orig = precision.gradients_written_out
def build(k, written):
    tr = speed.make_trainer(speed_unet._step_config(c, 1, B), steps_per_call=k, spec=speed_unet._spec(c, shape),
                            batches=speed_unet.random_batches(B, shape, k))
    precision.gradients_written_out = orig if written else (lambda: False)
    t0 = time.perf_counter(); jax.block_until_ready(tr.call()["loss"]); first = time.perf_counter() - t0
    precision.gradients_written_out = orig
    return tr, first
runs = {"plain (1/call)": (1, True), "scan 10, written out": (10, True), "scan 2, jax's own": (2, False)}
trs = {}
for name, (k, w) in runs.items():
    trs[name], first = build(k, w); print(f"{name}: first call {first:.1f} s", flush=True)
times = {n: [] for n in runs}
for r in range(3):
    for n, tr in trs.items():
        k = runs[n][0]; t = time.perf_counter(); jax.block_until_ready(tr.call()["loss"]); times[n].append((time.perf_counter() - t) / k)
for n in runs:
    print(f"{n:>24}: {1e3*statistics.median(times[n]):8.1f} ms/step  {[round(1e3*v,1) for v in times[n]]}")
