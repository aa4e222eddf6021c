"""Seconds of an ahead-of-time compiled sampler's first four calls over both chunks of 100 digits
samples (the run of run.sh): the first call's one-time start-up.  From the repository root:
  python docs/results/compare_reference_digits/first_call.py > .../first_call.log"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import jax, numpy as np
from flowmatch import training, sampling
from flowmatch.experiments import compare
run = training.restore("/tmp/digits_run", None)
comps, params = run.components, run.state.ema_params
model = comps.model_fn()
chunks = compare.source_chunks(comps, 200, 100, 0)
keys = compare.sampler_keys(200, 100, 0)
for method, steps in (("heun", 4), ("rk4", 2), ("heun", 32)):
    s = sampling.make_sampler(model, method, num_steps=steps)
    x0, cond = chunks[0]
    t = time.perf_counter(); c = jax.jit(s).lower(params, x0, keys[0], cond).compile(); tc = time.perf_counter() - t
    times = []
    for i in range(4):
        t = time.perf_counter(); jax.block_until_ready([c(params, x, k, cd) for (x, cd), k in zip(chunks, keys)]); times.append(time.perf_counter() - t)
    print(method, steps, "compile", round(tc, 2), "calls of both chunks", [round(x, 3) for x in times])
