"""Profile of flowmatch's rk4 (8 steps) of torchcfm's 3 x 256 SELU network on N points (default 256):
XLA:CPU op events of 10 solves, per solve; then products (ynn fusions) and SELU fusions summed.

    python docs/results/torchdiffeq_threads/profile_rk4.py 256
"""
import os, sys, gzip, json, collections, time, statistics
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from flowmatch.diagnostics import trace
from flowmatch.experiments import speed_sampling as ss
n = int(sys.argv[1]) if len(sys.argv) > 1 else 256
net = ss.default_network(concat=True)
model, params = ss.model_of(net)
x0 = jax.random.normal(jax.random.PRNGKey(1), (n, 2), jnp.float32)
call = ss.solve_program(model, params, x0, "rk4", 8, ...)
for _ in range(5): jax.block_until_ready(call())
ts = []
for _ in range(30):
    t = time.perf_counter(); jax.block_until_ready(call()); ts.append(time.perf_counter() - t)
print("median ms", statistics.median(ts) * 1e3, "best", min(ts) * 1e3)
d = "/tmp/prof_rk4"; os.system(f"rm -rf {d}")
with jax.profiler.trace(d):
    for _ in range(10): jax.block_until_ready(call())
f = trace.latest_trace_file(d)
ev = json.load(gzip.open(f))["traceEvents"]
agg = collections.Counter(); cnt = collections.Counter()
for e in ev:
    if e.get("ph") == "X" and "dur" in e:
        agg[e["name"]] += e["dur"]; cnt[e["name"]] += 1
for name, us in agg.most_common(30):
    print(f"{us/1e3/10:9.3f} ms/solve {cnt[name]//10:6d}  {name[:100]}")
prod = sum(us for name, us in agg.items() if name.startswith("ynn_fusion"))
selu = sum(us for name, us in agg.items() if name.startswith("select_multiply_fusion"))
print(f"products (ynn fusions) {prod/1e3/10:.2f} ms/solve, SELU fusions {selu/1e3/10:.2f} ms/solve")
