"""Training objectives as pure losses, and the time distributions they sample.

An objective sees the network only as `predict(x_t, t) -> prediction` (the trainer closes over
parameters, labels and dropout keys), so the same loss serves every model and every form of
parallelism.  `loss` returns (scalar, aux) with aux a dict of scalars for logging.

`label_dropout` (both objectives) is the probability that a row of a class-conditional model
trains with the null label instead of its own (classifier-free guidance, Ho & Salimans 2021):
the trainer draws it per row (`flowmatch.training.step.make_draw`), the objective only
carries and checks the setting.

Both objectives map a uniform to a row's training time with `times_from_uniform(u)` (flow
matching: t in [t_min, t_max]; DDPM: the step index i) and take N(0, I) noise; `loss` draws both
from its key unless it is given them (`x0=`, `times=`), which is how the trainer passes the
draws it makes once per step over the global batch (`flowmatch.training.step.make_draw`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from flowmatch import checks
from flowmatch import paths as paths_lib
from flowmatch import rng
from flowmatch import schedules as schedules_lib

TIME_SAMPLERS = ("uniform", "logit_normal", "zero")

Predict = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def sample_time(key, n: int, kind: str = "uniform", *, loc: float = 0.0, scale: float = 1.0,
                t_min: float = 0.0, t_max: float = 1.0, dtype=jnp.float32):
    """n training times in [t_min, t_max]: [n].

    'uniform': U[0, 1).  'logit_normal': sigmoid(loc + scale * N(0, 1)) (Esser et al. 2024), which
    puts more weight on intermediate times.  Either is then mapped affinely onto [t_min, t_max].
    'zero': every time is t_min: one-step distillation (Liu et al. 2023), which on paired data
    and the cond-OT path with sigma_min = 0 fits v(x0, t_min = 0) = x1 - x0 (one Euler step).
    """
    if kind == "uniform":
        u = jax.random.uniform(key, (n,), dtype)
    elif kind == "logit_normal":
        u = jax.nn.sigmoid(loc + scale * jax.random.normal(key, (n,), dtype))
    elif kind == "zero":
        u = jnp.zeros((n,), dtype)
    else:
        raise ValueError(
            f"unknown time sampling {kind!r}; choose one of: {', '.join(TIME_SAMPLERS)} "
            "(config key: objective.time_sampling)")
    return t_min + (t_max - t_min) * u


def check_label_dropout(p) -> float:
    """p as a float in [0, 1), else ValueError naming the config key."""
    try:
        return checks.real("label_dropout", p, 0.0, 1.0, hi_open=True)
    except ValueError as e:
        raise ValueError(f"{e} (config key: objective.label_dropout, the probability a row "
                         "trains with the null label; 0 = off)") from None


@dataclasses.dataclass(frozen=True)
class FlowMatching:
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2023; Albergo & Vanden-Eijnden
    2023).

    loss = E_{t, (x0, x1)} || f(x_t, t) - target ||^2, averaged over elements, where target is
    dx_t (prediction='velocity'), x1 ('x1'), x0 ('x0') or v ('v', see flowmatch.paths), and the pairs are x0 ~ N(0, I)
    independent of x1 ~ data unless the caller passes x0 (a coupling, another source p0, pairs
    from a file).
    """

    path: paths_lib.AffinePath
    prediction: str = "velocity"
    time_sampling: str = "uniform"
    logit_normal_loc: float = 0.0
    logit_normal_scale: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    label_dropout: float = 0.0

    def __post_init__(self):
        paths_lib.check_prediction(self.prediction)
        check_label_dropout(self.label_dropout)
        if self.time_sampling not in TIME_SAMPLERS:
            raise ValueError(
                f"unknown time sampling {self.time_sampling!r}; choose one of: "
                f"{', '.join(TIME_SAMPLERS)} (config key: objective.time_sampling)")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(
                f"need 0 <= objective.t_min < objective.t_max <= 1, got {self.t_min}, {self.t_max}")

    def sample_time(self, key, n: int, dtype=jnp.float32):
        return sample_time(key, n, self.time_sampling, loc=self.logit_normal_loc,
                           scale=self.logit_normal_scale, t_min=self.t_min, t_max=self.t_max,
                           dtype=dtype)

    def times_from_uniform(self, u):
        """Training times t (float32, u's shape) of `time_sampling` from u ~ U[0, 1) by the
        inverse CDF: uniform t_min + (t_max - t_min) u; logit-normal the same of
        sigmoid(loc + scale Phi^{-1}(u)); zero t_min."""
        u = jnp.asarray(u, jnp.float32)
        if self.time_sampling == "uniform":
            v = u
        elif self.time_sampling == "logit_normal":
            z = rng.normal_from_uniform(u)
            v = jax.nn.sigmoid(self.logit_normal_loc + self.logit_normal_scale * z)
        else:
            v = jnp.zeros_like(u)
        return self.t_min + (self.t_max - self.t_min) * v

    def loss(self, predict: Predict, x1, key, x0=None, times=None):
        """Monte-Carlo flow-matching loss on a batch x1: [B, ...].  Returns (loss, aux).

        x0: [B, ...] the source samples paired with x1 (from a coupling, another source
        distribution or a file of pairs); None draws x0 ~ N(0, I) from `key`.  times: [B] the
        rows' t (`times_from_uniform`); None draws them.  t is drawn from the first half of
        jax.random.split(key) and x0 from the second (`draw_noise`), so passing
        x0 = draw_noise(key, x1) changes nothing.
        """
        key_t, key_x0 = jax.random.split(key)
        if times is None:
            t = self.sample_time(key_t, x1.shape[0], x1.dtype)
        else:
            t = jnp.asarray(times).astype(x1.dtype)
        if x0 is None:
            x0 = jax.random.normal(key_x0, x1.shape, x1.dtype)
        elif x0.shape != x1.shape:
            raise ValueError(f"x0 must have the shape of x1 {x1.shape}, got {x0.shape}")
        x0 = x0.astype(x1.dtype)
        ps = self.path.sample(x0, x1, t)
        pred = predict(ps.x_t, t)
        err = jnp.square(pred.astype(jnp.float32) - self.path.target(ps, self.prediction))
        loss = jnp.mean(err)
        return loss, {"loss": loss}

    @staticmethod
    def draw_noise(key, x1):
        """The x0 ~ N(0, I) that `loss(predict, x1, key)` draws itself: [B, ...] like x1."""
        return jax.random.normal(jax.random.split(key)[1], x1.shape, x1.dtype)

    @property
    def parametrisation(self) -> str:
        """What the network predicts, in the path's vocabulary (here the same as prediction)."""
        return self.prediction

    @property
    def t_end(self) -> float:
        """Samplers integrate up to t = 1 (data)."""
        return 1.0

    def velocity(self, pred, x_t, t):
        """The velocity implied by this objective's prediction (for ODE sampling)."""
        return self.path.velocity(pred, x_t, t, self.prediction)


