"""Integrator comparison on a trained run: sample quality and integration error against NFE.

Every method samples the restored run with the sampler registry (`sampling.make_sampler`: an ODE
integrator from t = 0 to the model's t_end, then a DDPM model's denoising evaluation; or any
other registry method: 'dpmpp_2m', 'dpmpp_3m', 'unipc', 'sde_euler', 'sde_heun', 'ancestral',
'ddim'), all from the same source samples x0:
  fixed grid: for each NFE budget, the largest num_steps whose NFE fits
    (`sampling.steps_for_budget`; a pair where one step already costs more is skipped);
  adaptive (bosh3, dopri5, tsit5): also a sweep over tolerances rtol = atol, at their actual NFE.
A tight-tolerance reference solve from the same x0 (dopri5, rtol = atol = 1e-7) gives
  traj_error = sqrt(mean_i |x_i - x_ref_i|^2),
the integrator's own error with the model's error taken out (for the stochastic methods, SDE
and ancestral, the distance of its samples from the ODE's, noise included).  Sample quality:
for 2-D data the tv / w2 of `metrics.metrics_2d` against fresh reference data; for images only
when a `quality_fn` is passed (image rows otherwise carry traj_error only, and the training data are
never read).  Optionally (2-D, nll=True) the mean NLL of fresh data points with the same
integrator.

Path metrics of every solve (`flowmatch.diagnostics.straightness`): Liu et al.'s straightness, the
path energy ratio PE / E||x(t_end) - x(0)||^2 and, for 2-D data, Tong et al.'s normalised path
energy, from the same method and steps (or tolerance) with the path energy in the state
(`straightness.solve_with_energy`; ODE integrators only; None for the other methods, which follow
no single ODE solve; the NLL rows likewise).  A fixed-grid row's timed solve carries it itself (its
samples are the plain solve's; 0.998-1.013x its time); an adaptive row takes a second, untimed
solve whose step control also measures the energy, so that a loose tolerance's energy has an error
estimate of its own (which also bounds the effect of dopri5's negative weight b_5); the reference
row's timed solve carries its energy on its own steps, controlled on x alone at reference_tol
(1e-7): on the digits run its straightness and energy ratio came within 6.8e-6 and 8.5e-7
(relative) of a solve with the energy under control at 1e-7, where the earlier second solve at 1e-6
was within 5.2e-5 and 6.3e-6, and the comparison (heun, rk4 at 8 and 64 NFE, 200 samples) took
89.1 s instead of 133.4 s; the quickstart run's default comparison 154.6 s instead of 161.7 s (196.8 s
with every row solved twice; docs/results/compare_energy_fused).  Exposure-bias corrections
(`flowmatch.diagnostics.exposure`: 'time_shift', 'eps_scale=LAM') add rows per fixed-grid ODE
solve, marked in the `correction` column ('none' otherwise): eps_scale samples the corrected model
with the registry's sampler, time_shift uses `exposure.time_shifted_sampler`.

Random streams (`rng.seed_stream(seed, name)`), independent of each other and of other seeds:
  "samples"       x0, in the layout of `flowmatch.experiments.sample.draw` (chunk c of chunk_size
                  draws from fold_in(key, c)): a fixed-grid row's samples are the samples
                  scripts/sample.py gives for the same run, seed, chunk size, method and steps;
                  a stochastic method's noise of chunk c is rng.stream(fold_in(key, c),
                  "sampler"), as there, so its samples are scripts/sample.py's too;
  "reference", "reference_w2"   fresh data for tv (as scripts/sample.py) and for w2;
  "nll_data", "npe_data"        the data points of the NLL rows and of npe's W2^2 estimate;
  "time_shift_calibration", "time_shift_pilot"   time_shift's calibration pairs and pilot noise.

    rows = compare_integrators("runs/checkerboard", "runs/checkerboard/compare")

writes integrators.json, integrators.csv (the rows) and integrators.png (panels against NFE,
one line per method: each metric, traj_error and wall time), and prints the table.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from flowmatch import checks
from flowmatch import fileio
from flowmatch import integrators
from flowmatch import likelihood
from flowmatch import metrics as metrics_lib
from flowmatch import plotting
from flowmatch import rng
from flowmatch import sampling
from flowmatch import training
from flowmatch.checks import ConfigError
from flowmatch.diagnostics import exposure
from flowmatch.diagnostics import runs as diag_runs
from flowmatch.diagnostics import straightness
from flowmatch.experiments.progress import progress
from flowmatch.sampling import ode as ode_sampling
from flowmatch.training import loop as training_loop

DEFAULT_METHODS = ("euler", "heun", "rk4", "dopri5")
DEFAULT_NFE_BUDGETS = (2, 4, 8, 16, 32, 64, 128)
DEFAULT_TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
REFERENCE_METHOD = "dopri5"
DEFAULT_2D_SAMPLES = 20_000
FIGURE_FORMATS = ("png", "pdf", "svg")
REFERENCE_TOL = 1e-7
# The reference runs at a tolerance near float32 resolution: allow it many more steps.
REFERENCE_MAX_STEPS = 100_000
# A solve whose first call (one chunk) takes longer is not repeated for its timing (`_Solves`).
FIRST_CALL_KEPT_SECONDS = 10.0

FIELDS = ("method", "kind", "correction", "budget", "num_steps", "nfe", "rtol", "atol", "metric",
          "value", "traj_error", "straightness", "energy_ratio", "npe", "seconds", "success")
PATH_METRICS = ("straightness", "energy_ratio", "npe")
# What identifies one solve in the wide CSV (its metrics become columns).
WIDE_KEYS = ("method", "kind", "correction", "budget", "rtol")
NO_CORRECTION = "none"
# Samples of the forward process (and of the pilot solves) that calibrate time-shifted sampling.
CALIBRATION_SAMPLES = 4096
FILENAME = "integrators"


class _Arguments(NamedTuple):
    methods: tuple
    budgets: tuple
    tolerances: tuple
    corrections: tuple


def _check_methods(methods) -> tuple[str, ...]:
    if methods is None:
        return DEFAULT_METHODS
    if isinstance(methods, str):
        methods = [methods]
    methods = tuple(dict.fromkeys(methods))  # drop repeats, keep order
    if not methods:
        raise ConfigError(f"no methods to compare; choose from: {', '.join(sampling.METHODS)}")
    for m in methods:
        if not isinstance(m, str):
            raise ConfigError(f"methods must be sampling method names, got {m!r}")
        checks.as_config_error("methods", sampling.family, m)
    return methods


def _is_ode(method: str) -> bool:
    return sampling.family(method) == "ode"


def _check_budgets(nfe_budgets) -> tuple[int, ...]:
    budgets = tuple(nfe_budgets)
    for b in budgets:
        if not checks.is_int(b) or b < 1:
            raise ConfigError(f"NFE budgets must be positive integers, got {b!r} in {budgets}")
    if not budgets:
        raise ConfigError("no NFE budgets given; pass e.g. --nfe=2,4,8,16")
    return tuple(sorted({int(b) for b in budgets}))


def _positive(t) -> bool:
    """Whether t is a finite real number > 0 (a tolerance)."""
    return checks.is_real(t) and math.isfinite(t) and t > 0


def _check_tolerances(tolerances, name="tolerances") -> tuple[float, ...]:
    tols = tuple(tolerances)
    for t in tols:
        if not _positive(t):
            raise ConfigError(f"{name} must be positive numbers, got {t!r} in {tols}")
    return tuple(sorted({float(t) for t in tols}, reverse=True))


def _check_arguments(methods, nfe_budgets, tolerances, reference_tol, num_samples, chunk_size,
                     corrections, max_shift) -> _Arguments:
    """Every argument check that needs no run (so a bad call fails before anything loads)."""
    methods = _check_methods(methods)
    budgets = _check_budgets(nfe_budgets)
    tolerances = _check_tolerances(tolerances)
    if not _positive(reference_tol):
        raise ConfigError(f"reference_tol must be a positive number (rtol = atol of the dopri5 "
                          f"reference, default {REFERENCE_TOL:g}), got {reference_tol!r}")
    for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if value is not None:
            checks.as_config_error(name, checks.positive_int, name, value)
    corrections = checks.as_config_error(
        "corrections", lambda: tuple(dict.fromkeys(exposure.parse_correction(c).name
                                                   for c in corrections)))
    if not (checks.is_real(max_shift) and 0.0 <= max_shift < 1.0):
        raise ConfigError(f"max_shift must be in [0, 1) (a fraction of a step), got {max_shift!r}")
    args = _Arguments(methods, budgets, tolerances, corrections)
    if not _plan(args, None) and not (_adaptive(methods) and tolerances):
        raise ConfigError(
            f"nothing to compare: one step of each of {', '.join(methods)} costs more than every "
            f"NFE budget {list(budgets)}; raise --nfe")
    return args


def _adaptive(methods) -> list[str]:
    return [m for m in methods if m in integrators.ADAPTIVE_METHODS]


def _plan(args: _Arguments, model: sampling.ModelFn | None) -> list[tuple[str, int, int]]:
    """[(method, budget, num_steps)]: the fixed-grid solves whose NFE (counting the model's
    denoising evaluation, when it has one) fit a budget; a DDPM model's discrete-time samplers
    (ancestral, ddim, the DPM-Solver family) at most its T steps."""
    plan = [(m, b, sampling.runnable_steps(m, b, model)) for m in args.methods
            for b in args.budgets]
    return [(m, b, steps) for m, b, steps in plan if steps is not None]


def _chunks(n: int, chunk_size: int) -> list[tuple[np.ndarray, int]]:
    """(indices, count) pairs covering range(n) in order: indices of one length min(chunk_size,
    n), so every chunk has one shape (one compilation); the last chunk wraps around to the first
    indices, of which only `count` are kept."""
    size = max(1, min(int(chunk_size), n))
    return [(np.arange(start, start + size) % n, min(size, n - start))
            for start in range(0, n, size)]


def _traj_error(x, ref) -> float:
    """sqrt(mean_i |x_i - ref_i|^2) over samples i, with x, ref: [n, ...]."""
    d = np.asarray(x, np.float64).reshape(len(x), -1) - np.asarray(ref, np.float64).reshape(
        len(ref), -1)
    return float(np.sqrt(np.mean(np.sum(np.square(d), axis=1))))


def source_chunks(comps, n: int, chunk_size: int, seed: int):
    """[(x0 [size, ...], cond [size] int32 or None)] with size = min(chunk_size, n): the source
    samples (and labels 0, 1, ... for a class-conditional run) of the chunks of
    `flowmatch.experiments.sample.draw(run, n, seed=seed, chunk_size=chunk_size)`, drawn by the
    registry's `sampling.Chunked` layout from rng.seed_stream(seed, "samples"); the last chunk
    is whole (its rows past n are padding, as there)."""
    size = min(int(chunk_size), n)
    num = -(-n // size)

    def keep(params, x0, key, cond):  # the draw's source half: its x0, no sampler
        return sampling.Samples(x=x0, nfe=jnp.zeros((), jnp.int32), success=jnp.ones((), bool))

    draw = sampling.Chunked(keep, comps.source.sample, num * size, size)
    x0 = draw(None, rng.seed_stream(seed, "samples")).x
    labels = diag_runs.labels_for(comps, n)
    out = []
    for c in range(num):
        start = c * size
        cond = None if labels is None else jnp.asarray(
            np.resize(labels[start:start + size], size), jnp.int32)
        out.append((jnp.asarray(x0[start:start + size]), cond))
    return out


def sampler_keys(n: int, chunk_size: int, seed: int) -> list:
    """The sampler keys of the chunks of `source_chunks(comps, n, chunk_size, seed)`: chunk c's
    rng.stream(fold_in(rng.seed_stream(seed, "samples"), c), "sampler"), as `sampling.Chunked`
    gives a stochastic sampler (deterministic ones ignore it)."""
    key = rng.seed_stream(seed, "samples")
    num = -(-n // min(int(chunk_size), n))
    return [rng.stream(jax.random.fold_in(key, c), "sampler") for c in range(num)]


class _Solves:
    """Samples from the fixed source chunks (and the chunks' sampler keys) with one jitted
    sampler per (method, grid or tolerance, correction), cached so a repeated configuration
    (e.g. the reference) runs once.  With path_metrics, also the path energy of every ODE
    solve: carried by the timed solve itself (`_sampler_with_energy`) on a fixed grid and for
    the reference, else by an untimed second solve with the energy under error control."""

    def __init__(self, model: sampling.ModelFn, params, chunks, n: int, *, keys,
                 path_metrics: bool = True, time_shift=None):
        self.model, self.params, self.chunks, self.n = model, params, chunks, n
        self.keys = keys
        self.path_metrics = path_metrics
        self.time_shift = time_shift  # (method, num_steps) -> evaluation times [num_steps]
        self.cache = {}

    def _sampler(self, model, method, num_steps, tol, max_steps, correction):
        if correction is not None and correction.kind == "time_shift":
            return exposure.time_shifted_sampler(
                model, method=method, eval_times=self.time_shift(method, num_steps))
        if not _is_ode(method):
            return sampling.make_sampler(model, method, num_steps=num_steps)
        return sampling.make_sampler(model, method, num_steps=num_steps, rtol=tol, atol=tol,
                                     max_steps=max_steps)

    def _sampler_with_energy(self, model, method, num_steps, tol, max_steps):
        """sample(params, x0, key, cond) -> (Samples, (x(t_end), path energy [B])): the registry's
        ODE sampler with the path energy as one more state of its solve
        (`straightness.solve_with_energy`; adaptively with the step control on x alone), so the
        timed solve also gives the path metrics.  Its x, and an adaptive solve's steps, are
        exactly the plain solve's (tested), and carrying the energy (a sum of squares per
        evaluation) cost 0.998-1.013x the plain sampler's time for the quickstart's 3 x 256 MLP
        on 20,000 points, euler / heun / rk4 (docs/results/compare_energy_fused/overhead.log);
        the second solve it replaces doubled each row's compute."""
        kwargs = (dict(num_steps=num_steps) if tol is None else
                  dict(rtol=tol, atol=tol, max_steps=max_steps))
        sampling.check(method, model=model, **kwargs)  # the registry's validation

        def sample(params, x0, key, cond=None):
            del key
            sol = straightness.solve_with_energy(model.velocity_fn(params, cond), x0,
                                                 energy_error=False, method=method, t0=0.0,
                                                 t1=model.t_end, **kwargs)
            x_end, energy = sol.x
            return ode_sampling.samples_of(model, params, cond, x_end, sol), (x_end, energy)

        return sample

    def _energy(self, model, method, tol, max_steps):
        """An untimed jitted (params, x0, cond) -> (x(t_end), path energy [B]) of an adaptive ODE
        solve with the energy as one more state, under error control with x."""

        @jax.jit
        def run(params, x0, cond):
            return straightness.solve_with_energy(
                model.velocity_fn(params, cond), x0, method=method, rtol=tol, atol=tol,
                max_steps=max_steps, t0=0.0, t1=model.t_end).x

        return run

    def _timed(self, sampler):
        """Every chunk's Samples and the seconds of all chunks, compiled (every chunk has one
        shape: compiled ahead of the calls, not timed).  The first call of a compiled program
        also pays a one-time start-up (0.08-0.28 s for the digits U-Net's samplers on 2 CPU
        cores: docs/results/compare_reference_digits/first_call.log), so the first chunk is solved once untimed and the chunks are then timed; but a
        first call of over FIRST_CALL_KEPT_SECONDS is kept, result and time, and only the other
        chunks follow: the start-up is then a few percent of it, and the reference solve of an
        image model (over a minute a chunk) does not run twice."""
        x0, cond = self.chunks[0]
        run = jax.jit(sampler).lower(self.params, x0, self.keys[0], cond).compile()
        start = time.perf_counter()
        first = jax.block_until_ready(run(self.params, x0, self.keys[0], cond))
        seconds = time.perf_counter() - start
        rest = list(zip(self.chunks, self.keys))
        if seconds > FIRST_CALL_KEPT_SECONDS:
            outs, rest = [first], rest[1:]
        else:
            outs, seconds = [], 0.0
        start = time.perf_counter()
        outs += [run(self.params, x0, key, cond) for (x0, cond), key in rest]
        jax.block_until_ready(outs)
        return outs, seconds + time.perf_counter() - start

    def _rows(self, arrays, dtype):
        return np.concatenate([np.asarray(a, dtype) for a in arrays])[:self.n]

    def __call__(self, method: str, *, num_steps=None, tol=None, max_steps=4096,
                 correction=NO_CORRECTION, energy_on_steps=False) -> dict:
        """{"x": float32 [n, ...], "nfe", "num_steps" (accepted steps, max over chunks),
        "success", "seconds" (all chunks, compiled), "x_end" (float64 [n, ...], the ODE state at
        t_end, or None), "energy" (float64 [n] path energies, or None)}.  energy_on_steps: an
        adaptive solve's energy rides on its own steps, controlled on x alone (the reference's;
        the first call of a configuration decides, results are cached without it)."""
        correction = None if correction == NO_CORRECTION else exposure.parse_correction(correction)
        shifted = correction is not None and correction.kind == "time_shift"
        if shifted and num_steps is None:
            raise ConfigError("time_shift corrects fixed-grid solves only (it shifts grid times)")
        key = (method, num_steps, tol, max_steps, NO_CORRECTION if correction is None else
               correction.name)
        if key not in self.cache:
            model = self.model
            if correction is not None and correction.kind == "eps_scale":
                model = exposure.noise_scaled_model(model, correction.scale)
            energy = self.path_metrics and not shifted and _is_ode(method)
            if energy and (tol is None or energy_on_steps):
                fused, seconds = self._timed(
                    self._sampler_with_energy(model, method, num_steps, tol, max_steps))
                outs, ex = [o[0] for o in fused], [o[1] for o in fused]
            else:
                outs, seconds = self._timed(
                    self._sampler(model, method, num_steps, tol, max_steps, correction))
                run = self._energy(model, method, tol, max_steps) if energy else None
                ex = [run(self.params, x0, cond) for x0, cond in self.chunks] if run else []
            # An adaptive solve's accepted steps come with its Samples (an ODE sampler's).
            self.cache[key] = {
                "x": self._rows([o.x for o in outs], np.float32),
                "nfe": max(int(o.nfe) for o in outs),
                "num_steps": (max(int(o.steps) for o in outs) if tol is not None
                              else num_steps),
                "success": all(bool(o.success) for o in outs), "seconds": seconds,
                "x_end": self._rows([e[0] for e in ex], np.float64) if ex else None,
                "energy": self._rows([e[1] for e in ex], np.float64) if ex else None}
        return self.cache[key]


