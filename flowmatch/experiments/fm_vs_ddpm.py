"""Flow matching vs the DDPM baseline at equal network, data and training budget.

`run_benchmark(config, workdir)` trains (or resumes) two runs from one config, identical but for
`config.objective`: `workdir/fm` (flow matching) and `workdir/ddpm` (DDPM, benchmark.ddpm_prediction
eps / x0 / v), then samples both over an NFE grid, every sampler from the one registry
(`flowmatch.sampling`):

    fm    x {euler, heun, rk4} on fixed grids, dopri5 over tolerances
    ddpm  x {ancestral over all T steps, ancestral respaced, DDIM (eta = 0), and the
             probability-flow ODE with the same integrators as fm (integrated to t_end = 1 - 1/T,
             then one denoising evaluation, counted in the NFE)}
    both  x benchmark.solver_methods (DPM-Solver++ / UniPC multistep solvers in log-SNR time)
          and benchmark.sde_methods (SDE samplers of the path), labelled by method name
          ('dpmpp_2m' for the fm and the ddpm row alike), at every NFE budget

and scores every sample set with the data's metrics: `tv` and `w2` for 2-D data; for images the
Frechet distance `fd` in a classifier's feature space (flowmatch.image_metrics), or FID for data
sets without one, plus held-out bits/dim (`bpd`: the exact likelihood for fm, the variational
bound for ddpm).  Writes benchmark.json / .csv / .png under `workdir`, prints the table, and
writes benchmark_reference.json: the floors the numbers are read against (real data scored like
the samples, at the scored sample count) and, for images, the feature classifier's accuracy.

Randomness: every sample set is `experiments.sample.draw(run, benchmark.num_samples,
seed=benchmark.seed, ...)`, exactly what `scripts/sample.py --seed=SEED --num_samples=N` writes
for the same run and sampler; both models start from the same noise.  Reference data and the
bits/dim draws come from rng.seed_stream(benchmark.seed, "reference" | "reference_w2" |
"bpd_images" | "bpd").

`best_per_family(rows)` reads the rows at each NFE budget: per model, the best sampler of each
family (FAMILIES: 'ode' Runge-Kutta / multistep integrators, 'dpm_solver', 'sde', 'ddpm'
ancestral / DDIM), written as benchmark_best.json / .csv and printed.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowmatch import data as data_lib
from flowmatch import fileio
from flowmatch import integrators
from flowmatch import likelihood
from flowmatch import metrics as metrics_lib
from flowmatch import plotting
from flowmatch import rng
from flowmatch import sampling
from flowmatch import training
from flowmatch.checks import ConfigError
from flowmatch.experiments import sample as sample_lib
from flowmatch.experiments.progress import progress
from flowmatch.training import evaluation
from flowmatch.training import loop as loop_lib

MODELS = ("fm", "ddpm")
ROW_KEYS = ("model", "sampler", "method", "family", "budget", "nfe", "metric", "value",
            "seconds")
CSV_KEYS = ROW_KEYS + ("success",)
# The summary's families: the registry's (sampling.family) with DDPM's two samplers as one.
FAMILIES = ("ode", "dpm_solver", "sde", "ddpm")
_FAMILY = {"ode": "ode", "dpm_solver": "dpm_solver", "sde": "sde", "ancestral": "ddpm",
           "ddim": "ddpm"}
DEFAULT_SOLVER_METHODS = ("dpmpp_2m", "dpmpp_3m", "unipc")
DEFAULT_SDE_METHODS = ("sde_euler",)
FLOOR_KEYS = {"tv": ("tv_floor",), "w2": ("w2_floor",), "fd": ("fd_train_vs_test",)}


def model_configs(config: ml_collections.ConfigDict) -> dict:
    """The fm and ddpm training configs: the benchmark config with only the objective changed."""
    b = config.benchmark
    out = {}
    for model, name, prediction in (("fm", "flow_matching", b.fm_prediction),
                                    ("ddpm", "ddpm", b.ddpm_prediction)):
        c = ml_collections.ConfigDict(config.to_dict())
        del c["benchmark"]
        c.objective.name = name
        c.objective.prediction = prediction
        out[model] = c
    return out


class GridEntry(NamedTuple):
    """One benchmarked sampler: model ('fm' | 'ddpm'), label (the rows' `sampler`), settings
    (method, num_steps, rtol, atol) and budget (the NFE budget it was sized for; None for
    adaptive solves and DDPM's full ancestral run)."""

    model: str
    label: str
    settings: dict
    budget: int | None = None


def _fixed_budget_rows(model: str, label: str, method: str, b, fn: sampling.ModelFn):
    """One GridEntry per NFE budget that fits a step of `method` on `fn` (a DDPM model's
    discrete-time samplers also at most its T steps)."""
    steps = {budget: sampling.runnable_steps(method, budget, fn) for budget in b.nfe}
    return [GridEntry(model, label, dict(method=method, num_steps=n), budget)
            for budget, n in steps.items() if n is not None]


def sampler_grid(b, models: dict) -> list[GridEntry]:
    """Every benchmarked sampler and budget (module docstring), as GridEntry records.

    b: config.benchmark; models: {"fm": ModelFn, "ddpm": ModelFn}.  Fixed grids take the most
    steps whose NFE fits each budget (`sampling.steps_for_budget`, which counts the DDPM
    model's denoising evaluation); adaptive methods one row per tolerance (rtol = atol).
    benchmark.solver_methods / sde_methods (defaults DEFAULT_SOLVER_METHODS /
    DEFAULT_SDE_METHODS) run on both models, labelled by their method name.
    """
    grid = []
    for model in MODELS:
        prefix = "" if model == "fm" else "pf_ode/"
        for method in b.ode_methods:
            if method in integrators.ADAPTIVE_METHODS:
                grid += [GridEntry(model, f"{prefix}{method}@{tol:g}",
                                   dict(method=method, rtol=tol, atol=tol)) for tol in b.tolerances]
                continue
            grid += _fixed_budget_rows(model, f"{prefix}{method}", method, b, models[model])
    grid.append(GridEntry("ddpm", "ancestral", dict(method="ancestral", num_steps=None)))
    num_timesteps = models["ddpm"].path.schedule.num_timesteps
    for nfe in b.nfe:
        if nfe < num_timesteps:
            grid.append(GridEntry("ddpm", "ancestral_respaced",
                                  dict(method="ancestral", num_steps=nfe), nfe))
            grid.append(GridEntry("ddpm", "ddim", dict(method="ddim", num_steps=nfe), nfe))
    extra = (tuple(b.get("solver_methods", DEFAULT_SOLVER_METHODS))
             + tuple(b.get("sde_methods", DEFAULT_SDE_METHODS)))
    for method in extra:
        for model in MODELS:
            grid += _fixed_budget_rows(model, method, method, b, models[model])
    return grid


def draw_samples(run, num_samples: int, seed: int, settings: dict) -> sampling.Samples:
    """num_samples samples of `run` with sampler `settings` (method, num_steps, rtol, atol) from
    `seed`: `experiments.sample.draw`, exactly as scripts/sample.py draws them (the run's
    eval.chunk_size; labels round-robin for a class-conditional run)."""
    comps = run.components
    labels = np.arange(num_samples) % comps.model.num_classes if comps.conditional else None
    return sample_lib.draw(run, num_samples, seed=seed, labels=labels, **settings)


# -- quality ------------------------------------------------------------------------------------


def quality_fn(config, workdir: str, kind: str):
    """(samples -> {metric: value}, reference) for data of `kind` ('toy2d' or 'image').

    reference: what the numbers are read against, written to benchmark_reference.json: for 2-D
    data the tv / w2 of fresh data against fresh data at the scored sample count
    (`evaluation.reference_floors`); for images the feature classifier's test accuracy and the
    real-vs-real Frechet floors at this sample count, or the FID reference statistics.
    """
    if kind == "toy2d":
        return _quality_2d(config)
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    b = config.benchmark
    if config.data.name not in image_metrics.CLASSIFIER_DEFAULTS:
        return _fid_quality_fn(config, workdir)
    metric = image_metrics.make_image_metric(config.data.name, os.path.join(workdir, "cache"))
    floors = metric.floors(num_samples=b.num_samples)
    reference = {"data": config.data.name, "num_samples": b.num_samples,
                 "classifier_test_accuracy": float(metric.classifier.test_accuracy),
                 "num_reference_images": metric.num_reference, **floors,
                 "note": "fd floors: real images scored like the samples (train subset of "
                         "num_samples vs the test split; two test halves)"}
    return (lambda samples: {"fd": metric(samples)["fd"]}), reference


def _quality_2d(config):
    """tv of the num_samples samples against as many fresh points, w2 of the first
    eval.num_w2_samples against as many others; floors at those counts."""
    b, e = config.benchmark, config.eval
    n, n_w2 = b.num_samples, min(e.num_w2_samples, b.num_samples)
    source = data_lib.make_source(config.data.name)
    ref = np.asarray(source.sample_reference(rng.seed_stream(b.seed, "reference"), n))
    ref_w2 = np.asarray(source.sample_reference(rng.seed_stream(b.seed, "reference_w2"), n_w2))

    def quality(samples):
        m = metrics_lib.metrics_2d(samples, ref_w2, ref, source.box, bins=e.tv_bins, n_w2=n_w2)
        return {"tv": m["tv"], "w2": m["w2"]}

    floors = evaluation.reference_floors(config.data.name, num_tv=n, num_w2=n_w2,
                                         bins=e.tv_bins)
    reference = {"data": config.data.name, "num_samples": n, "num_w2_samples": n_w2,
                 "tv_floor": floors["tv"], "w2_floor": floors["w2"],
                 "note": "fresh data vs fresh data at the scored sample counts, mean over 5 seeds"}
    return quality, reference


def _fid_quality_fn(config, workdir):
    """FID (Inception pool3) for data sets without a feature classifier, e.g. CIFAR-10.

    benchmark.fid_weights: the converted FID Inception weights (.npz; see models.inception for
    where to get and how to convert them).  benchmark.fid_stats: a .npz of reference statistics
    ("mu", "sigma"); if empty, the statistics of the whole training split are computed once and
    cached in workdir/cache/ (the standard CIFAR-10 protocol: 50,000 samples against the 50,000
    training images).
    """
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    from flowmatch.data import images as images_lib  # pylint: disable=g-import-not-at-top
    b = config.benchmark
    extractor = image_metrics.load_inception_extractor(b.fid_weights)  # checked at the start
    stats_path = b.get("fid_stats", "") or os.path.join(
        workdir, "cache", f"fid_stats_{config.data.name}_train.npz")
    if not os.path.exists(stats_path):
        if b.get("fid_stats", ""):
            raise FileNotFoundError(f"benchmark.fid_stats {stats_path!r} not found; leave it "
                                    "empty to compute the training split's statistics")
        train = images_lib.load_image_dataset(
            config.data.name, split="train", path=config.data.get("path") or None,
            image_size=config.data.get("image_size") or None,
            channels=config.data.get("channels", 3)).x
        print(f"benchmark: FID statistics of {len(train)} training images -> {stats_path}",
              flush=True)
        image_metrics.save_stats(stats_path, *image_metrics.compute_stats(extractor, train))
    stats = image_metrics.load_stats(stats_path)
    reference = {"data": config.data.name, "num_samples": b.num_samples,
                 "fid_reference_stats": stats_path,
                 "note": "FID against the reference statistics; comparable only at equal "
                         "num_samples (the standard protocol uses 50,000)"}

    def quality(samples):
        return {"fid": image_metrics.compute_fid(extractor, samples, stats)}

    return quality, reference


# -- bits/dim -----------------------------------------------------------------------------------


def fm_bits_per_dim(run, x, key, tol: float) -> dict:
    """Row of the flow's exact held-out bits/dim (dopri5 at rtol = atol = tol, Hutchinson
    divergence, uniform dequantization): x [B, H, W, C] in [-1, 1]."""
    model = run.components.model_fn()
    fn = jax.jit(lambda p, xx, k: likelihood.bits_per_dim(
        model.velocity_fn(p), xx, k, method="dopri5", rtol=tol, atol=tol,
        divergence="hutchinson", return_solution=True))
    start = time.perf_counter()
    bpd, res = fn(run.state.ema_params, x, key)
    return dict(model="fm", sampler="likelihood/dopri5", method="dopri5", family="likelihood",
                budget=None, nfe=int(res.nfe), metric="bpd",
                value=float(jnp.mean(bpd)), seconds=time.perf_counter() - start)


def ddpm_bits_per_dim(run, x, key, num_terms: int) -> dict:
    """Row of the DDPM model's variational bound in bits/dim (`likelihood.vlb_bits_per_dim`;
    num_terms of its T - 1 KL terms, 0 = all)."""
    model = run.components.model_fn()
    fn = jax.jit(lambda p, xx, k: likelihood.vlb_bits_per_dim(model, p, xx, k,
                                                              num_terms=num_terms or None))
    start = time.perf_counter()
    out = fn(run.state.ema_params, x, key)
    return dict(model="ddpm", sampler="vlb", method="vlb", family="likelihood", budget=None,
                nfe=int(out.nfe), metric="bpd",
                value=float(jnp.mean(out.total)), seconds=time.perf_counter() - start)


def bpd_rows(runs: dict, config) -> list[dict]:
    """Held-out bits/dim of both models on benchmark.num_bpd_images reference images (the data
    set's held-out split), from rng.seed_stream(seed, "bpd_images") / "bpd"."""
    b = config.benchmark
    source = loop_lib.load_data(runs["fm"].components.settings.data)
    x = jnp.asarray(np.asarray(source.sample_reference(
        rng.seed_stream(b.seed, "bpd_images"), b.num_bpd_images)))
    key = rng.seed_stream(b.seed, "bpd")
    return [fm_bits_per_dim(runs["fm"], x, key, b.bpd_tol),
            ddpm_bits_per_dim(runs["ddpm"], x, key, b.vlb_terms)]


# -- the benchmark ------------------------------------------------------------------------------


def check_metric_inputs(config):
    """Fails before any training when the quality metric cannot be computed at the end."""
    from flowmatch.data import images as images_lib  # pylint: disable=g-import-not-at-top
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    name = config.data.name
    if name in images_lib.IMAGE_DATASETS and name not in image_metrics.CLASSIFIER_DEFAULTS:
        weights = config.benchmark.get("fid_weights", "")
        if not weights:
            raise ConfigError(
                f"data {name!r} has no feature classifier, so the benchmark scores it by FID: set "
                "--config.benchmark.fid_weights to the converted FID Inception weights (.npz; "
                "flowmatch/models/inception.py says where to get and how to convert them)")
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"benchmark.fid_weights {weights!r} not found; flowmatch/models/inception.py says "
                "where to get the FID Inception weights and how to convert them to .npz")


def train_models(config, workdir: str) -> dict:
    """Trains (or resumes) workdir/fm and workdir/ddpm; returns {model: restored training.Run}."""
    runs = {}
    for model, c in model_configs(config).items():
        run_dir = os.path.join(workdir, model)
        print(f"benchmark: training {model} in {run_dir}", flush=True)
        training.train_and_evaluate(c, run_dir)
        runs[model] = training.restore(run_dir)
    return runs


def score_sampler(run, config, quality, entry: GridEntry) -> list[dict]:
    """The rows of one sampler (a GridEntry): its samples scored by `quality`.  seconds: wall
    time of the draw, its one compilation included."""
    start = time.perf_counter()
    b = config.benchmark
    out = draw_samples(run, b.num_samples, b.seed, entry.settings)
    seconds = time.perf_counter() - start
    method = entry.settings["method"]
    rows = [dict(model=entry.model, sampler=entry.label, method=method,
                 family=_FAMILY[sampling.family(method)], budget=entry.budget, nfe=int(out.nfe),
                 metric=metric, value=float(value), seconds=seconds, success=bool(out.success))
            for metric, value in quality(out.x).items()]
    values = " ".join(f"{r['metric']}={r['value']:.4f}" for r in rows)
    print(f"  {entry.model:<5} {entry.label:<22} nfe={int(out.nfe):<5} {values}  "
          f"({seconds:.2f} s)", flush=True)
    return rows


def run_benchmark(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains/resumes both models, evaluates every sampler, writes and returns the rows."""
    check_metric_inputs(config)
    os.makedirs(workdir, exist_ok=True)
    runs = train_models(config, workdir)
    kind = runs["fm"].components.spec.kind
    quality, reference = quality_fn(config, workdir, kind)
    fileio.write_json(os.path.join(workdir, "benchmark_reference.json"), reference)
    print("benchmark: reference " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in reference.items()
        if k != "note"), flush=True)
    models = {m: r.components.model_fn() for m, r in runs.items()}
    rows, scored = [], {}
    for entry in progress(sampler_grid(config.benchmark, models),
                          "benchmark: samplers x NFE budgets", unit="sampler"):
        # A sampler sized alike for two budgets (e.g. rk4: 2 steps for 8 and for 10) runs once.
        key = (entry.model, tuple(sorted(entry.settings.items())))
        if key not in scored:
            scored[key] = score_sampler(runs[entry.model], config, quality, entry)
        rows += [dict(r, budget=entry.budget) for r in scored[key]]
    if kind == "image" and config.benchmark.num_bpd_images > 0:
        rows += bpd_rows(runs, config)
    write_results(rows, workdir, reference,
                  figure_formats=tuple(config.benchmark.get("figure_formats", ("png",))))
    return rows


# -- results ------------------------------------------------------------------------------------


def write_results(rows, workdir: str, reference: dict | None = None,
                  figure_formats=("png",)) -> None:
    """benchmark.json (the rows), benchmark.csv (CSV_KEYS, a row per metric),
    benchmark_wide.csv (a row per model, sampler and NFE, a column per metric), one figure per
    metric but bpd in each of figure_formats (benchmark.png for the first, benchmark_<metric>.png
    for the others; pdf / svg for a paper), benchmark_best.json / .csv (`best_per_family`);
    prints both tables."""
    fileio.write_json(os.path.join(workdir, "benchmark.json"), rows)
    fileio.write_csv(os.path.join(workdir, "benchmark.csv"), rows, CSV_KEYS)
    fileio.write_wide_csv(os.path.join(workdir, "benchmark_wide.csv"),
                          [{k: r[k] for k in CSV_KEYS if k in r} for r in rows],
                          ("model", "sampler", "budget", "nfe"))
    best = best_per_family(rows)
    fileio.write_json(os.path.join(workdir, "benchmark_best.json"), best)
    fileio.write_csv(os.path.join(workdir, "benchmark_best.csv"), best, _best_keys(rows))
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if m != "bpd"]
    for metric in metrics:
        for fmt in figure_formats:
            path = os.path.join(workdir, f"benchmark.{fmt}" if metric == metrics[0]
                                else f"benchmark_{metric}.{fmt}")
            plot_metric(rows, metric, path, reference)
    print(format_table(rows))
    print("best sampler of each family per NFE budget (ranked by "
          f"{_metrics(rows)[0] if _metrics(rows) else '-'}):")
    print(format_best(best, _metrics(rows)))


def _metrics(rows) -> list[str]:
    """The quality metrics of the rows, in order (not bpd)."""
    return [m for m in dict.fromkeys(r["metric"] for r in rows) if m != "bpd"]


def _best_keys(rows) -> tuple[str, ...]:
    return ("budget", "model", "family", "sampler", "nfe") + tuple(_metrics(rows))


def best_per_family(rows, metric: str | None = None) -> list[dict]:
    """At each NFE budget, per model, the best sampler of each family (FAMILIES).

    rows: the benchmark's rows; only those sized for a budget count (adaptive solves and the
    full ancestral run have none), and only successful, finite ones.  metric: what ranks them
    (lowest wins; default the rows' first quality metric: tv, fd or fid).  Returns dicts with
    budget, model, family, sampler, nfe and the winner's value of every quality metric, sorted
    by budget, model (fm first) and family (FAMILIES' order).
    """
    metrics = _metrics(rows)
    if not metrics:
        return []
    metric = metric or metrics[0]
    values = {}  # (budget, model, sampler) -> {metric: value}
    for r in rows:
        if r.get("budget") is not None and r["metric"] in metrics:
            values.setdefault((r["budget"], r["model"], r["sampler"]), {})[r["metric"]] = r
    best = {}
    for (budget, model, sampler), by_metric in values.items():
        r = by_metric.get(metric)
        if r is None or not r.get("success", True) or not np.isfinite(r["value"]):
            continue
        key = (budget, model, r["family"])
        if key not in best or r["value"] < best[key][metric]:
            best[key] = dict(budget=budget, model=model, family=r["family"], sampler=sampler,
                             nfe=r["nfe"], **{m: v["value"] for m, v in by_metric.items()})
    order = lambda k: (k[0], MODELS.index(k[1]), FAMILIES.index(k[2]))  # noqa: E731
    return [best[k] for k in sorted(best, key=order)]


def format_best(best, metrics) -> str:
    """`best_per_family`'s rows as an aligned table."""
    lines = [f"{'budget':>6}  {'model':<6}{'family':<12}{'sampler':<22}{'nfe':>5}"
             + "".join(f"{m:>10}" for m in metrics)]
    for r in best:
        lines.append(f"{r['budget']:>6}  {r['model']:<6}{r['family']:<12}{r['sampler']:<22}"
                     f"{r['nfe']:>5}" + "".join(f"{r[m]:>10.4f}" if m in r else f"{'-':>10}"
                                                for m in metrics))
    return "\n".join(lines)


def plot_metric(rows, metric: str, path: str, reference: dict | None = None) -> None:
    """`metric` against NFE, one line per model and sampler (adaptive runs, one point per
    tolerance, grouped under the method's name), DDPM dashed, floors as horizontal lines."""
    curve_rows = [dict(r, line=f"{r['model']}: {r['sampler'].split('@')[0]}")
                  for r in rows if r["metric"] == metric]
    plotting.plot_curves(curve_rows, path, x="nfe", y="value", group="line", logx=True,
                         logy=True, title=f"{metric} vs NFE (same network, data, budget)",
                         ylabel=metric, dashed=lambda line: line.startswith("ddpm"),
                         hlines={f"floor ({k})": reference[k]
                                 for k in FLOOR_KEYS.get(metric, ()) if k in (reference or {})})


def format_table(rows) -> str:
    lines = [f"{'model':<6}{'sampler':<24}{'nfe':>6}  {'metric':<7}{'value':>10}{'seconds':>10}"]
    for r in rows:
        lines.append(f"{r['model']:<6}{r['sampler']:<24}{r['nfe']:>6}  {r['metric']:<7}"
                     f"{r['value']:>10.4f}{r['seconds']:>10.2f}")
    return "\n".join(lines)
