"""Sample a trained run to a file: restore its EMA parameters, draw with any sampler (guided or
not), write .npz and .png, and for 2-D data score the samples against fresh data."""

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

_AGREEMENT_CHUNK = 1_024  # samples per block of the nearest-neighbour label search


def draw(run: runs.Run, num_samples: int, *, seed: int = 0, chunk_size: int | None = None,
         labels=None, guidance_scale: float | None = None,
         guidance_interval: tuple[float, float] | None = None,
         **sampler_settings) -> sampling.Samples:
    """num_samples samples of a restored run with the run's sampler defaults overridden by
    sampler_settings (method, num_steps, rtol, atol, options), from rng.seed_stream(seed,
    "samples"): the same samples for the same run, seed and settings from every driver.

    labels: int [num_samples] class labels of a conditional run (None: unconditional draws);
    guidance_scale / guidance_interval: classifier-free guidance (`sampling.ModelFn`), which
    needs labels.  The Samples carry `passes`, the network passes (2 x nfe when guided).
    """
    import flowmatch.parallel as parallel_lib  # pylint: disable=g-import-not-at-top
    comps = run.components
    chunk = chunk_size or comps.settings.eval.chunk_size
    if guidance_scale is not None and labels is None:
        raise ConfigError("guidance needs class labels: pass labels (one per sample)")
    try:
        model = comps.model_fn(guidance_scale, guidance_interval)
        draw_fn = sampler_on_plan(comps, parallel_lib.Plan.all_devices(), num_samples, chunk,
                                  guidance_scale=guidance_scale,
                                  guidance_interval=guidance_interval, **sampler_settings)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    out = draw_fn(run.state.ema_params, rng.seed_stream(seed, "samples"), labels)
    return out.replace(passes=model.network_passes(out.nfe))


def sample_labels(comps, n: int, label: int | None = None):
    """Labels [n] int32 for a conditional run: all `label`, or 0, 1, ..., C - 1, 0, ... when it
    is None; None for an unconditional run (then `label` must be None).  ConfigError naming the
    flag otherwise."""
    if not comps.conditional:
        if label is not None:
            raise ConfigError(f"--label={label} needs a class-conditional run, but this run's "
                              "model is unconditional (model.num_classes=0); drop --label")
        return None
    c = comps.model.num_classes
    if label is None:
        return (np.arange(n) % c).astype(np.int32)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < c:
        raise ConfigError(f"--label={label} is out of range: the run has {c} classes; choose a "
                          f"label in 0..{c - 1} (or omit --label to cycle through them)")
    return np.full((n,), label, np.int32)


def sample_to_file(workdir: str, output: str, *, num_samples=None, method=None, num_steps=None,
                   rtol=None, atol=None, seed: int = 0, step=None, label: int | None = None,
                   guidance_scale: float | None = None,
                   guidance_interval: tuple[float, float] | None = None) -> dict:
    """Writes `output` (.npz with `samples` float32 [N, ...] in data space, `nfe`, `passes`, and
    `labels` for a class-conditional run) and a PNG beside it (an image grid with one row per
    class for a conditional image run).

    label: the class of every sample (None: cycle through the classes); guidance_scale /
    guidance_interval: classifier-free guidance of a conditional run.  Defaults come from the
    run's config.sampling (its default sampler) and config.eval.  Returns a dict of what was
    written and measured (for 2-D data also tv and w2 against fresh data of the sampled classes,
    with tv_floor and w2_floor, what fresh data scores at the same sample count, and for a
    conditional run `class_agreement`: the fraction of samples whose nearest labelled
    data point has the sample's label).
    """
    if not output.endswith(".npz"):
        raise ConfigError(f"--output must end in .npz, got {output!r}")
    run = runs.restore(workdir, step)
    comps, spec = run.components, run.components.spec
    if guidance_scale is not None and not comps.conditional:
        raise ConfigError(f"--guidance_scale={guidance_scale} needs a class-conditional run, but "
                          f"{workdir} has an unconditional model (model.num_classes=0)")
    cfg = comps.settings.eval
    n = num_samples or (cfg.num_tv_samples if spec.kind == "toy2d" else cfg.num_image_samples)
    if n < 1:
        raise ConfigError(f"--num_samples must be >= 1, got {n}")
    labels = sample_labels(comps, n, label)
    t = time.perf_counter()
    out = draw(run, n, seed=seed, labels=labels, method=method, num_steps=num_steps, rtol=rtol,
               atol=atol, guidance_scale=guidance_scale, guidance_interval=guidance_interval)
    seconds = time.perf_counter() - t
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    extra = {} if labels is None else {"labels": labels}
    if guidance_scale is not None:
        extra["guidance_scale"] = np.float64(guidance_scale)
        if guidance_interval is not None:
            extra["guidance_interval"] = np.asarray(guidance_interval, np.float64)
    fileio.write_npz(output, samples=out.x.astype(np.float32), nfe=np.int64(out.nfe),
                     passes=np.int64(out.passes), **extra)
    png = output[:-4] + ".png"
    result = {"output": output, "png": png, "num_samples": n, "nfe": out.nfe,
              "passes": out.passes, "step": run.step, "seconds": seconds, "success": out.success}
    if guidance_scale is not None:
        result["guidance_scale"] = float(guidance_scale)
    if label is not None:
        result["label"] = int(label)
    guided = "" if guidance_scale is None else f", w={guidance_scale:g}"
    if spec.kind == "toy2d" and spec.data in toy2d.TOY_DATASETS:
        result.update(_score_2d(out.x, labels, label, spec, cfg, seed, png, n, guided))
    else:
        k = cfg.num_plot_samples
        plotting.image_grid(out.x[:k], png, labels=None if labels is None else labels[:k],
                            title=f"{spec.data}: NFE {out.nfe}{guided}, step {run.step}")
    if not out.success:
        print("warning: an adaptive solve hit max_steps; samples may be inaccurate")
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items()), flush=True)
    return result


