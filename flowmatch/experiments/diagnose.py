"""The diagnostics on trained runs, written as JSON + PNG (the driver of scripts/diagnose.py).

    diagnose(analyses, runs, out, ...)   the script's analyses on its runs, each below
    exposure_report(workdir, out)        exposure.json / .png, and the corrections through the
                                         comparison harness: corrections/integrators.* and
                                         exposure_corrections.json
    spectra_report({name: workdir}, out) spectra.json, spectra.png, spectra_reach.png
    roofline_report(configs, out)        roofline.json, roofline.png

Each returns what it wrote as a dict and prints a short table.  Every run is restored with
`training.restore` and sampled through its `sampling.ModelFn`: trajectories run from t = 0 to the
model's t_end (1 for flow matching; a DDPM model's last training time, where its sampler stops),
and NFE budgets count a DDPM model's denoising evaluation as the sampler registry does.

Random streams (`rng.seed_stream(seed, name)`): "exposure_noise" (the trajectories' noise, also
the calibration's, so both start from identical states), "exposure_pairs" (the calibration's
training examples and their coupling), "spectra" (the spectra's noise); the corrections use the
comparison harness's streams (`flowmatch.experiments.compare`).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from flowmatch import checks
from flowmatch import fileio
from flowmatch import integrators
from flowmatch import rng
from flowmatch import sampling
from flowmatch import training
from flowmatch.checks import ConfigError
from flowmatch.data import toy2d
from flowmatch.diagnostics import exposure
from flowmatch.diagnostics import roofline
from flowmatch.diagnostics import runs as diag_runs
from flowmatch.diagnostics import spectra
from flowmatch.experiments import compare
from flowmatch.experiments.progress import progress
from flowmatch.training import loop as training_loop

ANALYSES = ("exposure", "spectra", "roofline")
DEFAULT_METHODS = ("euler", "heun", "rk4")
DEFAULT_EXPOSURE_NFE = (4, 8, 16, 32, 64)
DEFAULT_CORRECTIONS = ("time_shift", "eps_scale=0.98", "eps_scale=1.02")
DEFAULT_SPECTRA_NFE = (32,)
DEFAULT_FRACTION = 0.9
DEFAULT_ROOFLINE_CONFIGS = ("configs/moons.py", "configs/digits.py")
# The corrections are judged by sample quality; traj_error only needs a fair reference, and
# dopri5 at 1e-7 costs minutes per chunk of U-Net samples on a CPU.
CORRECTIONS_REFERENCE_TOL = 1e-5


def _save(fig: Figure, path: str) -> None:
    fig.tight_layout()
    fileio.save_figure(fig, path)


def _plan(methods, nfe_budgets, model: sampling.ModelFn | None = None):
    """[(method, budget, num_steps)] for the fixed-grid budgets each method fits in (counting a
    denoising model's extra evaluation); model=None checks the arguments alone."""
    out = []
    for m in methods:
        checks.as_config_error("methods", integrators.nfe_for, m, 1)  # lists the known names
        for b in sorted(set(nfe_budgets)):
            steps = sampling.steps_for_budget(m, b, model)
            if steps is not None:
                out.append((m, b, steps))
    if not out:
        raise ConfigError(f"no (method, NFE) pair fits: methods {list(methods)}, NFE "
                          f"{list(nfe_budgets)}; raise --nfe")
    return out


def _cond(labels):
    return None if labels is None else jnp.asarray(labels)


def _objective_name(run) -> str:
    return run.config.objective.name if "objective" in run.config else "flow_matching"


# -- the script's analyses -------------------------------------------------------------------------


def diagnose(analyses: Sequence[str], runs: Mapping[str, str], output_dir: str, *,
             methods: Sequence[str] = DEFAULT_METHODS, nfe_budgets: Sequence[int] | None = None,
             num_samples: int | None = None, compare_samples: int | None = None, seed: int = 0,
             corrections: Sequence[str] = DEFAULT_CORRECTIONS,
             max_shift: float = exposure.DEFAULT_MAX_SHIFT, fraction: float = DEFAULT_FRACTION,
             image_metric_cache: str | None = None,
             roofline_configs: Sequence[str] = DEFAULT_ROOFLINE_CONFIGS,
             batch_sizes: Mapping[str, Sequence[int]] | None = None,
             measure_peaks: bool = True) -> dict:
    """Runs `analyses` (of ANALYSES) and writes each into output_dir: exposure on every run of
    `runs` ({name: workdir}) into exposure_<name>/, spectra on the image runs among them into
    spectra/, roofline on the networks of `roofline_configs` (config files, 'FILE[:variant]')
    into roofline/.  nfe_budgets default per analysis (DEFAULT_EXPOSURE_NFE, DEFAULT_SPECTRA_NFE);
    image_metric_cache: score digits / mnist corrections by the feature classifier's Frechet
    distance (`image_metrics.make_image_metric`); batch_sizes: {'mlp' | 'unet': sizes}.
    Returns {analysis: its result}."""
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown or not analyses:
        raise ConfigError(f"unknown analyses {unknown}; choose from: {', '.join(ANALYSES)}")
    if {"exposure", "spectra"} & set(analyses) and not runs:
        raise ConfigError("exposure and spectra need --workdir (one or more training runs)")
    data = {name: training.load_config(w).data.name for name, w in runs.items()}
    out = {}
    if "exposure" in analyses:
        out["exposure"] = {name: exposure_report(
            workdir, os.path.join(output_dir, f"exposure_{name}"), methods=methods,
            nfe_budgets=nfe_budgets or DEFAULT_EXPOSURE_NFE, num_samples=num_samples, seed=seed,
            corrections=corrections, max_shift=max_shift, compare_samples=compare_samples,
            quality_fn=_image_quality(data[name], image_metric_cache))
            for name, workdir in runs.items()}
    if "spectra" in analyses:
        images = {n: w for n, w in runs.items() if data[n] not in toy2d.TOY_DATASETS}
        if not images:
            raise ConfigError("spectra need image runs; none of --workdir trained on images")
        out["spectra"] = spectra_report(
            images, os.path.join(output_dir, "spectra"), methods=methods,
            nfe_budgets=nfe_budgets or DEFAULT_SPECTRA_NFE, num_samples=num_samples, seed=seed,
            fraction=fraction)
    if "roofline" in analyses:
        from flowmatch.experiments import cli  # pylint: disable=g-import-not-at-top
        configs = {}
        for path in roofline_configs:
            config = cli.load_config_file(path)
            configs[config.model.name if config.model.name not in configs else path] = config
        out["roofline"] = roofline_report(configs, os.path.join(output_dir, "roofline"),
                                          batch_sizes=batch_sizes, measure_peaks=measure_peaks)
    return out


def _image_quality(data_name: str, cache: str | None) -> Callable | None:
    """The Frechet distance of the feature classifier of digits / mnist, or None."""
    if not cache or data_name not in ("digits", "mnist"):
        return None
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    metric = image_metrics.make_image_metric(data_name, cache)
    return lambda samples: {"fd": metric(samples)["fd"]}


# -- exposure bias ---------------------------------------------------------------------------------


def exposure_report(workdir: str, output_dir: str, *, methods: Sequence[str] = DEFAULT_METHODS,
                    nfe_budgets: Sequence[int] = DEFAULT_EXPOSURE_NFE,
                    num_samples: int | None = None, seed: int = 0, step: int | None = None,
                    corrections: Sequence[str] = DEFAULT_CORRECTIONS,
                    max_shift: float = exposure.DEFAULT_MAX_SHIFT,
                    quality_fn: Callable | None = None,
                    compare_samples: int | None = None) -> dict:
    """Effective noise level over t per (method, NFE) and the corrections' effect.

    num_samples: trajectories (and training examples for the calibration); default
    min(CALIBRATION_SAMPLES, eval size).  The calibration uses the same noise as the sampling
    solves, so both start from identical states.  Corrections go through
    `compare.compare_integrators` (fixed grids only, its own noise, compare_samples samples: default
    the run's eval size; quality_fn as there; reference at rtol = atol =
    CORRECTIONS_REFERENCE_TOL).
    """
    _plan(methods, nfe_budgets)
    run = training.restore(workdir, step)
    comps, params = run.components, run.state.ema_params
    model = comps.model_fn()
    plan = _plan(methods, nfe_budgets, model)
    cfg = comps.settings.eval
    n = num_samples or min(compare.CALIBRATION_SAMPLES, cfg.num_tv_samples
                           if comps.spec.kind == "toy2d" else cfg.num_image_samples)
    noise = diag_runs.source_sample(comps, rng.seed_stream(seed, "exposure_noise"), n)
    x0_cal, x1_cal, labels = diag_runs.training_pairs(
        comps, training_loop.load_data(comps.settings.data),
        rng.seed_stream(seed, "exposure_pairs"), noise)
    cal = exposure.calibrate(model.velocity_fn(params, _cond(labels)), model.path, x1_cal, x0_cal)
    v = model.velocity_fn(params, _cond(diag_runs.labels_for(comps, n)))
    data_name = comps.settings.data.name
    name = f"{data_name} ({_objective_name(run)}), step {run.step}"
    print(f"exposure: {name}, {n} trajectories", flush=True)
    profiles = exposure_profiles(v, model, cal, noise, plan)
    os.makedirs(output_dir, exist_ok=True)
    result = {"run": workdir, "data": data_name, "objective": _objective_name(run),
              "step": run.step, "num_samples": n,
              "calibration": {"taus": cal.taus.tolist(), "stat": cal.stat.tolist(),
                              "stat_se": cal.stat_se.tolist(), "sigma": cal.sigma.tolist()},
              "profiles": profiles}
    fileio.write_json(os.path.join(output_dir, "exposure.json"), result, indent=1)
    _plot_exposure(result, os.path.join(output_dir, "exposure.png"), name)

    if corrections:
        rows = compare.compare_integrators(
            workdir, os.path.join(output_dir, "corrections"),
            methods=list(dict.fromkeys(m for m, _, _ in plan)),
            nfe_budgets=sorted({b for _, b, _ in plan}), num_samples=compare_samples, seed=seed,
            tolerances=(), step=step, quality_fn=quality_fn, corrections=corrections,
            max_shift=max_shift, path_metrics=False, reference_tol=CORRECTIONS_REFERENCE_TOL)
        effect = correction_effects(rows)
        fileio.write_json(os.path.join(output_dir, "exposure_corrections.json"), effect, indent=1)
        result["corrections"] = effect
        print(format_effects(effect), flush=True)
    return result


def exposure_profiles(v: Callable, model: sampling.ModelFn, cal: exposure.Calibration, noise,
                      plan) -> list[dict]:
    """Per (method, budget, num_steps) of `plan`: the trajectories of v from `noise` over
    [0, model.t_end] on that grid, their effective noise level (`exposure.profile`) and its
    summary; printed as it goes."""
    profiles = []
    for method, _, steps in progress(plan, "exposure: trajectories (method x NFE)",
                                     unit="solve"):
        tr = exposure.trajectory_statistic(v, model.path, noise, method=method, num_steps=steps,
                                           t1=model.t_end)
        rows = exposure.profile(cal, model.path, tr.ts, tr.stat, tr.stat_se)
        summary = exposure.summarize(rows)
        profiles.append({"method": method, "nfe": sampling.nfe(method, steps, model),
                         "num_steps": steps, "summary": summary, "rows": rows})
        print(f"  {method:<8} nfe={profiles[-1]['nfe']:<4} "
              + "  ".join(f"{k}={_fmt(x)}" for k, x in summary.items()), flush=True)
    return profiles


def _fmt(v) -> str:
    return "-" if v is None else f"{v:+.4f}"


def correction_effects(rows: Sequence[dict]) -> list[dict]:
    """Per fixed-grid (method, nfe, correction, metric): the uncorrected and corrected values,
    rel_change = corrected / base - 1 and helps (corrected < base: every metric here is
    lower-is-better)."""
    base = {(r["method"], r["nfe"], r["metric"]): r["value"] for r in rows
            if r["kind"] == "fixed" and r["correction"] == compare.NO_CORRECTION}
    out = []
    for r in rows:
        if r["kind"] != "fixed" or r["correction"] == compare.NO_CORRECTION:
            continue
        b = base.get((r["method"], r["nfe"], r["metric"]))
        if b is None:
            continue
        rel = r["value"] / b - 1.0 if b else float("nan")
        out.append({"method": r["method"], "nfe": r["nfe"], "correction": r["correction"],
                    "metric": r["metric"], "base": b, "corrected": r["value"],
                    "rel_change": rel, "helps": bool(r["value"] < b)})
    return out


def format_effects(effect: Sequence[dict]) -> str:
    lines = [f"{'method':<8} {'nfe':>4} {'correction':<16} {'metric':<8} {'base':>9} "
             f"{'corrected':>9} {'change':>8}"]
    for e in effect:
        lines.append(f"{e['method']:<8} {e['nfe']:>4} {e['correction']:<16} {e['metric']:<8} "
                     f"{e['base']:>9.4g} {e['corrected']:>9.4g} {e['rel_change']:>+8.1%}")
    return "\n".join(lines)


def _plot_exposure(result: dict, path: str, title: str) -> None:
    """Per method (columns): sigma_eff / sigma_t (top) and t_eff - t (bottom) over nominal t,
    one line per NFE; right: the calibration curve r(t) and the sampling statistics."""
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    methods = list(dict.fromkeys(p["method"] for p in result["profiles"]))
    nfes = sorted({p["nfe"] for p in result["profiles"]})
    color = {n: colormaps["viridis"](i / max(len(nfes) - 1, 1)) for i, n in enumerate(nfes)}
    cols = len(methods) + 1
    fig = Figure(figsize=(3.6 * cols, 6.4), dpi=120)
    stat_ax = fig.add_subplot(2, cols, cols)
    cal = result["calibration"]
    stat_ax.plot(cal["taus"], cal["stat"], color="black", linewidth=1.5, label="training r(t)")
    for j, method in enumerate(methods):
        top = fig.add_subplot(2, cols, j + 1)
        bottom = fig.add_subplot(2, cols, cols + j + 1)
        for p in result["profiles"]:
            if p["method"] != method:
                continue
            rows = [r for r in p["rows"] if r["ratio"] is not None]
            t = [r["t"] for r in rows]
            c = color[p["nfe"]]
            top.plot(t, [r["ratio"] for r in rows], marker="o", markersize=2, linewidth=1,
                     color=c, label=f"NFE {p['nfe']}")
            bottom.plot(t, [r["t_eff"] - r["t"] for r in rows], marker="o", markersize=2,
                        linewidth=1, color=c)
            stat_ax.plot([r["t"] for r in p["rows"]], [r["stat"] for r in p["rows"]],
                         linestyle="--", linewidth=0.7, color=c)
        top.axhline(1.0, color="gray", linewidth=0.8)
        bottom.axhline(0.0, color="gray", linewidth=0.8)
        top.set(xlabel="t (nominal)", ylabel="sigma_eff / sigma_t", title=f"{method}")
        bottom.set(xlabel="t (nominal)", ylabel="t_eff - t")
        top.legend(fontsize=6)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    stat_ax.set(xlabel="t", ylabel="||x - alpha_t x1_hat||^2 / dim",
                title="training (solid), sampling (dashed)")
    stat_ax.legend(fontsize=7)
    stat_ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: effective noise level of the sampling states", fontsize=9)
    _save(fig, path)


# -- coarse-to-fine spectra ------------------------------------------------------------------------


def spectra_report(workdirs: Mapping[str, str], output_dir: str, *,
                   methods: Sequence[str] = DEFAULT_METHODS,
                   nfe_budgets: Sequence[int] = DEFAULT_SPECTRA_NFE,
                   num_samples: int | None = None, seed: int = 0,
                   fraction: float = DEFAULT_FRACTION) -> dict:
    """Radial spectra of x1_hat and x_t along sampling trajectories of image runs.

    workdirs: {label: workdir} (e.g. {"fm": ..., "ddpm": ...}); every run integrates the same
    noise (num_samples, default the run's eval size) with each (method, NFE); see
    `spectra_entries` for what is measured.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction!r}")
    _plan(methods, nfe_budgets)
    entries = []
    for label, workdir in workdirs.items():
        run = training.restore(workdir)
        comps = run.components
        if comps.spec.kind != "image":
            raise ConfigError(f"spectra are for image runs; {workdir} trained on "
                              f"{comps.settings.data.name!r} ({comps.spec.kind})")
        model = comps.model_fn()
        n = num_samples or comps.settings.eval.num_image_samples
        x0 = diag_runs.source_sample(comps, rng.seed_stream(seed, "spectra"), n)
        v = model.velocity_fn(run.state.ema_params, _cond(diag_runs.labels_for(comps, n)))
        plan = _plan(methods, nfe_budgets, model)
        for e in spectra_entries(v, model.path, x0, plan, fraction, label, t1=model.t_end,
                                 model=model):
            entries.append(dict(e, workdir=workdir, objective=_objective_name(run),
                                step=run.step))
    return write_spectra(entries, fraction, output_dir)


def spectra_entries(v: Callable, path, x0, plan, fraction: float, label: str, *,
                    t1: float = 1.0, model: sampling.ModelFn | None = None) -> list[dict]:
    """One entry per (method, NFE, num_steps) of `plan`: ring energies ("sum" profiles, batch
    means) of x1_hat and x_t at every grid time of [0, t1]; per ring the reach time (x1_hat
    energy first >= fraction of its final value), the settle times of x1_hat and x_t (within
    1 - fraction of final from then on), and the path's log-SNR at the reach time (comparable
    between schedules, e.g. FM's cond-OT and DDPM's VP path).  model: counts its NFE as the
    sampler registry does (a denoising evaluation included)."""
    out = []
    for method, _, steps in progress(plan, f"spectra: {label} (method x NFE)", unit="solve"):
        ts, xs, x1s = spectra.spectral_trajectory(v, path, x0, method=method, num_steps=steps,
                                                  t1=t1)
        e_pred = spectra.profiles_over_time(x1s, "sum")
        e_state = spectra.profiles_over_time(xs, "sum")
        reach = spectra.reach_times(ts, e_pred, fraction)
        entry = {"run": label, "method": method, "nfe": sampling.nfe(method, steps, model),
                 "num_steps": steps, "num_samples": int(x0.shape[0]), "t": ts.tolist(),
                 "log_snr": _finite(spectra.log_snr(path, ts)),
                 "rings": list(range(e_pred.shape[1])),
                 "energy_x1_hat": e_pred.tolist(), "energy_x_t": e_state.tolist(),
                 "reach_t": reach.tolist(), "reach_log_snr": _finite(spectra.log_snr(path, reach)),
                 "settle_t_x1_hat": spectra.settle_times(ts, e_pred, fraction).tolist(),
                 "settle_t_x_t": spectra.settle_times(ts, e_state, fraction).tolist()}
        out.append(entry)
        print(f"spectra: {label:<6} {method:<6} nfe={entry['nfe']:<4} reach t (rings 1..): "
              + " ".join(f"{t:.2f}" for t in reach[1:]), flush=True)
    return out


def write_spectra(entries: Sequence[dict], fraction: float, output_dir: str) -> dict:
    """spectra.json ({"fraction", "entries"}), spectra.png (ring energy / final over t, x1_hat
    and x_t, per entry) and spectra_reach.png (reach time and log-SNR against ring)."""
    os.makedirs(output_dir, exist_ok=True)
    result = {"fraction": fraction, "entries": list(entries)}
    fileio.write_json(os.path.join(output_dir, "spectra.json"), result, indent=1)
    _plot_bands(entries, os.path.join(output_dir, "spectra.png"))
    _plot_reach(entries, fraction, os.path.join(output_dir, "spectra_reach.png"))
    return result


def _finite(a) -> list:
    return [float(x) if np.isfinite(x) else None for x in np.asarray(a, np.float64)]


def _plot_bands(entries, path: str) -> None:
    fig = Figure(figsize=(9, 2.8 * len(entries)), dpi=110)
    for i, e in enumerate(entries):
        for j, (key, what) in enumerate((("energy_x1_hat", "x1_hat"), ("energy_x_t", "x_t"))):
            ax = fig.add_subplot(len(entries), 2, 2 * i + j + 1)
            energy = np.asarray(e[key])
            rel = energy / np.where(energy[-1:] > 0, energy[-1:], np.nan)
            for k in e["rings"][1:]:
                ax.plot(e["t"], rel[:, k], linewidth=1.2, label=f"ring {k}",
                        color=_ring_color(k, len(e["rings"])))
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_yscale("log")
            ax.set(xlabel="t", ylabel=f"ring energy / final ({what})",
                   title=f"{e['run']} {e['method']} NFE {e['nfe']}: {what}")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=6, ncol=2)
    _save(fig, path)


def _ring_color(k, n):
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    return colormaps["viridis"](k / max(n - 1, 1))


def _plot_reach(entries, fraction, path: str) -> None:
    fig = Figure(figsize=(10, 4), dpi=120)
    ax0, ax1 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for e in entries:
        label = f"{e['run']} {e['method']} NFE {e['nfe']}"
        rings = e["rings"][1:]
        line, = ax0.plot(rings, e["reach_t"][1:], marker="o", label=label)
        lsnr = [x if x is not None else np.nan for x in e["reach_log_snr"][1:]]
        ax1.plot(rings, lsnr, marker="o", color=line.get_color(), label=label)
    ax0.set(xlabel="ring (cycles per image)", ylabel="t",
            title=f"x1_hat ring energy reaches {fraction:.0%} of final")
    ax1.set(xlabel="ring (cycles per image)", ylabel="log SNR = log(alpha^2 / sigma^2)",
            title="the same, as the path's log-SNR")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


# -- compute profile -------------------------------------------------------------------------------


def roofline_report(configs: Mapping[str, object], output_dir: str, *,
                    batch_sizes: Mapping[str, Sequence[int]] | None = None, repeats: int = 5,
                    measure_peaks: bool = True) -> dict:
    """FLOPs, bytes, intensity and time of a train step and a sampling evaluation per config
    ({label: ConfigDict}) and batch size (batch_sizes {label: sizes}; default by model: MLP
    DEFAULT_MLP_BATCHES, U-Net DEFAULT_UNET_BATCHES), on this device's measured roofline and on
    the accelerators' (`roofline.ACCELERATORS`)."""
    peaks = roofline.measure_cpu_peaks(repeats=repeats) if measure_peaks else None
    device = jax.devices()[0]
    rows = []
    for label, config in progress(configs.items(), "roofline: networks", unit="network"):
        sizes = (batch_sizes or {}).get(label) or (
            roofline.DEFAULT_UNET_BATCHES if config.model.name == "unet"
            else roofline.DEFAULT_MLP_BATCHES)
        for r in roofline.profile_model(config, sizes, repeats=repeats):
            rows.append(dict(r, config=label))
    ridges = roofline.ridge_points(peaks)
    rows = roofline.classify(rows, ridges)
    result = {"device": str(device), "device_kind": device.device_kind,
              "backend": jax.default_backend(), "peaks": peaks,
              "accelerators": roofline.ACCELERATORS, "ridge_points": ridges,
              "crossover_batch": {d: roofline.crossover(rows, p) for d, p in ridges.items()},
              "crossover_batch_io": {d: roofline.crossover(rows, p, "intensity_io")
                                     for d, p in ridges.items()},
              "rows": rows}
    os.makedirs(output_dir, exist_ok=True)
    fileio.write_json(os.path.join(output_dir, "roofline.json"), result, indent=1)
    _plot_roofline(result, os.path.join(output_dir, "roofline.png"))
    print(format_roofline(result), flush=True)
    return result


