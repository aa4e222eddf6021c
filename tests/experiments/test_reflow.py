"""Reflow and distillation: pair generation (resume, determinism, the key layout), training on a
known straight coupling, one-step distillation, and the driver end to end."""

import io
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import data, integrators, metrics, objectives, rng, training
from flowmatch.data import pairs as pairs_lib
from flowmatch.experiments import reflow
from flowmatch.experiments import reflow_pairs
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)
from runs_util import untrained_run  # noqa: E402

# x1 = A x0 + b: a deterministic coupling whose paths x_t = ((1 - t) I + t A) x0 + t b never cross
# (A is symmetric positive definite), so the rectified field along them is exactly x1 - x0.
A = np.array([[1.5, 0.3], [0.3, 0.6]], np.float32)
B = np.array([1.0, -0.5], np.float32)


def exact_field(x, t):
    """v(x, t) of the linear coupling: (A - I) M_t^{-1} (x - t b) + b, M_t = (1 - t) I + t A."""
    m = (1 - t) * np.eye(2) + t * A
    return (np.linalg.solve(m, (x - t * B).T).T) @ (A - np.eye(2)).T + B


def small_config(**overrides):
    c = load_config("moons")
    c.model.hidden_sizes = (64, 64)
    c.model.time_embed_dim = 16
    c.num_train_steps = 200
    c.steps_per_call = 100
    c.log_every_steps = 100
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 200
    c.sampling.num_steps = 4
    c.batch_size = 256
    c.ema_decay = 0.9
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 0
    c.objective.time_sampling = "uniform"
    c.eval.num_tv_samples = 500
    c.eval.num_w2_samples = 100
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-D run with untrained parameters (a checkpoint at step 1)."""
    return untrained_run(small_config(), str(tmp_path_factory.mktemp("run")), step=1)


def linear_pairs(directory, n=4096, chunk_size=1000, seed=0):
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, 2)))
    return data.save_pairs(directory, x0, x0 @ A.T + B, data="moons", chunk_size=chunk_size)


# -- pair generation ----------------------------------------------------------------------------


def chunk_arrays(d, i):
    with np.load(os.path.join(d, pairs_lib.chunk_filename(i))) as z:
        return {k: z[k] for k in ("x0", "x1", "label")}


def test_pairs_resume_redoes_damaged_and_unlisted_chunks_only(run_dir, tmp_path):
    d = str(tmp_path / "pairs")
    kw = dict(num_pairs=50, chunk_size=16, method="euler", num_steps=2, seed=3, verbose=False)
    first = reflow.generate_pairs(run_dir, d, **kw)
    assert first["generated"] == [0, 1, 2, 3] and first["skipped"] == []
    want = [chunk_arrays(d, i) for i in range(4)]
    mtimes = {i: os.stat(os.path.join(d, pairs_lib.chunk_filename(i))).st_mtime_ns
              for i in (0, 3)}
    # A kill leaves: a chunk half-written (here truncated), a chunk renamed into place but not
    # yet in the manifest, and a temporary file.
    path1 = os.path.join(d, pairs_lib.chunk_filename(1))
    with open(path1, "r+b") as f:
        f.truncate(os.path.getsize(path1) // 2)
    manifest = pairs_lib.read_manifest(d)
    del manifest["chunks"]["2"]
    pairs_lib.write_json_atomic(os.path.join(d, pairs_lib.MANIFEST), manifest)
    open(os.path.join(d, ".tmp_abc_chunk_00003.npz"), "wb").close()
    with pytest.raises(ValueError, match="incomplete"):
        data.load_pairs(d)

    again = reflow.generate_pairs(run_dir, d, **kw)
    assert again["generated"] == [1, 2] and again["skipped"] == [0, 3]
    for i in range(4):  # redone chunks hold the same numbers
        for k, v in chunk_arrays(d, i).items():
            np.testing.assert_array_equal(v, want[i][k])
    for i, t in mtimes.items():  # finished chunks were not rewritten
        assert os.stat(os.path.join(d, pairs_lib.chunk_filename(i))).st_mtime_ns == t
    assert not [n for n in os.listdir(d) if n.startswith(".tmp_")]
    assert reflow.generate_pairs(run_dir, d, **kw)["generated"] == []
    with pytest.raises(training.ConfigError, match=r"made differently.*'seed': \(3, 4\)"):
        reflow.generate_pairs(run_dir, d, **dict(kw, seed=4))


def test_pairs_are_the_flow_of_their_noise(run_dir, tmp_path):
    d = str(tmp_path / "pairs")
    reflow.generate_pairs(run_dir, d, num_pairs=40, chunk_size=16, method="heun", num_steps=3,
                          seed=7, verbose=False)
    src = data.load_pairs(d)
    assert (src.kind, src.example_shape, src.num_examples, src.box[0].tolist()) == (
        "toy2d", (2,), 40, [-5.0, -5.0])
    # chunk c's noise: the source's draw from the "source" stream of chunk 0 of a one-chunk
    # Chunked draw with key fold_in(seed_stream(seed, "pairs"), c), truncated to num_pairs
    run = training.restore(run_dir)
    keys = [jax.random.fold_in(jax.random.fold_in(rng.seed_stream(7, "pairs"), c), 0)
            for c in range(3)]
    x0 = np.concatenate([run.components.source.sample(rng.stream(k, "source"), 16)
                         for k in keys])[:40]
    np.testing.assert_array_equal(src.x0, x0)
    v = run.components.model_fn().velocity_fn(run.state.ema_params)
    x1 = jax.jit(lambda x: integrators.solve(v, x, method="heun", num_steps=3).x)(src.x0)
    np.testing.assert_allclose(src.x1, x1, rtol=1e-5, atol=1e-5)
    # A directory from before named key streams (no "keys" entry) is not resumed into.
    manifest = pairs_lib.read_manifest(d)
    del manifest["spec"]["keys"]
    pairs_lib.write_json_atomic(os.path.join(d, pairs_lib.MANIFEST), manifest)
    with pytest.raises(training.ConfigError, match="made differently.*'keys'"):
        reflow_pairs.generate_pairs(run_dir, d, num_pairs=40, chunk_size=16, method="heun",
                                    num_steps=3, seed=7, verbose=False)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_pairs_progress_bar_counts_chunks_on_a_terminal_only(run_dir, tmp_path, capsys,
                                                             monkeypatch):
    kw = dict(num_pairs=40, chunk_size=16, method="euler", num_steps=2, seed=5)
    reflow.generate_pairs(run_dir, str(tmp_path / "quiet"), **kw)
    out = capsys.readouterr()
    assert out.out.count("pairs: chunk ") == 3 and "chunks of" not in out.out + out.err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    reflow.generate_pairs(run_dir, str(tmp_path / "bar"), **kw)
    screen = terminal.getvalue()
    assert "pairs: chunks of 16 pairs" in screen and "3/3" in screen
    lines = [line.rsplit("\r", 1)[-1] for line in screen.split("\n")]
    assert [line.split(" (")[0] for line in lines if line.startswith("pairs: chunk ")] == [
        f"pairs: chunk {i}/3" for i in (1, 2, 3)]


# -- training on pairs --------------------------------------------------------------------------


def test_time_sampling_zero_is_t_min():
    t = objectives.sample_time(jax.random.PRNGKey(0), 5, "zero", t_min=0.0)
    np.testing.assert_array_equal(t, np.zeros(5))


def test_flow_on_a_straight_coupling_learns_the_straight_field(tmp_path):
    pairs = linear_pairs(str(tmp_path / "pairs"))
    config = reflow.pairs_config(small_config(), pairs, 4096)
    workdir = str(tmp_path / "flow")
    state = training.train_and_evaluate(config, workdir)
    comps = training.restore(workdir).components
    # The loss of a deterministic coupling without crossings has minimum 0 (that of independent
    # pairs does not): it ends far below the mean square of its target x1 - x0.
    loss = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]["loss"]
    src = data.load_pairs(pairs)
    assert loss < 2e-3 * np.mean((src.x1 - src.x0) ** 2), loss
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (256, 2)))
    for t in (0.1, 0.5, 0.9):
        x = (1 - t) * x0 + t * (x0 @ A.T + B)
        v = np.asarray(comps.apply(state.params, jnp.asarray(x, jnp.float32),
                                   jnp.full((256,), t, jnp.float32)))
        err = np.mean(np.sum((v - exact_field(x, t)) ** 2, 1))
        assert err < 0.01 * np.mean(np.sum(exact_field(x, t) ** 2, 1)), (t, err)


def test_distilled_model_maps_x0_to_x1_in_one_euler_step(tmp_path):
    pairs = linear_pairs(str(tmp_path / "pairs"))
    workdir = str(tmp_path / "distill")
    reflow.train_distilled(small_config(), workdir, pairs)
    run = training.restore(workdir)
    comps = run.components
    assert comps.objective.time_sampling == "zero"
    assert dict(comps.settings.sampling) == dict(method="euler", num_steps=1, rtol=None,
                                                 atol=None)
    out = reflow_pairs.pair_drawer(comps, 512, dict(method=None))(
        run.state.ema_params, jax.random.PRNGKey(4))
    assert out.nfe == 1 and out.success
    err = np.mean(np.sum((out.x - (out.x0 @ A.T + B)) ** 2, 1))
    assert err < 0.005 * np.mean(np.sum((out.x0 @ A.T + B - out.x0) ** 2, 1)), err


def test_distillation_needs_the_straight_path(tmp_path):
    pairs = linear_pairs(str(tmp_path / "pairs"), n=10)
    config = small_config()
    config.coupling.name = "exact"  # flow 1 may use OT pairs; its pairs are trained as written
    assert reflow.pairs_config(config, pairs, 10).coupling.name == "independent"
    config.path.schedule = "cosine"
    with pytest.raises(training.ConfigError, match="path.schedule='cond_ot'"):
        reflow.distill_config(config, pairs, 10)
    with pytest.raises(training.ConfigError, match="no pairs in"):
        reflow.train_distilled(small_config(), str(tmp_path / "d"), str(tmp_path / "none"))


# -- the driver ---------------------------------------------------------------------------------


def test_changed_settings_ignores_settings_added_since():
    old = json.dumps({"config": {"a": 1, "b": {"c": 2}}})
    assert reflow.changed_settings(old, json.dumps({"config": {"a": 1, "b": {"c": 2, "d": 0}}})) \
        == []
    assert reflow.changed_settings(old, json.dumps({"config": {"a": 2, "b": {}}})) == [
        "config.a", "config.b.c"]


def test_reflow_settings_errors():
    config = load_config("reflow_moons")
    config.reflow.eval_samplers = ("heun:x",)
    with pytest.raises(training.ConfigError, match="bad sampler 'heun:x'.*METHOD:STEPS"):
        reflow.ReflowSettings.from_config(config.reflow)
    with pytest.raises(training.ConfigError, match="no 'reflow' section"):
        reflow.ReflowSettings.from_config(None)
    with pytest.raises(training.ConfigError, match=r"unknown config key reflow\.k\b"):
        reflow.ReflowSettings.from_config(dict(k=2))
    with pytest.raises(training.ConfigError, match=r"reflow\.num_pairs must be a positive"):
        reflow.ReflowSettings.from_config(dict(num_pairs=0))
    with pytest.raises(training.ConfigError, match="plain training"):
        reflow.ReflowSettings.from_config(dict(num_reflows=0))


@pytest.mark.slow
def test_reflow_driver_runs_resumes_and_refuses_changed_stages(tmp_path, capsys):
    config = load_config("reflow_moons")
    workdir = str(tmp_path / "chain")
    out = reflow.run_reflow(config, workdir)
    assert set(out["stages"]) == {"flow1", "pairs1", "flow2", "pairs2", "distill"}
    assert [r["run"] for r in out["evaluation"]["rows"]] == ["flow1", "flow2", "distill"]
    assert out["evaluation"]["rows"][2]["one_step"]
    with open(os.path.join(workdir, "evaluation.md")) as f:
        assert "| distill | " in f.read()
    assert json.load(open(os.path.join(workdir, "evaluation.json"))) == json.loads(
        json.dumps(out["evaluation"]))
    # flow 2 started from flow 1's EMA parameters (its step-0 checkpoint)
    flow1 = training.restore(os.path.join(workdir, "flow1")).state
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "flow2", "checkpoints"))
    start, _ = ckpt.restore(0, checkpoint_lib.abstract_like(flow1))
    ckpt.close()
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(flow1.ema_params)):
        np.testing.assert_array_equal(a, b)
    assert json.load(open(os.path.join(workdir, "pairs2", "manifest.json")))["spec"][
        "source_workdir"] == os.path.join(workdir, "flow2")

    capsys.readouterr()
    config.reflow.evaluate = False
    again = reflow.run_reflow(config, workdir)
    assert again["stages"] == out["stages"]
    assert capsys.readouterr().out.count("already done, skipped") == 5
    config.num_train_steps = 6
    with pytest.raises(training.ConfigError, match=r"stage flow1 .* other settings .*\(config\."
                       r"num_train_steps\)"):
        reflow.run_reflow(config, workdir)
