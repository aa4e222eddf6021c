"""Flow matching vs the DDPM baseline at equal network, data and training budget.

`run_benchmark(config, workdir)` trains (or resumes) two runs from one config, identical but for
`config.objective`: `workdir/fm` (flow matching) and `workdir/ddpm` (DDPM, epsilon prediction),
then samples both from the same noise over an NFE grid:

    fm    x {euler, heun, rk4} on fixed grids, dopri5 over tolerances
    ddpm  x {ancestral over all T steps, ancestral respaced, DDIM (eta = 0), and the
             probability-flow ODE with the same integrators as fm}

and scores every sample set with the data's metrics: `tv` and `w2` for 2-D data; for images the
Frechet distance `fd` in a classifier's feature space (flowmatch.image_metrics) plus held-out
negative log-likelihood in bits/dim (`bpd`: the exact likelihood for fm, the variational bound
for ddpm).  Writes benchmark.json / .csv / .png under `workdir` and prints the table, and
benchmark_reference.json: the floors the numbers are read against (real data scored like the
samples) and, for images, the feature classifier's test accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowmatch import ddpm as ddpm_lib
from flowmatch import generate
from flowmatch import integrators
from flowmatch import metrics as metrics_lib
from flowmatch import plotting
from flowmatch import sampling
from flowmatch import train as train_lib

ROW_KEYS = ("model", "sampler", "nfe", "metric", "value", "seconds")


def model_configs(config: ml_collections.ConfigDict):
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


class _Sampler:
    """Compiles a sampler once for the chunk shape and times its run over all chunks."""

    def __init__(self, fn, params, x_chunks, key):
        self.fn = jax.jit(fn)
        self.params, self.x_chunks, self.key = params, x_chunks, key

    def run(self):
        compiled = self.fn.lower(self.params, self.x_chunks[0], self.key).compile()
        start = time.perf_counter()
        outs = [compiled(self.params, x, jax.random.fold_in(self.key, i))
                for i, x in enumerate(self.x_chunks)]
        samples = np.concatenate([np.asarray(o[0], np.float32) for o in outs])
        seconds = time.perf_counter() - start
        nfe = int(max(int(o[1]) for o in outs))
        ok = all(bool(o[2]) for o in outs)
        return samples, nfe, ok, seconds


def _fixed_steps(method: str, nfe: int, extra: int = 0):
    """The most steps of `method` whose NFE, plus `extra` evaluations, fits the budget."""
    per_step = integrators.nfe_for(method, 1)
    return (nfe - extra) // per_step if nfe - extra >= per_step else None


def _sampler_grid(b, num_timesteps: int):
    """(model, sampler label, builder kwargs) for every benchmarked sampler and budget."""
    grid = []
    for model in ("fm", "ddpm"):
        prefix = "" if model == "fm" else "pf_ode/"
        for method in b.ode_methods:
            if method in integrators.ADAPTIVE_METHODS:
                for tol in b.tolerances:
                    grid.append((model, f"{prefix}{method}@{tol:g}",
                                 dict(kind="ode", method=method, rtol=tol, atol=tol)))
                continue
            for nfe in b.nfe:
                # The DDPM probability-flow sampler ends with one denoising evaluation.
                steps = _fixed_steps(method, nfe, extra=0 if model == "fm" else 1)
                if steps:
                    grid.append((model, f"{prefix}{method}",
                                 dict(kind="ode", method=method, num_steps=steps)))
    grid.append(("ddpm", "ancestral", dict(kind="ancestral", num_steps=None)))
    for nfe in b.nfe:
        if nfe < num_timesteps:
            grid.append(("ddpm", "ancestral_respaced", dict(kind="ancestral", num_steps=nfe)))
            grid.append(("ddpm", "ddim", dict(kind="ddim", num_steps=nfe)))
    return grid


def _make_fn(exp, spec):
    """fn(params, x_T, key) -> (x, nfe, success) for a sampler spec."""
    objective = exp.objective

    def predict_with(params):
        return lambda x, t: exp.apply(params, x, t, None)

    kind = spec["kind"]
    if kind == "ode":
        kw = {k: spec.get(k) for k in ("method", "num_steps", "rtol", "atol")}
        if isinstance(objective, ddpm_lib.DDPM):
            def fn(params, x, key):
                del key
                out = ddpm_lib.pf_ode_sample(predict_with(params), objective.schedule, x,
                                             prediction=objective.prediction, **kw)
                return out.x, out.nfe, out.success
        else:
            def fn(params, x, key):
                del key
                sol = sampling.solve_from_noise(lambda p, xx, t, c: exp.apply(p, xx, t, c), params,
                                                objective, x, **kw)
                return sol.x, sol.nfe, sol.success
        return fn
    if kind == "ancestral":
        def fn(params, x, key):
            out = ddpm_lib.ancestral_sample(predict_with(params), objective.schedule, key, x,
                                            prediction=objective.prediction,
                                            num_steps=spec["num_steps"])
            return out.x, out.nfe, out.success
        return fn

    def fn(params, x, key):
        out = ddpm_lib.ddim_sample(predict_with(params), objective.schedule, key, x,
                                   num_steps=spec["num_steps"], prediction=objective.prediction)
        return out.x, out.nfe, out.success
    return fn


def _quality_fn(exp, config, workdir):
    """(samples -> {metric: value}, reference) for the data kind.

    reference: what the numbers are read against, written to benchmark_reference.json: for 2-D
    data the tv / w2 of fresh data against fresh data (`evaluation.reference_floors`); for images
    the feature classifier's test accuracy and the real-vs-real Frechet floors at this sample count.
    """
    src = exp.source
    b = config.benchmark
    if src.kind == "toy2d":
        from flowmatch import evaluation  # pylint: disable=g-import-not-at-top
        e = config.eval
        key = jax.random.PRNGKey(b.seed + 1)
        ref = np.asarray(src.sample_reference(jax.random.fold_in(key, 0), e.num_tv_samples))
        ref_w2 = np.asarray(src.sample_reference(jax.random.fold_in(key, 1), e.num_w2_samples))

        def quality(samples):
            m = metrics_lib.metrics_2d(samples, ref_w2, ref, src.box, bins=e.tv_bins,
                                       n_w2=e.num_w2_samples)
            return {"tv": m["tv"], "w2": m["w2"]}
        floors = evaluation.reference_floors(config.data.name, num_tv=e.num_tv_samples,
                                             num_w2=e.num_w2_samples, bins=e.tv_bins)
        reference = {"data": config.data.name, "num_samples": b.num_samples,
                     "tv_floor": floors["tv"], "w2_floor": floors["w2"],
                     "note": "fresh data vs fresh data, mean over 5 seeds"}
        return quality, reference
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
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
    return (lambda samples: {"fid": image_metrics.compute_fid(extractor, samples, stats)}), reference


def _bpd_rows(exps, states, config):
    """Held-out bits/dim: exact likelihood (fm) and the variational bound (ddpm), for images."""
    from flowmatch import likelihood  # pylint: disable=g-import-not-at-top
    b = config.benchmark
    src = exps["fm"].source
    x = np.asarray(src.sample_reference(jax.random.PRNGKey(b.seed + 2), b.num_bpd_images))
    key = jax.random.PRNGKey(b.seed + 3)
    rows = []
    exp, params = exps["fm"], states["fm"].ema_params
    v = sampling.velocity_fn(lambda p, xx, t, c: exp.apply(p, xx, t, c), params, exp.objective)
    start = time.perf_counter()
    bpd, res = jax.jit(lambda xx, k: likelihood.bits_per_dim(
        v, xx, k, method="dopri5", rtol=b.bpd_tol, atol=b.bpd_tol, divergence="hutchinson",
        return_solution=True))(jnp.asarray(x), key)
    bpd, nfe = float(jnp.mean(bpd)), int(res.nfe)
    rows.append(dict(model="fm", sampler="likelihood/dopri5", nfe=nfe, metric="bpd", value=bpd,
                     seconds=time.perf_counter() - start))
    exp, params = exps["ddpm"], states["ddpm"].ema_params
    start = time.perf_counter()
    out = jax.jit(lambda xx, k: ddpm_lib.vlb_bits_per_dim(
        lambda y, t: exp.apply(params, y, t, None), exp.objective.schedule, xx, k,
        prediction=exp.objective.prediction, num_terms=b.vlb_terms))(jnp.asarray(x), key)
    rows.append(dict(model="ddpm", sampler="vlb", nfe=int(out.nfe), metric="bpd",
                     value=float(jnp.mean(out.total)), seconds=time.perf_counter() - start))
    return rows


def _check_metric_inputs(config):
    """Fails before any training when the quality metric cannot be computed at the end."""
    from flowmatch.data import images as images_lib  # pylint: disable=g-import-not-at-top
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    name = config.data.name
    if name in images_lib.IMAGE_DATASETS and name not in image_metrics.CLASSIFIER_DEFAULTS:
        weights = config.benchmark.get("fid_weights", "")
        if not weights:
            raise train_lib.ConfigError(
                f"data {name!r} has no feature classifier, so the benchmark scores it by FID: set "
                "--config.benchmark.fid_weights to the converted FID Inception weights (.npz; "
                "flowmatch/models/inception.py says where to get and how to convert them)")
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"benchmark.fid_weights {weights!r} not found; flowmatch/models/inception.py says "
                "where to get the FID Inception weights and how to convert them to .npz")


def run_benchmark(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains/resumes both models, evaluates every sampler, writes and returns the rows."""
    _check_metric_inputs(config)
    os.makedirs(workdir, exist_ok=True)
    configs = model_configs(config)
    exps, states = {}, {}
    for model, c in configs.items():
        run_dir = os.path.join(workdir, model)
        print(f"benchmark: training {model} in {run_dir}", flush=True)
        train_lib.train_and_evaluate(c, run_dir)
        exps[model], states[model], _ = generate.restore_run(run_dir)

    b = config.benchmark
    src = exps["fm"].source
    n, chunk = b.num_samples, min(b.num_samples, config.eval.chunk_size)
    key = jax.random.PRNGKey(b.seed)
    x_T = np.asarray(jax.random.normal(key, (n, *src.example_shape)))
    padded = np.resize(x_T, (-(-n // chunk) * chunk, *src.example_shape))
    x_chunks = [jnp.asarray(padded[i:i + chunk]) for i in range(0, len(padded), chunk)]
    quality, reference = _quality_fn(exps["fm"], config, workdir)
    with open(os.path.join(workdir, "benchmark_reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print("benchmark: reference " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in reference.items()
        if k != "note"), flush=True)

    rows = []
    grid = _sampler_grid(b, exps["ddpm"].objective.num_timesteps)
    for model, label, spec in grid:
        exp, params = exps[model], states[model].ema_params
        samples, nfe, ok, seconds = _Sampler(_make_fn(exp, spec), params, x_chunks,
                                             jax.random.fold_in(key, 1)).run()
        samples = samples[:n]
        for metric, value in quality(samples).items():
            rows.append(dict(model=model, sampler=label, nfe=nfe, metric=metric,
                             value=float(value), seconds=seconds, success=ok))
        _print_row(rows, model, label, nfe, seconds)
    if src.kind == "image" and b.num_bpd_images > 0:
        rows.extend(_bpd_rows(exps, states, config))
    _write(rows, workdir, reference)
    return rows


def _print_row(rows, model, label, nfe, seconds):
    mine = [r for r in rows if r["model"] == model and r["sampler"] == label and r["nfe"] == nfe]
    values = " ".join(f"{r['metric']}={r['value']:.4f}" for r in mine)
    print(f"  {model:<5} {label:<22} nfe={nfe:<5} {values}  ({seconds:.2f} s)", flush=True)


FLOOR_KEYS = {"tv": ("tv_floor",), "w2": ("w2_floor",), "fd": ("fd_train_vs_test",)}


def _write(rows, workdir, reference=None):
    with open(os.path.join(workdir, "benchmark.json"), "w") as f:
        json.dump(rows, f, indent=1)
    keys = list(ROW_KEYS) + ["success"]
    with open(os.path.join(workdir, "benchmark.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if m != "bpd"]
    for metric in metrics:
        curve_rows = []
        for r in rows:
            if r["metric"] != metric:
                continue
            # Adaptive runs are one point per tolerance: group them under the method name.
            curve_rows.append(dict(r, line=f"{r['model']}: {r['sampler'].split('@')[0]}"))
        path = os.path.join(workdir, "benchmark.png" if metric == metrics[0]
                            else f"benchmark_{metric}.png")
        plotting.plot_curves(curve_rows, path, x="nfe", y="value", group="line", logx=True,
                             logy=True, title=f"{metric} vs NFE (same network, data, budget)",
                             ylabel=metric, dashed=lambda line: line.startswith("ddpm"),
                             hlines={f"floor ({k})": reference[k]
                                     for k in FLOOR_KEYS.get(metric, ()) if k in (reference or {})})
    print(format_table(rows))


def format_table(rows) -> str:
    lines = [f"{'model':<6}{'sampler':<24}{'nfe':>6}  {'metric':<7}{'value':>10}{'seconds':>10}"]
    for r in rows:
        lines.append(f"{r['model']:<6}{r['sampler']:<24}{r['nfe']:>6}  {r['metric']:<7}"
                     f"{r['value']:>10.4f}{r['seconds']:>10.2f}")
    return "\n".join(lines)
