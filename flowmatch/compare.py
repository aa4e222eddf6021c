"""Integrator comparison on a trained run: sample quality and integration error against NFE.

Every method integrates the learned flow from the same noise x0 (t = 0) to t = 1:
  fixed grid: for each NFE budget, the largest num_steps with nfe_for(method, num_steps) <= budget
    (a pair where one step already costs more than the budget is skipped);
  adaptive (bosh3, dopri5, tsit5): also a sweep over tolerances rtol = atol, at their actual NFE.
A tight-tolerance reference solve from the same x0 (dopri5, rtol = atol = 1e-7) gives
  traj_error = sqrt(mean_i |x_i(1) - x_ref_i(1)|^2),
the integrator's own error with the model's error taken out.  Sample quality: for 2-D data the
tv / w2 of `metrics.metrics_2d` against fresh reference data; for images only when a
`quality_fn` is passed (until an image metric exists, image rows carry traj_error only).
Optionally (2-D, nll=True) the mean NLL of fresh data points with the same integrator.

Path metrics of every solve (`flowmatch.diagnostics.straightness`): Liu et al.'s straightness,
the path energy ratio PE / E||x(1) - x(0)||^2 and, for 2-D data, Tong et al.'s normalised path
energy, from the path energy integrated alongside x by the same method and steps (fixed grids:
in the timed solve itself, no extra evaluations; adaptive rows: a second solve at the same
tolerance with the energy in the state).  Exposure-bias corrections
(`flowmatch.diagnostics.exposure`: 'time_shift', 'eps_scale=LAM') add rows per fixed-grid solve,
marked in the `correction` column ('none' otherwise).

    rows = compare_integrators("runs/checkerboard", "runs/checkerboard/compare")

writes integrators.json, integrators.csv (the rows) and integrators.png (panels against NFE,
one line per method: each metric, traj_error and wall time), and prints the table.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from flowmatch import generate
from flowmatch import integrators
from flowmatch import likelihood
from flowmatch import metrics as metrics_lib
from flowmatch import sampling
from flowmatch.diagnostics import exposure
from flowmatch.diagnostics import runs as diag_runs
from flowmatch.diagnostics import straightness
from flowmatch.train import ConfigError

DEFAULT_METHODS = ("euler", "heun", "rk4", "dopri5")
DEFAULT_NFE_BUDGETS = (2, 4, 8, 16, 32, 64, 128)
DEFAULT_TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
REFERENCE_METHOD = "dopri5"
REFERENCE_TOL = 1e-7
# The reference runs at a tolerance near float32 resolution: allow it many more steps.
REFERENCE_MAX_STEPS = 100_000

FIELDS = ("method", "kind", "correction", "budget", "num_steps", "nfe", "rtol", "atol", "metric",
          "value", "traj_error", "straightness", "energy_ratio", "npe", "seconds", "success")
PATH_METRICS = ("straightness", "energy_ratio", "npe")
NO_CORRECTION = "none"
# Samples of the forward process (and of the pilot solves) that calibrate time-shifted sampling.
CALIBRATION_SAMPLES = 4096
FILENAME = "integrators"


def _check_methods(methods) -> tuple[str, ...]:
    if methods is None:
        return DEFAULT_METHODS
    if isinstance(methods, str):
        methods = [methods]
    methods = tuple(dict.fromkeys(methods))  # drop repeats, keep order
    if not methods:
        raise ConfigError(f"no methods to compare; choose from: {', '.join(integrators.METHODS)}")
    for m in methods:
        if not isinstance(m, str):
            raise ConfigError(f"methods must be integrator names, got {m!r}")
        try:
            integrators.nfe_for(m, 1)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return methods


def _is_count(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def _check_budgets(nfe_budgets) -> tuple[int, ...]:
    budgets = tuple(nfe_budgets)
    for b in budgets:
        if not _is_count(b):
            raise ConfigError(f"NFE budgets must be positive integers, got {b!r} in {budgets}")
    if not budgets:
        raise ConfigError("no NFE budgets given; pass e.g. --nfe=2,4,8,16")
    return tuple(sorted({int(b) for b in budgets}))


def _check_tolerances(tolerances, name="tolerances") -> tuple[float, ...]:
    tols = tuple(tolerances)
    for t in tols:
        if (isinstance(t, bool) or not isinstance(t, numbers.Real)
                or not (math.isfinite(t) and t > 0)):
            raise ConfigError(f"{name} must be positive numbers, got {t!r} in {tols}")
    return tuple(sorted({float(t) for t in tols}, reverse=True))


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


class _Runner:
    """Solves from the fixed noise x0 in equal chunks; one jitted solver per (method, grid or
    tolerance, correction), results cached so a repeated configuration (e.g. the reference) runs
    once.  With path_metrics, also the path energy of every solve (see the module docstring)."""

    def __init__(self, exp, params, x0: np.ndarray, cond: np.ndarray | None, chunk_size: int,
                 path_metrics: bool = True, time_shift=None):
        self.exp, self.params = exp, params
        self.chunks = [(jnp.asarray(x0[i]), None if cond is None else jnp.asarray(cond[i]), k)
                       for i, k in _chunks(x0.shape[0], chunk_size)]
        self.path_metrics = path_metrics
        self.time_shift = time_shift  # (method, num_steps) -> evaluation times [num_steps]
        self.cache = {}

    def _velocity(self, params, cond, correction):
        apply_fn = lambda params, x, t, cond: self.exp.apply(params, x, t, cond)
        v = sampling.velocity_fn(apply_fn, params, self.exp.objective, cond)
        if correction is not None and correction.kind == "eps_scale":
            v = exposure.scale_noise(v, exposure.model_path(self.exp.objective), correction.scale)
        return v

    def _solver(self, method, num_steps, tol, max_steps, correction):
        """jitted (params, x0, cond) -> (x, nfe, accepted steps, success, energy or None)."""
        shifted = correction is not None and correction.kind == "time_shift"
        with_energy = self.path_metrics and tol is None and not shifted
        eval_times = self.time_shift(method, num_steps) if shifted else None
        grid = exposure.uniform_grid(num_steps) if shifted else None

        @jax.jit
        def run(params, x0, cond):
            v = self._velocity(params, cond, correction)
            if eval_times is not None:
                x, nfe = exposure.time_shifted_solve(
                    v, x0, method=method, grid=grid, eval_times=eval_times)
                return (x, jnp.asarray(nfe, jnp.int32), jnp.asarray(num_steps, jnp.int32),
                        jnp.all(jnp.isfinite(x)), None)
            kwargs = dict(method=method, num_steps=num_steps, rtol=tol, atol=tol,
                          max_steps=max_steps)
            if with_energy:
                sol = straightness.solve_with_energy(v, x0, **kwargs)
                (x, energy) = sol.x
            else:
                sol = integrators.solve(v, x0, **kwargs)
                x, energy = sol.x, None
            return x, sol.nfe, sol.num_accepted, sol.success, energy

        return run

    def _energy_solver(self, method, tol, max_steps, correction):
        """Adaptive rows: a separate jitted solve with the energy in the state -> energy [B]."""

        @jax.jit
        def run(params, x0, cond):
            v = self._velocity(params, cond, correction)
            sol = straightness.solve_with_energy(v, x0, method=method, rtol=tol, atol=tol,
                                                 max_steps=max_steps)
            return sol.x[1]

        return run

    def __call__(self, method: str, *, num_steps=None, tol=None, max_steps=4096,
                 correction=NO_CORRECTION) -> dict:
        """{"x": float32 [n, ...], "nfe", "num_steps" (max over chunks), "success",
        "seconds" (all chunks, compiled: after one warm-up call), "energy" (float64 [n] path
        energies, or None)}."""
        correction = None if correction == NO_CORRECTION else exposure.parse_correction(correction)
        if correction is not None and correction.kind == "time_shift" and num_steps is None:
            raise ConfigError("time_shift corrects fixed-grid solves only (it shifts grid times)")
        key = (method, num_steps, tol, max_steps, NO_CORRECTION if correction is None else
               correction.name)
        if key not in self.cache:
            run = self._solver(method, num_steps, tol, max_steps, correction)
            x0, cond, _ = self.chunks[0]
            jax.block_until_ready(run(self.params, x0, cond))  # compile (and warm up)
            start = time.perf_counter()
            outs = [run(self.params, x0, cond) for x0, cond, _ in self.chunks]
            jax.block_until_ready(outs)
            seconds = time.perf_counter() - start
            x = np.concatenate([np.asarray(o[0], np.float32)[:k]
                                for o, (_, _, k) in zip(outs, self.chunks)])
            energies = [o[4] for o in outs]
            if self.path_metrics and tol is not None:
                energy_run = self._energy_solver(method, tol, max_steps, correction)
                energies = [energy_run(self.params, x0, cond) for x0, cond, _ in self.chunks]
            energy = None
            if energies[0] is not None:
                energy = np.concatenate([np.asarray(e, np.float64)[:k]
                                         for e, (_, _, k) in zip(energies, self.chunks)])
            self.cache[key] = {
                "x": x, "nfe": max(int(o[1]) for o in outs),
                "num_steps": max(int(o[2]) for o in outs),
                "success": all(bool(o[3]) for o in outs), "seconds": seconds,
                "energy": energy}
        return self.cache[key]


class _NLL:
    """Mean negative log-likelihood (nats) of fixed data points [n, ...] under the flow, by the
    exact-divergence augmented ODE from t = 1 to 0, with the same grid or tolerance as a
    sampling solve; unconditional (cond=None).  One jit per configuration, results cached."""

    def __init__(self, exp, params, data: np.ndarray, chunk_size: int):
        self.exp, self.params = exp, params
        self.chunks = [(jnp.asarray(data[i]), k) for i, k in _chunks(data.shape[0], chunk_size)]
        self.cache = {}

    def __call__(self, method: str, *, num_steps=None, tol=None, max_steps=4096) -> float:
        key = (method, num_steps, tol, max_steps)
        if key not in self.cache:
            apply_fn = lambda params, x, t, cond: self.exp.apply(params, x, t, cond)

            @jax.jit
            def run(params, x):
                v = sampling.velocity_fn(apply_fn, params, self.exp.objective)
                # log p1(x) with the run's source p0 (N(0, I) by default); NaN where a solve
                # failed.
                return likelihood.log_likelihood(v, x, method=method, num_steps=num_steps,
                                                 rtol=tol, atol=tol, max_steps=max_steps,
                                                 divergence="exact",
                                                 log_prior=self.exp.source_dist.log_prob)

            logp = np.concatenate([np.asarray(run(self.params, x), np.float64)[:k]
                                   for x, k in self.chunks])
            self.cache[key] = float(-np.mean(logp))  # NaN if a solve failed
        return self.cache[key]


def _quality_2d(exp, seed: int, num_samples: int) -> Callable[[np.ndarray], dict]:
    cfg = exp.config.eval
    base = jax.random.PRNGKey(seed)
    # Fresh data, independent of the noise (fold_in 0) and of each other (metrics_2d's advice).
    ref_tv = np.asarray(exp.source.sample_reference(jax.random.fold_in(base, 1),
                                                    max(num_samples, cfg.num_tv_samples)))
    ref_w2 = np.asarray(exp.source.sample_reference(jax.random.fold_in(base, 2),
                                                    cfg.num_w2_samples))

    def quality(samples):
        m = metrics_lib.metrics_2d(samples, ref_w2, ref_tv, exp.source.box, bins=cfg.tv_bins,
                                   n_w2=cfg.num_w2_samples)
        return {"tv": m["tv"], "w2": m["w2"]}

    return quality


class _TimeShift:
    """Evaluation times of time-shifted sampling per (method, num_steps), from the run's
    exposure-bias calibration and a pilot solve on noise independent of the compared solves."""

    def __init__(self, exp, params, seed: int, n: int, max_shift: float):
        base = jax.random.fold_in(jax.random.PRNGKey(seed), 4)
        self.path = exposure.model_path(exp.objective)
        self.calibration = diag_runs.calibration(exp, params, jax.random.fold_in(base, 0), n)
        self.noise = diag_runs.source_sample(exp, jax.random.fold_in(base, 1), n)
        labels = diag_runs.labels_for(exp, n)
        self.v = diag_runs.velocity(exp, params, None if labels is None else jnp.asarray(labels))
        self.max_shift = max_shift
        self.cache = {}

    def __call__(self, method: str, num_steps: int) -> np.ndarray:
        key = (method, num_steps)
        if key not in self.cache:
            tr = exposure.trajectory_statistic(self.v, self.path, self.noise, method=method,
                                               num_steps=num_steps)
            t_eff = exposure.effective_time(self.calibration, tr.stat, tr.ts, tr.stat_se)
            self.cache[key] = exposure.time_shift_schedule(tr.ts, t_eff, self.max_shift)
        return self.cache[key]


def compare_integrators(workdir: str, output_dir: str, *, methods: Sequence[str] | None = None,
                        nfe_budgets: Sequence[int] = DEFAULT_NFE_BUDGETS,
                        num_samples: int | None = None, seed: int = 0,
                        tolerances: Sequence[float] = DEFAULT_TOLERANCES, step: int | None = None,
                        quality_fn: Callable[[np.ndarray], dict] | None = None,
                        chunk_size: int | None = None, nll: bool = False,
                        reference_tol: float = REFERENCE_TOL, path_metrics: bool = True,
                        corrections: Sequence[str] = (),
                        max_shift: float = exposure.DEFAULT_MAX_SHIFT) -> list[dict]:
    """Compares integrators on the run in `workdir` (its EMA parameters at `step`, default latest).

    methods: integrator names (default DEFAULT_METHODS); nfe_budgets: positive ints; tolerances:
    rtol = atol values swept for the adaptive methods among `methods` (may be empty).
    num_samples: default config.eval.num_tv_samples (2-D; w2 on the first num_w2_samples) or
    config.eval.num_image_samples (images).  Noise x0 ~ N(0, I) [num_samples, ...] is drawn once
    from `seed` and shared by every solve.  quality_fn(samples [n, ...]) -> {metric: float}
    replaces the default quality metrics (2-D: tv, w2; images: none).  Solves run in chunks of
    chunk_size samples (default config.eval.chunk_size); an adaptive solve steps a whole chunk
    as one system.  reference_tol: rtol = atol of the dopri5 reference.
    nll (2-D data only): also a metric row "nll" per solve: the mean negative log-likelihood in
    nats of num_samples fresh data points, integrated back to t = 0 with the same method and
    grid or tolerance (exact divergence); the row's nfe and seconds are the sampling solve's.
    path_metrics: the straightness, energy_ratio and (2-D) npe columns (else None; see the
    module docstring; npe uses W2^2 between num_w2_samples noise points and fresh data).
    corrections: exposure-bias corrections ('time_shift', 'eps_scale=LAM'; see
    `flowmatch.diagnostics.exposure`), each run on every fixed-grid (method, budget) as extra
    rows.  time_shift takes its evaluation times from a pilot solve on other noise and a
    calibration on training data (CALIBRATION_SAMPLES each), shifts clipped to max_shift of a
    step.

    Returns the rows written to output_dir/integrators.{json,csv}: one per (method, budget or
    tolerance, correction, metric) with keys FIELDS: kind 'fixed' | 'adaptive' | 'reference';
    correction ('none' or the correction's name); budget (fixed
    rows) or rtol = atol (adaptive and reference rows, else None); num_steps (accepted steps)
    and nfe of one chunk's solve (adaptive: the maximum over chunks); metric, value (without
    quality metrics: metric 'traj_error'); traj_error; straightness, energy_ratio, npe (None for
    time-shifted rows, whose steps do not follow one field); seconds (compiled solve time of all
    chunks); success (every solve reached t = 1 with finite values).
    Raises ConfigError for bad arguments, FileNotFoundError without a checkpoint.
    """
    methods = _check_methods(methods)
    budgets = _check_budgets(nfe_budgets)
    tolerances = _check_tolerances(tolerances)
    _check_tolerances([reference_tol], "reference_tol")
    for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if value is not None and not _is_count(value):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    try:
        corrections = tuple(dict.fromkeys(exposure.parse_correction(c).name
                                          for c in corrections))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not 0.0 <= max_shift < 1.0:
        raise ConfigError(f"max_shift must be in [0, 1) (a fraction of a step), got {max_shift!r}")
    adaptive = [m for m in methods if m in integrators.ADAPTIVE_METHODS]
    plan = [(m, b, b // integrators.nfe_for(m, 1)) for m in methods for b in budgets
            if b >= integrators.nfe_for(m, 1)]
    if not plan and not (adaptive and tolerances):
        raise ConfigError(
            f"nothing to compare: one step of each of {', '.join(methods)} costs more than every "
            f"NFE budget {list(budgets)}; raise --nfe")

    exp, state, ckpt_step = generate.restore_run(workdir, step)
    cfg = exp.config.eval
    is_2d = exp.source.kind == "toy2d"
    n = num_samples or (cfg.num_tv_samples if is_2d else cfg.num_image_samples)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    x0 = np.asarray(exp.sample_source(key, n))  # p0 (config.source): N(0, I) by default
    cond = np.arange(n) % exp.model.num_classes if exp.conditional() else None
    if quality_fn is None and is_2d:
        quality_fn = _quality_2d(exp, seed, n)
    if nll and not is_2d:
        raise ConfigError("nll=True (--nll) is for 2-D data; this run's data are images")
    if nll and not exp.source_dist.has_density:
        raise ConfigError(
            f"nll=True (--nll) needs the density of the source p0 at t = 0, and this run's "
            f"source.name={exp.source_dist.name!r} has none in closed form; drop --nll")
    print(f"compare_integrators: {exp.config.data.name} at step {ckpt_step}, {n} samples, "
          f"methods {', '.join(methods)}", flush=True)

    chunk_size = chunk_size or cfg.chunk_size
    time_shift = None
    if "time_shift" in corrections:
        time_shift = _TimeShift(exp, state.ema_params, seed, min(n, CALIBRATION_SAMPLES),
                                max_shift)
    runner = _Runner(exp, state.ema_params, x0, cond, chunk_size, path_metrics=path_metrics,
                     time_shift=time_shift)
    w2_squared = None
    if path_metrics and is_2d:
        m = min(n, cfg.num_w2_samples)
        data = np.asarray(exp.source.sample_reference(
            jax.random.fold_in(jax.random.PRNGKey(seed), 5), m))
        w2_squared = metrics_lib.w2_distance(x0[:m], data) ** 2
    nll_of = None
    if nll:
        data = np.asarray(exp.source.sample_reference(
            jax.random.fold_in(jax.random.PRNGKey(seed), 3), n))
        nll_of = _NLL(exp, state.ema_params, data, chunk_size)
    reference = dict(tol=reference_tol, max_steps=REFERENCE_MAX_STEPS)
    ref = runner(REFERENCE_METHOD, **reference)
    if not ref["success"]:
        raise RuntimeError(
            f"the reference solve ({REFERENCE_METHOD}, rtol = atol = {reference_tol:g}) failed to "
            "reach t = 1; pass a looser reference_tol")

    rows = []

    def add(method, kind, solve, budget=None, correction=NO_CORRECTION):
        result = runner(method, **solve, correction=correction)
        tol = solve.get("tol")
        base = {"method": method, "kind": kind, "correction": correction, "budget": budget,
                "num_steps": result["num_steps"], "nfe": result["nfe"], "rtol": tol, "atol": tol,
                "traj_error": _traj_error(result["x"], ref["x"]), "seconds": result["seconds"],
                "success": result["success"], **dict.fromkeys(PATH_METRICS)}
        if result["energy"] is not None:
            pm = straightness.path_metrics(x0, result["x"], result["energy"], w2_squared)
            base.update({k: pm[k] for k in PATH_METRICS})
        quality = dict(quality_fn(result["x"])) if quality_fn is not None else {}
        if nll_of is not None:
            quality["nll"] = nll_of(method, **solve)
        for metric, value in (quality or {"traj_error": base["traj_error"]}).items():
            rows.append(dict(base, metric=metric, value=float(value)))

    add(REFERENCE_METHOD, "reference", reference)
    for method, budget, steps in plan:
        add(method, "fixed", {"num_steps": steps}, budget=budget)
        for correction in corrections:
            add(method, "fixed", {"num_steps": steps}, budget=budget, correction=correction)
    for method in adaptive:
        for tol in tolerances:
            add(method, "adaptive", {"tol": tol})
    rows = [{k: row[k] for k in FIELDS} for row in rows]

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILENAME)
    with open(path + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(path + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, path + ".png", title=f"{exp.config.data.name}, step {ckpt_step}, {n} samples")
    print(format_table(rows), flush=True)
    failed = sorted({(r["method"], r["kind"], r["correction"], r["budget"] or r["rtol"])
                     for r in rows
                     if not r["success"]})
    if failed:
        print(f"warning: solves that did not reach t = 1 with finite values: {failed}")
    return rows


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
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=120)
    for p, (name, metric, key, logy) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        lines = {}
        for r in rows:
            if r["metric"] != metric:
                continue
            if r.get(key) is None:
                continue
            if r["kind"] == "reference":
                if key in ("value", "energy_ratio"):
                    ax.axhline(r[key], color="gray", linestyle="--", linewidth=1,
                               label=f"reference ({r['method']}, tol {r['rtol']:g})")
                continue
            lines.setdefault(_label(r), set()).add((r["nfe"], r[key]))
        for label, pts in lines.items():
            xs, ys = np.array(sorted(pts), dtype=np.float64).T
            if logy:
                ys = np.where(ys > 0, ys, np.nan)  # a gap, not a failed log axis
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=label)
        ax.set_xscale("log", base=2)  # ticks at powers of 2, where NFE budgets usually sit
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
