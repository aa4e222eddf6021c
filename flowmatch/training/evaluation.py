"""Evaluation of sample quality: the periodic evaluation of training and the metrics' floors.

2-D data: `tv` (total variation between tv_bins^2-bin histograms of num_tv_samples generated and
as many fresh points over a fixed box; a bincount, milliseconds) and, with eval.w2_in_training,
`w2` (exact 2-Wasserstein distance, num_w2_samples vs num_w2_samples points: an assignment solve
on the host, about as long as a third of the sampling of a 64 x 3 MLP's 100,000 points, so off
by default).  A metric means little without its floor, the value two fresh samples of
the data itself reach at the same sample count: `reference_floors` measures it.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import jax
import numpy as np
from absl import logging

from flowmatch import data as data_lib
from flowmatch import metrics as metrics_lib
from flowmatch import plotting
from flowmatch import rng
from flowmatch import sampling


def _in_background(fn, *args) -> concurrent.futures.Future:
    """fn(*args) in a daemon thread (a run that stops early does not wait for it); the future's
    result() waits for it and raises its exception, traceback included."""
    future = concurrent.futures.Future()

    def work():
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 -- handed to whoever waits for the result
            future.set_exception(e)

    threading.Thread(target=work, name="flowmatch-references", daemon=True).start()
    return future


def sampler_on_plan(comps, plan, num_samples: int, chunk_size: int, **sampler_settings):
    """A `sampling.Chunked` draw of the run's sampler spread over the plan's devices.

    Each chunk's rows are split over the devices when they divide evenly (else every device draws
    all of them); results are replicated, so every process can read them.  The same numbers as
    on one device.  The network runs in row chunks of config.eval.chunk_rows unless
    sampler_settings has chunk_rows.
    """
    sampler_settings.setdefault("chunk_rows", comps.settings.eval.chunk_rows or None)
    sampler = comps.make_sampler(**sampler_settings)
    wrap = lambda f: jax.jit(f, out_shardings=plan.replicated)  # noqa: E731
    return sampling.Chunked(sampler, comps.source.sample, num_samples, chunk_size,
                            constrain=plan.constrain_rows, wrap=wrap, place=plan.replicate)


class Evaluator:
    """Periodic evaluation: samples with the EMA parameters, a picture, and quality metrics.

    The picture (samples_<step>.png) is drawn by a background thread, off the evaluation's
    path: the call returns once the samples are drawn and scored, and training goes on while
    matplotlib renders (0.13 s of a 2-D evaluation's 1.86 s on this project's CPU, more of the
    evaluation on a GPU: docs/speed.md).  Pictures are drawn one at a time in step order;
    `finish_pictures` waits for them and raises a failed one's error, `close` waits for them
    too.
    """

    def __init__(self, comps, plan, source, workdir: str, eval_key, data_name: str):
        """comps: the run's components; source: the loaded training data (its reference samples);
        eval_key: the key of every evaluation draw."""
        cfg = comps.settings.eval
        self.cfg, self.workdir, self.key, self.name = cfg, workdir, eval_key, data_name
        self.is_2d = source.kind == "toy2d"
        self.box = getattr(source, "box", None)
        self.num_samples = cfg.num_tv_samples if self.is_2d else cfg.num_image_samples
        self.draw = sampler_on_plan(comps, plan, self.num_samples, cfg.chunk_size)
        self._source = source
        self._references = None  # (tv reference, w2 reference or None) of a 2-D set, by `start`
        self.started = False  # whether `start` ran
        self._pictures = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flowmatch-pictures")
        self._drawn: list[concurrent.futures.Future] = []
        self.labels = None
        if comps.conditional:
            self.labels = np.arange(self.num_samples) % comps.model.num_classes

    def _draw_references(self, source):
        cfg, key = self.cfg, self.key
        tv = np.asarray(source.sample_reference(rng.stream(key, "reference"), cfg.num_tv_samples))
        w2 = None
        if cfg.w2_in_training:
            w2 = np.asarray(source.sample_reference(rng.stream(key, "reference_w2"),
                                                    cfg.num_w2_samples))
        return tv, w2

    def start(self, ema_params) -> None:
        """Starts the evaluation's background work: the data's reference points (2-D), matplotlib's
        imports and the sampling program's compilation (`Chunked.compile_ahead`); ema_params: the
        run's EMA parameters or their shapes and shardings.  A run calls this once its first
        train call is queued: started earlier, these threads' Python would hold the GIL against
        the main thread's tracing of the train step (the imports alone are about 0.5 s); once
        the main thread waits on its steps, they use the core the small train step leaves idle.
        The first evaluation starts them itself if need be; later calls do nothing."""
        if self.started:
            return
        self.started = True
        if self.is_2d:
            self._references = _in_background(self._draw_references, self._source)
        plotting.prefetch()
        self.draw.compile_ahead(ema_params, rng.stream(self.key, "samples"), self.labels)

    def _draw(self, plot, *args, **kwargs) -> None:
        """plot(*args, **kwargs) in the picture thread, after raising the error of any earlier
        picture that failed (a bug in plotting keeps its traceback)."""
        self._settle(wait=False, raise_first=True)
        self._drawn.append(self._pictures.submit(plot, *args, **kwargs))

    def _settle(self, wait: bool, raise_first: bool) -> None:
        """Forgets the finished pictures (wait: waits for all first); of the failed ones, raises
        the first's error, traceback included (raise_first), and logs the others."""
        pending, failed = [], []
        for future in self._drawn:
            if not wait and not future.done():
                pending.append(future)
            elif future.exception() is not None:
                failed.append(future)
        self._drawn = pending
        for future in failed[1 if raise_first else 0:]:
            logging.error("drawing an evaluation picture failed: %r", future.exception())
        if failed and raise_first:
            failed[0].result()

    def finish_pictures(self) -> None:
        """Waits for the pictures still being drawn; raises the error of one that failed."""
        self._settle(wait=True, raise_first=True)

    def close(self) -> None:
        """Waits for the background work (reference draw, compilation, pictures); errors are left
        to the calls that use the results (a picture's to `finish_pictures`, else logged here)."""
        if self._references is not None:
            concurrent.futures.wait([self._references])
        self.draw.wait()
        self._pictures.shutdown(wait=True)
        self._settle(wait=True, raise_first=False)

    def __call__(self, step: int, ema_params) -> dict:
        cfg = self.cfg
        self.start(ema_params)
        out = self.draw(ema_params, rng.stream(self.key, "samples"), self.labels)
        result = {"eval_nfe": out.nfe}
        png = os.path.join(self.workdir, f"samples_{step}.png")
        if self.is_2d:
            x = np.asarray(out.x)
            reference, reference_w2 = self._references.result()
            if reference_w2 is None:
                m = {"tv": metrics_lib.tv_distance(x, reference, self.box, cfg.tv_bins),
                     "nonfinite": metrics_lib.count_nonfinite(x)}
            else:
                m = metrics_lib.metrics_2d(x, reference_w2, reference, self.box,
                                           bins=cfg.tv_bins, n_w2=cfg.num_w2_samples)
            result.update(m)
            self._draw(plotting.plot_2d, x[:cfg.num_plot_samples], png, reference=reference,
                       box=self.box, title=f"{self.name}, step {step}: tv={m['tv']:.3f}")
        else:
            k = cfg.num_plot_samples
            self._draw(plotting.image_grid, np.asarray(out.x[:k]), png,
                       title=f"{self.name}, step {step}",
                       labels=None if self.labels is None else self.labels[:k])
        if not out.success:
            logging.warning("the sampler reported a failed solve (max_steps reached) at step %d",
                            step)
        return result


