"""Compute profile: arithmetic intensity of training and sampling on the roofline of a device.

For a jitted function, XLA's cost analysis of the compiled program gives its FLOPs and the bytes
its operations read and write ("bytes accessed", summed over the fused operations, so on-chip
reuse inside a fusion is not counted, reuse across fusions, e.g. through a CPU cache, is).  The
arithmetic intensity is I = FLOPs / bytes.  On a device with peak compute P (FLOP/s) and memory
bandwidth W (byte/s), the roofline bound (Williams, Waterman & Patterson 2009) is
    attainable FLOP/s = min(P, I W),
so a program with I below the ridge point P / W is memory-bound, above it compute-bound.

`profile_model` measures, for a config's network at several batch sizes, one training step
(forward, backward and the AdamW + EMA update: the trainer's compiled step,
`training.step.make_multi_step`) and one sampling
evaluation (the velocity v(t, x) at one t): FLOPs, bytes, intensity and the median time of the
compiled call.  Two byte counts bracket the real memory traffic: XLA's "bytes accessed" (every
fused operation reads its operands from and writes its result to memory: no reuse through
caches or on-chip memory between operations, an upper bound) and the program's input plus output
bytes (parameters, optimizer state, batch: each moved once, everything else kept on chip, a lower
bound).  Their intensities, `intensity` and `intensity_io`, bracket the true one.

`measure_cpu_peaks` measures this machine's roof (a float32 matmul and a copy).  `ACCELERATORS`
holds the vendors' peak figures, so the same intensities can be placed on GPU / TPU rooflines;
XLA's bytes come from this device's compilation (another backend fuses differently, so its
count differs; the I/O bytes do not depend on the backend).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch.training import components as components_lib
from flowmatch.training import loop
from flowmatch.training import runs
from flowmatch.training import state as state_lib
from flowmatch.training import step as step_lib

# Peak dense float32-model matmul throughput (TFLOP/s: TF32 tensor cores on NVIDIA, which XLA uses
# for float32 matmuls there; bf16 on TPUs, as in flowmatch.experiments.speed_unet.PEAK_TFLOPS), peak
# bf16 TFLOP/s, and memory bandwidth (GB/s = 1e9 byte/s), per chip, from the vendors' pages:
# NVIDIA H100 Tensor Core GPU data sheet (SXM5: 3.35 TB/s HBM3; PCIe: 2 TB/s), NVIDIA H200 data
# sheet (4.8 TB/s), NVIDIA A100 data sheet (80 GB SXM: 2,039 GB/s); Google Cloud TPU system
# architecture pages (v4: 275 TFLOP/s bf16, 1,200 GB/s HBM; v5e: 197 TFLOP/s, 819 GB/s; v5p:
# 459 TFLOP/s, 2,765 GB/s).  Sparsity figures halved to dense.
ACCELERATORS = {
    "NVIDIA H100 SXM": {"float32_tflops": 494.0, "bf16_tflops": 989.0, "bandwidth_gbs": 3350.0},
    "NVIDIA H100 PCIe": {"float32_tflops": 378.0, "bf16_tflops": 756.0, "bandwidth_gbs": 2000.0},
    "NVIDIA H200 SXM": {"float32_tflops": 494.0, "bf16_tflops": 989.0, "bandwidth_gbs": 4800.0},
    "NVIDIA A100 SXM 80GB": {"float32_tflops": 156.0, "bf16_tflops": 312.0,
                             "bandwidth_gbs": 2039.0},
    "TPU v4": {"float32_tflops": 275.0, "bf16_tflops": 275.0, "bandwidth_gbs": 1200.0},
    "TPU v5e": {"float32_tflops": 197.0, "bf16_tflops": 197.0, "bandwidth_gbs": 819.0},
    "TPU v5p": {"float32_tflops": 459.0, "bf16_tflops": 459.0, "bandwidth_gbs": 2765.0},
}

DEFAULT_MLP_BATCHES = (1, 16, 256, 4096, 65536)
DEFAULT_UNET_BATCHES = (1, 8, 64, 256)


def cost(compiled) -> dict:
    """{"flops", "bytes", "intensity"} of a compiled XLA program (jax `.lower(...).compile()`)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    flops = float(analysis.get("flops", float("nan")))
    nbytes = float(analysis.get("bytes accessed", float("nan")))
    return {"flops": flops, "bytes": nbytes,
            "intensity": flops / nbytes if nbytes > 0 else float("nan")}


