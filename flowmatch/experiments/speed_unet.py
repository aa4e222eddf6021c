"""Speed of the data-parallel train step: FLOPs, step time, MFU, and scaling over devices.

    run_unet_benchmark(config, device_counts=(1, 2, 4, 8))

On a GPU or TPU: XLA's FLOP count of one train step (the global batch), the median step time on
all devices, and model FLOPs utilisation = FLOPs per step / step time / (devices x peak), with
the peak of the chip from `PEAK_TFLOPS`.  On a CPU: examples/s per device at each count of
simulated devices (re-running itself in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count when this process has too few), at a fixed
batch per device (weak scaling: ideal is a flat line).

Batches are random images of the config's shape: the data pipeline is not timed, and no data
set is needed.  A printed report, and the figures returned as a dict.  Never a timed test.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import training
from flowmatch.data import images as images_lib
from flowmatch.diagnostics import roofline, trace
from flowmatch.experiments import coupling_speed, speed
from flowmatch.training import loop as loop_lib
from flowmatch.training import state as state_lib
from flowmatch.training import step as step_lib

# Dense (no structured sparsity) peak TFLOP/s per chip, from the vendors' data sheets:
# NVIDIA H100 / H200 / A100 / V100 data sheets (Tensor Core BF16 / TF32 / FP16 figures, halved
# where the sheet quotes "with sparsity"); Google Cloud TPU system-architecture pages (v4, v5e,
# v5p, v6e "peak compute per chip, bf16").  "float32" is the matmul peak a float32 model reaches:
# TF32 tensor cores on A100 / H100 / H200 (XLA's default on those GPUs), plain FP32 on V100, and
# bf16 passes on TPUs (so the bf16 figure).  V100 has no bfloat16: its FP16 peak stands in.
PEAK_TFLOPS = {
    # (substring of jax's device_kind, lower case): (chip, {dtype: TFLOP/s})
    "h200": ("NVIDIA H200 SXM", {"bfloat16": 989.0, "float32": 494.0}),
    "h100 pcie": ("NVIDIA H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    "h100 nvl": ("NVIDIA H100 NVL", {"bfloat16": 835.0, "float32": 417.0}),
    "h100": ("NVIDIA H100 SXM", {"bfloat16": 989.0, "float32": 494.0}),
    "a100": ("NVIDIA A100", {"bfloat16": 312.0, "float32": 156.0}),
    "v100": ("NVIDIA V100 SXM2", {"bfloat16": 125.0, "float32": 15.7}),
    "v6 lite": ("TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
    "v6e": ("TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
    "v5 lite": ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    "v5e": ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    "v5p": ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    "v5": ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    "v4": ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
}


PEAK_MATMUL_SIZE = 8192  # the measured peak's [n, n] product (`roofline.matmul_peak`)


def peak_flops(device_kind: str, dtype: str) -> tuple[str, float] | None:
    """(chip name, peak FLOP/s per chip) for a jax device_kind, or None if not in the table."""
    kind = device_kind.lower()
    for key, (chip, peaks) in PEAK_TFLOPS.items():  # ordered: specific names first
        if key in kind:
            return chip, peaks[dtype] * 1e12
    return None


_CHANNELS = {"digits": 1, "mnist": 1, "cifar10": 3}


def example_shape(config) -> tuple:
    """[H, W, C] of the config's image data set, without loading it."""
    d = config.data
    info = images_lib.IMAGE_DATASETS.get(d.name)
    size = (info.image_size if info is not None else None) or d.get("image_size")
    if not size:
        raise ValueError(f"the U-Net benchmark needs an image data set with a known size, got "
                         f"data.name={d.name!r}; pass image_shape=(H, W, C)")
    return (size, size, _CHANNELS.get(d.name, d.get("channels", 3)))


