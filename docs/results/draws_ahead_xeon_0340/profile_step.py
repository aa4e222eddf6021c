"""Op-level profile of the trainer's 64x3 step and the plain-JAX loop (100 steps per call)."""
import os, sys, gzip, json, collections, time
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
sys.path.insert(0, os.getcwd())
import jax
from flowmatch.experiments import cli, speed, speed_process
from flowmatch import threefry
from flowmatch.diagnostics import trace
threefry.unroll_hot_programs()
c = cli.load_config_file("configs/torchcfm_moons.py")
k = 100
tr = speed.make_trainer(c, steps_per_call=k)
plain = speed_process.plain_jax_runner(c, k)
runs = {"trainer": lambda: tr.call()["loss"], "plain": plain}
for f in runs.values():
    for _ in range(3): jax.block_until_ready(f())
for r in range(3):
    for name, f in runs.items():
        t = time.perf_counter()
        for _ in range(10): jax.block_until_ready(f())
        print(name, "unprofiled us/step %.1f" % ((time.perf_counter()-t)/10/k*1e6))
for name, f in runs.items():
    d = f"/tmp/prof_{name}"; os.system(f"rm -rf {d}")
    with jax.profiler.trace(d):
        for _ in range(5): jax.block_until_ready(f())
    ev = json.load(gzip.open(trace.latest_trace_file(d)))["traceEvents"]
    agg = collections.Counter(); cnt = collections.Counter()
    for e in ev:
        if e.get("ph") == "X" and "dur" in e:
            agg[e["name"]] += e["dur"]; cnt[e["name"]] += 1
    print("=====", name)
    tot = 0
    for nm, us in agg.most_common(60):
        if nm.startswith(("ThunkExecutor", "$", "Pjit", "while", "PjRt", "Tfrt")):
            print(f"   [{us/5/k:8.2f} us/step {cnt[nm]:6d}  {nm[:90]}]"); continue
        tot += us
        print(f"{us/5/k:8.2f} us/step {cnt[nm]//5:6d}/call  {nm[:100]}")
    print("sum of listed ops us/step", tot/5/k)
