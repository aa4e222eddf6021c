"""Two-dimensional toy distributions as pure, jittable JAX samplers ``fn(key, n) -> [n, 2]``.

The definitions reproduce the reference code that published flow-matching tables use:

- ``moons``, ``8gaussians``: torchcfm's ``sample_moons`` / ``sample_8gaussians``;
- ``checkerboard``, ``spirals`` (FFJORD's "2spirals"), ``circles``, ``swissroll``: FFJORD's
  ``lib/toy_data.py`` (the last two wrap scikit-learn's ``make_circles`` / ``make_swiss_roll``).

Each sampler is split in two: ``draws(key, n)`` makes every random number the reference code
draws (a dict of float32 / int32 arrays) and ``transform(draws)`` maps them deterministically to
the points, so that ``fn(key, n) == transform(draws(key, n))``.  Tests feed the same draws to an
independent NumPy transcription of the reference code.  ``transform`` computes in the dtype of
the draws (float32 from ``draws``; float64 if a caller passes float64 draws under x64).

Where the reference returns points ordered along a curve (moons, spirals), the rows are permuted
with the key, so any prefix of a sample is itself an i.i.d.-looking sample.

Natural class labels (for class-conditional training): ``labels(draws)`` says which part of the
distribution generated each point, from the same draws, so ``sample_labeled(key, n)`` returns
exactly ``sample(key, n)`` and int32 labels [n] beside it:

- ``8gaussians``: which Gaussian, 0-7 (the order of the centres in ``eight_gaussians``);
- ``moons``: 0 the outer (upper) moon, 1 the inner (lower) one;
- ``checkerboard``: which of the 8 filled 2x2 squares, ``2 * column + row``, column 0-3 from
  x = -4 to 4, row 0 the lower and 1 the upper filled square of that column;
- ``circles``: 0 the outer circle (radius 3), 1 the inner one (radius 1.5);
- ``spirals``: 0 the arm d, 1 the mirrored arm -d;
- ``swissroll``: a documented choice, four equal bins of the roll parameter u (label
  floor(4 u): the roll from its inner end outwards, each bin a quarter of the mass).

The public samplers are jitted with ``n`` static (a Python int); they compose with an outer
``jax.jit`` / ``jax.vmap`` over keys.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import rng

Draws = dict[str, jax.Array]

# torchcfm: N(0, sqrt(var) * I) with var = 0.1, i.e. per-coordinate std var ** 0.25.
_EIGHT_GAUSSIANS_STD = 0.1**0.25
_S = 1.0 / math.sqrt(2.0)
_EIGHT_CENTRES = 5.0 * np.array(
    [(1, 0), (-1, 0), (0, 1), (0, -1), (_S, _S), (_S, -_S), (-_S, _S), (-_S, -_S)],
    dtype=np.float64,
)


def _uniform(key, shape):
    return jax.random.uniform(key, shape, dtype=jnp.float32)


def _normal(key, shape):
    return jax.random.normal(key, shape, dtype=jnp.float32)


# ----------------------------------------------------------------------------------- moons


def _moons_draws(key: jax.Array, n: int) -> Draws:
    k_offset, k_perm = jax.random.split(key)
    return {"offset": _uniform(k_offset, (n, 1)), "perm": rng.permutation(k_perm, n)}


def _moons_transform(d: Draws) -> jax.Array:
    offset, perm = d["offset"], d["perm"]
    n = perm.shape[0]
    n_out, n_in = n // 2, n - n // 2
    a_out = jnp.linspace(0.0, jnp.pi, n_out, dtype=offset.dtype)
    a_in = jnp.linspace(0.0, jnp.pi, n_in, dtype=offset.dtype)
    x = jnp.concatenate([jnp.cos(a_out), 1.0 - jnp.cos(a_in)])
    y = jnp.concatenate([jnp.sin(a_out), 1.0 - jnp.sin(a_in) - 0.5])
    points = jnp.stack([x, y], axis=1) + offset * 0.2  # one offset per point, both coordinates
    return (points * 3.0 - 1.0)[perm]


def _moons_labels(d: Draws) -> jax.Array:
    return _halves(d["perm"])


def _halves(perm: jax.Array) -> jax.Array:
    """Labels of rows permuted by perm when the unpermuted rows are n // 2 of class 0, then the
    rest of class 1 (moons' and circles' outer / inner order)."""
    n = perm.shape[0]
    return (jnp.arange(n) >= n // 2).astype(jnp.int32)[perm]


@functools.partial(jax.jit, static_argnums=1)
def moons(key: jax.Array, n: int) -> jax.Array:
    """Two moons, torchcfm's ``sample_moons(n)``: torchdyn ``generate_moons(n, noise=0.2) * 3 - 1``.

    With n_out = n // 2 and n_in = n - n_out, a = linspace(0, pi, n_out), b = linspace(0, pi, n_in):
    outer arc (cos a, sin a), inner arc (1 - cos b, 1 - sin b - 0.5); every point p gets
    p + u * 0.2 * (1, 1) with one u ~ U[0, 1) per point; the result is p * 3 - 1, rows permuted.
    Support: [-4, 5.6) x [-2.5, 2.6).  Returns float32 [n, 2].
    """
    return _moons_transform(_moons_draws(key, n))


# ------------------------------------------------------------------------------ 8gaussians


def _eight_gaussians_draws(key: jax.Array, n: int) -> Draws:
    k_centre, k_noise = jax.random.split(key)
    return {
        "centre": jax.random.randint(k_centre, (n,), 0, 8, dtype=jnp.int32),
        "noise": _normal(k_noise, (n, 2)),
    }


def _eight_gaussians_transform(d: Draws) -> jax.Array:
    noise = d["noise"]
    centres = jnp.asarray(_EIGHT_CENTRES, dtype=noise.dtype)
    return centres[d["centre"]] + _EIGHT_GAUSSIANS_STD * noise


def _eight_gaussians_labels(d: Draws) -> jax.Array:
    return d["centre"].astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=1)
def eight_gaussians(key: jax.Array, n: int) -> jax.Array:
    """Eight Gaussians, torchcfm's ``sample_8gaussians(n)`` (registry name "8gaussians").

    x = 5 * c_k + 0.1 ** 0.25 * z, k ~ U{0..7}, z ~ N(0, I_2), with c_k the 8 compass directions
    (+-1, 0), (0, +-1), (+-1/sqrt2, +-1/sqrt2).  torchcfm passes sqrt(var) = sqrt(0.1) as the
    covariance, so the per-coordinate std is 0.1 ** 0.25 ~= 0.5623.  Returns float32 [n, 2].
    """
    return _eight_gaussians_transform(_eight_gaussians_draws(key, n))


# ---------------------------------------------------------------------------- checkerboard


def _checkerboard_draws(key: jax.Array, n: int) -> Draws:
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "u1": _uniform(k1, (n,)),
        "u2": _uniform(k2, (n,)),
        "bit": jax.random.randint(k3, (n,), 0, 2, dtype=jnp.int32),
    }


def _checkerboard_transform(d: Draws) -> jax.Array:
    u1, u2 = d["u1"], d["u2"]
    x1 = u1 * 4.0 - 2.0
    x2 = u2 - d["bit"].astype(u2.dtype) * 2.0 + jnp.mod(jnp.floor(x1), 2.0)
    return jnp.stack([x1, x2], axis=1) * 2.0


def _checkerboard_labels(d: Draws) -> jax.Array:
    """2 * column + row: column = floor(x1) + 2 (the transform's x1), row 1 - bit (bit = 1 puts
    the point in the lower filled square of its column)."""
    column = jnp.floor(d["u1"] * 4.0 - 2.0).astype(jnp.int32) + 2
    return 2 * column + (1 - d["bit"].astype(jnp.int32))


@functools.partial(jax.jit, static_argnums=1)
def checkerboard(key: jax.Array, n: int) -> jax.Array:
    """FFJORD's checkerboard: uniform on the 8 "black" 2x2 squares of [-4, 4)^2.

    x1 = 4 u1 - 2, x2 = u2 - 2 b + (floor(x1) mod 2), u1, u2 ~ U[0, 1), b ~ U{0, 1};
    returns 2 * (x1, x2).  Every point has floor(x/2) + floor(y/2) even.  Float32 [n, 2].
    """
    return _checkerboard_transform(_checkerboard_draws(key, n))


# --------------------------------------------------------------------------------- spirals


def _spirals_draws(key: jax.Array, n: int) -> Draws:
    m = (n + 1) // 2
    k_r, k_x, k_y, k_noise, k_perm = jax.random.split(key, 5)
    return {
        "u_r": _uniform(k_r, (m, 1)),
        "u_x": _uniform(k_x, (m, 1)),
        "u_y": _uniform(k_y, (m, 1)),
        "noise": _normal(k_noise, (n, 2)),
        "perm": rng.permutation(k_perm, n),
    }


def _spirals_transform(d: Draws) -> jax.Array:
    n = d["perm"].shape[0]
    r = jnp.sqrt(d["u_r"]) * 540 * (2 * jnp.pi) / 360
    d1x = -jnp.cos(r) * r + d["u_x"] * 0.5
    d1y = jnp.sin(r) * r + d["u_y"] * 0.5
    arm = jnp.concatenate([d1x, d1y], axis=1)
    x = jnp.concatenate([arm, -arm], axis=0)[:n] / 3.0
    x = x + d["noise"] * 0.1
    return x[d["perm"]]


def _spirals_labels(d: Draws) -> jax.Array:
    n, m = d["perm"].shape[0], d["u_r"].shape[0]
    return (jnp.arange(n) >= m).astype(jnp.int32)[d["perm"]]


@functools.partial(jax.jit, static_argnums=1)
def spirals(key: jax.Array, n: int) -> jax.Array:
    """FFJORD's "2spirals": two interleaved spirals, point-symmetric about the origin.

    For m = ceil(n / 2) arm points: r = sqrt(u) * 540 * 2 pi / 360, d = (-cos(r) r + 0.5 u',
    sin(r) r + 0.5 u'') with u, u', u'' ~ U[0, 1); x = vstack(d, -d)[:n] / 3 + 0.1 z, z ~ N(0, I),
    rows permuted.  For odd n the mirrored arm has one point fewer (its last is dropped); for even
    n this is FFJORD's formula exactly.  Returns float32 [n, 2].
    """
    return _spirals_transform(_spirals_draws(key, n))


# --------------------------------------------------------------------------------- circles


def _circles_draws(key: jax.Array, n: int) -> Draws:
    k_perm, k_noise = jax.random.split(key)
    return {"perm": rng.permutation(k_perm, n), "noise": _normal(k_noise, (n, 2))}


def _circles_transform(d: Draws) -> jax.Array:
    noise, perm = d["noise"], d["perm"]
    n = perm.shape[0]
    n_out, n_in = n // 2, n - n // 2
    a_out = jnp.linspace(0.0, 2 * jnp.pi, n_out, endpoint=False, dtype=noise.dtype)
    a_in = jnp.linspace(0.0, 2 * jnp.pi, n_in, endpoint=False, dtype=noise.dtype)
    x = jnp.concatenate([jnp.cos(a_out), jnp.cos(a_in) * 0.5])
    y = jnp.concatenate([jnp.sin(a_out), jnp.sin(a_in) * 0.5])
    points = jnp.stack([x, y], axis=1)[perm] + noise * 0.08
    return points * 3.0


def _circles_labels(d: Draws) -> jax.Array:
    return _halves(d["perm"])


@functools.partial(jax.jit, static_argnums=1)
def circles(key: jax.Array, n: int) -> jax.Array:
    """FFJORD's circles: sklearn ``make_circles(n, factor=0.5, noise=0.08)[0] * 3``.

    sklearn puts n_out = n // 2 points at angles linspace(0, 2 pi, n_out, endpoint=False) on the
    unit circle and n_in = n - n_out on the circle of radius 0.5, shuffles the rows, then adds
    N(0, 0.08^2 I); the result is scaled by 3 (radii 3 and 1.5, noise std 0.24).  Float32 [n, 2].
    """
    return _circles_transform(_circles_draws(key, n))


# ------------------------------------------------------------------------------- swissroll


def _swissroll_draws(key: jax.Array, n: int) -> Draws:
    k_t, k_noise = jax.random.split(key)
    return {"u_t": _uniform(k_t, (n,)), "noise": _normal(k_noise, (n, 2))}


def _swissroll_transform(d: Draws) -> jax.Array:
    t = 1.5 * jnp.pi * (1.0 + 2.0 * d["u_t"])
    roll = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1)
    return (roll + 1.0 * d["noise"]) / 5.0


_SWISSROLL_BINS = 4


def _swissroll_labels(d: Draws) -> jax.Array:
    """floor(4 u) of the roll parameter u in [0, 1): four bins of equal mass along the roll."""
    bins = jnp.floor(d["u_t"] * _SWISSROLL_BINS).astype(jnp.int32)
    return jnp.clip(bins, 0, _SWISSROLL_BINS - 1)


@functools.partial(jax.jit, static_argnums=1)
def swissroll(key: jax.Array, n: int) -> jax.Array:
    """FFJORD's swissroll: sklearn ``make_swiss_roll(n, noise=1.0)[0][:, [0, 2]] / 5``.

    t = 1.5 pi (1 + 2 u), u ~ U[0, 1); (x, z) = (t cos t, t sin t) + z', z' ~ N(0, I_2) (sklearn's
    height coordinate y = 21 u'' is dropped, so it is not drawn); returns (x, z) / 5.
    Float32 [n, 2].
    """
    return _swissroll_transform(_swissroll_draws(key, n))


# -------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class ToySpec:
    """A toy dataset: ``sample(key, n) == transform(draws(key, n))``; ``box = (lo, hi)``;
    ``labels(draws)`` int32 [n], the natural class of each point, in 0 .. num_classes - 1."""

    sample: Callable[[jax.Array, int], jax.Array]
    draws: Callable[[jax.Array, int], Draws]
    transform: Callable[[Draws], jax.Array]
    box: tuple[tuple[float, float], tuple[float, float]]
    labels: Callable[[Draws], jax.Array]
    num_classes: int

    def sample_labeled(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """(points float32 [n, 2], labels int32 [n]) from one set of draws: the points are
        exactly ``sample(key, n)``.  ``n`` a Python int; jittable."""
        return _sample_labeled(self.draws, self.transform, self.labels, key, n)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 4))
def _sample_labeled(draws, transform, labels, key, n):
    d = draws(key, n)
    return transform(d), labels(d)


# Boxes (lo, hi) for 64x64-bin histograms.  Bounded supports get a margin; Gaussian noise gets
# >= 5.3 standard deviations beyond the noiseless extremes (mass outside < 1e-7).  The boxes of
# moons and checkerboard are the ones whose tv floors (two fresh 100,000-point samples) are the
# published calibration of the tv targets: checkerboard 0.065 (blurred by 0.1: 0.097), moons
# 0.034 -- see README "2-D quality".
_SPECS: dict[str, ToySpec] = {
    # support [-4, 5.6) x [-2.5, 2.6)
    "moons": ToySpec(moons, _moons_draws, _moons_transform, ((-5.0, -5.0), (6.5, 5.0)),
                     _moons_labels, 2),
    # centres at radius 5, std 0.5623: |coordinate| <= 5 + 5.3 std
    "8gaussians": ToySpec(
        eight_gaussians, _eight_gaussians_draws, _eight_gaussians_transform,
        ((-8.0, -8.0), (8.0, 8.0)), _eight_gaussians_labels, 8,
    ),
    # support exactly [-4, 4)^2, margin 1
    "checkerboard": ToySpec(
        checkerboard, _checkerboard_draws, _checkerboard_transform, ((-5.0, -5.0), (5.0, 5.0)),
        _checkerboard_labels, 8,
    ),
    # noiseless |coordinate| <= (3 pi + 0.5) / 3 ~= 3.31, noise std 0.1
    "spirals": ToySpec(spirals, _spirals_draws, _spirals_transform, ((-4.0, -4.0), (4.0, 4.0)),
                       _spirals_labels, 2),
    # outer radius 3, noise std 0.24
    "circles": ToySpec(circles, _circles_draws, _circles_transform, ((-4.5, -4.5), (4.5, 4.5)),
                       _circles_labels, 2),
    # noiseless x in [-1.89, 2.52], z in [-2.20, 2.83], noise std 0.2
    "swissroll": ToySpec(
        swissroll, _swissroll_draws, _swissroll_transform, ((-4.5, -4.5), (4.5, 4.5)),
        _swissroll_labels, _SWISSROLL_BINS,
    ),
}

TOY_DATASETS: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    name: spec.sample for name, spec in _SPECS.items()
}


def toy_spec(name: str) -> ToySpec:
    """The :class:`ToySpec` of ``name``; ValueError listing the known names otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown toy dataset {name!r}; choose one of: {', '.join(_SPECS)}"
        ) from None


def sample_toy(name: str, key: jax.Array, n: int) -> jax.Array:
    """``n`` points (float32 [n, 2]) of the toy dataset ``name``; ``n`` a Python int."""
    return toy_spec(name).sample(key, n)


def sample_toy_labeled(name: str, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """(points float32 [n, 2], natural labels int32 [n]) of ``name``: the points of
    ``sample_toy(name, key, n)`` and which part of the distribution drew each."""
    return toy_spec(name).sample_labeled(key, n)


def toy_box(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Fixed box ``(lo, hi)``, each float32 [2], that holds essentially all of ``name``'s mass.

    moons [-5, 6.5] x [-5, 5]; 8gaussians [-8, 8]^2; checkerboard [-5, 5]^2; spirals [-4, 4]^2;
    circles [-4.5, 4.5]^2; swissroll [-4.5, 4.5]^2.
    """
    lo, hi = toy_spec(name).box
    return np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)
