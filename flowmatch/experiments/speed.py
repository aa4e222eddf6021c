"""Speed benchmarks that print figures (never timed tests: a busy machine must not fail CI).

* Train steps/s beside a plain-JAX loop of the same network and torchcfm's loop, whole
  processes, start-up and evaluation vs sampling: `speed_process` (sections train, process,
  startup, eval of `run`).
* Coupled train steps (minibatch OT, `flowmatch.couplings`): steps/s of the exact and the
  Sinkhorn coupling against the uncoupled step and torchcfm's OT-CFM loop in the same run
  (`coupling_speed`), and the time of the coupling alone per batch.
* The coupling scope under data parallelism (`coupling_scope`): steps/s and transport cost of
  the global (gathered) and the local (per-device) coupling on 8 (simulated) devices.
* Sampling throughput of the default sampler, and for every integrator the ratio
      time of an N-evaluation solve / (N x time of one forward pass on the same batch),
  the forward pass timed inside a compiled loop of bare Euler steps; its floor is about 1.0
  (integrator overhead is what exceeds it).

The U-Net train step (FLOPs, MFU, scaling over devices) is in `speed_unet`.  Times are medians
over repeats of compiled calls (compilation excluded).  Every train step is the trainer's own
(`training.step.make_multi_step` over the config's device plan).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import couplings as couplings_lib
from flowmatch import data as data_lib
from flowmatch import integrators
from flowmatch import rng
from flowmatch import training
from flowmatch.data import toy2d
from flowmatch.training import ahead as ahead_lib
from flowmatch.training import loop as loop_lib
from flowmatch.training import runs as runs_lib
from flowmatch.training import state as state_lib
from flowmatch.training import step as step_lib

# Alternating rounds of the whole-process runs (warm, warm without evaluation, torchcfm), medians:
# one such run varies by several tenths of a second on 2 cores.
PROCESS_ROUNDS = 3
SCOPE_VARIANTS = (("independent", "global"), ("exact", "global"), ("exact", "local"),
                  ("sinkhorn", "global"), ("sinkhorn", "local"))


def median_seconds(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    """Median wall time of fn() (blocked until ready), after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 1000):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# -- the train step -----------------------------------------------------------------------------


class Trainer(NamedTuple):
    """A run's compiled multi-step call with its state and batches in place, ready to time:
    call() runs steps_per_call train steps (state donated and carried) and returns the metrics.
    With couplings solved a call ahead (`training.ahead`, as the trainer's loop does) a call also
    prepares the next call's batches beside its steps and returns once both are done."""

    components: Any
    plan: Any
    call: Callable[[], dict]


def make_trainer(config, *, steps_per_call: int, spec=None, batches: dict | None = None):
    """A `Trainer` of `config` on its device plan (config.parallel).

    Batches: `batches` ({"x": [k, B, ...], "label": [k, B]} host arrays) or, by default, the
    first steps_per_call batches of the config's data (loaded).  spec: the `training.RunSpec` to
    build for (default: that of the loaded data; pass one with `batches` to need no data).
    Keys: rng.seed_stream(config.seed, "init" | "train").
    """
    settings = training.read_settings(config)
    plan = loop_lib.make_plan(settings)
    seed = settings.train.seed
    source = None
    if spec is None or batches is None:
        source = loop_lib.load_data(settings.data)
        spec = spec or runs_lib.spec_of_source(source, settings.data.name)
    comps = training.build(settings, spec)
    state = state_lib.create_state(comps.model, comps.tx, spec.example_shape, comps.conditional,
                                   rng.seed_stream(seed, "init"), plan)
    key = rng.seed_stream(seed, "train")
    feeder = ahead_lib.run_feeder(comps, plan, key)
    multi_step = step_lib.make_multi_step(comps, plan, jax.tree.map(lambda a: a.sharding, state),
                                          prepared=feeder.ahead)
    if batches is None:
        it = data_lib.BatchIterator(source, settings.train.batch_size, seed)
        batches = it.batches(0, steps_per_call)
    train_key = plan.replicate(key)
    holder = [plan.stack(state) if plan.mode == "pmap" else state]
    if not feeder.ahead:
        placed = feeder.start(batches, 0)

        def call():
            holder[0], metrics = multi_step(holder[0], placed, train_key)
            return metrics

        return Trainer(comps, plan, call)

    # As the trainer's loop: the next call's couplings are solved while this call trains.  A
    # call returns once both are done, so the time of each call (timed one at a time, or
    # interleaved with other trainers) is that of the pipeline's steady state.
    k = int(jax.tree.leaves(batches)[0].shape[0])
    ready = [feeder.result(feeder.start(batches, 0)), 0]  # a call's batches and first step

    def call():
        pending = feeder.start(batches, ready[1] + k)
        holder[0], metrics = multi_step(holder[0], ready[0], train_key)
        jax.block_until_ready(metrics)
        ready[:] = [feeder.result(pending), ready[1] + k]  # the next call's, counted in this one
        return metrics

    return Trainer(comps, plan, call)


