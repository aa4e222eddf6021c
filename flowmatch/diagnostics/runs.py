"""Glue between trained runs (`generate.restore_run`) and the diagnostics: velocity fields,
training data samples and the exposure-bias calibration of a run.  No flags, no files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import couplings as couplings_lib
from flowmatch import sampling
from flowmatch.diagnostics import exposure


def velocity(exp, params, cond=None):
    """v(t, x) of a run's model (its objective's prediction turned into a velocity)."""
    apply_fn = lambda p, x, t, c: exp.apply(p, x, t, c)
    return sampling.velocity_fn(apply_fn, params, exp.objective, cond)


def training_sample(exp, key, n: int):
    """(x float32 [n, ...], labels int32 [n] or None): data as the model was trained on.

    2-D: fresh draws; images: n training images (with replacement only when n exceeds the set),
    chosen by `key`.  Labels only for class-conditional runs.
    """
    x, labels = _data_rows(exp, key, n)
    return x, labels if exp.conditional() else None


def _data_rows(exp, key, n: int):
    """n data examples and their labels (None for unlabelled toy sets), whatever the model."""
    src = exp.source
    if src.kind == "toy2d" and not _is_pairs(src):
        return np.asarray(src.sample_reference(key, n), np.float32), None
    x, label = (src.x1, src.label) if _is_pairs(src) else (src.data.x, src.data.label)
    idx = _rows(key, len(x), n)
    return np.asarray(x[idx], np.float32), np.asarray(label[idx], np.int32)


def _is_pairs(src) -> bool:
    """Whether a run trains on stored (x0, x1) pairs (`data.pairs.PairSource`, reflow)."""
    return hasattr(src, "x0") and hasattr(src, "x1")


def _rows(key, size: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    return rng.choice(size, size=n, replace=n > size)


def training_pairs(exp, key, noise: np.ndarray):
    """(x0, x1, labels): n (source, data) pairs joined as the run's training joined them.

    The forward-process states x_t of training are built from these pairs, so they are what an
    exposure-bias calibration must use.  Stored pairs (reflow): n of the file's pairs (`noise` is
    not used).  Otherwise `noise` [n, ...] (p0 samples) and n training examples, paired by
    config.coupling within consecutive blocks of config.batch_size rows, as the training step
    pairs a batch ('independent': row by row; an OT coupling permutes, or for Sinkhorn resamples,
    the noise within each block).
    """
    src = exp.source
    n = len(noise)
    if _is_pairs(src):
        idx = _rows(key, src.num_examples, n)
        labels = np.asarray(src.label[idx], np.int32) if exp.conditional() else None
        return (np.asarray(src.x0[idx], np.float32), np.asarray(src.x1[idx], np.float32),
                labels)
    key_data, key_couple = jax.random.split(key)
    data, all_labels = _data_rows(exp, key_data, n)
    labels = all_labels if exp.conditional() else None
    noise = np.asarray(noise, np.float32)
    c = getattr(exp, "coupling", None)
    if c is None or c.name == "independent":
        return noise, data, labels
    block = int(exp.config.batch_size)
    x0 = np.empty_like(noise)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        m = rows.stop - rows.start
        uniforms = jax.random.uniform(jax.random.fold_in(key_couple, start), (m,))
        class_labels = jnp.asarray(all_labels[rows]) if c.per_class else None
        pairing = couplings_lib.couple(c.name, jnp.asarray(data[rows]), jnp.asarray(noise[rows]),
                                       uniforms=uniforms, labels=class_labels, **c.kwargs())
        x0[rows] = noise[rows][np.asarray(pairing.index)]
    return x0, data, labels


def labels_for(exp, n: int):
    """Class labels 0, 1, ..., num_classes - 1, 0, ... [n] for a conditional run, else None."""
    return (np.arange(n) % exp.model.num_classes).astype(np.int32) if exp.conditional() else None


def source_sample(exp, key, n: int) -> np.ndarray:
    """n draws of the run's source p0 at t = 0 (N(0, I) unless config.source says otherwise):
    float32 [n, ...], what its samplers start from."""
    return np.asarray(exp.sample_source(key, n), np.float32)


def calibration(exp, params, key, n: int, taus=None) -> exposure.Calibration:
    """The forward-process statistic r(tau) of a run (`exposure.calibrate`) on n training
    pairs (`training_pairs` of fresh source samples) drawn from `key`."""
    key_data, key_noise = jax.random.split(key)
    noise, data, labels = training_pairs(exp, key_data, source_sample(exp, key_noise, n))
    v = velocity(exp, params, None if labels is None else jnp.asarray(labels))
    return exposure.calibrate(v, exposure.model_path(exp.objective), data, noise, taus)
