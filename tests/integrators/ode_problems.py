"""Closed-form test problems and an evaluation counter shared by the integrator tests.

(tests/integrators/ is on sys.path when these tests run, as tests/ is for configs_util.)
"""

import jax
import numpy as np

# (a) dy/dt = -t y, y(t) = y0 exp(-t^2 / 2), integrated over [0, 2].
DECAY_T = 2.0
DECAY_Y0 = np.array([1.0, -2.0])


def decay_v(t, y):
    return -t * y


# (b) Gaussian-to-Gaussian flow: x0 ~ N(0, I) -> x1 ~ N(MU, S^2 I) along x_t = t x1 + (1 - t) x0.
# Marginal velocity mu + (d/dt log sigma_t) (x - t mu), sigma_t^2 = (1 - t)^2 + t^2 s^2;
# the flow map is x(t) = t mu + sigma_t x(0), so x(1) = mu + s x(0).
MU = np.array([1.0, -0.5])
S = 0.5
GAUSS_X0 = np.array([0.3, -1.2])


def gauss_v(t, x):
    return MU + ((t * S**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * S**2)) * (x - t * MU)


def gauss_x1(x0):
    return MU + S * x0


class Counter:
    """Counts evaluations of v at run time (host callback) and records the times."""

    def __init__(self, v):
        self.v, self.n, self.ts = v, 0, []

    def _hit(self, t):
        self.n += 1
        self.ts.append(float(t))

    def __call__(self, t, x):
        jax.debug.callback(self._hit, t)
        return self.v(t, x)

    def count(self):
        jax.effects_barrier()
        return self.n