# -- couplings ----------------------------------------------------------------------------------


def _coupled_config(config, coupling: str, steps_per_call: int):
    c = config.copy_and_resolve_references()
    c.unlock()
    c.batch_size = 256
    c.model.hidden_sizes = (64, 64, 64)
    c.data.name, c.source.name = "moons", "8gaussians"
    c.coupling.name = coupling
    c.steps_per_call = steps_per_call
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = steps_per_call
    return c


def interleaved_steps(variants: dict, steps_per_call: int, rounds: int) -> dict:
    """{label: {"steps_per_sec", "pair_cost"}} of each config in `variants`: every variant is
    compiled first, then `rounds` rounds time one call of each in turn (interleaving keeps the
    ratios fair on a machine whose load changes); pair_cost is the mean |x1 - x0|^2 of the
    timed calls' pairs (NaN without pairs)."""
    trainers = {label: make_trainer(c, steps_per_call=steps_per_call)
                for label, c in variants.items()}
    costs = {label: [] for label in trainers}
    for trainer in trainers.values():
        jax.block_until_ready(trainer.call()["loss"])  # compile
    times = {label: [] for label in trainers}
    for _ in range(rounds):
        for label, trainer in trainers.items():
            t = time.perf_counter()
            metrics = jax.block_until_ready(trainer.call())
            times[label].append(time.perf_counter() - t)
            if "pair_cost" in metrics:
                costs[label].append(float(np.asarray(metrics["pair_cost"]).mean()))
    return {label: {"steps_per_sec": steps_per_call / statistics.median(t),
                    "pair_cost": float(np.mean(costs[label])) if costs[label] else float("nan")}
            for label, t in times.items()}


def coupling_scope(config, *, num_devices: int = 8, steps_per_call: int = 10,
                   rounds: int = 10) -> list[dict]:
    """The cost of coupling over the global batch under data parallelism: steps/s and the
    coupling's transport cost (mean |x1 - x0|^2 of the pairs) with scope 'global' (the batch
    gathered onto every device, each solving the whole batch) and 'local' (each device its own
    rows), on `num_devices` devices at torchcfm's setting (global batch 256).

    On CPU the devices are simulated (a subprocess with
    XLA_FLAGS=--xla_force_host_platform_device_count when this process has too few) and share
    the cores, so every device's redundant global solve is paid in series: the figures bound the
    compute of the global scope from above; on accelerators the devices solve concurrently and
    the global scope costs one all-gather plus one full-batch solve per step.
    """
    if jax.device_count() < num_devices:
        if jax.default_backend() != "cpu":
            raise ValueError(f"coupling_scope needs {num_devices} devices, this host has "
                             f"{jax.device_count()} {jax.default_backend()} device(s)")
        return run_in_subprocess("flowmatch.experiments.speed", config, num_devices,
                                 dict(num_devices=num_devices, steps_per_call=steps_per_call,
                                      rounds=rounds))
    variants = {}
    for name, scope in SCOPE_VARIANTS:
        c = _coupled_config(config, name, steps_per_call)
        c.coupling.scope = scope
        c.parallel.mode, c.parallel.data_axis_size = "sharding", num_devices
        variants[(name, scope)] = c
    figures = interleaved_steps(variants, steps_per_call, rounds)
    return [dict(coupling=name, scope=scope, devices=num_devices, **figures[(name, scope)])
            for name, scope in SCOPE_VARIANTS]


