"""The one place where samplers are made: a method name and its settings -> a sampler.

    sampler = make_sampler(model, "rk4", num_steps=8)
    out = sampler(params, x0, key, cond)          # Samples(x, nfe, success)
    describe("dpmpp_2m")                           # order, NFE per step, when to use it

Methods (`METHODS`), by family (`family`), for any model (flow matching or DDPM, any
parametrisation):
    'ode'         every ODE integrator of `flowmatch.integrators` (fixed grids with num_steps,
                  adaptive pairs with rtol / atol)                                  (ode.py)
    'ancestral'   DDPM's ancestral sampler                                           (discrete.py)
    'ddim'        DDIM                                                               (discrete.py)
    'sde'         'sde_euler', 'sde_heun': the marginal-preserving SDE of the path    (sde.py)
    'dpm_solver'  'dpmpp_2m', 'dpmpp_3m', 'unipc': multistep solvers in log-SNR time (dpm_solver.py)
Every entry point (training's evaluation, the sample script, the comparison harness, the
FM-vs-DDPM benchmark, reflow, the diagnostics) gets its samplers here, so the same run, key and
settings give the same samples everywhere.  `describe` gives each method's order, network
evaluations per step and when to use it (the README's sampling table is made from it).
"""

from __future__ import annotations

import dataclasses
import numbers

from flowmatch import integrators
from flowmatch.sampling import chunks
from flowmatch.sampling import discrete
from flowmatch.sampling import dpm_solver
from flowmatch.sampling import ode
from flowmatch.sampling import sde
from flowmatch.sampling.model import ModelFn

DISCRETE_METHODS = ("ancestral", "ddim")
SDE_METHODS = sde.METHODS
DPM_SOLVER_METHODS = tuple(dpm_solver.METHODS)
METHODS = tuple(integrators.METHODS) + DISCRETE_METHODS + SDE_METHODS + DPM_SOLVER_METHODS
FAMILIES = ("ode", "ancestral", "ddim", "sde", "dpm_solver")
# Options each family takes besides num_steps (and rtol / atol for ODE methods).
OPTIONS = {
    "ode": ("time_grid", "max_steps"),
    "ancestral": ("skip", "spacing", "variance", "clip_denoised"),
    "ddim": ("eta", "skip", "spacing", "clip_denoised"),
    "sde": sde.OPTIONS,
    "dpm_solver": dpm_solver.OPTIONS,
}
_NEEDS_STEPS = ("sde", "dpm_solver")  # families with no default step count


def family(method: str) -> str:
    """One of FAMILIES; a ValueError listing the methods for an unknown name."""
    if method in DISCRETE_METHODS:
        return method
    if method in SDE_METHODS:
        return "sde"
    if method in DPM_SOLVER_METHODS:
        return "dpm_solver"
    if isinstance(method, str) and method in integrators.METHODS:
        return "ode"
    raise ValueError(f"unknown sampling method {method!r}; choose one of: {', '.join(METHODS)}")


def options(method: str) -> tuple:
    """The options `method` takes besides num_steps (and rtol / atol for ODE methods)."""
    return dpm_solver.UNIPC_OPTIONS if method == "unipc" else OPTIONS[family(method)]


def _check_steps(method, num_steps, model: ModelFn | None):
    kind = family(method)
    if num_steps is None:
        if kind in _NEEDS_STEPS:
            raise ValueError(f"{method} needs num_steps (a positive integer: its "
                             f"{'network evaluations' if kind == 'dpm_solver' else 'SDE steps'})")
        return
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if model is not None and discrete.is_discrete(model):
        T = model.path.schedule.num_timesteps
        if kind not in ("ode", "sde") and num_steps > T:
            raise ValueError(f"{method} takes at most the model's T={T} steps, got num_steps="
                             f"{num_steps}")


def check(method: str, *, num_steps=None, rtol=None, atol=None, model: ModelFn | None = None,
          **settings) -> str:
    """Validates a method and its settings on the host, before anything compiles; returns the
    family.  With `model`, also what depends on it (a DDPM model's T)."""
    kind = family(method)
    allowed = options(method)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"sampling method {method!r} takes no option(s) {unknown}; it takes: "
                         f"{', '.join(('num_steps', 'rtol', 'atol') if kind == 'ode' else ('num_steps',))}"
                         f", {', '.join(allowed)}")
    if kind == "ode":
        integrators.check_arguments(method, num_steps=num_steps, rtol=rtol, atol=atol,
                                    time_grid=settings.get("time_grid"),
                                    max_steps=settings.get("max_steps", 4096))
    elif rtol is not None or atol is not None:
        raise ValueError(f"{method} takes no rtol/atol (it is not an adaptive ODE solver); pass "
                         "num_steps")
    if kind == "sde":
        sde.check_options(method, **settings)
    elif kind == "dpm_solver":
        dpm_solver.check_options(method, **settings)
    _check_steps(method, num_steps, model)
    return kind


