"""The side-by-side coupled training speed driver runs and reports what it says (its figures are
printed by the driver, never asserted: a busy machine must not fail a test).  Kept short: one
measurement of two rows (two train-step compilations); the ratios and the table are checked on
given call times."""

import math

import pytest
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

from flowmatch.checks import ConfigError
from flowmatch.experiments import coupling_speed


def test_ratios_quartiles_and_table_of_given_call_times():
    times = {"uncoupled": [0.1, 0.2, 0.3, 0.4, 0.5], "exact": [0.4, 0.6, 0.8, 1.0, 1.2],
             coupling_speed.TORCHCFM_ROW: [2.0] * 5}
    costs = {"uncoupled": [[4.0, 6.0], None], "exact": [[1.0], [2.0]]}
    rows = coupling_speed.summarise(times, costs, steps_per_call=10)
    by = {r["label"]: r for r in rows}
    assert by["uncoupled"]["steps_per_sec"] == pytest.approx(10 / 0.3)
    assert by["exact"]["slowdown"] == pytest.approx(0.8 / 0.3)
    assert by["exact"]["vs_torchcfm"] == pytest.approx(2.0 / 0.8)
    assert by["uncoupled"]["pair_cost"] == 5.0 and by["exact"]["pair_cost"] == 1.5
    assert math.isnan(by[coupling_speed.TORCHCFM_ROW]["pair_cost"])
    for r in rows:
        lo, hi = r["steps_per_sec_iqr"]
        assert lo <= r["steps_per_sec"] <= hi
    del times[coupling_speed.TORCHCFM_ROW]
    assert all(math.isnan(r["vs_torchcfm"]) for r in coupling_speed.summarise(times, costs, 10))
    table = coupling_speed.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| uncoupled | 33 (")
    assert table[3].endswith("| 2.67x | 2.5x | 1.500 |") and table[4].endswith("| - |")
    alone = coupling_speed.format_table(coupling_speed.summarise(times, costs, 10)).splitlines()
    assert alone[3].endswith("| 2.67x | - | 1.500 |")  # no torchcfm row: no ratio, not "nanx"


def test_a_measurement_of_the_trainer_with_the_exact_coupling():
    rows = {k: coupling_speed.FLOWMATCH_ROWS[k] for k in ("uncoupled", "exact")}
    results = coupling_speed.coupled_training_speed(
        load_config("moons"), batch_size=16, hidden_sizes=(8,), steps_per_call=1, rounds=2,
        rows=rows, torchcfm=False)
    assert [r["label"] for r in results] == ["uncoupled", "exact"]
    for r in results:
        assert r["steps_per_sec"] > 0 and math.isnan(r["vs_torchcfm"]) and r["pair_cost"] > 0
    # The exact coupling pairs at a lower cost than the independent draws of the same steps.
    assert results[1]["pair_cost"] < results[0]["pair_cost"]


def test_the_reference_row_and_positive_counts_are_required():
    with pytest.raises(ConfigError, match="reference row 'uncoupled'"):
        coupling_speed.coupled_training_speed(load_config("moons"),
                                              rows={"exact": dict(name="exact")})
    with pytest.raises(ConfigError, match="rounds must be a positive integer, got 0"):
        coupling_speed.coupled_training_speed(load_config("moons"), rounds=0)


def test_torchcfm_runner_when_installed():
    if not coupling_speed.torchcfm_available():
        pytest.skip("torch, torchcfm or POT is not installed")
    run = coupling_speed.torchcfm_runner(batch_size=16, width=8, steps_per_call=2)
    assert math.isfinite(run()) and math.isfinite(run())