def _step_config(config, data_axis_size: int, batch_size: int, **overrides):
    """`config` at this batch size on the first data_axis_size devices.  The data set only
    fixes shapes here (random batches of `image_shape` are timed): a built-in one stands in so
    that the data section passes its checks without a path."""
    c = config.copy_and_resolve_references()
    c.unlock()
    for key, value in overrides.items():  # "a.b" -> c.a.b
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    c.data.name, c.data.path = "digits", ""
    c.batch_size = batch_size
    c.parallel.data_axis_size = data_axis_size
    c.parallel.fsdp_axis_size = 1
    for key in ("tensor_axis_size", "num_slices"):  # a pod config's mesh: data parallel here
        if key in c.parallel:
            c.parallel[key] = 1
    return c


def _spec(config, image_shape) -> training.RunSpec:
    return training.RunSpec(data=config.data.name, kind="image", example_shape=tuple(image_shape),
                            num_classes=int(config.model.get("num_classes", 0) or 0))


def _flops(program) -> float:
    """XLA's FLOP count of a lowered (for CPU: `lower_step`) or compiled program."""
    analysis = program.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def lower_step(config, image_shape, batch_size: int):
    """The lowered (traced, not compiled) train step of `config` on one device for a global
    batch of batch_size images, without the scan (XLA's cost analysis counts a loop body once)
    and without gradient accumulation; lowered for the CPU whatever this process's backend,
    so that XLA counts every convolution and product: the GPU's count after compilation leaves
    out those it hands to cuDNN and cuBLAS as library calls (on an H200, jax 0.11.2: 2.4 of
    configs/cifar10_gpu8.py's 35.0 GFLOP per example at batch 64, 141 of DiT-B/2's 642 at
    32).  A DiT's attention is counted as XLA's (the same arithmetic as cuDNN's fused kernel, a
    library call no cost analysis sees)."""
    c = _step_config(config, 1, batch_size, grad_accum_steps=1, **{"parallel.mode": "sharding"})
    if "attention" in c.model:  # the DiT: XLA's attention, the same arithmetic, lowers for CPU
        c.model.attention = "xla"
    settings = training.read_settings(c)
    comps = training.build(settings, _spec(config, image_shape))
    s, plan = settings.train, loop_lib.make_plan(settings)
    step = step_lib.make_train_step(
        apply=comps.apply, objective=comps.objective, conditional=comps.conditional, tx=comps.tx,
        lr_schedule=comps.lr_schedule, ema_decay=s.ema_decay, ema_warmup=s.ema_warmup,
        draw=step_lib.make_draw(comps.objective, comps.source, settings.coupling, s.batch_size,
                                plan, null_label=comps.model.num_classes if comps.conditional
                                else None))
    abstract = state_lib.abstract_state(comps.model, comps.tx, comps.spec.example_shape,
                                        comps.conditional)
    batch = {"x": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a PRNGKey's shape: only shapes matter
    return jax.jit(step).trace(abstract, batch, key).lower(lowering_platforms=("cpu",))


def step_flops(config, image_shape, batch_size: int, *, compiled: bool = False) -> float:
    """XLA's FLOP count of one train step (`lower_step`): of the program as traced (the
    default; no compilation where the backend counts a lowered program, as XLA:CPU does) or,
    compiled=True, after XLA's optimizations (configs/cifar10.py's U-Net at batch 4:
    35.24 against 35.49 GFLOP per example on CPU; the convolutions and products are the
    same)."""
    lowered = lower_step(config, image_shape, batch_size)
    return _flops(lowered.compile() if compiled else lowered)


def random_batches(batch_size: int, image_shape, steps_per_call: int = 1, seed: int = 0) -> dict:
    """{"x": uniform [-1, 1] images [k, B, H, W, C], "label": zeros [k, B]} (host arrays)."""
    gen = np.random.default_rng(seed)
    return {"x": gen.uniform(-1, 1, (steps_per_call, batch_size, *image_shape)).astype(np.float32),
            "label": np.zeros((steps_per_call, batch_size), np.int32)}


def measure(config, *, num_devices: int, batch_size: int, image_shape,
            steps_per_call: int = 1, repeats: int = 5, profile_dir: str | None = None) -> dict:
    """FLOPs and seconds of one train step of `config` on the first `num_devices` devices.
    profile_dir: also trace two more calls there with jax's profiler and add their
    `diagnostics.trace.device_summary` as "profile"."""
    image_shape = tuple(image_shape)
    trainer = speed.make_trainer(
        _step_config(config, num_devices, batch_size), steps_per_call=steps_per_call,
        spec=_spec(config, image_shape),
        batches=random_batches(batch_size, image_shape, steps_per_call))
    jax.block_until_ready(trainer.call()["loss"])  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(trainer.call()["loss"])
        times.append((time.perf_counter() - start) / steps_per_call)
    step = statistics.median(times)
    out = {"devices": num_devices, "batch_size": batch_size, "steps_per_call": steps_per_call,
           "flops_per_step": step_flops(config, image_shape, batch_size),
           "step_seconds": step, "examples_per_sec": batch_size / step,
           "examples_per_sec_per_device": batch_size / step / num_devices}
    if profile_dir:
        with jax.profiler.trace(profile_dir):
            for _ in range(2):
                jax.block_until_ready(trainer.call()["loss"])
        out["profile"] = trace.device_summary(profile_dir)
    return out


def cpu_scaling(config, device_counts, batch_per_device, image_shape, repeats) -> list:
    """`measure` at each device count (simulated CPU devices, in a subprocess when this process
    has too few) at batch_per_device examples per device."""
    counts = [int(n) for n in device_counts]
    if jax.device_count() < max(counts):
        return speed.run_in_subprocess(
            "flowmatch.experiments.speed_unet", config, max(counts),
            dict(device_counts=counts, batch_per_device=batch_per_device,
                 image_shape=list(image_shape), repeats=repeats))
    return [measure(config, num_devices=n, batch_size=batch_per_device * n,
                    image_shape=image_shape, repeats=repeats) for n in counts]


def loop_rows(config, image_shape, steps_per_call: int, repeats: int) -> list:
    """The train step of `config` at its own batch size on one device, one step per call (a
    plain jitted step, no loop) and `steps_per_call` steps per call (a lax.scan of steps), the
    calls interleaved: [{"steps_per_call", "step_seconds" (median), "examples_per_sec"}]."""
    batch = int(config.batch_size)
    image_shape = tuple(image_shape)
    trainers = {k: speed.make_trainer(_step_config(config, 1, batch), steps_per_call=k,
                                      spec=_spec(config, image_shape),
                                      batches=random_batches(batch, image_shape, k))
                for k in (1, steps_per_call)}
    calls = coupling_speed.interleaved_seconds(
        {k: trainer.call for k, trainer in trainers.items()}, rounds=repeats, warmup=1)
    step = {k: statistics.median(t) / k for k, t in calls.items()}
    return [{"steps_per_call": k, "batch_size": batch, "step_seconds": s,
             "examples_per_sec": batch / s} for k, s in step.items()]


def _report_loop(out: dict) -> None:
    rows = out["loop"]
    print(f"flowmatch U-Net train step on CPU at the config's batch ({rows[0]['batch_size']}), "
          f"one device, calls interleaved:")
    print(f"  {'steps/call':>10} {'ms/step':>9} {'examples/s':>11}")
    for r in rows:
        print(f"  {r['steps_per_call']:>10} {r['step_seconds'] * 1e3:>9.2f} "
              f"{r['examples_per_sec']:>11.2f}")
    print(f"  {rows[-1]['steps_per_call']} steps under lax.scan: "
          f"{rows[0]['step_seconds'] / rows[-1]['step_seconds']:.2f}x the plain jitted step")


def _report_cpu(out: dict, rows: list, per: int) -> None:
    print(f"flowmatch U-Net train step on CPU ({out['model_dtype']}, mode {out['mode']}), "
          f"{per} examples per simulated device:")
    print(f"  {'devices':>7} {'batch':>6} {'GFLOP/step':>11} {'s/step':>8} "
          f"{'examples/s':>11} {'per device':>11}")
    for r in rows:
        print(f"  {r['devices']:>7} {r['batch_size']:>6} {r['flops_per_step'] / 1e9:>11.3g} "
              f"{r['step_seconds']:>8.3f} {r['examples_per_sec']:>11.2f} "
              f"{r['examples_per_sec_per_device']:>11.2f}")


def _report_accelerator(out: dict, n: int, batch: int) -> None:
    print(f"flowmatch U-Net train step on {n} x {out['device_kind']} ({out['model_dtype']}, mode "
          f"{out['mode']}), global batch {batch}:")
    print(f"  FLOPs per step (XLA cost analysis): {out['flops_per_step'] / 1e12:.4g} TFLOP")
    print(f"  step time: {out['step_seconds'] * 1e3:.2f} ms; {out['examples_per_sec']:,.0f} "
          f"examples/s ({out['examples_per_sec_per_device']:,.0f} per device)")
    if out["chip"]:
        print(f"  MFU: {out['mfu']:.1%} of {n} x {out['peak_flops_per_device'] / 1e12:.0f} "
              f"TFLOP/s ({out['chip']}, {out['model_dtype']}, data sheet)")
    else:
        print(f"  MFU: unknown peak for {out['device_kind']!r}; add it to PEAK_TFLOPS")
    print(f"  against the measured [{PEAK_MATMUL_SIZE}]^2 {out['model_dtype']} product, "
          f"{out['measured_peak_flops'] / 1e12:.0f} TFLOP/s per device: "
          f"{out['mfu_of_measured_peak']:.1%}")
    if "profile" in out:
        print(trace.format_summary(out["profile"]))


def run_unet_benchmark(config, device_counts=(1, 2, 4, 8), *, batch_per_device: int | None = None,
                       image_shape=None, repeats: int = 5, steps_per_call: int = 1,
                       profile_dir: str | None = None) -> dict:
    """Prints and returns the train-step figures of `config` (a U-Net config such as
    configs/cifar10.py; its data set is not needed, only its image shape, or `image_shape`).

    GPU / TPU: all devices, global batch config.batch_size (or batch_per_device x devices):
    flops_per_step, step_seconds, examples_per_sec and mfu (None for a chip missing from
    `PEAK_TFLOPS`), measured_peak_flops (`roofline.matmul_peak` in the model's dtype) and
    mfu_of_measured_peak; with profile_dir, "profile" (`measure`).  CPU: "scaling", one row per
    entry of device_counts at batch_per_device (default 2) examples per simulated device, and
    "loop" (`loop_rows`), one step per call against steps_per_call (or the config's) per call.
    """
    image_shape = tuple(image_shape or example_shape(config))
    backend = jax.default_backend()
    out = {"backend": backend, "device_kind": jax.devices()[0].device_kind,
           "model_dtype": config.model.dtype, "mode": config.parallel.mode}
    if backend == "cpu":
        per = batch_per_device or 2
        out["scaling"] = cpu_scaling(config, device_counts, per, image_shape, repeats)
        _report_cpu(out, out["scaling"], per)
        loop_k = steps_per_call if steps_per_call > 1 else int(config.steps_per_call)
        if loop_k > 1:
            out["loop"] = loop_rows(config, image_shape, loop_k, repeats)
            _report_loop(out)
        return out
    n = jax.device_count()
    batch = batch_per_device * n if batch_per_device else config.batch_size
    r = measure(config, num_devices=n, batch_size=batch, image_shape=image_shape,
                steps_per_call=steps_per_call, repeats=repeats, profile_dir=profile_dir)
    out.update(r)
    peak = peak_flops(out["device_kind"], config.model.dtype)
    out["chip"], out["peak_flops_per_device"] = peak if peak else (None, None)
    achieved = r["flops_per_step"] / r["step_seconds"] / n
    out["mfu"] = achieved / peak[1] if peak else None
    out["measured_peak_flops"] = roofline.matmul_peak(PEAK_MATMUL_SIZE, config.model.dtype,
                                                      repeats=10)
    out["mfu_of_measured_peak"] = achieved / out["measured_peak_flops"]
    _report_accelerator(out, n, batch)
    return out


if __name__ == "__main__":  # the subprocess of `cpu_scaling`
    _args = json.loads(sys.argv[1])
    _config = training.load_config(_args.pop("workdir"))
    _args["image_shape"] = tuple(_args["image_shape"])
    print(json.dumps(cpu_scaling(_config, **_args)))
