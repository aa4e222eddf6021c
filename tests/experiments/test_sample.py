"""scripts/sample.py and flowmatch.experiments.sample for class-conditional runs: --label,
--guidance_scale, --guidance_interval, the npz's labels and passes, and one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs_util import ROOT, load_config
from flowmatch.checks import ConfigError
from flowmatch.experiments import sample
from runs_util import untrained_run


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {name: untrained_run(load_config(name), str(root / name))
            for name in ("8gaussians_cond", "checkerboard")}


def script(*args):
    return subprocess.run([sys.executable, "scripts/sample.py", *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_sample_script_draws_guided_samples_of_one_class(run_dirs, tmp_path):
    """--label, --guidance_scale and --guidance_interval end to end: the npz records the labels,
    the scale, the interval and two network passes per evaluation."""
    out = str(tmp_path / "g.npz")
    proc = script(f"--workdir={run_dirs['8gaussians_cond']}", f"--output={out}",
                  "--num_samples=50", "--method=euler", "--steps=3", "--label=3",
                  "--guidance_scale=2", "--guidance_interval=0.2,0.8")
    assert proc.returncode == 0, proc.stderr[-1000:]
    with np.load(out) as f:
        np.testing.assert_array_equal(f["labels"], np.full(50, 3))
        assert int(f["nfe"]) == 3 and int(f["passes"]) == 6  # two passes per evaluation
        assert float(f["guidance_scale"]) == 2.0
        np.testing.assert_array_equal(f["guidance_interval"], [0.2, 0.8])
        assert f["samples"].shape == (50, 2) and np.all(np.isfinite(f["samples"]))
    assert "passes=6" in proc.stdout and "label=3" in proc.stdout
    assert "class_agreement=" in proc.stdout and os.path.exists(out[:-4] + ".png")


def test_unguided_samples_cycle_through_the_classes(run_dirs, tmp_path):
    plain = sample.sample_to_file(run_dirs["8gaussians_cond"], str(tmp_path / "p.npz"),
                                  num_samples=20, method="euler", num_steps=3)
    with np.load(tmp_path / "p.npz") as f:  # no --label: the classes in turn; unguided
        np.testing.assert_array_equal(f["labels"], np.arange(20) % 8)
        assert int(f["passes"]) == int(f["nfe"]) == 3
    assert "guidance_scale" not in plain


def test_label_agreement_is_the_nearest_labelled_point():
    ref_x = np.array([[0.0, 0.0], [10.0, 0.0]])
    ref_y = np.array([0, 1])
    x = np.array([[1.0, 0.0], [9.0, 0.0], [6.0, 0.0], [np.nan, 0.0]])
    assert sample.label_agreement(x, np.array([0, 1, 0, 0]), ref_x, ref_y) == 0.5


@pytest.mark.parametrize("run,kwargs,message", [
    ("checkerboard", dict(label=1), "--label=1 needs a class-conditional run"),
    ("checkerboard", dict(guidance_scale=2.0), "--guidance_scale=2.0 needs a class-conditional"),
    ("8gaussians_cond", dict(label=8), "out of range: the run has 8 classes"),
    ("8gaussians_cond", dict(guidance_scale=2.0, guidance_interval=(0.9, 0.1)),
     "0 <= t_lo <= t_hi <= 1"),
    ("8gaussians_cond", dict(guidance_interval=(0.2, 0.8)), "without guidance_scale"),
    ("8gaussians_cond", dict(guidance_scale=float("inf")), "finite number"),
])
def test_bad_labels_and_guidance_settings_are_config_errors(run_dirs, tmp_path, run, kwargs,
                                                            message):
    with pytest.raises(ConfigError, match=message):
        sample.sample_to_file(run_dirs[run], str(tmp_path / "x.npz"), num_samples=8, **kwargs)
    assert not os.path.exists(tmp_path / "x.npz")


def test_sample_script_refuses_a_bad_flag_in_one_line(run_dirs, tmp_path):
    """Flag parsing and ConfigError -> one line, exit 2; the other refusals are the same
    ConfigErrors, checked in process above."""
    message = "--guidance_interval must be a comma-separated list of two times lo,hi"
    proc = script(f"--workdir={run_dirs['8gaussians_cond']}", f"--output={tmp_path / 'x.npz'}",
                  "--num_samples=8", "--guidance_scale=2", "--guidance_interval=0.2,late")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-500:]


def test_sample_labels():
    with pytest.raises(ConfigError, match="out of range"):
        sample.sample_labels(_Comps(4), 3, label=-1)
    np.testing.assert_array_equal(sample.sample_labels(_Comps(4), 6), [0, 1, 2, 3, 0, 1])
    assert sample.sample_labels(_Comps(0), 6) is None


class _Comps:
    def __init__(self, c):
        self.conditional = c > 0
        self.model = type("M", (), {"num_classes": c})()


def test_2d_scores_come_with_their_floor_at_the_same_sample_count(run_dirs, tmp_path):
    """tv_floor / w2_floor: fresh data scored as the samples are, at the scored count; the tv
    floor of 200 points is far above that of 5,000 (histogram noise), so a tv is only read
    against the floor printed beside it."""
    small, large = (sample.sample_to_file(run_dirs["checkerboard"], str(tmp_path / f"{n}.npz"),
                                          num_samples=n, method="euler", num_steps=1)
                    for n in (200, 5_000))
    for r in (small, large):
        assert 0 < r["tv_floor"] < 1 and r["w2_floor"] > 0
    assert small["tv_floor"] > 2 * large["tv_floor"]
