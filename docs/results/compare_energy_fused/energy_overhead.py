"""Fixed-grid sampling of the quickstart 3x256 MLP (random weights): the plain sampler vs the same
solve carrying the path energy (straightness.solve_with_energy), 20,000 points, interleaved."""
import sys, time
sys.path.insert(0, "/work/main")
import jax, jax.numpy as jnp, numpy as np
from flowmatch.experiments import cli
from flowmatch import training, sampling
from flowmatch.training import state as state_lib, loop as loop_lib, runs
from flowmatch.diagnostics import straightness
c = cli.load_config_file("/work/main/configs/checkerboard.py")
s = training.read_settings(c)
src = loop_lib.load_data(s.data)
comps = training.build(s, runs.spec_of_source(src, s.data.name))
plan = loop_lib.make_plan(s)
st = state_lib.create_state(comps.model, comps.tx, comps.spec.example_shape, comps.conditional, jax.random.PRNGKey(0), plan)
model = comps.model_fn()
x0 = jax.random.normal(jax.random.PRNGKey(1), (20000, 2))
for method, steps in (("euler", 50), ("heun", 25), ("rk4", 12)):
    samp = sampling.make_sampler(model, method, num_steps=steps)
    plain = jax.jit(lambda p, x, samp=samp: samp(p, x, jax.random.PRNGKey(0), None))
    en = jax.jit(lambda p, x, m=method, n=steps: straightness.solve_with_energy(model.velocity_fn(p, None), x, method=m, num_steps=n, t0=0.0, t1=model.t_end).x)
    a = plain(st.ema_params, x0); b = en(st.ema_params, x0)
    jax.block_until_ready((a, b))
    print(method, "x equal:", bool(jnp.array_equal(a.x, b[0])))
    tp, te = [], []
    for r in range(5):
        t = time.perf_counter(); jax.block_until_ready(plain(st.ema_params, x0)); tp.append(time.perf_counter() - t)
        t = time.perf_counter(); jax.block_until_ready(en(st.ema_params, x0)); te.append(time.perf_counter() - t)
    print(f"  plain {np.median(tp)*1e3:.1f} ms  with energy {np.median(te)*1e3:.1f} ms  ratio {np.median(te)/np.median(tp):.3f}")
