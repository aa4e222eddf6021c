"""The side-by-side coupled training speed driver runs and reports what it says (its figures are
printed by the driver, never asserted: a busy machine must not fail a test)."""

import math

import pytest
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

from flowmatch.experiments import coupling_speed


def test_rows_ratios_and_table_without_torchcfm():
    results = coupling_speed.coupled_training_speed(
        load_config("moons"), batch_size=16, hidden_sizes=(8,), steps_per_call=1, rounds=3,
        torchcfm=False)
    assert [r["label"] for r in results] == ["uncoupled", "sinkhorn", "exact"]
    base = results[0]["steps_per_sec"]
    for r in results:
        lo, hi = r["steps_per_sec_iqr"]
        assert 0 < lo <= r["steps_per_sec"] <= hi
        assert math.isclose(r["slowdown"], base / r["steps_per_sec"])
        assert math.isnan(r["vs_torchcfm"]) and r["pair_cost"] > 0
    # The couplings pair at a lower cost than the independent draws of the same steps.
    cost = {r["label"]: r["pair_cost"] for r in results}
    assert max(cost["exact"], cost["sinkhorn"]) < cost["uncoupled"]
    table = coupling_speed.format_table(results).splitlines()
    assert len(table) == 2 + len(results) and table[2].startswith("| uncoupled | ")


def test_the_reference_row_is_required():
    with pytest.raises(ValueError, match="reference row 'uncoupled'"):
        coupling_speed.coupled_training_speed(load_config("moons"),
                                              rows={"exact": dict(name="exact")})


def test_torchcfm_runner_when_installed():
    if not coupling_speed.torchcfm_available():
        pytest.skip("torch, torchcfm or POT is not installed")
    run = coupling_speed.torchcfm_runner(batch_size=16, width=8, steps_per_call=2)
    assert math.isfinite(run()) and math.isfinite(run())
