"""Radial power spectra: images with known spectra (sinusoids, white noise) and the
trajectories of the exact velocity field of Gaussian images."""

import jax
import numpy as np
import pytest

from flowmatch import paths
from flowmatch.diagnostics import spectra

MU, S = 0.7, 0.5
PATH = paths.make_path("cond_ot")


def _exact(t, x):
    """The exact velocity of x1 ~ N(MU, S^2 I) on the cond-OT path (posterior means)."""
    var = t**2 * S**2 + (1 - t) ** 2
    r = x - t * MU
    return MU + (t * S**2 / var) * r - ((1 - t) / var) * r


def test_sinusoids_land_in_their_ring():
    n = 16
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for (ky, kx), ring in (((0, 3), 3), ((4, 3), 5), ((2, 0), 2)):
        img = np.cos(2 * np.pi * (ky * yy + kx * xx) / n)[None, :, :, None]
        e = spectra.radial_profile(img, "sum")[0]
        assert e[ring] == pytest.approx(np.sum(img**2), rel=1e-9)
        assert np.sum(np.delete(e, ring)) < 1e-9 * e[ring]


def test_parseval_and_white_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.5, (512, 16, 16, 3))
    e = spectra.radial_profile(x, "sum")
    np.testing.assert_allclose(e.sum(1), np.sum(x**2, axis=(1, 2, 3)), rtol=1e-10)
    flat = spectra.radial_profile(x, "mean").mean(0)
    np.testing.assert_allclose(flat, 3 * 0.25, rtol=0.1)  # C sigma^2 in every ring
    # A non-square image: Parseval holds as well.
    y = rng.normal(size=(2, 8, 12, 1))
    np.testing.assert_allclose(spectra.radial_profile(y, "sum").sum(1), np.sum(y**2, (1, 2, 3)))


def test_reach_and_settle_times():
    ts = np.linspace(0, 1, 5)
    energy = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.95], [2.0, 0.5], [1.0, 1.0]])
    # ring 1 reaches 90% at t = 0.5 but falls back at 0.75: it reaches for good only at t = 1.
    np.testing.assert_allclose(spectra.reach_times(ts, energy, 0.9), [0.0, 1.0])
    np.testing.assert_allclose(spectra.reach_times(ts[:3], energy[:3], 0.9), [0.0, 0.5])
    # ring 0 leaves the band at 0.75 and returns at 1; ring 1 is within 10% only at the end.
    np.testing.assert_allclose(spectra.settle_times(ts, energy, 0.9), [1.0, 1.0])
    np.testing.assert_allclose(spectra.settle_times(ts, energy[:3], 0.9), [0.0, 0.5])


def test_spectral_trajectory_of_gaussian_images():
    x0 = jax.random.normal(jax.random.PRNGKey(7), (4, 8, 8, 1))
    ts, xs, x1s = spectra.spectral_trajectory(_exact, PATH, x0, method="heun", num_steps=4)
    assert ts.shape == (5,) and xs.shape == x1s.shape == (5, 4, 8, 8, 1)
    np.testing.assert_allclose(x1s[-1], xs[-1], atol=1e-6)  # at t = 1 the state is the data
    np.testing.assert_allclose(x1s[0], MU, atol=1e-6)       # at t = 0 the prediction is E x1
    assert spectra.profiles_over_time(x1s).shape == (5, 7)  # rings 0..6 of an 8 x 8 image