class _NLL:
    """Mean negative log-likelihood (nats) of fixed data points [n, ...] under the flow, by the
    exact-divergence augmented ODE from t = 1 to 0, with the same grid or tolerance as a
    sampling solve; unconditional (cond=None).  One jit per configuration, results cached."""

    def __init__(self, model: sampling.ModelFn, log_prior: Callable, params, data: np.ndarray,
                 chunk_size: int):
        self.model, self.log_prior, self.params = model, log_prior, params
        self.chunks = [(jnp.asarray(data[i]), k) for i, k in _chunks(data.shape[0], chunk_size)]
        self.cache = {}

    def __call__(self, method: str, *, num_steps=None, tol=None, max_steps=4096) -> float:
        key = (method, num_steps, tol, max_steps)
        if key not in self.cache:

            @jax.jit
            def run(params, x):
                # log p1(x) with the run's source p0 (N(0, I) by default); NaN where a solve
                # failed.
                return likelihood.log_likelihood(
                    self.model.velocity_fn(params), x, method=method, num_steps=num_steps,
                    rtol=tol, atol=tol, max_steps=max_steps, divergence="exact",
                    log_prior=self.log_prior)

            logp = np.concatenate([np.asarray(run(self.params, x), np.float64)[:k]
                                   for x, k in self.chunks])
            self.cache[key] = float(-np.mean(logp))  # NaN if a solve failed
        return self.cache[key]


