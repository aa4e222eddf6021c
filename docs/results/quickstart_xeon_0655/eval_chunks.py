import sys, time; sys.path.insert(0, "/work/main")
import jax, jax.numpy as jnp, numpy as np
from flowmatch.experiments import cli
from flowmatch.training import components, runs, loop
cfg, n = sys.argv[1], int(sys.argv[2]); crs = [None if v == "none" else int(v) for v in sys.argv[3].split(",")]
c = cli.load_config_file(f"/work/main/configs/{cfg}.py")
settings = components.read_settings(c)
src = loop.load_data(settings.data); comps = components.build(settings, runs.spec_of_source(src, settings.data.name))
params = comps.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
x0 = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
outs = {}; fns = {}
for cr in crs:
    s = comps.make_sampler(chunk_rows=cr)   # the run's default sampler (config.sampling)
    fns[cr] = jax.jit(lambda p, x, s=s: s(p, x, jax.random.PRNGKey(2)).x)
    outs[cr] = np.asarray(fns[cr](params, x0))
res = {cr: [] for cr in fns}
for r in range(5):
    for cr, f in fns.items():
        t = time.perf_counter(); jax.block_until_ready(f(params, x0)); res[cr].append(time.perf_counter() - t)
print(cfg, n, " | ".join("rows %s: %.3f s (%.3f-%.3f) diff %.0e" % (cr, np.median(res[cr]), min(res[cr]), max(res[cr]), np.abs(outs[cr] - outs[crs[0]]).max()) for cr in fns))
