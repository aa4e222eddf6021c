"""Sample a trained run to a file: restore its EMA parameters, draw with any sampler, write
.npz and .png, and for 2-D data score the samples against fresh data."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from flowmatch import fileio
from flowmatch import metrics as metrics_lib
from flowmatch import plotting
from flowmatch import rng
from flowmatch import sampling
from flowmatch.checks import ConfigError
from flowmatch.data import toy2d
from flowmatch.training import runs
from flowmatch.training.evaluation import sampler_on_plan


def draw(run: runs.Run, num_samples: int, *, seed: int = 0, chunk_size: int | None = None,
         labels=None, **sampler_settings) -> sampling.Samples:
    """num_samples samples of a restored run with the run's sampler defaults overridden by
    sampler_settings (method, num_steps, rtol, atol, options), from rng.seed_stream(seed,
    "samples"): the same samples for the same run, seed and settings from every driver."""
    import flowmatch.parallel as parallel_lib  # pylint: disable=g-import-not-at-top
    comps = run.components
    chunk = chunk_size or comps.settings.eval.chunk_size
    try:
        draw_fn = sampler_on_plan(comps, parallel_lib.Plan.all_devices(), num_samples, chunk,
                                  **sampler_settings)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return draw_fn(run.state.ema_params, rng.seed_stream(seed, "samples"), labels)


def sample_to_file(workdir: str, output: str, *, num_samples=None, method=None, num_steps=None,
                   rtol=None, atol=None, seed: int = 0, step=None) -> dict:
    """Writes `output` (.npz with `samples` float32 [N, ...] in data space, `nfe`, and `labels`
    for a class-conditional run) and a PNG beside it.

    Defaults come from the run's config.sampling (its default sampler) and config.eval.  Returns a
    dict of what was written and measured (for 2-D data also tv and w2 against fresh data).
    """
    if not output.endswith(".npz"):
        raise ConfigError(f"--output must end in .npz, got {output!r}")
    run = runs.restore(workdir, step)
    comps, spec = run.components, run.components.spec
    cfg = comps.settings.eval
    n = num_samples or (cfg.num_tv_samples if spec.kind == "toy2d" else cfg.num_image_samples)
    if n < 1:
        raise ConfigError(f"--num_samples must be >= 1, got {n}")
    labels = np.arange(n) % comps.model.num_classes if comps.conditional else None
    t = time.perf_counter()
    out = draw(run, n, seed=seed, labels=labels, method=method, num_steps=num_steps, rtol=rtol,
               atol=atol)
    seconds = time.perf_counter() - t
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    extra = {} if labels is None else {"labels": labels.astype(np.int32)}
    fileio.write_npz(output, samples=out.x.astype(np.float32), nfe=np.int64(out.nfe), **extra)
    png = output[:-4] + ".png"
    result = {"output": output, "png": png, "num_samples": n, "nfe": out.nfe, "step": run.step,
              "seconds": seconds, "success": out.success}
    if spec.kind == "toy2d" and spec.data in toy2d.TOY_DATASETS:
        result.update(_score_2d(out.x, spec, cfg, seed, png, n))
    else:
        plotting.image_grid(out.x[:cfg.num_plot_samples], png,
                            title=f"{spec.data}: NFE {out.nfe}, step {run.step}")
    if not out.success:
        print("warning: an adaptive solve hit max_steps; samples may be inaccurate")
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items()), flush=True)
    return result


def _score_2d(samples, spec, cfg, seed: int, png: str, n: int) -> dict:
    """tv / w2 of 2-D samples against fresh data of the run's data set, and the picture."""
    key = rng.seed_stream(seed, "reference")
    ref = np.asarray(toy2d.sample_toy(spec.data, key, max(n, cfg.num_tv_samples)))
    m = metrics_lib.metrics_2d(samples, ref[:cfg.num_w2_samples], ref, spec.box,
                               bins=cfg.tv_bins, n_w2=cfg.num_w2_samples)
    plotting.plot_2d(samples[:cfg.num_plot_samples], png, reference=ref, box=spec.box,
                     title=f"{spec.data}: {n} samples, tv={m['tv']:.3f}")
    return m
