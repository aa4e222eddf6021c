"""Gaussian data N(MU, SD^2) per dimension and its exact model on an affine path, for samplers.

For data x1 ~ N(mu, sd^2) and noise x0 ~ N(0, 1), x_t = a x1 + s x0 is Gaussian and the exact
posterior means are E[x0 | x_t] = s (x_t - a mu) / v and E[x1 | x_t] = mu + a sd^2 (x_t - a mu) / v
with v = a^2 sd^2 + s^2.  `exact_apply`
gives the network output of each parametrisation at the path's own coefficients, so every sampler
can be checked against the known marginals.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import paths

MU = np.array([[0.5, -1.0]])   # [1, D]
SD = np.array([[0.5, 1.5]])


def exact_apply(path: paths.AffinePath, prediction: str, mu=MU, sd=SD):
    """apply(params, x [B, D], t [B], cond) of the exact model of N(mu, sd^2) on `path`."""

    def apply(params, x, t, cond=None):
        s = path.at(t, x)
        var = s.alpha**2 * sd**2 + s.sigma**2
        x0 = s.sigma * (x - s.alpha * mu) / var
        x1 = mu + s.alpha * sd**2 * (x - s.alpha * mu) / var
        return paths.from_endpoints(s, x1, x0, prediction).astype(x.dtype)

    return apply


def standardized_normal(key, shape):
    """N(0, I) draws with exactly zero sample mean and unit sample std per dimension."""
    z = np.asarray(jax.random.normal(key, shape), np.float64)
    return jnp.asarray((z - z.mean(0)) / z.std(0), jnp.float32)


def check_moments(x, mu, sd, *, n_se=4.0, var_rtol=0.05):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    np.testing.assert_allclose(x.mean(0), mu[0], atol=n_se * sd[0].max() / math.sqrt(n))
    np.testing.assert_allclose(x.var(0), sd[0] ** 2, rtol=var_rtol)