def run_in_subprocess(module: str, config, num_devices: int, kwargs: dict):
    """json.loads of the last stdout line of `python -m module JSON` run with num_devices
    simulated CPU devices; JSON holds a workdir with `config` saved and `kwargs`."""
    import json  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
        training.save_config(config, tmp)
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
        proc = subprocess.run([sys.executable, "-m", module, json.dumps(dict(kwargs, workdir=tmp))],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"{module} in a subprocess failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def coupling_batches(n: int = 256, num_batches: int = 8) -> list[tuple]:
    """The coupling benchmarks' batches: (x1 [n, 2] moons, x0 [n, 2] 8gaussians, uniforms [n]),
    batch i drawn from fold_in(rng.seed_stream(0, "coupling_batches"), i)."""
    base = rng.seed_stream(0, "coupling_batches")
    keys = [jax.random.fold_in(base, i) for i in range(num_batches)]
    return [(toy2d.moons(rng.stream(k, "x1"), n), toy2d.eight_gaussians(rng.stream(k, "x0"), n),
             jax.random.uniform(rng.stream(k, "uniforms"), (n,))) for k in keys]


def coupling_seconds(config, *, n: int = 256, num_batches: int = 8, repeats: int = 3) -> dict:
    """Seconds per batch of the coupling alone (jitted `couplings.couple` on `coupling_batches`;
    the mean over num_batches batches of the median of `repeats` calls), and the auction's mean
    number of bidding rounds."""
    settings = couplings_lib.CouplingSettings.from_config(config.get("coupling"))
    kw = settings.kwargs()
    batches = coupling_batches(n, num_batches)
    out = {}
    for name in ("exact", "sinkhorn"):
        fn = jax.jit(lambda x1, x0, u, name=name: couplings_lib.couple(
            name, x1, x0, uniforms=u, **kw).index)
        out[name] = float(np.mean([median_seconds(lambda: fn(x1, x0, u), repeats, min_time=0.0)
                                   for x1, x0, u in batches]))
    rounds = jax.jit(lambda x1, x0: couplings_lib.exact_assignment(
        couplings_lib.squared_distances(x1, x0), tolerance=settings.tolerance,
        bidders=settings.bidders, kernel=settings.auction_kernel).rounds)
    out["exact_rounds"] = float(np.mean([int(rounds(x1, x0)) for x1, x0, _ in batches]))
    out["settings"] = kw
    return out


# -- integrators --------------------------------------------------------------------------------


def forward_seconds(v: Callable, x0, loop_evals: int = 16) -> float:
    """Seconds of one evaluation of v on x0 inside a compiled loop of bare Euler steps
    y + h v(t, y): the least bookkeeping an integrator can do.  A lone jitted call is not the
    floor: on XLA:CPU it measured about 2x slower per evaluation than inside a loop."""

    def bare_loop(x):
        return jax.lax.fori_loop(
            0, loop_evals, lambda i, y: y + 1e-3 * v(i.astype(jnp.float32) / loop_evals, y), x)

    forward = jax.jit(bare_loop)
    return median_seconds(lambda: forward(x0), 10) / loop_evals


def integrator_overhead(config, *, num_points: int = 10_000, num_steps: int = 16,
                        methods=None, rtol: float = 1e-5, atol: float = 1e-5):
    """(rows, t_forward): for each method seconds per solve, NFE, and
    ratio = solve / (NFE x forward) on num_points source samples of the config's initial
    network; t_forward from `forward_seconds`."""
    settings = training.read_settings(config)
    source = loop_lib.load_data(settings.data)
    comps = training.build(settings, runs_lib.spec_of_source(source, settings.data.name))
    seed = settings.train.seed
    params = jax.jit(lambda k: state_lib.init_state(
        comps.model, comps.tx, comps.spec.example_shape, comps.conditional, k).params)(
            rng.seed_stream(seed, "init"))
    x0 = comps.source.sample(rng.seed_stream(seed, "source"), num_points)
    v = comps.model_fn().velocity_fn(params)
    t_forward = forward_seconds(v, x0)
    rows = []
    for method in methods or integrators.METHODS:
        adaptive = method in integrators.ADAPTIVE_METHODS and rtol is not None
        kwargs = dict(rtol=rtol, atol=atol) if adaptive else dict(num_steps=num_steps)
        solve = jax.jit(lambda x, m=method, kw=kwargs: integrators.solve(v, x, method=m, **kw))
        nfe = int(solve(x0).nfe)
        seconds = median_seconds(lambda: solve(x0).x, 5)
        rows.append(dict(method=method, mode="adaptive" if adaptive else f"{num_steps} steps",
                         nfe=nfe, seconds=seconds, ratio=seconds / (nfe * t_forward)))
    return rows, t_forward


# -- the report ---------------------------------------------------------------------------------


def report_train_steps(config, quick: bool) -> dict:
    """Prints and returns the trainer's steps/s beside the plain-JAX loop of the same network
    and torchcfm's loop (when importable), at torchcfm's example (configs/torchcfm_moons.py) and
    at `config` (the quickstart's network and batch), all in this run."""
    from flowmatch.experiments import cli  # pylint: disable=g-import-not-at-top
    from flowmatch.experiments import speed_process  # pylint: disable=g-import-not-at-top
    out = {}
    cases = (("torchcfm example (64 x 3, batch 256)",
              cli.load_config_file("configs/torchcfm_moons.py"), 100, None, ()),
             (f"this config ({'x'.join(map(str, config.model.hidden_sizes))}, batch "
              f"{config.batch_size})", config, config.steps_per_call, False,
              ("bfloat16",) if _float32_products(config) else ()))
    print("\ntrain steps/s (median of interleaved compiled calls; best call in brackets):")
    for label, c, k, torchcfm, matmul_dtypes in cases:
        rows = speed_process.train_step_comparison(c, steps_per_call=k, rounds=5 if quick else 20,
                                                   torchcfm=torchcfm, matmul_dtypes=matmul_dtypes)
        print(f"  {label}, {k} steps per call:")
        for r in rows:
            print(f"    {r['label']:<33} {r['steps_per_sec']:>8,.0f} ({r['best']:,.0f})  "
                  f"{r['vs_plain']:.2f}x the plain-JAX loop")
            out[f"train_steps_per_sec[{label}, {r['label']}]"] = r["steps_per_sec"]
        steps = c.num_train_steps
        print(f"    its {steps:,} steps at these rates: " + ", ".join(
            f"{r['label']} {steps / r['steps_per_sec']:,.0f} s" for r in rows))
    return out


def report_couplings(config, quick: bool) -> dict:
    """Prints and returns coupled train steps/s beside the uncoupled step and torchcfm's OT-CFM
    (`coupling_speed`, same run), and the time of the coupling alone per batch."""
    from flowmatch.experiments import coupling_speed  # pylint: disable=g-import-not-at-top
    out = {}
    print("\ncoupled train steps/s at torchcfm's OT-CFM setting (batch 256, 64 x 3 SELU, moons "
          "from 8gaussians), interleaved with torchcfm's OT-CFM loop when it imports:")
    rows = coupling_speed.coupled_training_speed(config, rounds=5 if quick else 30)
    print(coupling_speed.format_table(rows))
    for r in rows:
        out[f"coupled_steps_per_sec[{r['label']}]"] = r["steps_per_sec"]
    alone = coupling_seconds(config, num_batches=2 if quick else 8, repeats=2 if quick else 5)
    kw = alone["settings"]
    print(f"  coupling alone per batch of 256: exact {alone['exact'] * 1e3:.2f} ms (tolerance "
          f"{kw['tolerance']:g}, {alone['exact_rounds']:.0f} bidding rounds), sinkhorn "
          f"{alone['sinkhorn'] * 1e3:.2f} ms (reg {kw['sinkhorn_reg']:g}, at most "
          f"{kw['num_iters']} iterations)")
    out["coupling_ms[exact]"] = alone["exact"] * 1e3
    out["coupling_ms[sinkhorn]"] = alone["sinkhorn"] * 1e3
    return out


def report_process(quick: bool) -> dict:
    """Prints and returns whole-process and start-up seconds (`speed_process`)."""
    from flowmatch.experiments import speed_process  # pylint: disable=g-import-not-at-top
    overrides = dict(num_train_steps=2_000, checkpoint_every_steps=1_000,
                     eval_every_steps=2_000) if quick else {}
    w = speed_process.whole_process("configs/torchcfm_moons.py", overrides=overrides,
                                    rounds=1 if quick else PROCESS_ROUNDS)
    print(f"\nwhole process, scripts/train.py --config=configs/torchcfm_moons.py ({w['steps']:,} "
          f"steps, final evaluation), wall seconds: the cold run, then {w['rounds']} alternating "
          "round(s) of the others, medians (every run in brackets):")
    for key in ("flowmatch cold", "flowmatch warm", "flowmatch warm, no evaluation", "torchcfm"):
        if key in w:
            ratio = (f"  torchcfm / this = {w['torchcfm'] / w[key]:.2f}x"
                     if "torchcfm" in w and key != "torchcfm" else "")
            each = ", ".join(f"{v:.1f}" for v in w[f"{key} runs"])
            print(f"  {key:<32} {w[key]:>7.1f} s{ratio}  ({each})")
    st = speed_process.startup("configs/torchcfm_moons.py")
    print(f"  start-up (imports, config, compilation, one call of 100 steps, a checkpoint): "
          f"{st['cold']:.1f} s with a cold compilation cache, {st['warm']:.1f} s warm")
    return {**{f"process_seconds[{k}]": v for k, v in w.items() if isinstance(v, (float, list))},
            "startup_seconds[cold]": st["cold"], "startup_seconds[warm]": st["warm"]}


def report_evaluation(config) -> dict:
    """Prints and returns the evaluation's seconds beside its sampling's; for an MLP with
    float32 products, the same again with bfloat16 products (model.matmul_dtype)."""
    from flowmatch.experiments import speed_process  # pylint: disable=g-import-not-at-top
    out = {}
    variants = [("", "", config)]  # (printed label, key suffix, config)
    if _float32_products(config):
        c = config.copy_and_resolve_references()
        c.model.matmul_dtype = "bfloat16"
        variants.append((", bfloat16 products", "[bfloat16_products]", c))
    for label, key, c in variants:
        e = speed_process.evaluation_vs_sampling(c)
        scored = "tv, w2" if c.eval.get("w2_in_training") else "tv"
        print(f"\nevaluation{label} ({e['num_samples']:,} samples, {scored}; its picture drawn "
              f"in the background) "
              f"{e['evaluation']:.2f} s vs its sampling alone {e['sampling']:.2f} s: "
              f"{e['ratio']:.2f}x")
        out[f"eval_seconds{key}"] = e["evaluation"]
        out[f"eval_sampling_seconds{key}"] = e["sampling"]
    return out


def _float32_products(config) -> bool:
    """Whether config's network has float32 products and could take bfloat16 ones
    (model.matmul_dtype: the MLP and the DiT)."""
    return config.model.get("matmul_dtype") == "float32"


def report_scope(config, quick: bool) -> dict:
    """Prints and returns the coupling scope figures (`coupling_scope`)."""
    out = {}
    devices = 2 if quick else 8
    print(f"\ncoupling scope under data parallelism: {devices} "
          f"{'simulated CPU ' if jax.default_backend() == 'cpu' else ''}devices, global batch 256, "
          "10 steps per call;\n  global = the batch gathered onto every device, local = each "
          "device's rows; pair cost = mean |x1 - x0|^2")
    print(f"  {'coupling':<12} {'scope':<7} {'steps/s':>8} {'pair cost':>10}")
    for r in coupling_scope(config, num_devices=devices, rounds=3 if quick else 10):
        print(f"  {r['coupling']:<12} {r['scope']:<7} {r['steps_per_sec']:>8.0f} "
              f"{r['pair_cost']:>10.3f}")
        out[f"scope_steps_per_sec[{r['coupling']}, {r['scope']}]"] = r["steps_per_sec"]
        out[f"scope_pair_cost[{r['coupling']}, {r['scope']}]"] = r["pair_cost"]
    return out


def report_integrators(config, quick: bool, n: int = 10_000) -> dict:
    """Prints and returns the integrators' overhead ratios and the default sampler's
    throughput."""
    out = {}
    print(f"\nintegrator overhead on {n:,} points, default network "
          "(ratio = solve time / (NFE x one forward pass in a compiled loop); about 1.00 is the "
          "floor):")
    rows, t_fwd = integrator_overhead(config, num_points=n, num_steps=4 if quick else 16)
    print(f"  one forward pass (in a loop of bare Euler steps): {t_fwd * 1e3:.3f} ms")
    print(f"  {'method':<10} {'mode':<12} {'NFE':>5} {'ms/solve':>10} {'ratio':>7}")
    for r in rows:
        print(f"  {r['method']:<10} {r['mode']:<12} {r['nfe']:>5} {r['seconds'] * 1e3:>10.2f} "
              f"{r['ratio']:>7.3f}")
        out[f"ratio[{r['method']}, {r['mode']}]"] = r["ratio"]
    s = config.sampling
    default = [r for r in rows if r["method"] == s.method]
    if default and s.num_steps:
        # seconds per evaluation x the default sampler's evaluations, per point
        per_sample = default[0]["seconds"] / default[0]["nfe"] * integrators.nfe_for(
            s.method, s.num_steps) / n
        print(f"\ndefault sampler ({s.method}, {s.num_steps} steps): "
              f"{1.0 / per_sample:,.0f} samples/s on {n:,}-point batches")
        out["default_sampler_samples_per_sec"] = 1.0 / per_sample
    return out


SECTIONS = ("train", "process", "eval", "sampling", "couplings", "scope", "integrators")


def run(config, *, quick: bool = False, sections=SECTIONS) -> dict:
    """Runs the benchmarks of `sections` for a 2-D config and prints a report; returns the
    figures."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {sorted(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    out = {"device": str(jax.devices()[0]), "backend": jax.default_backend()}
    print(f"flowmatch benchmark on {out['device']} ({jax.device_count()} device(s))", flush=True)
    if "train" in sections:
        out.update(report_train_steps(config, quick))
    if "process" in sections:
        out.update(report_process(quick))
    if "eval" in sections:
        out.update(report_evaluation(config))
    if "sampling" in sections:
        out.update(report_sampling(quick))
    if "couplings" in sections:
        out.update(report_couplings(config, quick))
    if "scope" in sections:
        out.update(report_scope(config, quick))
    if "integrators" in sections:
        out.update(report_integrators(config, quick))
    return out


def report_sampling(quick: bool) -> dict:
    """The sampling figures of `speed_sampling` (achieved FLOP/s vs the measured matmul peak,
    flowmatch's rk4 vs torchdiffeq's when torch and torchdiffeq import)."""
    from flowmatch.experiments import speed_sampling  # pylint: disable=g-import-not-at-top
    print()
    return speed_sampling.report(quick=quick)


if __name__ == "__main__":  # the subprocess of `coupling_scope`
    import json  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    _args = json.loads(sys.argv[1])
    print(json.dumps(coupling_scope(training.load_config(_args.pop("workdir")), **_args)))
