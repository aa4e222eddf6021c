"""Evaluation of sample quality: the periodic evaluation of training and reference floors.

2-D data: `tv` (total variation between 64x64-bin histograms of 100,000 generated and 100,000
fresh points over a fixed box) and `w2` (exact 2-Wasserstein distance, 2,000 vs 2,000 points).
A metric means little without its floor, the value two fresh samples of the data itself
reach: `reference_floors` measures it.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from flowmatch import data as data_lib
from flowmatch import metrics as metrics_lib
from flowmatch import plotting
from flowmatch import sampling


class Evaluator:
    """Periodic evaluation: samples with the EMA parameters, a picture, and quality metrics."""

    def __init__(self, exp, workdir: str, eval_key):
        """exp: a `flowmatch.train.Experiment`; eval_key: the key of all evaluation draws."""
        self.exp, self.workdir = exp, workdir
        self.key = eval_key
        cfg = exp.config.eval
        self.sample = exp.make_sampler()
        src = exp.source
        self.is_2d = src.kind == "toy2d"
        if self.is_2d:
            ref_key = jax.random.fold_in(eval_key, 1)
            self.num_samples = cfg.num_tv_samples
            self.reference = np.asarray(src.sample_reference(ref_key, cfg.num_tv_samples))
            self.reference_w2 = np.asarray(
                src.sample_reference(jax.random.fold_in(eval_key, 2), cfg.num_w2_samples))
        else:
            self.num_samples = cfg.num_image_samples
        self.labels = None
        if exp.conditional():
            self.labels = np.arange(self.num_samples) % exp.model.num_classes

    def __call__(self, step: int, ema_params) -> dict:
        cfg = self.exp.config.eval
        samples, nfe, ok = sampling.sample_in_chunks(
            self.sample, ema_params, jax.random.fold_in(self.key, 0), self.num_samples,
            cfg.chunk_size, labels=self.labels)
        out = {"eval_nfe": nfe}
        png = os.path.join(self.workdir, f"samples_{step}.png")
        if self.is_2d:
            box = self.exp.source.box
            m = metrics_lib.metrics_2d(samples, self.reference_w2, self.reference, box,
                                       bins=cfg.tv_bins, n_w2=cfg.num_w2_samples)
            out.update(m)
            plotting.plot_2d(samples[:cfg.num_plot_samples], png, reference=self.reference, box=box,
                             title=f"{self.exp.config.data.name}, step {step}: tv={m['tv']:.3f}")
        else:
            plotting.image_grid(samples[:cfg.num_plot_samples], png,
                                title=f"{self.exp.config.data.name}, step {step}")
        if not ok:
            logging.warning("the sampler reported a failed solve (max_steps reached) at step %d", step)
        return out


def reference_floors(name: str, *, num_tv: int = 100_000, num_w2: int = 2_000, bins: int = 64,
                     seeds=(0, 1, 2, 3, 4), blur: float = 0.0) -> dict:
    """tv and w2 between two independent fresh samples of a 2-D data set (mean and std over seeds).

    With blur > 0 the first sample gets Gaussian noise of that std: what a model that blurs the
    data by `blur` would score.
    """
    source = data_lib.make_source(name)
    tvs, w2s = [], []
    for seed in seeds:
        key = jax.random.PRNGKey(10_000 + seed)
        a = np.asarray(source.sample_reference(jax.random.fold_in(key, 0), num_tv))
        b = np.asarray(source.sample_reference(jax.random.fold_in(key, 1), num_tv))
        if blur:
            a = a + blur * np.asarray(jax.random.normal(jax.random.fold_in(key, 2), a.shape))
        # w2 as training evaluates it: two separate num_w2-point draws (for moons, two draws
        # on torchdyn's grid of num_w2 points, as torchcfm's sample_moons(2000) gives).
        a_w2 = np.asarray(source.sample_reference(jax.random.fold_in(key, 3), num_w2))
        b_w2 = np.asarray(source.sample_reference(jax.random.fold_in(key, 4), num_w2))
        if blur:
            a_w2 = a_w2 + blur * np.asarray(
                jax.random.normal(jax.random.fold_in(key, 5), a_w2.shape))
        m = metrics_lib.metrics_2d(a, b[:num_w2], b, source.box, bins=bins, n_w2=num_w2)
        m["w2"] = metrics_lib.w2_distance(a_w2, b_w2)
        tvs.append(m["tv"])
        w2s.append(m["w2"])
    return {"data": name, "blur": blur, "tv": float(np.mean(tvs)), "tv_std": float(np.std(tvs)),
            "w2": float(np.mean(w2s)), "w2_std": float(np.std(w2s)), "seeds": len(seeds)}
