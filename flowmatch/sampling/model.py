"""A trained network as every sampler sees it: f(params, x, t, cond) plus what it predicts.

The network's raw output is a prediction of one kind (`paths.PREDICTIONS`: velocity, x1 = data,
x0 = noise, v) on an affine path; `paths.AffinePath` converts it to whatever a sampler needs: a
velocity for ODE solvers, the data estimate x1_hat and noise estimate x0_hat for DDPM's
samplers, a score for SDE solvers.  Flow-matching and DDPM models differ only in their path, their
prediction and `t_end`, the last time they were trained at (1 for flow matching; 1 - 1/T for
DDPM, whose samplers stop there and denoise with one more evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from flowmatch import paths as paths_lib

Apply = Callable[[Any, jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """apply(params, x [B, ...], t [B], cond [B] int32 or None) -> prediction [B, ...].

    path: the affine path the network was trained on; prediction: what it predicts, in the path's
    vocabulary; t_end: the last training time (samplers stop there and, when it is < 1, take the
    data estimate there as the sample: one more evaluation).
    """

    apply: Apply
    path: paths_lib.AffinePath
    prediction: str = "velocity"
    t_end: float = 1.0

    def __post_init__(self):
        paths_lib.check_prediction(self.prediction)
        if not 0.0 < self.t_end <= 1.0:
            raise ValueError(f"t_end must be in (0, 1], got {self.t_end!r}")

    @classmethod
    def from_objective(cls, apply: Apply, objective) -> "ModelFn":
        """The model of a training objective (`flowmatch.objectives`): its path, its
        parametrisation and its t_end."""
        return cls(apply=apply, path=objective.path, prediction=objective.parametrisation,
                   t_end=objective.t_end)

    @property
    def denoises(self) -> bool:
        """True when sampling ends with a denoising evaluation at t_end < 1."""
        return self.t_end < 1.0

    def predict(self, params, x, t, cond=None):
        """The network's prediction at a scalar (or [B]) time t, in x's dtype: [B, ...]."""
        tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        return self.apply(params, x, tb, cond).astype(x.dtype), tb

    def velocity_fn(self, params, cond=None) -> Callable:
        """v(t, x) for an ODE integrator: the prediction converted to a velocity."""

        def v(t, x):
            pred, tb = self.predict(params, x, t, cond)
            return self.path.velocity(pred, x, tb, self.prediction)

        return v

    def endpoints(self, params, x, t, cond=None):
        """(x1_hat, x0_hat): the data and noise the network sees in x at time t."""
        pred, tb = self.predict(params, x, t, cond)
        return self.path.to_endpoints(pred, x, tb, self.prediction)

    def denoise(self, params, x, cond=None):
        """The data estimate at t_end: what a sampler returns when t_end < 1 (one evaluation)."""
        return self.endpoints(params, x, self.t_end, cond)[0]


def velocity_fn(apply_fn: Apply, params: Any, objective, cond=None) -> Callable:
    """v(t, x) of a trained network for an integrator: its prediction converted to a velocity.

    apply_fn(params, x, t, cond) -> prediction (of `objective.parametrisation`); t: a scalar,
    broadcast to the batch; x: [B, ...].  Any objective (flow matching or DDPM).
    """
    return ModelFn.from_objective(apply_fn, objective).velocity_fn(params, cond)
