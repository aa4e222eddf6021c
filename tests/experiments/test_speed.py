"""The speed benchmarks' functions run and report what they say (figures are printed by
scripts/benchmark.py, never asserted: a busy machine must not fail a test)."""

import numpy as np

from flowmatch import integrators
from flowmatch.experiments import speed
from flowmatch.experiments import speed_unet
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)


def test_integrator_overhead_rows():
    config = load_config("checkerboard")
    rows, t_forward = speed.integrator_overhead(config, num_points=64, num_steps=2,
                                                methods=["euler", "rk4", "dopri5"])
    assert t_forward > 0
    assert [(r["method"], r["mode"], r["nfe"]) for r in rows[:2]] == [
        ("euler", "2 steps", integrators.nfe_for("euler", 2)),
        ("rk4", "2 steps", integrators.nfe_for("rk4", 2))]
    assert rows[2]["mode"] == "adaptive" and rows[2]["nfe"] >= 6
    assert all(r["seconds"] > 0 and np.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows)


def test_coupled_steps_and_coupling_alone():
    config = load_config("checkerboard")
    figures = speed.interleaved_steps(
        {name: speed._coupled_config(config, name, 1) for name in ("independent", "exact")},
        steps_per_call=1, rounds=1)
    assert set(figures) == {"independent", "exact"}
    assert min(f["steps_per_sec"] for f in figures.values()) > 0
    # The optimal assignment pairs at a lower cost than independent draws.
    assert figures["exact"]["pair_cost"] < figures["independent"]["pair_cost"]
    alone = speed.coupling_seconds(config, n=32, num_batches=1, repeats=1)
    assert alone["exact"] > 0 and alone["sinkhorn"] > 0 and alone["exact_rounds"] >= 1


def test_unet_step_is_built_without_data_and_its_flops_grow_with_the_batch():
    config = load_config("cifar10")  # its data (a tarball) is not needed, only its shape
    assert speed_unet.example_shape(config) == (32, 32, 3)
    config.model.base_channels, config.model.num_groups = 8, 4
    flops = [speed_unet._flops(speed_unet.lower_step(config, (16, 16, 3), b)) for b in (2, 4)]
    # Twice the examples: twice the network's FLOPs, plus the batch-independent optimizer update.
    assert 0 < flops[0] and 1.5 < flops[1] / flops[0] <= 2.0, flops
    batches = speed_unet.random_batches(2, (8, 8, 3), steps_per_call=3)
    assert batches["x"].shape == (3, 2, 8, 8, 3) and np.abs(batches["x"]).max() <= 1


def test_peak_flops_table():
    assert speed_unet.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == (
        "NVIDIA H100 SXM", 989e12)
    assert speed_unet.peak_flops("NVIDIA H100 PCIe", "float32") == ("NVIDIA H100 PCIe", 378e12)
    assert speed_unet.peak_flops("TPU v5 lite", "float32")[0] == "TPU v5e"
    assert speed_unet.peak_flops("cpu", "float32") is None
