"""Profile of configs/digits.py's U-Net train step, 10 steps per call (two calls), XLA:CPU's op
events (--xla_cpu_enable_xprof_traceme) summed by name and by kind (the name less its number).
From the repository root: python docs/results/unet_loop_cpu_xeon_1930/profile_step.py"""
import os, sys, glob, gzip, json, collections, time
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
sys.path.insert(0, ".")
import jax
from flowmatch.experiments import cli, speed, speed_unet
c = cli.load_config_file("configs/digits.py")
shape = (8, 8, 1); B = c.batch_size; k = 10
tr = speed.make_trainer(speed_unet._step_config(c, 1, B), steps_per_call=k, spec=speed_unet._spec(c, shape),
                        batches=speed_unet.random_batches(B, shape, k))
jax.block_until_ready(tr.call()["loss"]); jax.block_until_ready(tr.call()["loss"])
d = "/tmp/prof_unet"; os.system(f"rm -rf {d}")
t = time.perf_counter()
with jax.profiler.trace(d):
    for _ in range(2):
        jax.block_until_ready(tr.call()["loss"])
wall = time.perf_counter() - t
f = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
ev = json.load(gzip.open(f))["traceEvents"]
agg = collections.Counter(); cnt = collections.Counter()
for e in ev:
    if e.get("ph") == "X" and "dur" in e:
        agg[e["name"]] += e["dur"]; cnt[e["name"]] += 1
tot = sum(agg.values())
print("wall", round(wall, 3), "s for 20 steps")
import re
kinds = collections.Counter(); kcnt = collections.Counter()
for name, us in agg.items():
    if not name.startswith(("$", "Thunk", "Pjit")):
        kinds[re.sub(r"[._]?\d+$", "", name)] += us; kcnt[re.sub(r"[._]?\d+$", "", name)] += cnt[name]
ops = sum(kinds.values())
print("XLA op time by kind, per step (20 steps profiled):")
for k, us in kinds.most_common(12):
    print(f"  {us / 1e3 / 20:8.2f} ms {100 * us / ops:5.1f}% {kcnt[k] // 20:6d} ops  {k}")
