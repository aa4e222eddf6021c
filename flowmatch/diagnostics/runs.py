"""Glue between a run and the diagnostics: its training data as the model saw it, labels, source
draws and the exposure-bias calibration.  No flags, no files.

`comps` is a run's `flowmatch.training.Components` (model, objective, source p0, settings) and
`data` its loaded training data source (`flowmatch.training.loop.load_data(comps.settings.data)`:
a toy set, an image set or stored pairs), which only the calibration needs: sampling a run never
reads its data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import couplings as couplings_lib
from flowmatch.diagnostics import exposure


def training_sample(comps, data, key, n: int):
    """(x float32 [n, ...], labels int32 [n] or None): data as the model was trained on.

    2-D: fresh draws; images: n training images (with replacement only when n exceeds the set),
    chosen by `key`.  Labels only for class-conditional runs.
    """
    x, labels = _data_rows(data, key, n)
    return x, labels if comps.conditional else None


def _data_rows(data, key, n: int):
    """n data examples and their labels (None for unlabelled toy sets), whatever the model."""
    if data.kind == "toy2d" and not _is_pairs(data):
        return np.asarray(data.sample_reference(key, n), np.float32), None
    x, label = (data.x1, data.label) if _is_pairs(data) else (data.data.x, data.data.label)
    idx = _rows(key, len(x), n)
    return np.asarray(x[idx], np.float32), np.asarray(label[idx], np.int32)


def _is_pairs(data) -> bool:
    """Whether a run trains on stored (x0, x1) pairs (`data.pairs.PairSource`, reflow)."""
    return hasattr(data, "x0") and hasattr(data, "x1")


def _rows(key, size: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    return rng.choice(size, size=n, replace=n > size)


def training_pairs(comps, data, key, noise: np.ndarray):
    """(x0, x1, labels): n (source, data) pairs joined as the run's training joined them.

    The forward-process states x_t of training are built from these pairs, so they are what an
    exposure-bias calibration must use.  Stored pairs (reflow): n of the file's pairs (`noise` is
    not used).  Otherwise `noise` [n, ...] (p0 samples) and n training examples, paired by the
    run's coupling (comps.settings.coupling) within consecutive blocks of its batch_size rows, as
    the training step pairs a batch ('independent': row by row; an OT coupling permutes, or for
    Sinkhorn resamples, the noise within each block).
    """
    n = len(noise)
    if _is_pairs(data):
        idx = _rows(key, data.num_examples, n)
        labels = np.asarray(data.label[idx], np.int32) if comps.conditional else None
        return (np.asarray(data.x0[idx], np.float32), np.asarray(data.x1[idx], np.float32),
                labels)
    key_data, key_couple = jax.random.split(key)
    x1, all_labels = _data_rows(data, key_data, n)
    labels = all_labels if comps.conditional else None
    noise = np.asarray(noise, np.float32)
    c = comps.settings.coupling
    if c.name == "independent":
        return noise, x1, labels
    block = int(comps.settings.train.batch_size)
    x0 = np.empty_like(noise)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        m = rows.stop - rows.start
        uniforms = jax.random.uniform(jax.random.fold_in(key_couple, start), (m,))
        class_labels = jnp.asarray(all_labels[rows]) if c.per_class else None
        pairing = couplings_lib.couple(c.name, jnp.asarray(x1[rows]), jnp.asarray(noise[rows]),
                                       uniforms=uniforms, labels=class_labels, **c.kwargs())
        x0[rows] = noise[rows][np.asarray(pairing.index)]
    return x0, x1, labels


def labels_for(comps, n: int):
    """Class labels 0, 1, ..., num_classes - 1, 0, ... [n] for a conditional run, else None."""
    if not comps.conditional:
        return None
    return (np.arange(n) % comps.model.num_classes).astype(np.int32)


def source_sample(comps, key, n: int) -> np.ndarray:
    """n draws of the run's source p0 at t = 0 (N(0, I) unless config.source says otherwise):
    float32 [n, ...], what its samplers start from."""
    return np.asarray(comps.source.sample(key, n), np.float32)


def calibration(comps, data, params, key, n: int, taus=None) -> exposure.Calibration:
    """The forward-process statistic r(tau) of a run (`exposure.calibrate`, on the model's path)
    on n training pairs (`training_pairs` of fresh source samples) drawn from `key`."""
    key_data, key_noise = jax.random.split(key)
    noise, x1, labels = training_pairs(comps, data, key_data, source_sample(comps, key_noise, n))
    model = comps.model_fn()
    v = model.velocity_fn(params, None if labels is None else jnp.asarray(labels))
    return exposure.calibrate(v, model.path, x1, noise, taus)