def _quality_2d(data, cfg, seed: int, num_samples: int) -> Callable[[np.ndarray], dict]:
    """tv / w2 against fresh data of the run's training source (`data`): independent draws for
    tv ("reference", as scripts/sample.py) and w2 ("reference_w2"), metrics_2d's advice."""
    ref_tv = np.asarray(data.sample_reference(rng.seed_stream(seed, "reference"),
                                              max(num_samples, cfg.num_tv_samples)))
    ref_w2 = np.asarray(data.sample_reference(rng.seed_stream(seed, "reference_w2"),
                                              cfg.num_w2_samples))

    def quality(samples):
        m = metrics_lib.metrics_2d(samples, ref_w2, ref_tv, data.box, bins=cfg.tv_bins,
                                   n_w2=cfg.num_w2_samples)
        return {"tv": m["tv"], "w2": m["w2"]}

    return quality


class _TimeShift:
    """Evaluation times of time-shifted sampling per (method, num_steps), from the run's
    exposure-bias calibration and a pilot solve on noise independent of the compared solves."""

    def __init__(self, comps, data, params, seed: int, n: int, max_shift: float):
        self.model = comps.model_fn()
        self.calibration = diag_runs.calibration(
            comps, data, params, rng.seed_stream(seed, "time_shift_calibration"), n)
        self.noise = diag_runs.source_sample(comps, rng.seed_stream(seed, "time_shift_pilot"), n)
        labels = diag_runs.labels_for(comps, n)
        self.v = self.model.velocity_fn(params, None if labels is None else jnp.asarray(labels))
        self.max_shift = max_shift
        self.cache = {}

    def __call__(self, method: str, num_steps: int) -> np.ndarray:
        key = (method, num_steps)
        if key not in self.cache:
            tr = exposure.trajectory_statistic(self.v, self.model.path, self.noise, method=method,
                                               num_steps=num_steps, t1=self.model.t_end)
            t_eff = exposure.effective_time(self.calibration, tr.stat, tr.ts, tr.stat_se)
            self.cache[key] = exposure.time_shift_schedule(tr.ts, t_eff, self.max_shift)
        return self.cache[key]


