"""Sampling speed benchmarks that print each figure next to its same-run reference.

* `roofline_fraction`: achieved FLOP/s of a fixed-grid solve of the default 2-D network
  (configs/default.py: MLP 3 x 256, relu, sinusoidal time embedding, time_scale 10) against this
  CPU's float32 matmul peak, the peak's [2048, 2048] matmul timed interleaved with the solves
  (A, B, A, B, ...) so that other load hits both alike.  FLOPs = nfe x XLA's cost analysis of one
  network evaluation on the batch (the cost analysis of the whole solve counts a lax.scan body
  once).  Each size is timed with the network in row chunks (`sampling.chunks`) and without.
* `torchdiffeq_ratio`: flowmatch's rk4 against torchdiffeq's rk4 on the same network and points:
  torchcfm's MLP (t appended to the input, SELU, 3 x 256) as flowmatch's MLP with
  time_embedding="concat" and a torch twin holding the same weights.  torchdiffeq's "rk4" is
  Kutta's 3/8 rule (its rk4_alt_step_func), so the agreement check solves with that tableau
  (`RK4_38`); the timed flowmatch solve is the registry's "rk4" (the classic tableau: the same
  four evaluations per step).  On a CPU torch runs on as many threads as this process has
  cores, the cores XLA's CPU client uses by default: like for like, whatever set torch's thread
  count before (the train and coupling benchmarks run torchcfm on one thread, as its tutorial
  does; an rk4 comparison left at that measured torch on half of these 2 cores).

    from flowmatch.experiments import speed_sampling
    speed_sampling.report()        # prints both tables; returns their rows
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from fractions import Fraction
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import integrators
from flowmatch import paths
from flowmatch import sampling
from flowmatch.diagnostics import roofline
from flowmatch.experiments import coupling_speed
from flowmatch.models.mlp import MLP

ROOFLINE_SIZES = (256, 2_048, 10_000, 100_000)
TORCH_SIZES = (256, 10_000)
PEAK_SIZE = 2048  # [n, n] float32 matmul of the peak on CPU (as roofline.measure_cpu_peaks)
ACCELERATOR_PEAK_SIZE = 8192  # on a GPU / TPU, where [2048]^2 is too small to fill the chip


def peak_size() -> int:
    """The [n, n] size of the peak's matmul on this backend."""
    return PEAK_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_PEAK_SIZE

# Kutta's (1901) 3/8 rule, torchdiffeq's "rk4" (torchdiffeq/_impl/rk_common.py rk4_alt_step_func).
RK4_38 = integrators.ButcherTableau(
    "rk4_38", 4, c=(0, Fraction(1, 3), Fraction(2, 3), 1),
    a=((), (Fraction(1, 3),), (Fraction(-1, 3), 1), (1, -1, 1)),
    b=(Fraction(1, 8), Fraction(3, 8), Fraction(3, 8), Fraction(1, 8)))


def default_network(concat: bool = False) -> MLP:
    """configs/default.py's 2-D network; concat: torchcfm's instead (t appended, SELU)."""
    if concat:
        return MLP(hidden_sizes=(256, 256, 256), activation="selu", time_embedding="concat")
    return MLP(hidden_sizes=(256, 256, 256), activation="relu", time_embedding="sinusoidal",
               time_scale=10.0)


def model_of(net: MLP, seed: int = 0):
    """(ModelFn of `net` as a velocity model on the cond-OT path, its params)."""
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))
    model = sampling.ModelFn(apply=lambda p, x, t, c: net.apply(p, x, t, c),
                             path=paths.make_path("cond_ot"), scalar_time=True)
    return model, params


def interleaved(calls: dict, repeats: int) -> dict:
    """{name: {"median", "best"} seconds}: every call (blocked) once per round, `repeats`
    rounds after one warm-up round (`coupling_speed.interleaved_seconds`), so that load on the
    machine hits all of them alike."""
    times = coupling_speed.interleaved_seconds(calls, rounds=repeats, warmup=1)
    return {k: {"median": statistics.median(v), "best": min(v)} for k, v in times.items()}