def _reference_2d(name: str, key, n: int, label: int | None):
    """(points [n, 2], labels [n]) of fresh data, all of class `label` when it is given."""
    if label is None:
        x, y = toy2d.sample_toy_labeled(name, key, n)
        return np.asarray(x), np.asarray(y)
    xs, have, i = [], 0, 0
    num_classes = toy2d.toy_spec(name).num_classes
    while have < n:  # rejection: draws of every class, keep those of `label`
        x, y = toy2d.sample_toy_labeled(name, jax.random.fold_in(key, i),
                                        2 * num_classes * (n - have) + 1_000)
        keep = np.asarray(x)[np.asarray(y) == label]
        xs.append(keep)
        have, i = have + len(keep), i + 1
    return np.concatenate(xs)[:n], np.full((n,), label, np.int32)


def label_agreement(samples, labels, ref_x, ref_labels) -> float:
    """The fraction of samples [n, 2] whose nearest point of ref_x [m, 2] has the sample's label
    (labels [n], ref_labels [m]): a nearest-neighbour classifier's agreement with the labels the
    samples were drawn for.  Non-finite samples count as disagreeing."""
    x = np.asarray(samples, np.float64)
    ref = np.asarray(ref_x, np.float64)
    hits = 0
    for start in range(0, len(x), _AGREEMENT_CHUNK):
        block = x[start:start + _AGREEMENT_CHUNK]
        d2 = np.sum((block[:, None, :] - ref[None, :, :]) ** 2, axis=-1)
        nearest = np.asarray(ref_labels)[np.argmin(np.nan_to_num(d2, nan=np.inf), axis=1)]
        ok = np.all(np.isfinite(block), axis=1)
        hits += int(np.sum((nearest == labels[start:start + _AGREEMENT_CHUNK]) & ok))
    return hits / len(x)


def _score_2d(samples, labels, label, spec, cfg, seed: int, png: str, n: int,
              guided: str) -> dict:
    """tv / w2 of 2-D samples against fresh data of the sampled classes (all of them, or the
    one `label`), the class agreement of a conditional run's samples, and the picture."""
    key = rng.seed_stream(seed, "reference")
    ref, _ = _reference_2d(spec.data, key, max(n, cfg.num_tv_samples), label)
    m = metrics_lib.metrics_2d(samples, ref[:cfg.num_w2_samples], ref, spec.box,
                               bins=cfg.tv_bins, n_w2=cfg.num_w2_samples)
    # The floors at this sample count: fresh data scored exactly as the samples are (what a
    # perfect model would get; tv's floor grows as n shrinks).
    fresh, _ = _reference_2d(spec.data, rng.seed_stream(seed, "floor"), n, label)
    floor = metrics_lib.metrics_2d(fresh, ref[:cfg.num_w2_samples], ref, spec.box,
                                   bins=cfg.tv_bins, n_w2=cfg.num_w2_samples)
    m["tv_floor"], m["w2_floor"] = floor["tv"], floor["w2"]
    if labels is not None:
        nn_x, nn_y = _reference_2d(spec.data, rng.seed_stream(seed, "label_reference"),
                                   cfg.num_w2_samples, None)
        m["class_agreement"] = label_agreement(samples, labels, nn_x, nn_y)
    which = "" if label is None else f" of class {label}"
    plotting.plot_2d(samples[:cfg.num_plot_samples], png, reference=ref, box=spec.box,
                     title=f"{spec.data}{which}: {n} samples{guided}, tv={m['tv']:.3f}")
    return m
