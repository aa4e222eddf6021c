"""Straighter paths from minibatch OT, measured: W2 after one Euler step and after an adaptive
solve, for each coupling over several seeds (configs/ot_8gaussians_moons.py).

    report = reproduce(config, workdir)

trains (or resumes) one run per (coupling, seed) in workdir/<coupling>/seed_<seed>, then draws
config.reproduce.num_w2_samples samples with each solver and measures the exact W2
(`metrics.w2_distance`) to as many fresh data points.  Writes workdir/ot_reproduction.json
(every run, the mean and std over seeds, the data's own W2 floor and the published figures)
and ot_reproduction.md (the table).  A finished run's figures are kept in its directory
(ot_eval.json), so running it again only does what is missing.

Randomness: the samples of run (coupling, seed) are `experiments.sample.draw(run, n, seed=seed)`
(what scripts/sample.py --seed=SEED writes; both solvers start from the same source samples),
the data points come from rng.seed_stream(seed, "reference"): named streams, apart from every
key training used.

Published reference (Cheng & Schwing 2025, Fig. 1, 8gaussians -> moons, 10 runs): "W2" after
one Euler step 6.232 (flow matching) vs 0.072 (OT coupling); with an adaptive solver 0.120 vs
0.050.  Their values match the squared distance W2^2 (the optimal transport cost under the
squared-Euclidean ground cost, what POT's emd2 returns for such a cost matrix), so the report
gives both W2 and W2^2.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from flowmatch import data as data_lib
from flowmatch import fileio
from flowmatch import metrics as metrics_lib
from flowmatch import rng
from flowmatch import training
from flowmatch.experiments import sample as sample_lib
from flowmatch.training import evaluation

PUBLISHED = {
    "source": "Cheng & Schwing 2025, Fig. 1 (8gaussians -> moons, 10 runs)",
    "independent": {"w2_euler": 6.232, "w2_adaptive": 0.120},
    "exact": {"w2_euler": 0.072, "w2_adaptive": 0.050},
}
METRICS = ("w2_euler", "w2_adaptive", "w2sq_euler", "w2sq_adaptive", "nfe_adaptive",
           "pair_cost", "train_seconds")
# Recorded with each run's figures: figures drawn with other keys are recomputed.
STREAMS = "sample.draw(seed), seed_stream(seed, 'reference')"


def evaluate(run, *, seed: int, num_samples: int, euler_steps: int, adaptive_method: str,
             rtol: float, atol: float) -> dict:
    """W2 of `num_samples` samples of `run` to as many fresh data points, with `euler_steps`
    Euler steps and with the adaptive method (module docstring: the keys)."""
    spec = run.components.spec
    data = np.asarray(data_lib.make_source(spec.data).sample_reference(
        rng.seed_stream(seed, "reference"), num_samples))
    out = {}
    for name, settings in (("euler", dict(method="euler", num_steps=euler_steps)),
                           ("adaptive", dict(method=adaptive_method, rtol=rtol, atol=atol))):
        samples = sample_lib.draw(run, num_samples, seed=seed, **settings)
        out[f"w2_{name}"] = metrics_lib.w2_distance(samples.x, data)
        out[f"w2sq_{name}"] = out[f"w2_{name}"] ** 2
        out[f"nfe_{name}"] = int(samples.nfe)
        out[f"success_{name}"] = bool(samples.success)
    return out


def _run_config(config, coupling: str, seed: int):
    c = config.copy_and_resolve_references()
    c.unlock()
    del c["reproduce"]
    c.seed = seed
    c.coupling.name = coupling
    c.progress_bar = False
    c.lock()
    return c


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def _kept(path: str, settings: dict) -> dict | None:
    """The figures in `path` (ot_eval.json) if they were measured with `settings` and today's
    keys, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        row = json.load(f)
    return row if (row.get("settings"), row.get("streams")) == (settings, STREAMS) else None