class _Measure(NamedTuple):
    """What every row is measured with: the solves, the reference result, x0 [n, ...], npe's
    W2^2 (or None), the quality function and the NLL (or None)."""

    solves: _Solves
    ref: dict
    x0: np.ndarray
    w2_squared: float | None
    quality_fn: Callable | None
    nll_of: _NLL | None


def _measure_rows(m: _Measure, method, kind, solve, budget=None,
                  correction=NO_CORRECTION) -> list[dict]:
    """The rows of one solve: one per quality metric (or one 'traj_error' row)."""
    result = m.solves(method, **solve, correction=correction)
    tol = solve.get("tol")
    base = {"method": method, "kind": kind, "correction": correction, "budget": budget,
            "num_steps": result["num_steps"], "nfe": result["nfe"], "rtol": tol, "atol": tol,
            "traj_error": _traj_error(result["x"], m.ref["x"]), "seconds": result["seconds"],
            "success": result["success"], **dict.fromkeys(PATH_METRICS)}
    if result["energy"] is not None:
        pm = straightness.path_metrics(
            m.x0, result["x_end"], result["energy"], m.w2_squared,
            positive=straightness.positive_quadrature(method, adaptive=tol is not None))
        # unavailable (NaN: a quadrature with negative weights) is written as None, like
        # a column not measured, so the JSON stays valid
        base.update({k: None if pm[k] is None or not math.isfinite(pm[k]) else pm[k]
                     for k in PATH_METRICS})
    quality = dict(m.quality_fn(result["x"])) if m.quality_fn is not None else {}
    if m.nll_of is not None and _is_ode(method):
        quality["nll"] = m.nll_of(method, **solve)
    return [dict(base, metric=metric, value=float(value))
            for metric, value in (quality or {"traj_error": base["traj_error"]}).items()]