def reference_floors(name: str, *, num_tv: int = 100_000, num_w2: int = 2_000, bins: int = 64,
                     seeds=(0, 1, 2, 3, 4), blur: float = 0.0) -> dict:
    """tv and w2 between two independent fresh samples of a 2-D data set (mean and std over seeds).

    Scored like the samples: tv between num_tv and num_tv points, w2 between two separate num_w2
    draws.  With blur > 0 the first sample gets Gaussian noise of that std: what a model that
    blurs the data by `blur` would score.  Seed s draws from rng.seed_stream(s, "floors").
    """
    source = data_lib.make_source(name)
    tvs, w2s = [], []
    for seed in seeds:
        key = rng.seed_stream(seed, "floors")
        draw = lambda i, n: np.asarray(source.sample_reference(jax.random.fold_in(key, i), n))  # noqa: E731
        a, b, a_w2, b_w2 = draw(0, num_tv), draw(1, num_tv), draw(3, num_w2), draw(4, num_w2)
        if blur:
            a = a + blur * np.asarray(jax.random.normal(jax.random.fold_in(key, 2), a.shape))
            a_w2 = a_w2 + blur * np.asarray(
                jax.random.normal(jax.random.fold_in(key, 5), a_w2.shape))
        m = metrics_lib.metrics_2d(a, b[:num_w2], b, source.box, bins=bins, n_w2=num_w2)
        tvs.append(m["tv"])
        w2s.append(metrics_lib.w2_distance(a_w2, b_w2))
    return {"data": name, "blur": blur, "num_tv": num_tv, "num_w2": num_w2,
            "tv": float(np.mean(tvs)), "tv_std": float(np.std(tvs)),
            "w2": float(np.mean(w2s)), "w2_std": float(np.std(w2s)), "seeds": len(seeds)}
