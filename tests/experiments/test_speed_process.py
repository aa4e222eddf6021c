"""The same-run speed comparisons run and report what they say (figures are printed by
scripts/benchmark.py, never asserted: a busy machine must not fail a test)."""

import sys

import numpy as np
import pytest
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

from flowmatch.experiments import cli
from flowmatch.experiments import speed
from flowmatch.experiments import speed_process


def _tiny():
    c = cli.load_config_file("configs/torchcfm_moons.py:smoke")
    c.model.hidden_sizes = (16, 16)
    return c


def test_the_plain_loop_learns_and_the_comparison_has_its_rows():
    c = _tiny()
    run = speed_process.plain_jax_runner(c, steps_per_call=50)
    first, later = np.asarray(run()), np.asarray(run())
    assert first.shape == (50,) and np.all(np.isfinite(later))
    assert later[-10:].mean() < first[:10].mean()  # it trains: the same batches, lower loss
    rows = speed_process.train_step_comparison(c, steps_per_call=2, rounds=2, torchcfm=False,
                                               matmul_dtypes=("bfloat16",))
    plain = speed_process.PLAIN_ROW
    assert [r["label"] for r in rows] == ["flowmatch", plain, "flowmatch, bfloat16 products",
                                          f"{plain}, bfloat16 products"]
    assert rows[1]["vs_plain"] == 1.0
    assert all(r["steps_per_sec"] > 0 and r["best"] >= r["steps_per_sec"] for r in rows)


def test_evaluation_vs_sampling_times_both():
    c = load_config("moons")
    c.eval.num_tv_samples = c.eval.chunk_size = 2_000
    c.eval.num_w2_samples, c.eval.num_plot_samples = 100, 100
    c.sampling.num_steps = 2
    e = speed_process.evaluation_vs_sampling(c, repeats=1)
    assert e["num_samples"] == 2_000 and e["sampling"] > 0
    assert e["ratio"] == pytest.approx(e["evaluation"] / e["sampling"])


def test_whole_process_alternates_rounds_and_reports_medians(monkeypatch):
    # One cold run, then rounds of warm / no evaluation / torchcfm in turn; medians of each.
    order, seconds = [], iter([9.0, 5.0, 4.0, 20.0, 7.0, 3.0, 30.0, 6.0, 3.5, 25.0])

    def fake(argv, env=None):
        label = ("torchcfm" if "torchcfm" in argv else
                 "off" if any("eval_every_steps=0" in a for a in argv) else "on")
        order.append(label)
        return next(seconds)

    monkeypatch.setattr(speed_process, "process_seconds", fake)
    w = speed_process.whole_process(torchcfm=True, rounds=3)
    assert order == ["on"] + ["on", "off", "torchcfm"] * 3
    assert w["flowmatch cold"] == 9.0 and w["flowmatch cold runs"] == [9.0]
    assert w["flowmatch warm runs"] == [5.0, 7.0, 6.0] and w["flowmatch warm"] == 6.0
    assert w["flowmatch warm, no evaluation"] == 3.5 and w["torchcfm"] == 25.0
    with pytest.raises(ValueError, match="rounds"):
        speed_process.whole_process(torchcfm=False, rounds=0)


def test_a_failing_process_is_an_error_with_its_output():
    with pytest.raises(RuntimeError, match="boom"):
        speed_process.process_seconds([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert speed_process.process_seconds([sys.executable, "-c", "pass"]) > 0


def test_unknown_sections_are_refused():
    with pytest.raises(ValueError, match="unknown benchmark section"):
        speed.run(load_config("moons"), sections=("train", "speedy"))