def best_seconds(fn: Callable[[], object], repeats: int = 5, min_time: float = 0.2) -> float:
    """Median wall time of fn() (blocked until ready) after one warm-up call; at least `repeats`
    calls and min_time seconds of them."""
    jax.block_until_ready(fn())
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 200):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _fastest(fn, *args, repeats: int) -> float:
    """Seconds of the fastest of `repeats` timed calls fn(*args) after one warm-up call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(n: int = 2048, dtype="float32", repeats: int = 5) -> float:
    """Measured FLOP/s of this device's [n, n] x [n, n] product in `dtype` (2 n^3 per product;
    float32 at jax's default precision: TF32 on recent NVIDIA GPUs, bfloat16 passes on TPUs),
    random normal operands (zeros run faster on some chips), the fastest of `repeats` timed
    calls after a warm-up."""
    n = int(n)
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
    return 2.0 * n ** 3 / _fastest(jax.jit(jnp.matmul), a, b, repeats=repeats)


def measure_cpu_peaks(matmul_size: int = 2048, copy_mib: int = 256, cache_mib: int = 4,
                      repeats: int = 5) -> dict:
    """This device's measured roof: float32 matmul FLOP/s (2 n^3 per [n, n] x [n, n] product)
    and streaming bandwidth (y = 2 x + 1: one read and one write per element) over copy_mib MiB
    (memory, "bandwidth") and over cache_mib MiB (a working set that stays in the last-level
    cache, "cache_bandwidth").  The fastest of `repeats` timed calls (the least disturbed by
    other load; 20 x repeats for the short cache-sized calls)."""
    n = int(matmul_size)
    peak = matmul_peak(n, "float32", repeats)
    m = copy_mib * 2**20 // 4
    axpy = jax.jit(lambda x: 2.0 * x + 1.0)
    t_copy = _fastest(axpy, jnp.ones((m,), jnp.float32), repeats=repeats)
    mc = cache_mib * 2**20 // 4
    t_cache = _fastest(axpy, jnp.ones((mc,), jnp.float32), repeats=20 * repeats)
    return {"peak_flops": peak, "bandwidth": 2.0 * 4 * m / t_copy,
            "cache_bandwidth": 2.0 * 4 * mc / t_cache, "matmul_size": n,
            "copy_bytes": 2 * 4 * m, "cache_copy_bytes": 2 * 4 * mc,
            "method": f"fastest timed call: float32 [{n}, {n}] matmul; y = 2x + 1 over "
                      f"{copy_mib} MiB and {cache_mib} MiB of float32 (read + write)"}


def nbytes(tree) -> int:
    """Total bytes of the arrays (or ShapeDtypeStructs) in a pytree; None leaves count 0."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def _one_chip(config, batch_size: int):
    """config's settings on one device in sharding mode with global batch `batch_size` (the
    profile is per chip) and no gradient accumulation."""
    c = config.copy_and_resolve_references()
    c.unlock()
    c.parallel.mode = "sharding"
    c.parallel.data_axis_size = 1
    c.parallel.fsdp_axis_size = 1
    c.batch_size = int(batch_size)
    c.grad_accum_steps = 1
    return components_lib.read_settings(c)


def _programs(config, spec, b: int):
    """For batch size b: (the trainer's compiled step (`training.step.make_multi_step`: one
    step, state donated), one velocity evaluation v(0.5, x) of the model as the samplers see it),
    both jitted, not yet compiled."""
    settings = _one_chip(config, b)
    comps, plan = components_lib.build(settings, spec), loop.make_plan(settings)
    abstract = state_lib.abstract_state(comps.model, comps.tx, tuple(spec.example_shape),
                                        comps.conditional, plan)
    # The state is donated, as in training; XLA:CPU also takes minutes and gigabytes to compile
    # the U-Net step without the donation.
    train_step = step_lib.make_multi_step(comps, plan,
                                          jax.tree.map(lambda a: a.sharding, abstract))
    model = comps.model_fn()
    sample_eval = jax.jit(
        lambda params, x, cond: model.velocity_fn(params, cond)(jnp.float32(0.5), x))
    return train_step, sample_eval