def format_roofline(result: dict) -> str:
    p = result["peaks"]
    lines = []
    if p:
        lines.append(f"{result['device_kind']}: measured peak {p['peak_flops'] / 1e9:.1f} GFLOP/s, "
                     f"bandwidth {p['bandwidth'] / 1e9:.2f} GB/s (memory), "
                     f"{p['cache_bandwidth'] / 1e9:.2f} GB/s (cache); ridge "
                     f"{result['ridge_points']['this device']:.1f} FLOP/byte (memory)")
    lines.append(f"{'config':<8} {'what':<12} {'batch':>6} {'GFLOP':>9} {'MB':>8} "
                 f"{'FLOP/B':>7} {'io MB':>7} {'io F/B':>8} {'ms':>9} {'GFLOP/s':>8}  "
                 "bound: here / H100 / TPU v5e")
    for r in result["rows"]:
        ms = "-" if r["seconds"] is None else f"{r['seconds'] * 1e3:.3f}"
        gfs = "-" if r["flops_per_sec"] is None else f"{r['flops_per_sec'] / 1e9:.2f}"
        b = r["bound"]
        lines.append(f"{r['config']:<8} {r['what']:<12} {r['batch']:>6} {r['flops'] / 1e9:>9.4g} "
                     f"{r['bytes'] / 1e6:>8.4g} {r['intensity']:>7.2f} {r['io_bytes'] / 1e6:>7.3g} "
                     f"{r['intensity_io']:>8.1f} {ms:>9} {gfs:>8}  "
                     f"{b.get('this device', '-')} / {b['NVIDIA H100 SXM']} / {b['TPU v5e']}")
    return "\n".join(lines)