def make_sampler(model: ModelFn, method: str, *, num_steps: int | None = None,
                 rtol: float | None = None, atol: float | None = None, chunk_rows=...,
                 **settings):
    """sample(params, x0 [n, ...], key, cond=None) -> Samples, for `method` (see the module
    docstring and `describe(method)` for its options).  ODE methods: num_steps or rtol/atol;
    'ancestral': num_steps (None: all of a DDPM model's T steps); 'ddim': num_steps (default
    50); SDE and DPM-Solver methods: num_steps required.  Raises ValueError for unknown names or
    inconsistent settings before tracing anything.

    chunk_rows: the network runs in row chunks of about this many rows (None: the whole batch at
    once; default, `...`: the model's own `ModelFn.chunk_rows`, None unless set):
    the same samples to float round-off, faster on batches that leave the CPU's cache
    (`flowmatch.sampling.chunks`)."""
    if chunk_rows is not ...:
        chunks.check_chunk_rows(chunk_rows)
        model = dataclasses.replace(model, chunk_rows=chunk_rows)
    kind = check(method, num_steps=num_steps, rtol=rtol, atol=atol, model=model, **settings)
    if kind == "ode":
        return ode.ode_sampler(model, method=method, num_steps=num_steps, rtol=rtol, atol=atol,
                               **settings)
    if kind == "ancestral":
        return discrete.ancestral_sampler(model, num_steps=num_steps, **settings)
    if kind == "ddim":
        return discrete.ddim_sampler(model, num_steps=50 if num_steps is None else num_steps,
                                     **settings)
    if kind == "sde":
        return sde.sde_sampler(model, method=method, num_steps=num_steps, **settings)
    return dpm_solver.dpm_solver_sampler(model, method=method, num_steps=num_steps, **settings)


def resolve(defaults, method=None, num_steps=None, rtol=None, atol=None) -> dict:
    """Sampler settings: the explicit arguments, else the run's defaults (config.sampling: method,
    num_steps, rtol, atol).  With no steps or tolerances given, an adaptive method takes the
    defaults' rtol / atol when they are set and every other method except DDPM's two the
    defaults' num_steps; a DDPM sampler named explicitly keeps its own default step count."""
    method = method or defaults.method
    if num_steps is None and rtol is None and atol is None:
        tolerances = defaults.get("rtol") is not None or defaults.get("atol") is not None
        if method in integrators.ADAPTIVE_METHODS and tolerances:
            rtol, atol = defaults.rtol, defaults.atol
        elif family(method) not in DISCRETE_METHODS:
            num_steps = defaults.num_steps
    check(method, num_steps=num_steps, rtol=rtol, atol=atol)
    return dict(method=method, num_steps=num_steps, rtol=rtol, atol=atol)


def nfe(method: str, num_steps: int, model: ModelFn | None = None, **settings) -> int:
    """Network evaluations of a fixed-step sampler with num_steps steps (ODE methods: the
    integrator's count, + 1 for a model that denoises at t_end; SDE methods: see `sde.nfe`,
    settings may hold its last_step)."""
    kind = family(method)
    if kind == "ode":
        extra = 1 if model is not None and model.denoises else 0
        return integrators.nfe_for(method, num_steps) + extra
    if kind == "sde":
        return sde.nfe(method, num_steps, model, last_step=settings.get("last_step", "mean"))
    return int(num_steps)


def steps_for_budget(method: str, budget: int, model: ModelFn | None = None,
                     **settings) -> int | None:
    """The largest num_steps whose `nfe` fits the budget; None when one step already exceeds it."""
    if nfe(method, 1, model, **settings) > budget:
        return None
    lo, hi = 1, max(1, int(budget))
    while lo < hi:  # nfe grows with num_steps
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if nfe(method, mid, model, **settings) <= budget else (lo, mid - 1)
    return lo


def runnable_steps(method: str, budget: int, model: ModelFn | None = None) -> int | None:
    """`steps_for_budget`, or None when the model cannot take that many steps (a DDPM model's
    discrete-time samplers take at most its T): the steps of a budget's row in a comparison."""
    steps = steps_for_budget(method, budget, model)
    if steps is None:
        return None
    try:
        check(method, num_steps=steps, model=model)
    except ValueError:  # more steps than the model's T
        return None
    return steps


# -- what each method is -----------------------------------------------------------------------