def run_one(config, coupling: str, seed: int, workdir: str, settings: dict) -> dict:
    """Trains (or resumes) the run of (coupling, seed) in workdir/<coupling>/seed_<seed> and
    measures it; its figures are kept in ot_eval.json there and returned."""
    run_dir = os.path.join(workdir, coupling, f"seed_{seed}")
    path = os.path.join(run_dir, "ot_eval.json")
    row = _kept(path, settings)
    if row is not None:
        print(f"reproduce_ot: {coupling} seed {seed}: kept {path}", flush=True)
        return row
    print(f"reproduce_ot: training {coupling} seed {seed} in {run_dir}", flush=True)
    start = time.perf_counter()
    training.train_and_evaluate(_run_config(config, coupling, seed), run_dir)
    seconds = time.perf_counter() - start
    last = metrics_lib.read_metrics(os.path.join(run_dir, metrics_lib.METRICS_FILENAME))[-1]
    run = training.restore(run_dir)
    row = dict(coupling=coupling, seed=seed, step=run.step, train_seconds=seconds,
               pair_cost=last.get("pair_cost"), settings=settings, streams=STREAMS,
               **evaluate(run, seed=seed, **settings))
    fileio.write_json(path, row)
    print(f"reproduce_ot: {coupling} seed {seed}: w2 euler {row['w2_euler']:.4f}, "
          f"{settings['adaptive_method']} {row['w2_adaptive']:.4f} (nfe {row['nfe_adaptive']}), "
          f"{seconds:.0f} s", flush=True)
    return row


def reproduce(config, workdir: str) -> dict:
    """Trains and evaluates every (coupling, seed) of config.reproduce; returns the report."""
    r = config.reproduce
    os.makedirs(workdir, exist_ok=True)
    settings = dict(num_samples=int(r.num_w2_samples), euler_steps=int(r.euler_steps),
                    adaptive_method=r.adaptive_method, rtol=float(r.rtol), atol=float(r.atol))
    rows = [run_one(config, coupling, seed, workdir, settings)
            for coupling in r.couplings for seed in r.seeds]
    floor = evaluation.reference_floors(config.data.name, num_w2=int(r.num_w2_samples),
                                        num_tv=int(r.num_w2_samples))  # its tv is not used
    summary = {c: {m: _stats([row[m] for row in rows if row["coupling"] == c])
                   for m in METRICS} for c in r.couplings}
    report = {"config": {"data": config.data.name, "source": config.source.name,
                         "num_train_steps": config.num_train_steps,
                         "batch_size": config.batch_size, **settings},
              "runs": rows, "summary": summary,
              "w2_floor": {"mean": floor["w2"], "std": floor["w2_std"], "seeds": floor["seeds"],
                           "squared": floor["w2"] ** 2},
              "published": PUBLISHED}
    fileio.write_json(os.path.join(workdir, "ot_reproduction.json"), report)
    table = format_table(report)
    fileio.write_text(os.path.join(workdir, "ot_reproduction.md"), table + "\n")
    print(table, flush=True)
    return report


def format_table(report: dict) -> str:
    """The markdown table of a `reproduce` report: mean +- std over seeds, and the published."""
    cfg = report["config"]
    euler = f"{cfg['euler_steps']} Euler step" + ("s" if cfg["euler_steps"] > 1 else "")
    adaptive = f"{cfg['adaptive_method']} (rtol {cfg['rtol']:g})"
    lines = [
        f"W2 between {cfg['num_samples']} samples and as many fresh {cfg['data']} points (exact "
        f"OT), flows from {cfg['source']}, {cfg['num_train_steps']} steps of batch "
        f"{cfg['batch_size']}; mean +- std over seeds.",
        "",
        f"| coupling | seeds | W2, {euler} | W2, {adaptive} | W2^2, {euler} | W2^2, {adaptive} "
        "| NFE | pair cost | published (Euler / adaptive) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(s, key):
        return f"{s[key]['mean']:.3f} +- {s[key]['std']:.3f}"

    for coupling, s in report["summary"].items():
        pub = report["published"].get(coupling)
        pub = f"{pub['w2_euler']} / {pub['w2_adaptive']}" if pub else "-"
        lines.append(
            f"| {coupling} | {s['w2_euler']['n']} | {cell(s, 'w2_euler')} | "
            f"{cell(s, 'w2_adaptive')} | {cell(s, 'w2sq_euler')} | {cell(s, 'w2sq_adaptive')} | "
            f"{s['nfe_adaptive']['mean']:.0f} | {s['pair_cost']['mean']:.2f} | {pub} |")
    floor = report["w2_floor"]
    lines += ["", f"Floor, two fresh {cfg['num_samples']}-point samples of {cfg['data']}: W2 "
              f"{floor['mean']:.3f} +- {floor['std']:.3f} (W2^2 {floor['squared']:.3f}).  "
              f"Published: {report['published']['source']}; its values match W2^2."]
    return "\n".join(lines)
