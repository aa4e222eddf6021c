"""Run directories: config.json and run.json round trips, restoring runs written before run.json
existed (committed tiny runs made by the previous layout), and a DDPM run sampled by every
family of the registry."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs_util import ROOT, load_config
from flowmatch import sampling, training
from flowmatch.experiments import sample
from flowmatch.training import runs

LEGACY = os.path.join(ROOT, "tests", "data", "legacy_runs")


def test_config_json_round_trips(tmp_path):
    config = load_config("checkerboard")
    runs.save_config(config, str(tmp_path))
    loaded = runs.load_config(str(tmp_path))
    assert loaded.model.hidden_sizes == tuple(config.model.hidden_sizes)
    assert json.loads(loaded.to_json()) == json.loads(config.to_json())
    spec = training.RunSpec("checkerboard", "toy2d", (2,), 0, ((-5.0, -5.0), (5.0, 5.0)))
    runs.write_spec(spec, str(tmp_path))
    assert runs.read_spec(str(tmp_path)) == spec


@pytest.mark.parametrize("name", ["flow_matching", "ddpm"])
def test_runs_from_before_the_reshape_restore_and_sample_as_they_did(name, tmp_path):
    """Committed 4-step runs of the old layout (no run.json; written by the code before the
    reshape) restore, and the registry's heun sampler from the stored noise gives what the old code
    gave (the DDPM run: the old benchmark's denoising probability-flow sampler)."""
    workdir = str(tmp_path / name)
    shutil.copytree(os.path.join(LEGACY, name), workdir)
    run = training.restore(workdir)
    assert run.step == 4 and run.components.spec.example_shape == (2,)
    with np.load(os.path.join(LEGACY, "expected_heun4.npz")) as f:
        x0, want, nfe = f["x0"], f[name], int(f[f"{name}_nfe"])
    out = jax.jit(run.components.make_sampler("heun", 4))(run.state.ema_params, x0, None)
    assert int(out.nfe) == nfe
    np.testing.assert_allclose(out.x, want, rtol=2e-5, atol=2e-5)
    result = sample.sample_to_file(workdir, str(tmp_path / "s.npz"), num_samples=100)
    assert result["num_samples"] == 100 and "tv" in result


def test_ddpm_run_samples_with_every_family(tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(LEGACY, "ddpm"), workdir)
    for method, steps, nfe in (("ancestral", None, 50), ("ancestral", 5, 5), ("ddim", 7, 7),
                               ("ddim", None, 50), ("heun", 3, 7)):
        out = sample.sample_to_file(workdir, str(tmp_path / f"{method}.npz"), num_samples=64,
                                    method=method, num_steps=steps)
        assert out["nfe"] == nfe and out["success"]
        assert np.load(tmp_path / f"{method}.npz")["samples"].shape == (64, 2)
    assert {"ancestral", "ddim"} <= set(sampling.METHODS)
