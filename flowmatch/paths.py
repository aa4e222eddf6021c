"""Affine probability paths: the one place for conversions between parametrisations.

    x_t  = alpha_t x1 + sigma_t x0                      (t = 0 noise x0, t = 1 data x1)
    dx_t = d_alpha_t x1 + d_sigma_t x0                  (conditional target velocity)

A network may predict (`PREDICTIONS`)
    'velocity'  dx_t                               (flow matching's default)
    'x1'        the data                           (DDPM's "x0-prediction")
    'x0'        the noise                          (DDPM's "epsilon-prediction")
    'v'         alpha_t x0 - sigma_t x1            (Salimans & Ho 2022's v, for any schedule)
Given x_t, any one of these determines the others, and the score of p_t,
    score(x_t) = -E[x0 | x_t] / sigma_t            (x0 ~ N(0, I)),
through 2x2 linear systems in (x1, x0):
    velocity:  [alpha sigma; d_alpha d_sigma] [x1; x0] = [x_t; v],  det = alpha d_sigma - sigma d_alpha
    v:         x1 = (alpha x_t - sigma v) / (alpha^2 + sigma^2),  x0 = (sigma x_t + alpha v) / (...)
so every trained model, flow matching or DDPM, becomes a velocity field for any ODE solver, a score
for any SDE solver and a data prediction for DDPM's samplers.  The velocity determinant is nonzero
for every schedule here (-1 for cond-OT, -pi/2 for cosine), so velocity <-> (x1, x0) is exact.  From
an x1 prediction the noise is (x_t - alpha x1) / sigma, undefined where sigma_t = 0 (t = 1 with
sigma_min = 0); from an x0 prediction the data is (x_t - sigma x0) / alpha, undefined at t = 0.
There the divisor is kept away from zero by `eps`: sample such models on grids that avoid the
endpoint (DDPM models stop at their last training time and denoise, `flowmatch.sampling`).

`posterior` gives the forward process's Gaussian transitions between two times, q(x_b | x_a, x1),
which DDPM's ancestral and DDIM samplers and the variational bound are made of.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp

from flowmatch import schedules as schedules_lib

PREDICTIONS = ("velocity", "x1", "x0", "v")
TARGETS = PREDICTIONS + ("score",)  # what `convert` can produce


@flax.struct.dataclass
class PathSample:
    """A point on the conditional path.  x0, x1, x_t, dx_t: [B, ...]; t, alpha, sigma: [B]."""

    t: jnp.ndarray
    x0: jnp.ndarray
    x1: jnp.ndarray
    x_t: jnp.ndarray
    dx_t: jnp.ndarray
    alpha: jnp.ndarray | None = None
    sigma: jnp.ndarray | None = None


def expand(t, x):
    """Per-example t [B] (or a scalar) reshaped to broadcast against x [B, ...], in x's dtype."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def _safe(d, eps):
    """d with |d| >= eps, sign kept (0 -> +eps)."""
    return jnp.where(jnp.abs(d) < eps, jnp.where(d < 0, -eps, eps), d)


def check_prediction(prediction: str, allowed=PREDICTIONS, key: str = "objective.prediction"):
    if prediction not in allowed:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of: {', '.join(allowed)}"
                         f" (config key: {key})")
    return prediction


def _expand_output(s: schedules_lib.ScheduleOutput, x) -> schedules_lib.ScheduleOutput:
    return schedules_lib.ScheduleOutput(*(expand(v, x) for v in s))


def endpoints(s: schedules_lib.ScheduleOutput, pred, x_t, prediction: str, eps: float = 1e-5):
    """(x1, x0) implied by a prediction at x_t, given the schedule's values s there (each
    broadcastable against x_t).  See the module docstring for the systems solved."""
    check_prediction(prediction)
    if prediction == "velocity":
        det = s.alpha * s.d_sigma - s.sigma * s.d_alpha
        return (s.d_sigma * x_t - s.sigma * pred) / det, (s.alpha * pred - s.d_alpha * x_t) / det
    if prediction == "x1":
        return pred, (x_t - s.alpha * pred) / _safe(s.sigma, eps)
    if prediction == "x0":
        return (x_t - s.sigma * pred) / _safe(s.alpha, eps), pred
    norm = s.alpha * s.alpha + s.sigma * s.sigma
    return (s.alpha * x_t - s.sigma * pred) / norm, (s.sigma * x_t + s.alpha * pred) / norm


def from_endpoints(s: schedules_lib.ScheduleOutput, x1, x0, dest: str, eps: float = 1e-5):
    """The prediction of kind `dest` (one of TARGETS) that the pair (x1, x0) amounts to."""
    check_prediction(dest, TARGETS)
    if dest == "x1":
        return x1
    if dest == "x0":
        return x0
    if dest == "velocity":
        return s.d_alpha * x1 + s.d_sigma * x0
    if dest == "v":
        return s.alpha * x0 - s.sigma * x1
    return -x0 / _safe(s.sigma, eps)


