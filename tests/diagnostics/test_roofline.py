"""Compute profile: XLA's cost of known programs, rooflines, and a config's network profile."""

import jax
import jax.numpy as jnp
import pytest

from flowmatch.diagnostics import roofline
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)


def test_cost_of_a_matmul():
    a, b = jnp.ones((32, 64)), jnp.ones((64, 128))
    c = roofline.cost(jax.jit(jnp.matmul).lower(a, b).compile())
    assert c["flops"] == 2 * 32 * 64 * 128
    assert c["bytes"] >= 4 * (32 * 64 + 64 * 128 + 32 * 128)
    assert c["intensity"] == pytest.approx(c["flops"] / c["bytes"])


def test_ridges_classify_and_crossover():
    ridges = roofline.ridge_points({"peak_flops": 1e11, "bandwidth": 1e10})
    assert ridges["this device"] == pytest.approx(10.0)
    assert ridges["NVIDIA H100 SXM"] == pytest.approx(494e12 / 3.35e12)
    rows = [{"model": "mlp", "what": "sample_eval", "batch": b, "intensity": i}
            for b, i in ((1, 0.5), (64, 12.0), (512, 80.0))]
    bound = [r["bound"]["this device"] for r in roofline.classify(rows, ridges)]
    assert bound == ["memory", "compute", "compute"]
    assert roofline.crossover(rows, 10.0) == {"mlp/sample_eval": 64}
    assert roofline.crossover(rows, 1e3) == {"mlp/sample_eval": None}
    # With both byte counts: memory-bound only if even the I/O-only intensity is below the ridge.
    both = [dict(r, intensity_io=10 * r["intensity"]) for r in rows]
    bound = [r["bound"]["this device"] for r in roofline.classify(both, ridges)]
    assert bound == ["memory", "compute", "compute"]
    bound = [r["bound"]["this device"] for r in roofline.classify(both[:1], {"this device": 2.0})]
    assert bound == ["either"]
    assert roofline.nbytes({"a": jnp.zeros((3, 4)), "b": None, "c": jnp.zeros(2, jnp.int8)}) == 50


def test_profile_model_intensity_grows_with_batch():
    rows = roofline.profile_model(load_config("moons"), (1, 256), time_calls=False)
    by = {(r["what"], r["batch"]): r for r in rows}
    for what in ("train_step", "sample_eval"):
        small, large = by[(what, 1)], by[(what, 256)]
        assert large["flops"] > 40 * small["flops"] > 0
        assert large["intensity"] > 10 * small["intensity"]
    assert by[("train_step", 256)]["flops"] > 2 * by[("sample_eval", 256)]["flops"]
    for r in rows:  # I/O bytes are the least traffic possible: at most XLA's count
        assert 0 < r["io_bytes"] <= r["bytes"] and r["intensity_io"] >= r["intensity"]
