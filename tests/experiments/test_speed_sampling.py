"""speed_sampling: rows with consistent figures at tiny sizes; the torchdiffeq comparison agrees
with flowmatch (velocity and the same 3/8-rule solve to round-off) and skips without torch."""

import importlib.util

import pytest

from flowmatch.experiments import speed_sampling

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchdiffeq"))


def test_roofline_fraction_rows():
    rows = speed_sampling.roofline_fraction((64, 300), method="euler", num_steps=2, repeats=1,
                                            chunk_rows=100)
    assert [(r["n"], r["chunked"]) for r in rows] == [(64, False), (64, True), (300, False),
                                                     (300, True)]
    for r in rows:
        assert r["flops"] > 0 and r["num_steps"] == 2
        assert r["fraction"] == pytest.approx(r["flops"] / r["seconds"] / r["peak"])
        assert r["max_abs_diff"] < 1e-5


def test_eval_flops_count_every_row():
    """FLOPs of one evaluation grow by the same amount per row, also past the chunk size (a
    lax.map's body is counted once by XLA, so the count must come from the unchunked network).
    Affine, not linear: the time's embedding is computed once for all rows."""
    model, params = speed_sampling.model_of(speed_sampling.default_network())
    model = model.__class__(**{**model.__dict__, "chunk_rows": 100})
    f1, f2, f4 = (speed_sampling.eval_flops(model, params, n) for n in (100, 200, 400))
    per_100_rows = f2 - f1
    assert per_100_rows > 0.9 * f1
    assert f4 - f1 == pytest.approx(3 * per_100_rows, rel=1e-3)


def test_rk4_38_is_fourth_order_tableau():
    tab = speed_sampling.RK4_38
    assert tab.order == 4 and tab.fixed_stages == 4


@pytest.mark.skipif(not HAS_TORCH, reason="torch / torchdiffeq not installed")
def test_torchdiffeq_agrees():
    rows = speed_sampling.torchdiffeq_ratio((32,), num_steps=2, repeats=1)
    (r,) = rows
    assert r["velocity_diff"] < 1e-5 and r["solution_diff"] < 1e-5
    assert r["speedup"] > 0


@pytest.mark.skipif(not HAS_TORCH, reason="torch / torchdiffeq not installed")
def test_torchdiffeq_threads_are_set_and_restored():
    # Whatever an earlier benchmark left (torchcfm's loops set one thread), torch runs on the
    # process's cores, as XLA does, and the previous setting comes back.
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (r,) = speed_sampling.torchdiffeq_ratio((8,), num_steps=1, repeats=1)
        assert r["torch_threads"] == speed_sampling.available_cores()
        assert torch.get_num_threads() == 1
        (r,) = speed_sampling.torchdiffeq_ratio((8,), num_steps=1, repeats=1, torch_threads=1)
        assert r["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_torchdiffeq_skips_without_torch(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name.split(".")[0] in ("torch", "torchdiffeq"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert speed_sampling.torchdiffeq_ratio((8,), num_steps=1, repeats=1) is None


def test_the_benchmark_section_runs_quick(monkeypatch, capsys):
    """`scripts/benchmark.py --sections=sampling [--quick]` goes through speed.report_sampling:
    its rows come back (QUICK made tiny here) and the table is printed."""
    from flowmatch.experiments import speed
    monkeypatch.setattr(speed_sampling, "QUICK", dict(roofline_sizes=(64,), torch_sizes=(16,),
                                                      num_steps=1, repeats=1))
    out = speed.report_sampling(quick=True)
    assert [(r["n"], r["num_steps"], r["chunked"]) for r in out["roofline"]] == [
        (64, 1, False), (64, 1, True)]
    assert (out["torchdiffeq"] is None) == (not HAS_TORCH)
    assert "matmul peak" in capsys.readouterr().out