def profile_model(config, batch_sizes: Sequence[int], *, repeats: int = 5,
                  time_calls: bool = True) -> list[dict]:
    """Rows {"model", "what" ('train_step' | 'sample_eval'), "batch", "flops", "bytes",
    "intensity", "io_bytes", "intensity_io", "seconds", "flops_per_sec", "bytes_per_sec"} for
    `config`'s network at each batch size on the default device (random inputs; FLOPs and bytes
    do not depend on values).  bytes_per_sec uses XLA's bytes."""
    settings = _one_chip(config, 1)
    # The data source gives the example shape and classes (as training would read them).
    spec = runs.spec_of_source(loop.load_data(settings.data), settings.data.name)
    key = jax.random.PRNGKey(0)
    comps = components_lib.build(settings, spec)
    shape = tuple(spec.example_shape)
    state = state_lib.create_state(comps.model, comps.tx, shape, comps.conditional, key,
                                   loop.make_plan(settings))
    rows = []
    for b in batch_sizes:
        train_step, sample_eval = _programs(config, spec, b)
        x = jax.random.uniform(jax.random.fold_in(key, b), (b, *shape), jnp.float32, -1.0, 1.0)
        batches = {"x": x[None], "label": jnp.zeros((1, b), jnp.int32)}
        cond = jnp.zeros((b,), jnp.int32) if comps.conditional else None
        holder = [jax.tree.map(jnp.copy, state)]  # donated by each train step call

        def call_train():
            holder[0], metrics = compiled_train(holder[0], batches, key)
            return metrics["loss"]

        compiled_train = train_step.lower(holder[0], batches, key).compile()
        compiled_eval = sample_eval.lower(state.ema_params, x, cond).compile()
        train_args, eval_args = (state, batches, key), (state.ema_params, x, cond)
        io = {"train_step": nbytes(train_args) + nbytes(jax.eval_shape(train_step, *train_args)),
              "sample_eval": nbytes(eval_args) + nbytes(jax.eval_shape(sample_eval, *eval_args))}
        for what, compiled, call in (
                ("train_step", compiled_train, call_train),
                ("sample_eval", compiled_eval, lambda: compiled_eval(state.ema_params, x, cond))):
            c = cost(compiled)
            row = {"model": comps.settings.model.get("name", "mlp"),
                   "data": comps.settings.data.name, "what": what, "batch": int(b), **c,
                   "io_bytes": io[what], "intensity_io": c["flops"] / io[what], "seconds": None,
                   "flops_per_sec": None, "bytes_per_sec": None}
            if time_calls:
                s = best_seconds(call, repeats)
                row.update(seconds=s, flops_per_sec=row["flops"] / s,
                           bytes_per_sec=row["bytes"] / s)
            rows.append(row)
    return rows


def ridge_points(peaks: dict | None = None, dtype: str = "float32") -> dict:
    """Ridge intensity P / W (FLOP/byte) of each accelerator in ACCELERATORS, and of 'this
    device' when its measured peaks ({"peak_flops", "bandwidth"}) are given."""
    out = {name: a[f"{'float32' if dtype == 'float32' else 'bf16'}_tflops"] * 1e12
           / (a["bandwidth_gbs"] * 1e9) for name, a in ACCELERATORS.items()}
    if peaks is not None:
        mine = {"this device": peaks["peak_flops"] / peaks["bandwidth"]}
        if peaks.get("cache_bandwidth"):
            mine["this device (cache)"] = peaks["peak_flops"] / peaks["cache_bandwidth"]
        out = {**mine, **out}
    return out


def classify(rows: Sequence[dict], ridges: dict) -> list[dict]:
    """rows with "bound": {device: 'memory' | 'compute' | 'either'}: 'memory' when even the
    I/O-only intensity (`intensity_io`, when present) is below the ridge, 'compute' when even
    XLA's intensity is above it, 'either' in between (it depends on how much of the traffic
    stays on chip)."""

    def bound(r, p):
        hi = r.get("intensity_io", r["intensity"])
        if hi < p:
            return "memory"
        return "compute" if r["intensity"] >= p else "either"

    return [dict(r, bound={d: bound(r, p) for d, p in ridges.items()}) for r in rows]


def crossover(rows: Sequence[dict], ridge: float, key: str = "intensity") -> dict:
    """{"model/what": the smallest profiled batch whose intensity (`key`: 'intensity' or
    'intensity_io') reaches `ridge` (None if none does)}: where that workload turns
    compute-bound on that device under that byte count."""
    out = {}
    for r in sorted(rows, key=lambda r: r["batch"]):
        k = f"{r['model']}/{r['what']}"
        out.setdefault(k, None)
        if out[k] is None and r[key] >= ridge:
            out[k] = r["batch"]
    return out