def compare_integrators(workdir: str, output_dir: str, *, methods: Sequence[str] | None = None,
                        nfe_budgets: Sequence[int] = DEFAULT_NFE_BUDGETS,
                        num_samples: int | None = None, seed: int = 0,
                        tolerances: Sequence[float] = DEFAULT_TOLERANCES, step: int | None = None,
                        quality_fn: Callable[[np.ndarray], dict] | None = None,
                        chunk_size: int | None = None, nll: bool = False,
                        reference_tol: float = REFERENCE_TOL, path_metrics: bool = True,
                        corrections: Sequence[str] = (),
                        max_shift: float = exposure.DEFAULT_MAX_SHIFT,
                        figure_formats: Sequence[str] = ("png",)) -> list[dict]:
    """Compares integrators on the run in `workdir` (its EMA parameters at `step`, default latest).

    methods: sampling method names (`sampling.METHODS`: integrators, the DPM-Solver family, the
    SDE samplers, DDPM's ancestral / ddim; default DEFAULT_METHODS); nfe_budgets: positive ints;
    tolerances:
    rtol = atol values swept for the adaptive methods among `methods` (may be empty).
    num_samples: default DEFAULT_2D_SAMPLES (20,000; a 2-D comparison of the default methods
    then takes minutes on a laptop CPU; tv's floor is higher at that count, so pass
    config.eval.num_tv_samples, e.g. 100,000, for the final figures, at about 5x the time) or
    config.eval.num_image_samples (images); w2 on the first num_w2_samples.  The source samples x0 [num_samples, ...] are drawn
    once from `seed` (module docstring) and shared by every solve.  quality_fn(samples [n, ...])
    -> {metric: float} replaces the default quality metrics (2-D: tv, w2; images: none).  Solves
    run in chunks of chunk_size samples (default config.eval.chunk_size); an adaptive solve steps
    a whole chunk as one system.  reference_tol: rtol = atol of the dopri5 reference.
    nll (2-D data only): also a metric row "nll" per solve: the mean negative log-likelihood in
    nats of num_samples fresh data points, integrated back to t = 0 with the same method and
    grid or tolerance (exact divergence); the row's nfe and seconds are the sampling solve's.
    path_metrics: the straightness, energy_ratio and (2-D) npe columns (else None; see the
    module docstring; npe uses W2^2 between num_w2_samples noise points and fresh data).
    corrections: exposure-bias corrections ('time_shift', 'eps_scale=LAM'; see
    `flowmatch.diagnostics.exposure`), each run on every fixed-grid ODE (method, budget) as
    extra rows.  time_shift takes its evaluation times from a pilot solve on other noise and a
    calibration on training data (CALIBRATION_SAMPLES each), shifts clipped to max_shift of a
    step.

    Returns the rows written to output_dir/integrators.{json,csv}: one per (method, budget or
    tolerance, correction, metric) with keys FIELDS: kind 'fixed' | 'adaptive' | 'reference';
    correction ('none' or the correction's name); budget (fixed rows) or rtol = atol (adaptive
    and reference rows, else None); num_steps (accepted steps) and nfe of one chunk's solve
    (adaptive: the maximum over chunks; nfe counts a DDPM model's denoising evaluation); metric,
    value (without quality metrics: metric 'traj_error'); traj_error; straightness,
    energy_ratio, npe (None for time-shifted rows, whose steps do not follow one field); seconds
    (compiled sampling time of all chunks); success (every solve reached t_end with finite
    values).  Raises ConfigError for bad arguments, FileNotFoundError without a checkpoint.
    """
    args = _check_arguments(methods, nfe_budgets, tolerances, reference_tol, num_samples,
                            chunk_size, corrections, max_shift)
    if not figure_formats or any(f not in FIGURE_FORMATS for f in figure_formats):
        raise ConfigError(f"figure_formats must be one or more of {', '.join(FIGURE_FORMATS)}; "
                          f"got {list(figure_formats)}")
    run = training.restore(workdir, step)
    comps, params = run.components, run.state.ema_params
    plan = _plan(args, comps.model_fn())
    if not plan and not (_adaptive(args.methods) and args.tolerances):
        raise ConfigError(f"nothing to compare: no budget in {list(args.budgets)} fits one step "
                          "and this model's denoising evaluation; raise --nfe")
    is_2d = comps.spec.kind == "toy2d"
    _check_nll(nll, is_2d, comps.source)
    cfg = comps.settings.eval
    n = num_samples or (min(cfg.num_tv_samples, DEFAULT_2D_SAMPLES) if is_2d
                        else cfg.num_image_samples)
    print(f"compare_integrators: {comps.settings.data.name} at step {run.step}, {n} samples, "
          f"methods {', '.join(args.methods)}", flush=True)
    m = _prepare(comps, params, args, n, seed, chunk_size or cfg.chunk_size, quality_fn=quality_fn,
                 nll=nll, reference_tol=reference_tol, path_metrics=path_metrics,
                 max_shift=max_shift)
    rows = _measure_rows(m, REFERENCE_METHOD, "reference", _reference(reference_tol))
    solves = [(method, "fixed", {"num_steps": steps}, budget, correction)
              for method, budget, steps in plan
              for correction in (NO_CORRECTION,) + (args.corrections if _is_ode(method) else ())]
    solves += [(method, "adaptive", {"tol": tol}, None, NO_CORRECTION)
               for method in _adaptive(args.methods) for tol in args.tolerances]
    for method, kind, solve, budget, correction in progress(
            solves, "compare_integrators: solves", unit="solve"):
        rows += _measure_rows(m, method, kind, solve, budget=budget, correction=correction)
    rows = [{k: row[k] for k in FIELDS} for row in rows]
    write(rows, output_dir,
          title=f"{comps.settings.data.name}, step {run.step}, {n} samples",
          figure_formats=figure_formats)
    return rows


