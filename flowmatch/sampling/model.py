"""A trained network as every sampler sees it: f(params, x, t, cond) plus what it predicts.

The network's raw output is a prediction of one kind (`paths.PREDICTIONS`: velocity, x1 = data,
x0 = noise, v) on an affine path; `paths.AffinePath` converts it to whatever a sampler needs: a
velocity for ODE solvers, the data estimate x1_hat and noise estimate x0_hat for DDPM's
samplers, a score for SDE solvers.  Flow-matching and DDPM models differ only in their path, their
prediction and `t_end`, the last time they were trained at (1 for flow matching; 1 - 1/T for
DDPM, whose samplers stop there and denoise with one more evaluation).

Classifier-free guidance (Ho & Salimans 2021) lives in `ModelFn.predict`, which every sampler
calls (through `velocity_fn`, `endpoints`, `denoise` or directly), so every sampler of the
registry, present and future, is guided the same way:

    pred = (1 - w) pred(x, t, null) + w pred(x, t, cond)   (= pred_u + w (pred_c - pred_u))

over the whole prediction (every channel), with w = guidance_scale inside the guidance interval
[t_lo, t_hi] (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample
and distribution quality") and w = 1, the plain conditional model, outside it.  w = 1 is the
conditional model and w = 0 the unconditional one, exactly: the two-product form above is exact
at both ends.  Guiding the raw prediction is guiding the velocity, the data and noise estimates and
the score: at fixed (x, t) each of them is a(t) x + b(t) pred (`paths.endpoints`, `from_endpoints`:
affine in the prediction, with coefficients that do not depend on it), and an affine map commutes
with a combination whose weights (1 - w) + w sum to 1: a x + b ((1 - w) p_u + w p_c) =
(1 - w)(a x + b p_u) + w (a x + b p_c).  The two passes run as one call of the network on the
batch [x, x] with labels [cond, null], so a guided evaluation costs two network passes:
`passes_per_evaluation` is 2 and a sampler's network passes are `nfe x 2` (`network_passes`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import jax.numpy as jnp

from flowmatch import paths as paths_lib
from flowmatch.sampling import chunks

Apply = Callable[[Any, jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """apply(params, x [B, ...], t [B], cond [B] int32 or None) -> prediction [B, ...].

    path: the affine path the network was trained on; prediction: what it predicts, in the path's
    vocabulary; t_end: the last training time (samplers stop there and, when it is < 1, take the
    data estimate there as the sample: one more evaluation).

    Guidance (see the module docstring): guidance_scale w (None: off, one pass per evaluation);
    guidance_interval (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, where w applies (None: at every
    time); null_label: the label the network was trained to read as "no class" (a conditional
    model's num_classes), required with guidance.

    chunk_rows: the network runs on batches of more rows in chunks of about this many
    (`chunks.apply_rows`: same results to float round-off; e.g. `chunks.CHUNK_ROWS`); None (the
    default) evaluates the whole batch at once.  Which is faster depends on the network and the
    CPU: on the project's 2-core Xeon, 100,000 samples of the default 3 x 256 network took 11.8 s
    in chunks of 10,000 rows against 14.3 s whole, torchcfm's 64 x 3 network 1.47 s against
    1.30 s (docs/sampling.md, "Speed"; the training evaluation's config.eval.chunk_rows).
    `make_sampler(..., chunk_rows=...)` sets it.

    scalar_time: apply also takes a scalar t, meaning every row at that time; an unguided
    evaluation at one time then passes it as a scalar, so a network can do its time's work once
    for all rows (flowmatch's MLP embeds it once: the default 3 x 256 network's forward pass
    on 10,000 rows took 12.4 ms instead of 20.0 ms, the same outputs, docs/sampling.md "Speed").
    False (the default): t always reaches apply as [B].
    """

    apply: Apply
    path: paths_lib.AffinePath
    prediction: str = "velocity"
    t_end: float = 1.0
    guidance_scale: float | None = None
    guidance_interval: tuple[float, float] | None = None
    null_label: int | None = None
    chunk_rows: int | None = None
    scalar_time: bool = False

    def __post_init__(self):
        chunks.check_chunk_rows(self.chunk_rows)
        paths_lib.check_prediction(self.prediction)
        if not 0.0 < self.t_end <= 1.0:
            raise ValueError(f"t_end must be in (0, 1], got {self.t_end!r}")
        check_guidance(self.guidance_scale, self.guidance_interval, self.null_label)
        if self.guidance_interval is not None:
            object.__setattr__(self, "guidance_interval",
                               tuple(float(v) for v in self.guidance_interval))

    @classmethod
    def from_objective(cls, apply: Apply, objective, **options) -> "ModelFn":
        """The model of a training objective (`flowmatch.objectives`): its path, its
        parametrisation and its t_end; options: guidance_scale, guidance_interval, null_label,
        chunk_rows, scalar_time."""
        return cls(apply=apply, path=objective.path, prediction=objective.parametrisation,
                   t_end=objective.t_end, **options)

    @property
    def guided(self) -> bool:
        return self.guidance_scale is not None

    @property
    def passes_per_evaluation(self) -> int:
        """Network passes of one evaluation: 2 when guided (conditional + unconditional), else 1."""
        return 2 if self.guided else 1

    def network_passes(self, nfe):
        """The network passes of a sampler that made `nfe` evaluations: nfe x passes_per_evaluation
        (each guided evaluation is one call on a doubled batch)."""
        return nfe * self.passes_per_evaluation

    @property
    def denoises(self) -> bool:
        """True when sampling ends with a denoising evaluation at t_end < 1."""
        return self.t_end < 1.0

    def predict(self, params, x, t, cond=None):
        """(prediction [B, ...] in x's dtype, t broadcast to [B]) at a scalar (or [B]) time t.

        Guided (guidance_scale set): one network call on [x, x] with labels [cond, null] and
        times [t, t], combined as (1 - w) pred_u + w pred_c over the whole prediction, w =
        guidance_scale where t lies in guidance_interval, else 1.  cond [B] int is then required.
        """
        t = jnp.asarray(t, x.dtype)
        tb = jnp.broadcast_to(t, (x.shape[0],))
        if not self.guided:
            t_in = t if self.scalar_time else tb
            return self._apply(params, x, t_in, cond).astype(x.dtype), tb
        if cond is None:
            raise ValueError("guidance (guidance_scale set) needs class labels: pass cond [B]")
        cond = jnp.broadcast_to(jnp.asarray(cond), (x.shape[0],))
        null = jnp.full_like(cond, self.null_label)
        both = self._apply(params, jnp.concatenate([x, x]), jnp.concatenate([tb, tb]),
                          jnp.concatenate([cond, null])).astype(x.dtype)
        pred_c, pred_u = both[:x.shape[0]], both[x.shape[0]:]
        w = jnp.full_like(tb, self.guidance_scale)
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            w = jnp.where((tb >= lo) & (tb <= hi), w, jnp.ones_like(w))
        w = paths_lib.expand(w, x)
        return (1 - w) * pred_u + w * pred_c, tb

    def _apply(self, params, x, t, cond):
        """The network on [B, ...] rows, in chunks of chunk_rows (`chunks.apply_rows`)."""
        return chunks.apply_rows(self.apply, params, x, t, cond, self.chunk_rows)

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


def check_guidance(scale, interval, null_label) -> None:
    """ValueError unless scale is None or a finite number, interval None or (t_lo, t_hi) with
    0 <= t_lo <= t_hi <= 1 (and only with a scale), and null_label an int >= 0 when guided."""
    if scale is not None and not (isinstance(scale, numbers.Real) and not isinstance(scale, bool)
                                  and math.isfinite(scale)):
        raise ValueError(f"guidance_scale must be a finite number (1 = the conditional model, 0 "
                         f"= the unconditional one), got {scale!r}")
    if interval is not None:
        if scale is None:
            raise ValueError(f"guidance_interval={interval!r} is set without guidance_scale; set "
                             "the scale it applies, or drop the interval")
        ok = (isinstance(interval, (tuple, list)) and len(interval) == 2
              and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in interval))
        if not ok or not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(f"guidance_interval must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= "
                             f"1 (t = 0 noise, t = 1 data), got {interval!r}")
    if scale is not None and (isinstance(null_label, bool)
                              or not isinstance(null_label, numbers.Integral) or null_label < 0):
        raise ValueError(f"guidance needs the model's null label (its num_classes, an int >= 0), "
                         f"got null_label={null_label!r}")


def velocity_fn(apply_fn: Apply, params: Any, objective, cond=None) -> Callable:
    """v(t, x) of a trained network for an integrator: its prediction converted to a velocity.

    apply_fn(params, x, t, cond) -> prediction (of `objective.parametrisation`); t: a scalar,
    broadcast to the batch; x: [B, ...].  Any objective (flow matching or DDPM).
    """
    return ModelFn.from_objective(apply_fn, objective).velocity_fn(params, cond)
