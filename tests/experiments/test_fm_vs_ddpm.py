"""The FM-vs-DDPM benchmark: its sampler grid, files and floors on the smoke config, and that its
samples are scripts/sample.py's for the same run, seed and settings (eps, x0 and v models)."""

import json

import numpy as np
import pytest

from flowmatch import objectives
from flowmatch import paths
from flowmatch import sampling
from flowmatch import training
from flowmatch.data import images
from flowmatch.experiments import fm_vs_ddpm
from flowmatch.experiments import sample as sample_lib
from flowmatch.training import evaluation
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)
from runs_util import untrained_run  # noqa: E402

SAMPLERS = {("fm", "euler"), ("fm", "dopri5"), ("ddpm", "pf_ode/euler"), ("ddpm", "pf_ode/dopri5"),
            ("ddpm", "ancestral"), ("ddpm", "ancestral_respaced"), ("ddpm", "ddim"),
            ("fm", "dpmpp_2m"), ("ddpm", "dpmpp_2m"), ("fm", "sde_euler"), ("ddpm", "sde_euler")}


def smoke_config():
    config = load_config("benchmark/moons")
    # Training evaluates at another count than the benchmark scores: the floors must follow
    # the scored count (benchmark.num_samples), not eval.num_tv_samples.
    config.eval.num_tv_samples = 500
    config.eval_every_steps = 0  # no training evaluation: the benchmark's samplers are tested
    return config


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The smoke benchmark, run once: (config, workdir, rows)."""
    config = smoke_config()
    workdir = tmp_path_factory.mktemp("bench")
    return config, workdir, fm_vs_ddpm.run_benchmark(config, str(workdir))


def test_model_configs_differ_only_in_the_objective():
    config = load_config("benchmark/moons", "")
    fm, dd = fm_vs_ddpm.model_configs(config).values()
    assert (fm.objective.name, dd.objective.name) == ("flow_matching", "ddpm")
    fm_d, dd_d = fm.to_dict(), dd.to_dict()
    fm_d.pop("objective"), dd_d.pop("objective")
    assert fm_d == dd_d and "benchmark" not in fm_d


def test_smoke_benchmark_writes_every_sampler_family(bench):
    config, workdir, rows = bench
    for name in ("benchmark.json", "benchmark.csv", "benchmark.png"):
        assert (workdir / name).stat().st_size > 0
    assert json.load(open(workdir / "benchmark.json")) == rows
    header = (workdir / "benchmark.csv").read_text().splitlines()[0]
    assert header == ",".join(fm_vs_ddpm.CSV_KEYS)
    for r in rows:
        assert set(fm_vs_ddpm.ROW_KEYS) <= set(r)
    assert {(r["model"], r["sampler"].split("@")[0]) for r in rows} == SAMPLERS
    nfe = {(r["model"], r["sampler"]): r["nfe"] for r in rows}
    assert nfe[("ddpm", "ancestral")] == config.objective.num_timesteps
    assert nfe[("ddpm", "ddim")] == nfe[("ddpm", "ancestral_respaced")] == 4
    # Budget 4: four Euler steps for fm; three and the denoising evaluation for ddpm; the
    # multistep solver's last evaluation is its data estimate (4 steps, 4 NFE) on both; the SDE's
    # last step on ddpm is followed by the denoising evaluation (3 steps + 1).
    assert nfe[("fm", "euler")] == nfe[("ddpm", "pf_ode/euler")] == 4
    assert nfe[("fm", "dpmpp_2m")] == nfe[("ddpm", "dpmpp_2m")] == 4
    assert nfe[("fm", "sde_euler")] == nfe[("ddpm", "sde_euler")] == 4
    assert {r["metric"] for r in rows} == {"tv", "w2"}
    family = {(r["model"], r["sampler"]): (r["family"], r["budget"]) for r in rows}
    assert family[("ddpm", "dpmpp_2m")] == ("dpm_solver", 4)
    assert family[("fm", "sde_euler")] == ("sde", 4)
    assert family[("ddpm", "ddim")] == ("ddpm", 4)
    assert family[("ddpm", "ancestral")] == ("ddpm", None)
    assert family[("ddpm", "pf_ode/dopri5@0.01")] == ("ode", None)


def test_smoke_benchmark_writes_the_best_of_each_family(bench):
    _, workdir, rows = bench
    best = json.load(open(workdir / "benchmark_best.json"))
    assert best == fm_vs_ddpm.best_per_family(rows)
    header = (workdir / "benchmark_best.csv").read_text().splitlines()[0]
    assert header == "budget,model,family,sampler,nfe,tv,w2"
    assert [(b["model"], b["family"]) for b in best] == [
        ("fm", "ode"), ("fm", "dpm_solver"), ("fm", "sde"),
        ("ddpm", "ode"), ("ddpm", "dpm_solver"), ("ddpm", "sde"), ("ddpm", "ddpm")]
    for b in best:  # the lowest tv of its family at its budget, and that sampler's w2
        group = [r for r in rows if (r["model"], r["family"], r["budget"], r["metric"])
                 == (b["model"], b["family"], b["budget"], "tv")]
        assert b["tv"] == min(r["value"] for r in group)
        assert {(r["sampler"], r["value"]) for r in rows if r["metric"] == "w2"
                and r["model"] == b["model"]} >= {(b["sampler"], b["w2"])}


def _row(model, sampler, family, budget, value, metric="tv", success=True):
    return dict(model=model, sampler=sampler, method=sampler, family=family, budget=budget,
                nfe=budget or 100, metric=metric, value=value, seconds=0.0, success=success)


def test_best_per_family_ranks_within_budget_model_and_family():
    rows = [_row("fm", "euler", "ode", 8, 0.3), _row("fm", "heun", "ode", 8, 0.2),
            _row("fm", "heun", "ode", 8, 9.0, metric="w2"),
            _row("fm", "rk4", "ode", 8, 0.1, success=False),     # failed: not ranked
            _row("fm", "dopri5@0.01", "ode", None, 0.01),        # no budget: not ranked
            _row("fm", "dpmpp_2m", "dpm_solver", 8, float("nan")),  # not finite: not ranked
            _row("ddpm", "ddim", "ddpm", 8, 0.5),
            _row("ddpm", "ancestral_respaced", "ddpm", 8, 0.4),
            _row("ddpm", "ddim", "ddpm", 4, 0.6), _row("fm", "euler", "ode", 4, 0.7)]
    best = fm_vs_ddpm.best_per_family(rows)
    assert [(b["budget"], b["model"], b["family"], b["sampler"]) for b in best] == [
        (4, "fm", "ode", "euler"), (4, "ddpm", "ddpm", "ddim"),
        (8, "fm", "ode", "heun"), (8, "ddpm", "ddpm", "ancestral_respaced")]
    assert best[2]["tv"] == 0.2 and best[2]["w2"] == 9.0 and "w2" not in best[3]
    assert fm_vs_ddpm.best_per_family(rows, metric="w2")[0]["sampler"] == "heun"
    assert fm_vs_ddpm.best_per_family([]) == []


def test_floors_are_at_the_scored_sample_count(bench):
    config, workdir, _ = bench
    reference = json.load(open(workdir / "benchmark_reference.json"))
    n = config.benchmark.num_samples
    assert n != config.eval.num_tv_samples and reference["num_samples"] == n
    floors = evaluation.reference_floors("moons", num_tv=n, num_w2=config.eval.num_w2_samples,
                                         bins=config.eval.tv_bins)
    assert (reference["tv_floor"], reference["w2_floor"]) == (floors["tv"], floors["w2"])
    # 2,000 points in the smoke variant: floors well above the full-size ones, still below 1.
    assert 0 < reference["tv_floor"] < 0.5 and 0 < reference["w2_floor"] < 0.5


def test_sampler_grid_counts_the_denoising_evaluation():
    b = load_config("benchmark/moons").benchmark
    b.nfe, b.ode_methods, b.tolerances = (4, 8, 50), ("heun", "rk4"), ()
    b.solver_methods, b.sde_methods = ("dpmpp_2m", "unipc"), ("sde_euler",)
    apply = lambda params, x, t, cond: x  # noqa: E731  (the grid never calls the network)
    fm = objectives.FlowMatching(path=paths.make_path("cond_ot"))
    ddpm = objectives.DDPM(num_timesteps=50)
    models = {"fm": sampling.ModelFn.from_objective(apply, fm),
              "ddpm": sampling.ModelFn.from_objective(apply, ddpm)}
    entries = fm_vs_ddpm.sampler_grid(b, models)
    grid = {(e.model, e.label, e.settings.get("num_steps")) for e in entries}
    assert {("fm", "heun", 2), ("fm", "rk4", 1), ("fm", "rk4", 2), ("fm", "heun", 25)} <= grid
    # ddpm: heun 2 NFE per step, rk4 4, + 1 denoising evaluation; no rk4 step fits in 4.
    assert {("ddpm", "pf_ode/heun", 1), ("ddpm", "pf_ode/heun", 3), ("ddpm", "pf_ode/rk4", 1),
            ("ddpm", "pf_ode/heun", 24), ("ddpm", "pf_ode/rk4", 12)} <= grid
    assert len([g for g in grid if g[1] == "pf_ode/rk4"]) == 2
    assert ("ddpm", "ancestral", None) in grid
    # T = 50: no respaced sampler at a budget of 50 or more.
    assert ("ddpm", "ddim", 50) not in grid and ("ddpm", "ddim", 8) in grid
    # The multistep solvers and the SDE on both models, labelled by method name: one step per
    # NFE, but the SDE leaves ddpm's last evaluation to its denoising step.
    assert {("fm", "dpmpp_2m", 8), ("ddpm", "dpmpp_2m", 8), ("ddpm", "unipc", 50),
            ("fm", "sde_euler", 4), ("ddpm", "sde_euler", 3), ("ddpm", "sde_euler", 49)} <= grid
    for e in entries:
        if e.budget is not None:
            assert sampling.nfe(e.settings["method"], e.settings["num_steps"],
                                models[e.model]) <= e.budget, e


def _ddpm_run(config, prediction, workdir):
    c = fm_vs_ddpm.model_configs(config)["ddpm"]
    c.objective.prediction = prediction
    return untrained_run(c, workdir)


SETTINGS = (dict(method="heun", num_steps=2), dict(method="ancestral", num_steps=None),
            dict(method="ddim", num_steps=4), dict(method="dpmpp_2m", num_steps=4),
            dict(method="sde_euler", num_steps=3))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_benchmark_samples_are_sample_py_samples(bench, tmp_path, prediction):
    config, _, _ = bench
    b = config.benchmark
    workdir = _ddpm_run(config, prediction, str(tmp_path / prediction))
    run = training.restore(workdir)
    for settings in SETTINGS:
        out = str(tmp_path / f"{settings['method']}.npz")
        sample_lib.sample_to_file(workdir, out, num_samples=b.num_samples, seed=b.seed,
                                  **settings)
        mine = fm_vs_ddpm.draw_samples(run, b.num_samples, b.seed, settings).x
        assert np.array_equal(np.load(out)["samples"], mine), settings


def test_benchmark_rows_score_sample_py_samples_of_the_eps_model(bench, tmp_path):
    config, workdir, rows = bench
    b = config.benchmark
    run = training.restore(str(workdir / "ddpm"))
    quality, _ = fm_vs_ddpm.quality_fn(config, str(workdir), "toy2d")
    value = {(r["sampler"], r["metric"]): r["value"] for r in rows if r["model"] == "ddpm"}
    for label, settings in (("pf_ode/euler", dict(method="euler", num_steps=3)),
                            ("ancestral", dict(method="ancestral", num_steps=None)),
                            ("ddim", dict(method="ddim", num_steps=4)),
                            ("dpmpp_2m", dict(method="dpmpp_2m", num_steps=4)),
                            ("sde_euler", dict(method="sde_euler", num_steps=3))):
        out = str(tmp_path / "s.npz")
        sample_lib.sample_to_file(str(workdir / "ddpm"), out, num_samples=b.num_samples,
                                  seed=b.seed, **settings)
        samples = np.load(out)["samples"]
        assert np.array_equal(samples, fm_vs_ddpm.draw_samples(run, b.num_samples, b.seed,
                                                               settings).x), label
        assert quality(samples) == {m: value[(label, m)] for m in ("tv", "w2")}, label


@pytest.mark.slow
def test_smoke_image_benchmark_reports_fd_and_bits_per_dim(tmp_path):
    config = load_config("benchmark/digits")
    config.eval_every_steps = 0
    # T = 4 steps (a cosine schedule; linear betas need T >= 21) and a budget of 4: no
    # respaced samplers, three short sample sets (XLA:CPU runs a U-Net slowly inside a loop).
    config.objective.beta_schedule, config.objective.num_timesteps = "cosine", 4
    config.benchmark.vlb_terms = 2  # of T - 1 = 3
    # Both runs as training leaves them, with initial parameters: the image path of the
    # benchmark (fd, its floors, bits/dim) is tested here, training in the 2-D benchmark.
    for model, c in fm_vs_ddpm.model_configs(config).items():
        untrained_run(c, str(tmp_path / model))
    rows = fm_vs_ddpm.run_benchmark(config, str(tmp_path))
    metrics = {(r["model"], r["sampler"], r["metric"]) for r in rows}
    assert {("fm", "euler", "fd"), ("ddpm", "pf_ode/euler", "fd"), ("ddpm", "ancestral", "fd"),
            ("fm", "likelihood/dopri5", "bpd"), ("ddpm", "vlb", "bpd")} == metrics
    for r in rows:
        assert np.isfinite(r["value"]), r
        if r["metric"] == "bpd":
            assert r["value"] > 0
    reference = json.load(open(tmp_path / "benchmark_reference.json"))
    assert 0.5 < reference["classifier_test_accuracy"] <= 1.0
    assert 0 < reference["fd_train_vs_test"] and 0 < reference["fd_test_halves"]


def _write_tiny_cifar(folder, sizes=(4, 4, 4, 4, 4), test_size=4):
    """A tiny CIFAR-10 in the release's folder format (random pixels)."""
    import pickle  # pylint: disable=g-import-not-at-top
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, m in zip(names, list(sizes) + [test_size]):
        obj = {b"labels": [int(v) for v in rng.integers(0, 10, m)],
               b"data": rng.integers(0, 256, size=(m, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


def test_fid_benchmark_needs_the_inception_weights_before_training(tmp_path):
    config = load_config("benchmark/cifar10")
    with pytest.raises(training.ConfigError, match=r"fid_weights.*inception"):
        fm_vs_ddpm.run_benchmark(config, str(tmp_path / "run"))
    config.benchmark.fid_weights = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz.*convert"):
        fm_vs_ddpm.run_benchmark(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing trained or written


def test_fid_quality_scores_samples_and_caches_the_training_statistics(tmp_path, monkeypatch):
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    from flowmatch.models import inception  # pylint: disable=g-import-not-at-top
    tiny = inception.FIDInceptionV3(width_multiplier=1 / 16, resize_to=75)
    loads = []

    def load_tiny(path):
        loads.append(path)
        return image_metrics.InceptionExtractor(inception.random_variables(tiny), tiny,
                                                batch_size=8)

    monkeypatch.setattr(image_metrics, "load_inception_extractor", load_tiny)
    config = load_config("benchmark/cifar10")
    config.data.path = str(_write_tiny_cifar(tmp_path / "cifar-10-batches-py"))
    config.benchmark.fid_weights = "weights.npz"
    quality, reference = fm_vs_ddpm.quality_fn(config, str(tmp_path / "run"), "image")
    stats = tmp_path / "run" / "cache" / "fid_stats_cifar10_train.npz"
    assert stats.exists() and reference["fid_reference_stats"] == str(stats)
    assert loads == ["weights.npz"]
    train = images.load_image_dataset("cifar10", split="train", path=config.data.path).x
    # The training images against their own statistics: 0 up to rounding; other images: > 0
    # (small numbers: a random, 1/16-width network's features).
    assert abs(quality(train)["fid"]) < 1e-6
    noise = np.random.default_rng(0).uniform(-1, 1, train.shape).astype(np.float32)
    assert quality(noise)["fid"] > 1e-3 and quality(-train)["fid"] > 1e-3
    mtime = stats.stat().st_mtime_ns
    fm_vs_ddpm.quality_fn(config, str(tmp_path / "run"), "image")
    assert stats.stat().st_mtime_ns == mtime  # cached: not recomputed
