"""The evaluation draws its picture off its path: the call returns once the samples are scored,
the picture follows in a background thread, and a picture that fails raises its own error."""
import os
import threading

import pytest
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

from flowmatch import plotting, rng
from flowmatch.experiments import speed_process


def _evaluator(workdir):
    c = load_config("moons")
    c.eval.num_tv_samples = c.eval.chunk_size = 500
    c.eval.num_plot_samples = 100
    c.sampling.num_steps = 2
    return speed_process.initial_evaluator(c, str(workdir), rng.seed_stream(0, "eval"))


def test_the_evaluation_returns_before_its_picture_is_drawn(tmp_path, monkeypatch):
    ev, params = _evaluator(tmp_path)
    release, drawn = threading.Event(), []
    real = plotting.plot_2d

    def slow_plot(samples, path, **kwargs):
        assert release.wait(60)  # held until the evaluation has returned
        real(samples, path, **kwargs)
        drawn.append(path)

    monkeypatch.setattr(plotting, "plot_2d", slow_plot)
    try:
        row = ev(3, params)  # would block forever if the picture were on the path
        assert 0 <= row["tv"] <= 1 and row["eval_nfe"] > 0 and drawn == []
        release.set()
        ev.finish_pictures()
        assert drawn == [os.path.join(str(tmp_path), "samples_3.png")]
        assert os.path.getsize(drawn[0]) > 0
    finally:
        release.set()
        ev.close()


def test_a_failed_picture_raises_its_error(tmp_path, monkeypatch):
    ev, params = _evaluator(tmp_path)

    def broken_plot(samples, path, **kwargs):
        raise ZeroDivisionError("a bug in the picture")

    monkeypatch.setattr(plotting, "plot_2d", broken_plot)
    try:
        ev(1, params)
        with pytest.raises(ZeroDivisionError, match="a bug in the picture"):
            ev.finish_pictures()
        ev.finish_pictures()  # raised once; nothing left pending
    finally:
        ev.close()
    assert not os.path.exists(tmp_path / "samples_1.png")


def test_the_evaluation_network_in_row_chunks_draws_the_same_samples(tmp_path, monkeypatch):
    """eval.chunk_rows runs the sampler's network in row chunks (`sampling.chunks`): the same
    samples as on the whole batch (chunks of 150 rows of 500: 4 chunks, one padded), and the
    setting is checked."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from flowmatch import training  # pylint: disable=g-import-not-at-top
    from flowmatch.checks import ConfigError  # pylint: disable=g-import-not-at-top
    from flowmatch.sampling import chunks  # pylint: disable=g-import-not-at-top
    seen, real = [], chunks.apply_rows

    def recording(apply, params, x, t, cond, chunk_rows):
        seen.append(chunk_rows)  # at trace time, the setting the network was run with
        return real(apply, params, x, t, cond, chunk_rows)

    monkeypatch.setattr(chunks, "apply_rows", recording)
    key = rng.seed_stream(0, "eval")
    samples = {}
    for rows in (0, 150):
        seen.clear()
        c = load_config("moons")
        c.eval.num_tv_samples = c.eval.chunk_size = 500
        c.sampling.num_steps = 2
        c.eval.chunk_rows = rows
        ev, params = speed_process.initial_evaluator(c, str(tmp_path / str(rows)), key)
        try:
            samples[rows] = np.asarray(ev.draw(params, rng.stream(key, "samples"), None).x)
        finally:
            ev.close()
        assert set(seen) == {rows or None}
    np.testing.assert_array_equal(samples[150], samples[0])
    c = load_config("moons")
    c.eval.chunk_rows = -1
    with pytest.raises(ConfigError, match="chunk_rows"):
        training.read_settings(c)
