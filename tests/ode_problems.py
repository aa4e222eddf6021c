"""Closed-form test problems and an evaluation counter shared by the integrator tests.

(tests/integrators/ is on sys.path when these tests run, as tests/ is for configs_util.)
"""

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import integrators, timegrids

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


def _grid(kind, n, t_end):
    """Grid [n + 1] from 0 to t_end: uniform, or EDM's rho = 2 spacing (finer towards t_end)."""
    if kind == "uniform":
        return np.asarray(timegrids.uniform(n, 0.0, t_end))
    return t_end * np.asarray(timegrids.edm(n, rho=2.0))


def measured_orders(method, problem, steps, grid="uniform"):
    """Fitted convergence order (forward, reverse) of `method` on `problem` ("decay" or "gauss")
    from the error at the end of each grid with `steps` steps (reverse: the reversed grid).

    One compilation per call: every grid is padded to the same length with zero-length steps at
    its end point (exact no-ops: h = 0), and all grids and both directions run in one vmap.
    """
    if problem == "decay":
        v, t_end, start, end = decay_v, DECAY_T, DECAY_Y0, DECAY_Y0 * np.exp(-DECAY_T**2 / 2)
    else:
        v, t_end, start, end = gauss_v, 1.0, GAUSS_X0, gauss_x1(GAUSS_X0)
    length = max(steps) + 1
    grids, x0s = [], []
    for reverse, x0 in ((False, start), (True, end)):
        for n in steps:
            g = _grid(grid, n, t_end)
            g = g[::-1] if reverse else g
            grids.append(np.concatenate([g, np.full(length - n - 1, g[-1])]))
            x0s.append(x0)
    run = jax.jit(jax.vmap(lambda g, x: integrators.solve(v, x, method=method, time_grid=g).x))
    xs = np.asarray(run(jnp.asarray(np.stack(grids)), jnp.asarray(np.stack(x0s))))
    errors = np.max(np.abs(xs - np.stack([end] * len(steps) + [start] * len(steps))), axis=1)
    fwd, rev = errors[:len(steps)], errors[len(steps):]
    return tuple(-np.polyfit(np.log(steps), np.log(e), 1)[0] for e in (fwd, rev))
