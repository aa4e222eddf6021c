"""The source distribution p0 that flows start from at t = 0: a standard normal or a 2-D data set.

    p0 = SourceDistribution("8gaussians", scale=1.0, example_shape=(2,))
    x0 = p0.sample(key, n)          # [n, 2] float32
    p0.log_prob(x0)                 # [n] nats, where p0 has a closed-form density

'normal' is N(0, scale^2 I) over any example shape.  Any 2-D toy set of `flowmatch.data.toy2d`
(torchcfm's moons and 8gaussians, FFJORD's sets) is a source for 2-D data: scale * its sample,
so a flow can carry one data set into another (e.g. 8gaussians -> moons, torchcfm's OT-CFM
example).  Training, the samplers, evaluation and the comparison harness draw x0 here.

Densities: 'normal' and '8gaussians' (a mixture of 8 isotropic Gaussians) have one, so exact
log-likelihoods work from them; the other toy sets are defined by samplers only (moons, spirals
and checkerboard have no density, or a degenerate one), and `log_prob` raises.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch.data import toy2d

SOURCES = ("normal",) + tuple(toy2d.TOY_DATASETS)
WITH_DENSITY = ("normal", "8gaussians")


@functools.lru_cache(maxsize=None)
def _eight_gaussians_parameters():
    """(centres [8, 2], per-coordinate std) of toy2d's 8gaussians, read off its transform (as
    NumPy constants, also when first asked for inside a jit trace)."""
    spec = toy2d.toy_spec("8gaussians")
    with jax.ensure_compile_time_eval():
        centres = np.asarray(spec.transform({"centre": jnp.arange(8, dtype=jnp.int32),
                                             "noise": jnp.zeros((8, 2), jnp.float32)}))
        unit = np.asarray(spec.transform({"centre": jnp.zeros((1,), jnp.int32),
                                          "noise": jnp.ones((1, 2), jnp.float32)}))
    return centres, float(unit[0, 0] - centres[0, 0])


@dataclasses.dataclass(frozen=True)
class SourceDistribution:
    """p0: name ('normal' or a toy2d data set), scale (multiplies samples), example shape."""

    name: str = "normal"
    scale: float = 1.0
    example_shape: tuple = (2,)

    def __post_init__(self):
        if self.name not in SOURCES:
            raise ValueError(f"unknown source distribution {self.name!r}; choose one of: "
                             f"{', '.join(SOURCES)} (config key: source.name)")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
                math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"source.scale must be a positive number, got {self.scale!r}")
        object.__setattr__(self, "example_shape", tuple(self.example_shape))
        if self.name != "normal" and self.example_shape != (2,):
            raise ValueError(
                f"source {self.name!r} is a 2-D data set, but the data's examples have shape "
                f"{self.example_shape}; use source.name='normal' for this data")

    @property
    def is_normal(self) -> bool:
        return self.name == "normal"

    @property
    def has_density(self) -> bool:
        return self.name in WITH_DENSITY

    def sample(self, key, n: int):
        """n draws: float32 [n, *example_shape].  'normal': scale * normal(key, ...) (so with
        scale 1 exactly the noise flowmatch always drew); a toy set: scale * sample(key, n)."""
        if self.is_normal:
            x = jax.random.normal(key, (n, *self.example_shape), jnp.float32)
        else:
            x = toy2d.sample_toy(self.name, key, n)
        return x if self.scale == 1.0 else x * jnp.float32(self.scale)

    def log_prob(self, x):
        """log p0(x) in nats per example, x: [B, *example_shape] -> [B].

        Raises ValueError for sources without a tractable density (all toy sets but
        8gaussians): exact likelihoods need log p0 at the end of the backward solve.
        """
        if not self.has_density:
            raise ValueError(
                f"source {self.name!r} has no tractable density, so log-likelihoods under a flow "
                f"from it cannot be computed; sources with one: {', '.join(WITH_DENSITY)}")
        x = jnp.asarray(x)
        dim = math.prod(x.shape[1:])
        y = x.reshape(x.shape[0], dim) / self.scale
        log_jac = -dim * math.log(self.scale)
        if self.is_normal:
            return -0.5 * jnp.sum(y * y, axis=1) - 0.5 * dim * math.log(2 * math.pi) + log_jac
        centres, std = _eight_gaussians_parameters()
        sq = jnp.sum(jnp.square(y[:, None, :] - centres.astype(y.dtype)[None]), axis=-1)
        comp = -0.5 * sq / std**2 - dim * math.log(std) - 0.5 * dim * math.log(2 * math.pi)
        return jax.nn.logsumexp(comp, axis=1) - math.log(centres.shape[0]) + log_jac


def from_config(section, example_shape) -> SourceDistribution:
    """config.source (None or missing keys: the standard normal) for data of `example_shape`."""
    section = dict(section or {})
    unknown = set(section) - {"name", "scale"}
    if unknown:
        raise ValueError(f"unknown source setting(s) {sorted(unknown)}; allowed: ['name', "
                         "'scale']")
    return SourceDistribution(name=section.get("name", "normal"),
                              scale=section.get("scale", 1.0), example_shape=example_shape)
