"""The one place where samplers are made: a method name and its settings -> a sampler.

    sampler = make_sampler(model, "rk4", num_steps=8)
    out = sampler(params, x0, key, cond)          # Samples(x, nfe, success)

Methods (`METHODS`): every ODE integrator of `flowmatch.integrators` (fixed grids with num_steps,
adaptive pairs with rtol / atol), and DDPM's 'ancestral' and 'ddim' samplers, for any model (flow
matching or DDPM, any parametrisation).  Every entry point (training's evaluation, the sample
script, the comparison harness, the FM-vs-DDPM benchmark, reflow, the diagnostics) gets its
samplers here, so the same run, key and settings give the same samples everywhere.
"""

from __future__ import annotations

import numbers

from flowmatch import integrators
from flowmatch.sampling import discrete
from flowmatch.sampling import ode
from flowmatch.sampling.model import ModelFn

DISCRETE_METHODS = ("ancestral", "ddim")
METHODS = tuple(integrators.METHODS) + DISCRETE_METHODS
# Options each family takes besides num_steps (and rtol / atol for ODE methods).
OPTIONS = {
    "ode": ("time_grid", "max_steps"),
    "ancestral": ("skip", "spacing", "variance", "clip_denoised"),
    "ddim": ("eta", "skip", "spacing", "clip_denoised"),
}


def family(method: str) -> str:
    """'ode', 'ancestral' or 'ddim'; a ValueError listing the methods for an unknown name."""
    if method in DISCRETE_METHODS:
        return method
    if isinstance(method, str) and method in integrators.METHODS:
        return "ode"
    raise ValueError(f"unknown sampling method {method!r}; choose one of: {', '.join(METHODS)}")


def _check_steps(method, num_steps, model: ModelFn | None):
    if num_steps is None:
        return
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if model is not None and discrete.is_discrete(model):
        T = model.path.schedule.num_timesteps
        if family(method) != "ode" and num_steps > T:
            raise ValueError(f"{method} takes at most the model's T={T} steps, got num_steps="
                             f"{num_steps}")


def check(method: str, *, num_steps=None, rtol=None, atol=None, model: ModelFn | None = None,
          **options) -> str:
    """Validates a method and its settings on the host, before anything compiles; returns the
    family.  With `model`, also what depends on it (a DDPM model's T)."""
    kind = family(method)
    unknown = sorted(set(options) - set(OPTIONS[kind]))
    if unknown:
        raise ValueError(f"sampling method {method!r} takes no option(s) {unknown}; it takes: "
                         f"{', '.join(('num_steps', 'rtol', 'atol') if kind == 'ode' else ('num_steps',))}"
                         f", {', '.join(OPTIONS[kind])}")
    if kind == "ode":
        integrators.check_arguments(method, num_steps=num_steps, rtol=rtol, atol=atol,
                                    time_grid=options.get("time_grid"),
                                    max_steps=options.get("max_steps", 4096))
    elif rtol is not None or atol is not None:
        raise ValueError(f"{method} takes no rtol/atol (it is not an ODE solver); pass num_steps")
    _check_steps(method, num_steps, model)
    return kind


def make_sampler(model: ModelFn, method: str, *, num_steps: int | None = None,
                 rtol: float | None = None, atol: float | None = None, **options):
    """sample(params, x0 [n, ...], key, cond=None) -> Samples, for `method` (see the module
    docstring).  ODE methods: num_steps or rtol/atol (options time_grid, max_steps);
    'ancestral': num_steps (None: all of a DDPM model's T steps), skip, spacing, variance,
    clip_denoised; 'ddim': num_steps (default 50), eta, skip, spacing, clip_denoised.  Raises
    ValueError for unknown names or inconsistent settings before tracing anything."""
    kind = check(method, num_steps=num_steps, rtol=rtol, atol=atol, model=model, **options)
    if kind == "ode":
        return ode.ode_sampler(model, method=method, num_steps=num_steps, rtol=rtol, atol=atol,
                               **options)
    if kind == "ancestral":
        return discrete.ancestral_sampler(model, num_steps=num_steps, **options)
    return discrete.ddim_sampler(model, num_steps=50 if num_steps is None else num_steps,
                                 **options)


def resolve(defaults, method=None, num_steps=None, rtol=None, atol=None) -> dict:
    """Sampler settings: the explicit arguments, else the run's defaults (config.sampling: method,
    num_steps, rtol, atol).  With no steps or tolerances given, an adaptive method takes the
    defaults' rtol / atol when they are set and every other method the defaults' num_steps; a
    DDPM sampler named explicitly keeps its own default step count."""
    method = method or defaults.method
    if num_steps is None and rtol is None and atol is None:
        tolerances = defaults.get("rtol") is not None or defaults.get("atol") is not None
        if method in integrators.ADAPTIVE_METHODS and tolerances:
            rtol, atol = defaults.rtol, defaults.atol
        elif family(method) == "ode":
            num_steps = defaults.num_steps
    check(method, num_steps=num_steps, rtol=rtol, atol=atol)
    return dict(method=method, num_steps=num_steps, rtol=rtol, atol=atol)


def nfe(method: str, num_steps: int, model: ModelFn | None = None) -> int:
    """Network evaluations of a fixed-step sampler with num_steps steps (ODE methods: the
    integrator's count, + 1 for a model that denoises at t_end)."""
    if family(method) != "ode":
        return int(num_steps)
    extra = 1 if model is not None and model.denoises else 0
    return integrators.nfe_for(method, num_steps) + extra


def steps_for_budget(method: str, budget: int, model: ModelFn | None = None) -> int | None:
    """The largest num_steps whose `nfe` fits the budget; None when one step already exceeds it."""
    if nfe(method, 1, model) > budget:
        return None
    lo, hi = 1, max(1, int(budget))
    while lo < hi:  # nfe grows with num_steps
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if nfe(method, mid, model) <= budget else (lo, mid - 1)
    return lo