def posterior(sa: schedules_lib.ScheduleOutput, sb: schedules_lib.ScheduleOutput):
    """q(x_b | x_a, x1) of the forward process between times a < b (a noisier), as coefficients.

    The path's forward process runs from data towards noise: x_a | x_b = (alpha_a / alpha_b) x_b
    + N(0, s2 I) with s2 = sigma_a^2 - (alpha_a / alpha_b)^2 sigma_b^2 (>= 0 whenever the
    signal-to-noise ratio alpha / sigma grows with t; Kingma et al. 2021, eq. 2-3).  Conditioning
    on x_a gives q(x_b | x_a, x1) = N(c_a x_a + c_1 x1, var) with
        c_a = (alpha_a / alpha_b) sigma_b^2 / sigma_a^2,   c_1 = alpha_b s2 / sigma_a^2,
        var = s2 sigma_b^2 / sigma_a^2.
    For DDPM's adjacent steps this is Ho et al.'s eq. 7 (s2 = beta_i).  Returns (c_a, c_1, var,
    s2), each shaped like the inputs (NumPy in, NumPy out: samplers compute their static grids'
    coefficients in float64).  alpha_b = 0 (the pure-noise end) is not allowed.
    """
    ratio = sa.alpha / sb.alpha
    s2 = sa.sigma * sa.sigma - ratio * ratio * sb.sigma * sb.sigma
    s2 = 0.5 * (s2 + abs(s2))  # rounding can leave a tiny negative; NumPy or JAX arrays alike
    inv = 1.0 / (sa.sigma * sa.sigma)
    return ratio * sb.sigma * sb.sigma * inv, sb.alpha * s2 * inv, s2 * sb.sigma * sb.sigma * inv, s2


@dataclasses.dataclass(frozen=True)
class AffinePath:
    """x_t = alpha_t x1 + sigma_t x0 for a schedule (see `flowmatch.schedules`).

    `eps` bounds the divisors sigma_t (x1 -> x0) and alpha_t (x0 -> x1) away from zero at the
    ends of [0, 1] where those conversions are undefined.
    """

    schedule: schedules_lib.Schedule
    eps: float = 1e-5

    def at(self, t, x) -> schedules_lib.ScheduleOutput:
        """The schedule at t ([B] or scalar), broadcastable against x [B, ...]."""
        return self.schedule(expand(t, x))

    def point(self, s: schedules_lib.ScheduleOutput, x0, x1, t) -> PathSample:
        """The path point for schedule values s (broadcastable against x1) at times t [B]."""
        x_t = s.alpha * x1 + s.sigma * x0
        dx_t = s.d_alpha * x1 + s.d_sigma * x0
        return PathSample(t=t, x0=x0, x1=x1, x_t=x_t, dx_t=dx_t, alpha=s.alpha, sigma=s.sigma)

    def sample(self, x0, x1, t) -> PathSample:
        """The path point and conditional target velocity.  x0, x1: [B, ...]; t: [B]."""
        return self.point(self.at(t, x1), x0, x1, t)

    def target(self, sample: PathSample, prediction: str):
        """The regression target of a parametrisation: dx_t, x1, x0 or v."""
        check_prediction(prediction)
        if prediction == "velocity":
            return sample.dx_t
        s = schedules_lib.ScheduleOutput(sample.alpha, sample.sigma, None, None)
        return from_endpoints(s, sample.x1, sample.x0, prediction)

    def to_endpoints(self, pred, x_t, t, prediction: str):
        """(x1, x0) implied by a prediction of the given kind at (x_t, t).  t: [B] or scalar."""
        return endpoints(self.at(t, x_t), pred, x_t, prediction, self.eps)

    def convert(self, pred, x_t, t, source: str, dest: str):
        """Converts a prediction between parametrisations (PREDICTIONS; dest also 'score')."""
        check_prediction(dest, TARGETS)
        if source == dest:
            check_prediction(source)
            return pred
        s = self.at(t, x_t)
        x1, x0 = endpoints(s, pred, x_t, source, self.eps)
        return from_endpoints(s, x1, x0, dest, self.eps)

    def velocity(self, pred, x_t, t, prediction: str):
        """The velocity implied by a prediction: what an ODE integrator follows."""
        return self.convert(pred, x_t, t, prediction, "velocity")


def make_path(schedule: str = "cond_ot", **schedule_kwargs) -> AffinePath:
    """An AffinePath over a named schedule (see `flowmatch.schedules.make_schedule`)."""
    return AffinePath(schedules_lib.make_schedule(schedule, **schedule_kwargs))
