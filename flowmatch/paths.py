"""Affine probability paths and the three prediction parametrisations.

    x_t  = alpha_t x1 + sigma_t x0                      (t = 0 noise x0, t = 1 data x1)
    dx_t = d_alpha_t x1 + d_sigma_t x0                  (conditional target velocity)

A network may predict the velocity (default), the data x1, or the noise x0 (epsilon).  Given
x_t, any one of these determines the other two through the 2x2 linear system

    [ alpha_t     sigma_t   ] [x1]   [x_t]
    [ d_alpha_t   d_sigma_t ] [x0] = [ v ]

so every trained model can be turned into a velocity field and integrated by any ODE solver.
Its determinant alpha d_sigma - sigma d_alpha is nonzero for every schedule here (-1 for cond-OT,
-pi/2 for cosine), so velocity <-> (x1, x0) is always exact.  From an x1 prediction the noise is
(x_t - alpha x1) / sigma, undefined where sigma_t = 0 (t = 1 with sigma_min = 0); from an x0
prediction the data is (x_t - sigma x0) / alpha, undefined at t = 0.  There the divisor is kept
away from zero by `eps` (documented below): sample such models on grids that avoid the endpoint.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp

from flowmatch import schedules as schedules_lib

PREDICTIONS = ("velocity", "x1", "x0")


@flax.struct.dataclass
class PathSample:
    """A point on the conditional path.  x0, x1, x_t, dx_t: [B, ...]; t: [B]."""

    t: jnp.ndarray
    x0: jnp.ndarray
    x1: jnp.ndarray
    x_t: jnp.ndarray
    dx_t: jnp.ndarray


def _expand(t, x):
    """Reshapes per-example t [B] (or a scalar) to broadcast against x [B, ...]."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def _safe(d, eps):
    """d with |d| >= eps, sign kept (0 -> +eps)."""
    return jnp.where(jnp.abs(d) < eps, jnp.where(d < 0, -eps, eps), d)


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; choose one of: {', '.join(PREDICTIONS)} "
            "(config key: objective.prediction)")
    return prediction


@dataclasses.dataclass(frozen=True)
class AffinePath:
    """x_t = alpha_t x1 + sigma_t x0 for a schedule (see `flowmatch.schedules`).

    `eps` bounds the divisors sigma_t (x1 -> x0) and alpha_t (x0 -> x1) away from zero at the
    ends of [0, 1] where those conversions are undefined.
    """

    schedule: schedules_lib.Schedule
    eps: float = 1e-5

    def sample(self, x0, x1, t) -> PathSample:
        """The path point and conditional target velocity.  x0, x1: [B, ...]; t: [B]."""
        s = self.schedule(_expand(t, x1))
        x_t = s.alpha * x1 + s.sigma * x0
        dx_t = s.d_alpha * x1 + s.d_sigma * x0
        return PathSample(t=t, x0=x0, x1=x1, x_t=x_t, dx_t=dx_t)

    def target(self, sample: PathSample, prediction: str):
        """The regression target of a parametrisation: dx_t, x1 or x0."""
        check_prediction(prediction)
        return {"velocity": sample.dx_t, "x1": sample.x1, "x0": sample.x0}[prediction]

    def to_endpoints(self, pred, x_t, t, prediction: str):
        """(x1, x0) implied by a prediction of the given kind at (x_t, t).  t: [B] or scalar."""
        check_prediction(prediction)
        s = self.schedule(_expand(t, x_t))
        if prediction == "velocity":
            det = s.alpha * s.d_sigma - s.sigma * s.d_alpha
            x1 = (s.d_sigma * x_t - s.sigma * pred) / det
            x0 = (s.alpha * pred - s.d_alpha * x_t) / det
        elif prediction == "x1":
            x1 = pred
            x0 = (x_t - s.alpha * pred) / _safe(s.sigma, self.eps)
        else:
            x0 = pred
            x1 = (x_t - s.sigma * pred) / _safe(s.alpha, self.eps)
        return x1, x0

    def convert(self, pred, x_t, t, source: str, dest: str):
        """Converts a prediction between parametrisations ('velocity', 'x1', 'x0')."""
        check_prediction(dest)
        if source == dest:
            check_prediction(source)
            return pred
        x1, x0 = self.to_endpoints(pred, x_t, t, source)
        if dest == "x1":
            return x1
        if dest == "x0":
            return x0
        s = self.schedule(_expand(t, x_t))
        return s.d_alpha * x1 + s.d_sigma * x0

    def velocity(self, pred, x_t, t, prediction: str):
        """The velocity implied by a prediction: what an ODE integrator follows."""
        return self.convert(pred, x_t, t, prediction, "velocity")


def make_path(schedule: str = "cond_ot", **schedule_kwargs) -> AffinePath:
    """An AffinePath over a named schedule (see `flowmatch.schedules.make_schedule`)."""
    return AffinePath(schedules_lib.make_schedule(schedule, **schedule_kwargs))
