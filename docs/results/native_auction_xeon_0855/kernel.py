"""The auction's kernels side by side on the couplings benchmark's problems (speed.coupling_batches:
256 moons x1 vs 256 8gaussians x0, 8 batches, 64 in all here): the jitted exact coupling
(couplings.couple, as the trainer pairs a step) one problem at a time under lax.map, kernel 'lax'
against 'native', interleaved; the first call (tracing, compiling, running) of each; and whether
they give the same pairs, rounds and flags."""
import time
import jax, jax.numpy as jnp, numpy as np
from flowmatch import couplings, native
from flowmatch.experiments import speed

print("jax", jax.__version__, "| native auction:", native.target("auction") or native.reason("auction"))
batches = speed.coupling_batches(256, 64)
x1 = jnp.stack([b[0] for b in batches]); x0 = jnp.stack([b[1] for b in batches])
fns, firsts, outs = {}, {}, {}
for kernel in ("lax", "native"):
    fns[kernel] = jax.jit(lambda a, b, k=kernel: jax.lax.map(
        lambda t: couplings.couple("exact", t[0], t[1], auction_kernel=k).index, (a, b)))
    t0 = time.perf_counter(); jax.block_until_ready(fns[kernel](x1[:1], x0[:1])); firsts[kernel] = time.perf_counter() - t0
    print(f"{kernel:6s} first call (trace, compile, run one problem): {firsts[kernel]:.2f} s")
    solve = jax.jit(jax.vmap(lambda a, b, k=kernel: couplings.exact_assignment(couplings.squared_distances(a, b), kernel=k)))
    r = solve(x1, x0)
    outs[kernel] = (fns[kernel](x1, x0), r.index, r.rounds, r.converged)
same = [bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(outs["lax"], outs["native"])]
print("the same pairs (couple), permutations, rounds, converged flags on all 64 problems:", same,
      "| rounds min/median/max", [int(f(np.asarray(outs["lax"][2]))) for f in (np.min, np.median, np.max)])
times = {k: [] for k in fns}
for rep in range(7):
    for kernel, fn in fns.items():
        t0 = time.perf_counter(); jax.block_until_ready(fn(x1, x0)); times[kernel].append((time.perf_counter() - t0) / 64 * 1e3)
for kernel, ts in times.items():
    print(f"{kernel:6s} ms per coupling (64 problems a call, 7 interleaved calls): median {np.median(ts):.3f}, "
          f"range {min(ts):.3f}-{max(ts):.3f}")
print(f"lax / native: {np.median(times['lax']) / np.median(times['native']):.2f}x")
