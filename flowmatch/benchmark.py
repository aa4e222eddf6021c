"""Speed benchmarks that print figures (never timed tests: a busy machine must not fail CI).

* Train steps/s of the 2-D MLP at batch 256: torchcfm's example width (64 x 3 hidden layers) and
  the default config's network, at 1 and at several steps per jitted call.
* Sampling throughput of the default sampler, and for every integrator the ratio
      time of an N-evaluation solve / (N x time of one jitted forward pass on the same batch),
  whose physical floor is 1.0 (integrator overhead is what exceeds it).

Times are medians over repeats of compiled calls (compilation excluded).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from flowmatch import integrators
from flowmatch import sampling
from flowmatch import train as train_lib


def _median_seconds(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    """Median wall time of fn() (blocked until ready), after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 1000):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_steps_per_second(config, *, steps_per_call: int, calls: int = 20) -> float:
    """Steps/s of the jitted train step for `config` (state donated, batches pre-made)."""
    exp = train_lib.Experiment.from_config(config)
    state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
    multi_step = exp.make_multi_step()
    from flowmatch import data as data_lib  # pylint: disable=g-import-not-at-top
    it = data_lib.BatchIterator(exp.source, config.batch_size, config.seed)
    batches = {k: jnp.asarray(v) for k, v in it.batches(0, steps_per_call).items()}
    key = jax.random.PRNGKey(1)
    holder = [state]

    def run():
        holder[0], m = multi_step(holder[0], batches, key)
        return m["loss"]

    return steps_per_call / _median_seconds(run, calls)


def integrator_overhead(config, *, num_points: int = 10_000, num_steps: int = 16,
                        methods=None, rtol: float = 1e-5, atol: float = 1e-5) -> list[dict]:
    """For each method: seconds per solve, NFE, and solve / (NFE x forward) on num_points points."""
    exp = train_lib.Experiment.from_config(config)
    params = jax.jit(exp.init_state)(jax.random.PRNGKey(0)).params
    apply_fn = lambda p, x, t, cond: exp.apply(p, x, t, cond)
    x0 = jax.random.normal(jax.random.PRNGKey(2), (num_points, *exp.source.example_shape))
    v = sampling.velocity_fn(apply_fn, params, exp.objective)
    forward = jax.jit(lambda x: v(jnp.float32(0.5), x))
    t_forward = _median_seconds(lambda: forward(x0), 30)
    rows = []
    for method in methods or integrators.METHODS:
        adaptive = method in integrators.ADAPTIVE_METHODS and rtol is not None
        kwargs = dict(rtol=rtol, atol=atol) if adaptive else dict(num_steps=num_steps)
        solve = jax.jit(lambda x, m=method, kw=kwargs: integrators.solve(v, x, method=m, **kw))
        sol = solve(x0)
        nfe = int(sol.nfe)
        seconds = _median_seconds(lambda: solve(x0).x, 5)
        rows.append(dict(method=method, mode="adaptive" if adaptive else f"{num_steps} steps",
                         nfe=nfe, seconds=seconds, ratio=seconds / (nfe * t_forward)))
    return rows, t_forward


def run(config, *, quick: bool = False) -> dict:
    """Runs all benchmarks for a 2-D config and prints a report; returns the figures."""
    out = {"device": str(jax.devices()[0]), "backend": jax.default_backend()}
    print(f"flowmatch benchmark on {out['device']} ({jax.device_count()} device(s))")
    calls = 5 if quick else 20
    print("\ntrain steps/s, batch 256 (median of compiled calls):")
    print(f"  {'network':<28} {'steps/call':>10} {'steps/s':>10}")
    for label, hidden in (("torchcfm 64 x 3", (64, 64, 64)),
                          (f"default {'x'.join(map(str, config.model.hidden_sizes))}",
                           tuple(config.model.hidden_sizes))):
        for k in (1, 10):
            c = config.copy_and_resolve_references()
            c.unlock()
            c.batch_size = 256
            c.model.hidden_sizes = hidden
            c.steps_per_call = k
            c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 10
            sps = train_steps_per_second(c, steps_per_call=k, calls=calls)
            out[f"train_steps_per_sec[{label}, k={k}]"] = sps
            print(f"  {label:<28} {k:>10} {sps:>10.0f}")

    s = config.sampling
    n = 10_000
    print(f"\nintegrator overhead on {n:,} points, default network "
          "(ratio = solve time / (NFE x one forward pass); 1.00 is the floor):")
    rows, t_fwd = integrator_overhead(config, num_points=n, num_steps=4 if quick else 16)
    print(f"  one forward pass: {t_fwd * 1e3:.3f} ms")
    print(f"  {'method':<10} {'mode':<12} {'NFE':>5} {'ms/solve':>10} {'ratio':>7}")
    for r in rows:
        print(f"  {r['method']:<10} {r['mode']:<12} {r['nfe']:>5} {r['seconds'] * 1e3:>10.2f} "
              f"{r['ratio']:>7.3f}")
        out[f"ratio[{r['method']}, {r['mode']}]"] = r["ratio"]
    default = [r for r in rows if r["method"] == s.method]
    if default and s.num_steps:
        per_sample = default[0]["seconds"] / default[0]["nfe"] * s.num_steps * (
            integrators.nfe_for(s.method, s.num_steps) / s.num_steps) / n
        print(f"\ndefault sampler ({s.method}, {s.num_steps} steps): "
              f"{1.0 / per_sample:,.0f} samples/s on {n:,}-point batches")
        out["default_sampler_samples_per_sec"] = 1.0 / per_sample
    return out
