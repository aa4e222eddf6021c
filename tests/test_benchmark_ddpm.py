"""The FM-vs-DDPM benchmark harness on its smoke config."""

import importlib.util
import json
import os
import types

import pytest

from flowmatch import benchmark_ddpm
from flowmatch.data import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path, variant):
    spec = importlib.util.spec_from_file_location("bench_cfg", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_model_configs_differ_only_in_the_objective():
    config = load("configs/benchmark/moons.py", "")
    fm, dd = benchmark_ddpm.model_configs(config).values()
    assert (fm.objective.name, dd.objective.name) == ("flow_matching", "ddpm")
    fm_d, dd_d = fm.to_dict(), dd.to_dict()
    fm_d.pop("objective"), dd_d.pop("objective")
    assert fm_d == dd_d and "benchmark" not in fm_d


def test_smoke_benchmark_writes_every_sampler_family(tmp_path):
    config = load("configs/benchmark/moons.py", "smoke")
    rows = benchmark_ddpm.run_benchmark(config, str(tmp_path))
    for name in ("benchmark.json", "benchmark.csv", "benchmark.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.load(open(tmp_path / "benchmark.json")) == rows
    for r in rows:
        assert set(benchmark_ddpm.ROW_KEYS) <= set(r)
    samplers = {(r["model"], r["sampler"].split("@")[0]) for r in rows}
    assert samplers == {("fm", "euler"), ("fm", "dopri5"), ("ddpm", "pf_ode/euler"),
                        ("ddpm", "pf_ode/dopri5"), ("ddpm", "ancestral"),
                        ("ddpm", "ancestral_respaced"), ("ddpm", "ddim")}
    nfe = {(r["model"], r["sampler"]): r["nfe"] for r in rows}
    T = config.objective.num_timesteps
    assert nfe[("ddpm", "ancestral")] == T
    assert nfe[("ddpm", "ddim")] == nfe[("ddpm", "ancestral_respaced")] == 4
    assert nfe[("fm", "euler")] == 4
    assert {r["metric"] for r in rows} == {"tv", "w2"}
    reference = json.load(open(tmp_path / "benchmark_reference.json"))
    # 2,000 points in the smoke variant: floors well above the full-size ones, still below 1.
    assert 0 < reference["tv_floor"] < 0.5 and 0 < reference["w2_floor"] < 0.5


@pytest.mark.slow
def test_smoke_image_benchmark_reports_fd_and_bits_per_dim(tmp_path):
    config = load("configs/benchmark/digits.py", "smoke")
    rows = benchmark_ddpm.run_benchmark(config, str(tmp_path))
    metrics = {(r["model"], r["metric"]) for r in rows}
    assert {("fm", "fd"), ("ddpm", "fd"), ("fm", "bpd"), ("ddpm", "bpd")} <= metrics
    for r in rows:
        assert r["value"] == r["value"], r  # not NaN
        if r["metric"] == "bpd":
            assert r["value"] > 0
    reference = json.load(open(tmp_path / "benchmark_reference.json"))
    assert 0.5 < reference["classifier_test_accuracy"] <= 1.0
    assert 0 < reference["fd_train_vs_test"] and 0 < reference["fd_test_halves"]


def _write_tiny_cifar(folder, sizes=(4, 4, 4, 4, 4), test_size=4):
    """A tiny CIFAR-10 in the release's folder format (random pixels)."""
    import pickle  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, m in zip(names, list(sizes) + [test_size]):
        obj = {b"labels": [int(v) for v in rng.integers(0, 10, m)],
               b"data": rng.integers(0, 256, size=(m, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


def test_fid_benchmark_needs_the_inception_weights_before_training(tmp_path):
    config = load("configs/benchmark/cifar10.py", "smoke")
    with pytest.raises(benchmark_ddpm.train_lib.ConfigError, match=r"fid_weights.*inception"):
        benchmark_ddpm.run_benchmark(config, str(tmp_path / "run"))
    config.benchmark.fid_weights = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz.*convert"):
        benchmark_ddpm.run_benchmark(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing trained or written


def test_fid_quality_scores_samples_and_caches_the_training_statistics(tmp_path, monkeypatch):
    from flowmatch import image_metrics  # pylint: disable=g-import-not-at-top
    from flowmatch.models import inception  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    tiny = inception.FIDInceptionV3(width_multiplier=1 / 16, resize_to=75)
    loads = []

    def load_tiny(path):
        loads.append(path)
        return image_metrics.InceptionExtractor(inception.random_variables(tiny), tiny,
                                                batch_size=8)

    monkeypatch.setattr(image_metrics, "load_inception_extractor", load_tiny)
    config = load("configs/benchmark/cifar10.py", "smoke")
    config.data.path = str(_write_tiny_cifar(tmp_path / "cifar-10-batches-py"))
    config.benchmark.fid_weights = "weights.npz"
    exp = types.SimpleNamespace(source=types.SimpleNamespace(kind="image"))
    quality, reference = benchmark_ddpm._quality_fn(exp, config, str(tmp_path / "run"))
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
    benchmark_ddpm._quality_fn(exp, config, str(tmp_path / "run"))
    assert stats.stat().st_mtime_ns == mtime  # cached: not recomputed
