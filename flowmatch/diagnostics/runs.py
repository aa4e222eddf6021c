"""Glue between trained runs (`generate.restore_run`) and the diagnostics: velocity fields,
training data samples and the exposure-bias calibration of a run.  No flags, no files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
    src = exp.source
    if src.kind == "toy2d":
        return np.asarray(src.sample_reference(key, n), np.float32), None
    x = src.data.x
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    idx = rng.choice(len(x), size=n, replace=n > len(x))
    labels = np.asarray(src.data.label[idx], np.int32) if exp.conditional() else None
    return np.asarray(x[idx], np.float32), labels


def labels_for(exp, n: int):
    """Class labels 0, 1, ..., num_classes - 1, 0, ... [n] for a conditional run, else None."""
    return (np.arange(n) % exp.model.num_classes).astype(np.int32) if exp.conditional() else None


def source_sample(exp, key, n: int) -> np.ndarray:
    """n draws of the run's source p0 at t = 0 (N(0, I) unless config.source says otherwise):
    float32 [n, ...], what its samplers start from."""
    return np.asarray(exp.sample_source(key, n), np.float32)


def calibration(exp, params, key, n: int, taus=None) -> exposure.Calibration:
    """The forward-process statistic r(tau) of a run (`exposure.calibrate`) on n training
    examples and fresh source samples (`source_sample`) drawn from `key`."""
    key_data, key_noise = jax.random.split(key)
    data, labels = training_sample(exp, key_data, n)
    noise = source_sample(exp, key_noise, n)
    v = velocity(exp, params, None if labels is None else jnp.asarray(labels))
    return exposure.calibrate(v, exposure.model_path(exp.objective), data, noise, taus)