def _plot_roofline(result: dict, path: str) -> None:
    rows = result["rows"]
    fig = Figure(figsize=(12, 4.8), dpi=120)
    ax0, ax1 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    intensities = np.array([r["intensity"] for r in rows] + [r["intensity_io"] for r in rows])
    lo, hi = max(intensities.min() / 3, 1e-2), intensities.max() * 3
    xs = np.logspace(math.log10(lo), math.log10(max(hi, 1e3)), 200)
    markers = {"train_step": "o", "sample_eval": "s"}
    groups = {}
    for r in rows:
        groups.setdefault((r["config"], r["what"]), []).append(r)
    p = result["peaks"]
    if p:
        ax0.plot(xs, np.minimum(p["peak_flops"], xs * p["bandwidth"]), color="black",
                 label=f"{result['device_kind']} roof, memory (measured)")
        if p.get("cache_bandwidth"):
            ax0.plot(xs, np.minimum(p["peak_flops"], xs * p["cache_bandwidth"]), color="black",
                     linestyle="--", label="roof, cache-resident working set (measured)")
    for (cfg, what), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["batch"])
        if rs[0]["flops_per_sec"] is not None:
            line, = ax0.plot([r["intensity"] for r in rs], [r["flops_per_sec"] for r in rs],
                             marker=markers.get(what, "o"), label=f"{cfg} {what}")
            for r in rs:
                ax0.annotate(str(r["batch"]), (r["intensity"], r["flops_per_sec"]), fontsize=6,
                             color=line.get_color(), xytext=(2, 2), textcoords="offset points")
    ax0.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
            ylabel="FLOP/s", title="this device: achieved (points, labelled by batch)")
    ax0.grid(alpha=0.3, which="both")
    ax0.legend(fontsize=6)
    for name, a in result["accelerators"].items():
        if name not in ("NVIDIA H100 SXM", "NVIDIA A100 SXM 80GB", "TPU v4", "TPU v5e"):
            continue
        peak, bw = a["float32_tflops"] * 1e12, a["bandwidth_gbs"] * 1e9
        line, = ax1.plot(xs, np.minimum(peak, xs * bw), linewidth=1, label=name)
    for i, ((cfg, what), rs) in enumerate(groups.items()):
        y = 3e10 * 2.0 ** -i  # one row of intensity ranges per workload
        for r in rs:
            ax1.plot([r["intensity"], r["intensity_io"]], [y, y], color="gray", linewidth=0.6)
            ax1.annotate(str(r["batch"]), (r["intensity_io"], y), fontsize=5,
                         xytext=(0, 3), textcoords="offset points")
        ax1.scatter([r["intensity"] for r in rs], [y] * len(rs), marker=markers.get(what, "o"),
                    s=12, label=f"{cfg} {what}: XLA bytes (filled) .. I/O bytes (open)")
        ax1.scatter([r["intensity_io"] for r in rs], [y] * len(rs),
                    marker=markers.get(what, "o"), s=12, facecolors="none",
                    edgecolors=ax1.collections[-1].get_facecolor())
    ax1.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
            ylabel="attainable FLOP/s (float32 peak)",
            title="vendor rooflines; each workload's intensity range (labels: batch)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=6)
    _save(fig, path)
