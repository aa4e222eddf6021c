"""The diagnostics driver: its files, the corrections' table, argument errors, and the script
end to end on a tiny trained run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from flowmatch import paths, training
from flowmatch.checks import ConfigError
from flowmatch.experiments import diagnose
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MU, S = 0.7, 0.5
PATH = paths.make_path("cond_ot")


def _exact(t, x):
    """The exact velocity of x1 ~ N(MU, S^2 I) on the cond-OT path (posterior means)."""
    var = t**2 * S**2 + (1 - t) ** 2
    r = x - t * MU
    return MU + (t * S**2 / var) * r - ((1 - t) / var) * r


def test_spectra_report_files(tmp_path):
    x0 = jax.random.normal(jax.random.PRNGKey(8), (6, 8, 8, 1))
    entries = diagnose.spectra_entries(_exact, PATH, x0, [("euler", 4, 4)], 0.9, "gauss")
    result = diagnose.write_spectra(entries, 0.9, str(tmp_path))
    (e,) = result["entries"]
    assert len(e["reach_t"]) == len(e["rings"]) == 7 and e["t"][-1] == 1.0 and e["nfe"] == 4
    # Gaussian data with a constant mean: the prediction's energy grows to its final value.
    assert all(0.0 <= t <= 1.0 for t in e["reach_t"] + e["settle_t_x_t"])
    for name in ("spectra.json", "spectra.png", "spectra_reach.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_")]  # atomic writes


def test_correction_effects():
    def row(correction, nfe, value, kind="fixed"):
        return {"method": "heun", "kind": kind, "correction": correction, "nfe": nfe,
                "metric": "w2", "value": value}

    rows = [row("none", 8, 1.0, "reference"), row("none", 8, 0.5), row("time_shift", 8, 0.4),
            row("eps_scale=1.02", 8, 0.6), row("none", 16, 0.2), row("time_shift", 16, 0.25)]
    effect = {(e["correction"], e["nfe"]): e for e in diagnose.correction_effects(rows)}
    assert set(effect) == {("time_shift", 8), ("eps_scale=1.02", 8), ("time_shift", 16)}
    assert effect[("time_shift", 8)]["rel_change"] == pytest.approx(-0.2)
    assert effect[("time_shift", 8)]["helps"] and not effect[("time_shift", 16)]["helps"]
    assert effect[("eps_scale=1.02", 8)]["base"] == 0.5  # the fixed row, not the reference
    assert "time_shift" in diagnose.format_effects(list(effect.values()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(analyses=["warp"]), "unknown analyses"),
    (dict(analyses=[]), "unknown analyses"),
    (dict(analyses=["exposure"]), "need --workdir"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    args = dict(runs={}, output_dir=str(tmp_path), **kwargs)
    with pytest.raises(ConfigError, match=match):
        diagnose.diagnose(**args)


def test_bad_plan(tmp_path):
    with pytest.raises(ConfigError, match="unknown integrator 'rk5'"):
        diagnose.exposure_report(str(tmp_path), str(tmp_path), methods=["rk5"])
    with pytest.raises(ConfigError, match="no \\(method, NFE\\) pair fits"):
        diagnose.exposure_report(str(tmp_path), str(tmp_path), methods=["rk4"],
                                 nfe_budgets=(2,))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    training.train_and_evaluate(load_config("checkerboard"), workdir)
    return workdir


def _script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "diagnose.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_script(smoke_run, tmp_path):
    proc = _script(f"--workdir=cb={smoke_run}", f"--output={tmp_path}",
                   "--analyses=exposure,roofline", "--methods=euler", "--nfe=2,4",
                   "--num_samples=64", "--compare_samples=64", "--corrections=eps_scale=1.05",
                   "--mlp_batches=8", "--nomeasure_peaks",
                   "--roofline_configs=configs/moons.py:smoke")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "exposure_cb" / "exposure.json") as f:
        result = json.load(f)
    assert [(p["method"], p["nfe"]) for p in result["profiles"]] == [("euler", 2), ("euler", 4)]
    assert len(result["profiles"][1]["rows"]) == 5 and result["num_samples"] == 64
    assert np.isfinite(result["profiles"][1]["summary"]["mean_ratio"])
    with open(tmp_path / "exposure_cb" / "exposure_corrections.json") as f:
        effect = json.load(f)
    assert {(e["nfe"], e["correction"], e["metric"]) for e in effect} == {
        (b, "eps_scale=1.05", m) for b in (2, 4) for m in ("tv", "w2")}
    with open(tmp_path / "roofline" / "roofline.json") as f:
        roof = json.load(f)
    assert {(r["what"], r["batch"]) for r in roof["rows"]} == {
        ("train_step", 8), ("sample_eval", 8)}
    assert all(r["bound"]["NVIDIA H100 SXM"] == "memory" for r in roof["rows"])
    for png in ("exposure_cb/exposure.png", "exposure_cb/corrections/integrators.png",
                "roofline/roofline.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    bad = _script(f"--output={tmp_path}", "--analyses=warp")
    assert bad.returncode == 2 and "unknown analyses" in bad.stderr