# DDPM's published parametrisation names (Ho et al.'s epsilon, x0 = the clean data, Salimans & Ho's
# v) in the path's vocabulary, where x0 is the noise and x1 the data.  Only the config key
# objective.prediction of a DDPM run uses DDPM's names; everything below it uses the path's.
DDPM_PREDICTIONS = {"eps": "x0", "x0": "x1", "v": "v"}


@dataclasses.dataclass(frozen=True)
class DDPM:
    """The DDPM baseline (Ho et al. 2020, L_simple) as an objective on an affine path.

    The path is `AffinePath(DiscreteVPSchedule)` of the beta schedule: step i of T sits at time
    t_i = 1 - (i + 1) / T with alpha = sqrt(abar_i), sigma = sqrt(1 - abar_i) (see
    `flowmatch.schedules.DiscreteVPSchedule`), so DDPM's forward process is this path at those
    times and a DDPM model is a model of the path like any flow-matching model.

        loss = E_{i ~ U{0..T-1}, x0 ~ N(0, I), x1 ~ data} || f(x_{t_i}, t_i) - target ||^2

    averaged over elements, with the target of `parametrisation`: the noise x0 (DDPM's
    prediction='eps'), the data x1 ('x0', DDPM's name for the clean sample) or v ('v').  Sampling
    (`flowmatch.sampling`) integrates or steps up to the last training time `t_end` = t_0 and
    denoises there with one evaluation.
    """

    beta_schedule: str = "linear"
    num_timesteps: int = 1000
    prediction: str = "eps"
    label_dropout: float = 0.0
    schedule: schedules_lib.DiscreteVPSchedule = dataclasses.field(init=False, repr=False,
                                                                   compare=False)
    path: paths_lib.AffinePath = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        paths_lib.check_prediction(self.prediction, tuple(DDPM_PREDICTIONS))
        check_label_dropout(self.label_dropout)
        s = schedules_lib.discrete_vp(self.beta_schedule, self.num_timesteps)
        object.__setattr__(self, "schedule", s)
        object.__setattr__(self, "path", paths_lib.AffinePath(s))

    @property
    def parametrisation(self) -> str:
        """What the network predicts, in the path's vocabulary ('x0', 'x1' or 'v')."""
        return DDPM_PREDICTIONS[self.prediction]

    @property
    def t_end(self) -> float:
        """The last training time, t_0 = 1 - 1/T: samplers stop there and denoise."""
        return float(self.schedule.time(0))

    def times_from_uniform(self, u):
        """Training steps i ~ U{0 .. T-1} (int32, u's shape) from u ~ U[0, 1): floor(u T);
        step i sits at t_i = 1 - (i + 1) / T."""
        T = self.schedule.num_timesteps
        return jnp.minimum(jnp.floor(jnp.asarray(u, jnp.float32) * T), T - 1).astype(jnp.int32)

    def loss(self, predict: Predict, x1, key, x0=None, times=None):
        """Monte-Carlo loss on clean data x1: [B, ...] (one step i and noise per example).

        x0 (the noise) may be passed like flow matching's; None draws it from the second half of
        jax.random.split(key) (the first draws the steps).  times: [B] the rows' steps i
        (`times_from_uniform`); None draws them.  Returns (loss, aux).
        """
        s = self.schedule
        key_i, key_x0 = jax.random.split(key)
        if times is None:
            i = jax.random.randint(key_i, (x1.shape[0],), 0, s.num_timesteps)
        else:
            i = jnp.asarray(times, jnp.int32)
        if x0 is None:
            x0 = jax.random.normal(key_x0, x1.shape, x1.dtype)
        t = s.time(i).astype(x1.dtype)
        coeffs = schedules_lib.ScheduleOutput(
            *(paths_lib.expand(v, x1) for v in s.at_steps(i, x1.dtype)))
        ps = self.path.point(coeffs, x0, x1, t)
        pred = predict(ps.x_t, t)
        target = self.path.target(ps, self.parametrisation)
        loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))
        return loss, {"loss": loss}

    def velocity(self, pred, x_t, t):
        """The probability-flow velocity of a prediction at continuous t [B] or scalar."""
        return self.path.velocity(pred, x_t, t, self.parametrisation)


OBJECTIVES = ("flow_matching", "ddpm")


def objective_class(name: str):
    """The dataclass of a named objective: FlowMatching or DDPM."""
    classes = {"flow_matching": FlowMatching, "ddpm": DDPM}
    if name not in classes:
        raise ValueError(
            f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)} "
            "(config key: objective.name)")
    return classes[name]


def objective_fields(name: str) -> set:
    """The settings a named objective takes (besides the path of flow matching)."""
    return {f.name for f in dataclasses.fields(objective_class(name)) if f.init} - {"path"}


def build_objective(name: str, *, path: paths_lib.AffinePath, **kwargs):
    """Builds a named objective from its settings.

    'flow_matching' trains on `path`; 'ddpm' (the discrete-time baseline) builds its own
    variance-preserving path from beta_schedule and num_timesteps and ignores `path`.
    """
    cls = objective_class(name)
    allowed = objective_fields(name)
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(
            f"objective {name!r} has no setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if cls is FlowMatching:
        return FlowMatching(path=path, **kwargs)
    return cls(**kwargs)