def _check_nll(nll: bool, is_2d: bool, source) -> None:
    if nll and not is_2d:
        raise ConfigError("nll=True (--nll) is for 2-D data; this run's data are images")
    if nll and not source.has_density:
        raise ConfigError(
            f"nll=True (--nll) needs the density of the source p0 at t = 0, and this run's "
            f"source.name={source.name!r} has none in closed form; drop --nll")


def _reference(reference_tol: float) -> dict:
    return dict(tol=reference_tol, max_steps=REFERENCE_MAX_STEPS)


def _prepare(comps, params, args: _Arguments, n: int, seed: int, chunk_size: int, *,
             quality_fn, nll: bool, reference_tol: float, path_metrics: bool,
             max_shift: float) -> _Measure:
    """The solves and everything the rows are measured with, and the reference solve.  The
    training data are loaded only when something needs them (2-D scores, nll, npe, time_shift)."""
    is_2d = comps.spec.kind == "toy2d"
    data = functools.cache(lambda: training_loop.load_data(comps.settings.data))
    cfg = comps.settings.eval
    if quality_fn is None and is_2d:
        quality_fn = _quality_2d(data(), cfg, seed, n)
    time_shift = None
    if "time_shift" in args.corrections:
        time_shift = _TimeShift(comps, data(), params, seed, min(n, CALIBRATION_SAMPLES),
                                max_shift)
    chunks = source_chunks(comps, n, chunk_size, seed)
    solves = _Solves(comps.model_fn(), params, chunks, n, path_metrics=path_metrics,
                     time_shift=time_shift, keys=sampler_keys(n, chunk_size, seed))
    x0 = np.concatenate([np.asarray(c[0], np.float32) for c in chunks])[:n]
    w2_squared = None
    if path_metrics and is_2d:
        k = min(n, cfg.num_w2_samples)
        points = np.asarray(data().sample_reference(rng.seed_stream(seed, "npe_data"), k))
        w2_squared = metrics_lib.w2_distance(x0[:k], points) ** 2
    nll_of = None
    if nll:
        points = np.asarray(data().sample_reference(rng.seed_stream(seed, "nll_data"), n))
        nll_of = _NLL(comps.model_fn(), comps.source.log_prob, params, points, chunk_size)
    print(f"compare_integrators: the reference solve, {REFERENCE_METHOD} at rtol = atol = "
          f"{reference_tol:g} (at most {REFERENCE_MAX_STEPS:,} steps), {len(chunks)} chunk(s) "
          f"of {len(chunks[0][0]):,} samples: the longest solve here, minutes on an image "
          f"model (a looser reference_tol, --reference_tol, is faster)", flush=True)
    # The first call of a configuration decides how its energy is had (cached): the
    # reference row measured later reads this one.
    ref = solves(REFERENCE_METHOD, **_reference(reference_tol), energy_on_steps=True)
    if not ref["success"]:
        raise RuntimeError(
            f"the reference solve ({REFERENCE_METHOD}, rtol = atol = {reference_tol:g}) failed to "
            "reach t_end; pass a looser reference_tol (--reference_tol)")
    print(f"compare_integrators: the reference took {ref['nfe']:,} NFE ({ref['num_steps']:,} "
          f"steps) in its longest chunk, {ref['seconds']:.1f} s compiled", flush=True)
    return _Measure(solves, ref, x0, w2_squared, quality_fn, nll_of)


