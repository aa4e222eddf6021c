"""Sampling: trained networks -> samples, through ONE sampler registry.

    model = ModelFn.from_objective(apply_fn, objective)     # what the network predicts, on which path
    sampler = make_sampler(model, "heun", num_steps=50)       # or "dopri5", rtol=..., "ancestral",
                                                              # "ddim", "sde_euler", "dpmpp_2m", ...
    draw = Chunked(sampler, source.sample, num_samples, chunk_size)
    out = draw(params, key, labels)                            # Samples(x, nfe, success)

`ModelFn` (model.py) turns a network's prediction into a velocity, data and noise estimates or a
score through `flowmatch.paths`; `make_sampler` (registry.py) is the only place samplers are
built: ODE solves of any integrator (ode.py), DDPM's ancestral and DDIM samplers (discrete.py),
SDE samplers (sde.py) and the multistep log-SNR solvers DPM-Solver++ and UniPC (dpm_solver.py,
grids from logsnr.py), for flow-matching and DDPM models alike; `describe(method)` says what each
is; `make_draw` / `Chunked` (draw.py) draw the source samples and run a sampler with one key
layout.  Nothing here knows about training or devices.
"""

from flowmatch.sampling.discrete import VARIANCES
from flowmatch.sampling.discrete import ancestral_sampler
from flowmatch.sampling.discrete import ddim_sampler
from flowmatch.sampling.dpm_solver import dpm_solver_sampler
from flowmatch.sampling.draw import Chunked
from flowmatch.sampling.draw import make_draw
from flowmatch.sampling.model import ModelFn
from flowmatch.sampling.model import velocity_fn
from flowmatch.sampling.ode import ode_sampler
from flowmatch.sampling.records import Samples
from flowmatch.sampling.registry import DISCRETE_METHODS
from flowmatch.sampling.registry import DPM_SOLVER_METHODS
from flowmatch.sampling.registry import FAMILIES
from flowmatch.sampling.registry import METHODS
from flowmatch.sampling.registry import SDE_METHODS
from flowmatch.sampling.registry import check
from flowmatch.sampling.registry import describe
from flowmatch.sampling.registry import family
from flowmatch.sampling.registry import make_sampler
from flowmatch.sampling.registry import nfe
from flowmatch.sampling.registry import options
from flowmatch.sampling.registry import resolve
from flowmatch.sampling.registry import runnable_steps
from flowmatch.sampling.registry import steps_for_budget
from flowmatch.sampling.sde import DIFFUSIONS
from flowmatch.sampling.sde import sde_sampler

__all__ = [
    "Chunked", "DIFFUSIONS", "DISCRETE_METHODS", "DPM_SOLVER_METHODS", "FAMILIES", "METHODS",
    "ModelFn", "SDE_METHODS", "Samples", "VARIANCES", "ancestral_sampler", "check", "ddim_sampler",
    "describe", "dpm_solver_sampler", "family", "make_draw", "make_sampler", "nfe", "ode_sampler",
    "options", "resolve", "runnable_steps", "sde_sampler", "steps_for_budget", "velocity_fn",
]