_ODE_USE = {
    1: "the baseline; needs many steps on curved paths",
    2: "the usual choice at 10-50 NFE, and on nearly straight (reflowed) paths",
    3: "smooth fields at moderate budgets",
    4: "smooth fields at moderate budgets; large steps",
}
_DESCRIPTIONS = {
    "ancestral": dict(
        order=1, nfe_per_step=1, nfe="N (default: all T steps of a DDPM model)",
        stochastic=True, source="Ho et al. 2020, Algorithm 2 (respaced: Nichol & Dhariwal 2021)",
        use="DDPM's own sampler at hundreds to T steps; stochastic"),
    "ddim": dict(
        order=1, nfe_per_step=1, nfe="N (default 50)", stochastic=False,
        source="Song et al. 2021 (DDIM), eq. 12; eta > 0 adds noise",
        use="first-order deterministic DDPM baseline at 10-100 steps"),
    "sde_euler": dict(
        order=1, nfe_per_step=1, nfe="N (+1 with last_step='mean' on a DDPM model)",
        stochastic=True, source="Euler-Maruyama on dx = [v + g^2/2 score] dt + g dW (SiT, Ma et "
        "al. 2024, Sec. 3.4; Song et al. 2021)",
        use="stochastic sampling of any model (noise corrects accumulated errors); order is "
            "weak; 100+ steps"),
    "sde_heun": dict(
        order=2, nfe_per_step=2, nfe="2N - 1 (+1 with last_step='mean' on a DDPM model)",
        stochastic=True, source="stochastic Heun for additive noise (Kloeden & Platen 1992, "
        "Sec. 15.1; Rumelin 1982)",
        use="stochastic sampling with fewer steps than Euler-Maruyama (weak order 2)"),
    "dpmpp_2m": dict(
        order=2, nfe_per_step=1, nfe="N (the last is the data estimate)", stochastic=False,
        source="Lu et al. 2022, DPM-Solver++, Algorithm 2",
        use="fast deterministic sampling at 10-20 NFE, guided sampling; any model"),
    "dpmpp_3m": dict(
        order=3, nfe_per_step=1, nfe="N (the last is the data estimate)", stochastic=False,
        source="Lu et al. 2022, DPM-Solver++ multistep order 3 (authors' implementation)",
        use="fast unguided sampling at 10-20 NFE; any model"),
    "unipc": dict(
        order=3, nfe_per_step=1, nfe="N (the last is the data estimate)", stochastic=False,
        source="Zhao et al. 2023, UniPC-bh2 (UniP-2 predictor + UniC corrector)",
        use="fastest deterministic sampling at 5-10 NFE; any model (order option: 1-3, "
            "order + 1 with the corrector)"),
}


def _times(n: int) -> str:
    return "" if n == 1 else f"{n} "


def _ode_description(method: str) -> dict:
    tab = integrators.TABLEAUS.get(method)
    if tab is not None and tab.embedded:
        return dict(order=tab.order, nfe_per_step=tab.fixed_stages,
                    nfe=f"adaptive with rtol/atol ({tab.fixed_stages} per accepted or rejected "
                        f"step); or {tab.fixed_stages} per step on a grid (+1 for DDPM models)",
                    stochastic=False, source="integrators.TABLEAUS",
                    use="reference solutions and likelihoods at a tolerance; NFE not fixed")
    if tab is not None:
        return dict(order=tab.order, nfe_per_step=tab.fixed_stages,
                    nfe=f"{_times(tab.fixed_stages)}N (+1 for DDPM models)", stochastic=False,
                    source="integrators.TABLEAUS", use=_ODE_USE.get(tab.order, ""))
    multistep = getattr(integrators, "MULTISTEP", {}).get(method)  # Adams-Bashforth, if present
    return dict(order=getattr(multistep, "order", None), nfe_per_step=1,
                nfe="1 per step after a Runge-Kutta warm start (integrators.nfe_for; +1 for DDPM "
                    "models)", stochastic=False, source="integrators",
                use="one evaluation per step at the order of a Runge-Kutta method")


def describe(method: str) -> dict:
    """What `method` is: family, order (weak order for SDE methods), nfe_per_step, nfe (a
    formula in the number of steps N), num_steps ('required', 'optional' or 'or rtol/atol'),
    stochastic (uses the key), options, use (when to use it) and source."""
    kind = family(method)
    info = _ode_description(method) if kind == "ode" else dict(_DESCRIPTIONS[method])
    if kind == "ode":
        steps = "or rtol/atol" if method in integrators.ADAPTIVE_METHODS else "required"
    else:
        steps = "required" if kind in _NEEDS_STEPS else "optional"
    return dict(method=method, family=kind, num_steps=steps, options=options(method), **info)
