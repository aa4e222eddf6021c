"""dopri5 on the digits run (python scripts/train.py --config=configs/digits.py --workdir=/tmp/digits_run)
at rtol = atol = 1e-3 .. 1e-7, 100 samples as one system: NFE, seconds with compilation, and each
solution's distance to the 1e-7 one.  python reference_tolerances.py > reference_tolerances.log"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import jax, jax.numpy as jnp, numpy as np
from flowmatch import training, sampling, integrators
from flowmatch.experiments import compare
run = training.restore("/tmp/digits_run", None)
comps, params = run.components, run.state.ema_params
model = comps.model_fn()
chunks = compare.source_chunks(comps, 100, 100, 0)
x0, cond = chunks[0]
v = model.velocity_fn(params, cond)
sols = {}
for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
    f = jax.jit(lambda x: integrators.solve(v, x, method="dopri5", rtol=tol, atol=tol, max_steps=100_000, t0=0.0, t1=model.t_end))
    t = time.perf_counter(); r = f(x0); x = np.asarray(r.x, np.float64); s = time.perf_counter() - t
    sols[tol] = x
    print(f"tol {tol:g}: nfe {int(r.nfe)}, accepted {int(r.num_accepted)}, {s:.1f} s (with compile)", flush=True)
ks = sorted(sols)
for a in ks:
    print(f"tol {a:g}: RMS distance to the 1e-7 solution {np.sqrt(np.mean((sols[a] - sols[1e-7]) ** 2)):.3e}, max {np.abs(sols[a] - sols[1e-7]).max():.3e}")
