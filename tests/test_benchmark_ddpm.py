"""The FM-vs-DDPM benchmark harness on its smoke config."""

import importlib.util
import json
import os

import pytest

from flowmatch import benchmark_ddpm

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
