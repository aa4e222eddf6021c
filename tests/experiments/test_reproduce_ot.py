"""The OT reproduction end to end on its smoke config: one run per coupling, the table, and a
rerun that keeps the finished runs."""

import json

import numpy as np
import pytest

from flowmatch import rng
from flowmatch.data import toy2d
from flowmatch.experiments import reproduce_ot
from flowmatch.experiments import sample as sample_lib
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)


@pytest.mark.slow
def test_reproduce_ot_smoke_writes_the_table(tmp_path):
    config = load_config("ot_8gaussians_moons")
    config.reproduce.seeds = (3,)
    report = reproduce_ot.reproduce(config, str(tmp_path))
    assert [(r["coupling"], r["seed"]) for r in report["runs"]] == [("independent", 3),
                                                                     ("exact", 3)]
    for row in report["runs"]:
        assert row["success_euler"] and row["nfe_euler"] == 1 and np.isfinite(row["w2_euler"])
        np.testing.assert_allclose(row["w2sq_adaptive"], row["w2_adaptive"] ** 2)
    # The OT run pairs its batches at a lower cost than independent draws.
    assert report["runs"][1]["pair_cost"] < report["runs"][0]["pair_cost"]
    table = (tmp_path / "ot_reproduction.md").read_text()
    assert "| exact | 1 |" in table and "6.232" in table
    assert json.load(open(tmp_path / "ot_reproduction.json")) == json.loads(json.dumps(report))
    # Its W2 is scripts/sample.py's samples (seed 3, one Euler step) against the named
    # "reference" draw of seed 3.
    run_dir = str(tmp_path / "exact" / "seed_3")
    n = config.reproduce.num_w2_samples
    sample_lib.sample_to_file(run_dir, str(tmp_path / "s.npz"), num_samples=n, method="euler",
                              num_steps=1, seed=3)
    data = np.asarray(toy2d.sample_toy("moons", rng.seed_stream(3, "reference"), n))
    from flowmatch import metrics  # pylint: disable=g-import-not-at-top
    assert metrics.w2_distance(np.load(tmp_path / "s.npz")["samples"], data) == \
        report["runs"][1]["w2_euler"]
    # Running again keeps the finished runs.
    again = reproduce_ot.reproduce(config, str(tmp_path))
    assert again["runs"] == report["runs"]