def write(rows: Sequence[dict], output_dir: str, title: str | None = None,
          figure_formats: Sequence[str] = ("png",)) -> None:
    """integrators.json, .csv (long: a row per metric), _wide.csv (a row per solve, a column
    per metric) and the figure in each of figure_formats (png, pdf, svg) in output_dir (atomic
    writes), and the table printed."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILENAME)
    fileio.write_json(path + ".json", list(rows), indent=1)
    fileio.write_csv(path + ".csv", rows, FIELDS)
    fileio.write_wide_csv(path + "_wide.csv", rows, WIDE_KEYS)
    for fmt in figure_formats:
        plot(rows, f"{path}.{fmt}", title=title)
    print(format_table(rows), flush=True)
    failed = sorted({(r["method"], r["kind"], r["correction"], r["budget"] or r["rtol"])
                     for r in rows if not r["success"]})
    if failed:
        print(f"warning: solves that did not reach t_end with finite values: {failed}")


def format_table(rows: Sequence[dict]) -> str:
    """The rows as an aligned text table."""

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [FIELDS] + [tuple(cell(r[k]) for k in FIELDS) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(FIELDS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table)


def _label(row) -> str:
    correction = row.get("correction", NO_CORRECTION)
    return (row["method"] + (" (adaptive)" if row["kind"] == "adaptive" else "")
            + ("" if correction == NO_CORRECTION else f" [{correction}]"))


def _panel(ax, rows, name, metric, key, logy) -> None:
    """One panel: `key` of the rows of `metric` against NFE, a line per label."""
    lines = {}
    for r in rows:
        if r["metric"] != metric or r.get(key) is None:
            continue
        if r["kind"] == "reference":
            if key in ("value", "energy_ratio"):
                ax.axhline(r[key], color="gray", linestyle="--", linewidth=1,
                           label=f"reference ({r['method']}, tol {r['rtol']:g})")
            continue
        lines.setdefault(_label(r), set()).add((r["nfe"], r[key]))
    positive = False
    for label, pts in lines.items():
        xs, ys = np.array(sorted(pts), dtype=np.float64).T
        if logy:
            ys = np.where(ys > 0, ys, np.nan)  # a gap, not a failed log axis
            positive = positive or bool(np.any(np.isfinite(ys)))
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=label)
    plotting.nfe_axis(ax, [x for pts in lines.values() for x, _ in pts])
    if logy and positive:  # (all zero, e.g. every solver exact: a linear axis)
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(name)
    ax.grid(True, which="both", alpha=0.3)


def plot(rows: Sequence[dict], path: str, title: str | None = None) -> None:
    """PNG with panels against NFE (log x), one line per method (adaptive sweeps and corrections
    apart): one per quality metric (the reference's value dashed), traj_error (log y), the path
    energy ratio (when measured; reference dashed) and solve seconds."""
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if m != "traj_error"]
    first = rows[0]["metric"]  # traj_error and seconds repeat on every metric's row
    panels = ([(m, m, "value", False) for m in metrics]
              + [("traj_error", first, "traj_error", True)])
    if any(r.get("energy_ratio") is not None for r in rows):
        panels.append(("energy_ratio", first, "energy_ratio", False))
    panels.append(("seconds", first, "seconds", True))
    fig = Figure(figsize=(4.2 * len(panels), 4.4), dpi=120)
    axes = [fig.add_subplot(1, len(panels), p + 1) for p in range(len(panels))]
    for ax, (name, metric, key, logy) in zip(axes, panels):
        _panel(ax, rows, name, metric, key, logy)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plotting.figure_legend(fig, axes)
    fileio.save_figure(fig, path)
