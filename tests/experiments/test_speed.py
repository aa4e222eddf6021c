"""The speed benchmark's functions run and report what they say (figures are printed by
scripts/benchmark.py, never asserted: a busy machine must not fail a test)."""

import math

from flowmatch import benchmark
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)


def test_integrator_overhead_rows():
    config = load_config("checkerboard")
    rows, t_forward = benchmark.integrator_overhead(config, num_points=64, num_steps=2,
                                                    methods=["euler", "rk4", "dopri5"])
    assert t_forward > 0
    assert [(r["method"], r["nfe"]) for r in rows[:2]] == [("euler", 2), ("rk4", 8)]
    assert rows[2]["mode"] == "adaptive" and rows[2]["nfe"] >= 6
    for r in rows:
        assert r["seconds"] > 0 and math.isclose(
            r["ratio"], r["seconds"] / (r["nfe"] * t_forward))


def test_coupled_steps_and_coupling_alone():
    config = load_config("checkerboard")
    sps = benchmark.coupled_steps_per_second(config, steps_per_call=1, rounds=1)
    assert set(sps) == {"independent", "exact", "sinkhorn"} and min(sps.values()) > 0
    alone = benchmark.coupling_seconds(config, n=32, num_batches=1, repeats=1)
    assert alone["exact"] > 0 and alone["sinkhorn"] > 0 and alone["exact_rounds"] >= 1