def solve_program(model, params, x0, method: str, num_steps: int, chunk_rows):
    """A compiled call () -> samples [n, 2] of `method` on num_steps steps."""
    sampler = sampling.make_sampler(model, method, num_steps=num_steps, chunk_rows=chunk_rows)
    fn = jax.jit(lambda p, x: sampler(p, x, None).x)
    return lambda: fn(params, x0)


def eval_flops(model, params, n: int) -> float:
    """XLA's FLOPs of one network evaluation v(0.5, x) on n rows, unchunked (the cost analysis
    of a lax.map counts its body once)."""
    model = dataclasses.replace(model, chunk_rows=None)
    v = jax.jit(lambda p, x: model.velocity_fn(p)(jnp.float32(0.5), x))
    return roofline.cost(v.lower(params, jnp.zeros((n, 2), jnp.float32)).compile())["flops"]


def roofline_fraction(sizes: Sequence[int] = ROOFLINE_SIZES, *, method: str = "rk4",
                      num_steps: int = 8, repeats: int = 5, chunk_rows=...,
                      budget_flops: float = 4e11) -> list[dict]:
    """Rows {"n", "method", "num_steps", "chunked" (bool), "flops", "seconds" / "best_seconds",
    "flops_per_sec" (median) / "best_flops_per_sec", "peak" / "best_peak" (the matmul's, same
    run), "fraction" (median / median) / "best_fraction" (best / best), "max_abs_diff"
    (chunked vs unchunked samples)}.  Large sizes take fewer steps so one solve stays under
    budget_flops (num_steps in the row)."""
    model, params = model_of(default_network())
    size = peak_size()
    a = jnp.ones((size, size), jnp.float32)
    mm = jax.jit(jnp.matmul)
    rows = []
    for n in sizes:
        x0 = jax.random.normal(jax.random.PRNGKey(1), (n, 2), jnp.float32)
        per_eval = eval_flops(model, params, n)
        nfe = sampling.nfe(method, 1)
        steps = int(max(1, min(num_steps, budget_flops // (per_eval * nfe))))
        calls = {"peak": lambda: mm(a, a),
                 False: solve_program(model, params, x0, method, steps, None),
                 True: solve_program(model, params, x0, method, steps, chunk_rows)}
        diff = float(jnp.max(jnp.abs(calls[True]() - calls[False]())))
        t = interleaved(calls, repeats)
        peak = {s: 2.0 * size ** 3 / t["peak"][s] for s in ("median", "best")}
        flops = per_eval * sampling.nfe(method, steps)
        for chunked in (False, True):
            tm, tb = t[chunked]["median"], t[chunked]["best"]
            rows.append({"n": n, "method": method, "num_steps": steps, "chunked": chunked,
                         "flops": flops, "seconds": tm, "best_seconds": tb,
                         "flops_per_sec": flops / tm, "best_flops_per_sec": flops / tb,
                         "peak": peak["median"], "best_peak": peak["best"],
                         "fraction": flops / tm / peak["median"],
                         "best_fraction": flops / tb / peak["best"], "max_abs_diff": diff})
    return rows


def torch_device() -> str:
    """Where the torch side of a comparison runs: "cuda" when jax runs on a GPU and torch sees
    one (the same chip for both), else "cpu".  Needs torch."""
    import torch  # pylint: disable=g-import-not-at-top

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_twin(params, device: str = "cpu"):
    """torchcfm's MLP (Linear + SELU, t appended to the input) as a torch.nn.Sequential holding
    the flax params of `default_network(concat=True)` (flax kernels are [in, out], torch weights
    [out, in]), on `device`.  Needs torch."""
    import torch  # pylint: disable=g-import-not-at-top

    p = params["params"]
    names = sorted((k for k in p if k.startswith("hidden_")), key=lambda k: int(k[7:])) + ["out"]
    layers = []
    for name in names:
        kernel = np.asarray(p[name]["kernel"])
        lin = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(kernel.T.copy()))
            lin.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
        layers += [lin, torch.nn.SELU()]
    return torch.nn.Sequential(*layers[:-1]).eval().to(device)


def torch_rk4(net, x0: np.ndarray, num_steps: int,
              device: str = "cpu") -> Callable[[], np.ndarray]:
    """() -> torchdiffeq's rk4 solve of dx/dt = net([x, t]) from 0 to 1 with step 1/num_steps,
    on `device` (the result copied to the host, which waits for a GPU's work)."""
    import torch  # pylint: disable=g-import-not-at-top
    import torchdiffeq  # pylint: disable=g-import-not-at-top

    x = torch.from_numpy(np.array(x0, np.float32)).to(device)
    ts = torch.tensor([0.0, 1.0], device=device)

    def f(t, y):
        return net(torch.cat([y, t.expand(y.shape[0], 1)], dim=-1))

    def run():
        with torch.no_grad():
            return torchdiffeq.odeint(f, x, ts, method="rk4",
                                      options=dict(step_size=1.0 / num_steps))[-1].cpu().numpy()

    return run


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def torchdiffeq_ratio(sizes: Sequence[int] = TORCH_SIZES, *, num_steps: int = 8,
                      repeats: int = 5, torch_threads: int | None = None) -> list[dict] | None:
    """Rows {"n", "num_steps", "torch_seconds" / "flowmatch_seconds" (medians), best_*, "speedup"
    (median / median), "best_speedup", "velocity_diff" (max |v_torch - v_flowmatch| at t = 0.3),
    "solution_diff" (max |x_torchdiffeq - x_flowmatch| with the same 3/8-rule tableau),
    "rk4_vs_38_diff" (flowmatch's classic rk4 vs the 3/8 rule: truncation, not round-off),
    "torch_threads", "torch_device"}; None when torch or torchdiffeq is not importable.

    On a CPU torch runs on torch_threads threads (default `available_cores()`, as XLA), its
    previous setting restored after.  On a GPU both run on it (`torch_device`), and torch's
    float32 products are allowed TF32 as jax's are at its default precision, so that both do the
    same arithmetic."""
    try:
        import torch  # pylint: disable=g-import-not-at-top
        import torchdiffeq  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
        return None
    device = torch_device()
    tf32, threads = torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = device == "cuda"
    torch.set_num_threads(torch_threads or available_cores())
    try:
        return _torchdiffeq_rows(sizes, num_steps, repeats, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.set_num_threads(threads)


def _torchdiffeq_rows(sizes, num_steps: int, repeats: int, device: str) -> list[dict]:
    import torch  # pylint: disable=g-import-not-at-top

    net = default_network(concat=True)
    model, params = model_of(net)
    twin = torch_twin(params, device)
    rows = []
    for n in sizes:
        x0 = jax.random.normal(jax.random.PRNGKey(1), (n, 2), jnp.float32)
        t = jnp.float32(0.3)
        v_fm = np.asarray(model.velocity_fn(params)(t, x0))
        with torch.no_grad():
            xt = torch.from_numpy(np.array(x0)).to(device)
            v_t = twin(torch.cat([xt, torch.full((n, 1), 0.3, device=device)], -1)).cpu().numpy()
        v38 = model.velocity_fn(params)
        x38 = jax.jit(lambda x: integrators.solve(v38, x, method=RK4_38,
                                                  num_steps=num_steps).x)(x0)
        calls = {"flowmatch": solve_program(model, params, x0, "rk4", num_steps, ...),
                 "torch": torch_rk4(twin, np.asarray(x0), num_steps, device)}
        x_t, x_fm = calls["torch"](), calls["flowmatch"]()
        tm = interleaved(calls, repeats)
        rows.append({
            "n": n, "num_steps": num_steps, "torch_threads": torch.get_num_threads(),
            "torch_device": device,
            "torch_seconds": tm["torch"]["median"], "flowmatch_seconds": tm["flowmatch"]["median"],
            "best_torch_seconds": tm["torch"]["best"],
            "best_flowmatch_seconds": tm["flowmatch"]["best"],
            "speedup": tm["torch"]["median"] / tm["flowmatch"]["median"],
            "best_speedup": tm["torch"]["best"] / tm["flowmatch"]["best"],
            "velocity_diff": float(np.max(np.abs(v_t - v_fm))),
            "solution_diff": float(np.max(np.abs(x_t - np.asarray(x38)))),
            "rk4_vs_38_diff": float(np.max(np.abs(np.asarray(x_fm) - np.asarray(x38))))})
    return rows


QUICK = dict(roofline_sizes=(256, 2_048), torch_sizes=(256,), num_steps=2, repeats=2)


def report(*, quick: bool = False, roofline_sizes: Sequence[int] = ROOFLINE_SIZES,
           torch_sizes: Sequence[int] = TORCH_SIZES, num_steps: int = 8,
           repeats: int = 5) -> dict:
    """Measures and prints both tables; returns {"roofline": rows, "torchdiffeq": rows or None}.

    quick: the small sizes, steps and rounds of `QUICK` in place of the other arguments (a check
    that the section runs, as `scripts/benchmark.py --quick`; not figures to quote)."""
    if quick:
        return report(**QUICK)
    rows = roofline_fraction(roofline_sizes, num_steps=num_steps, repeats=repeats)
    print(f"fixed-grid sampling of the default 2-D MLP (3 x 256, relu) vs the float32 "
          f"[{peak_size()}]^2 matmul peak, same run, interleaved ({repeats} rounds; XLA default "
          f"threads)")
    print("      n  steps  chunked   median ms  GFLOP/s  peak  fraction |  best ms  GFLOP/s  "
          "peak  fraction  max|diff|")
    for r in rows:
        print(f"{r['n']:7d}  {r['num_steps']:5d}  {str(r['chunked']):7s}  {r['seconds'] * 1e3:10.1f}"
              f"  {r['flops_per_sec'] / 1e9:7.1f}  {r['peak'] / 1e9:4.0f}  {r['fraction']:8.2f} |"
              f" {r['best_seconds'] * 1e3:8.1f}  {r['best_flops_per_sec'] / 1e9:7.1f}  "
              f"{r['best_peak'] / 1e9:4.0f}  {r['best_fraction']:8.2f}  {r['max_abs_diff']:.1e}")
    torch_rows = torchdiffeq_ratio(torch_sizes, num_steps=num_steps, repeats=repeats)
    if torch_rows is None:
        print("torchdiffeq comparison skipped: torch / torchdiffeq not importable")
    else:
        where = (f"torch {torch_rows[0]['torch_threads']} threads, XLA its default "
                 f"({available_cores()} cores)" if torch_rows[0]["torch_device"] == "cpu"
                 else "both on the GPU, TF32 products")
        print(f"rk4, {num_steps} steps, torchcfm's MLP (concat t, SELU, 3 x 256), same weights; "
              f"{where}; interleaved")
        print("      n  torchdiffeq ms  flowmatch ms  speedup | best: torch  flowmatch  speedup"
              "  |dv|     |dx| (3/8 rule)  |rk4 - 3/8|")
        for r in torch_rows:
            print(f"{r['n']:7d}  {r['torch_seconds'] * 1e3:14.1f}  "
                  f"{r['flowmatch_seconds'] * 1e3:12.1f}  {r['speedup']:7.2f} | "
                  f"{r['best_torch_seconds'] * 1e3:11.1f}  {r['best_flowmatch_seconds'] * 1e3:9.1f}"
                  f"  {r['best_speedup']:7.2f}  {r['velocity_diff']:.1e}  {r['solution_diff']:.1e}"
                  f"          {r['rk4_vs_38_diff']:.1e}")
    return {"roofline": rows, "torchdiffeq": torch_rows}
