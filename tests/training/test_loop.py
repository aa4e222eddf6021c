"""The training loop: one end-to-end run per kind of data, every shipped config checked and traced
without training it, exact resume, program boundaries, finished runs, the LR schedule, DDPM in the
same loop, evaluation off."""

import glob
import os

import jax
import numpy as np
import pytest

from configs_util import ROOT, load_config
from flowmatch import data as data_lib
from flowmatch import metrics, training
from flowmatch.experiments import cli
from flowmatch.training import components, runs, state as state_lib, step as step_lib

CONFIGS = sorted(
    os.path.relpath(p, os.path.join(ROOT, "configs"))[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    if not os.path.basename(p).startswith(("_", "default")))


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))))


def small_config(**overrides):
    config = load_config("checkerboard")
    config.num_train_steps = 8
    config.checkpoint_every_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 8
    for k, v in overrides.items():
        config[k] = v
    return config


# (config JSON, run spec) -> (abstract state, state and metrics after one traced step): a few
# shipped configs are others verbatim (configs/benchmark/digits.py is configs/digits.py, a smoke
# variant can be another's), and a trace takes seconds.
_TRACED = {}


def _trace_train_step(settings, comps):
    """One multi-step call on abstract inputs under jax.eval_shape: (abstract state, new state,
    metrics), shapes only."""
    shape = comps.spec.example_shape
    plan = training.loop.make_plan(settings._replace(parallel=settings.parallel.__class__()))
    abstract = state_lib.abstract_state(comps.model, comps.tx, shape, comps.conditional)
    b = settings.train.batch_size
    batch = {"x": jax.ShapeDtypeStruct((1, b, *shape), np.float32),
             "label": jax.ShapeDtypeStruct((1, b), np.int32)}
    step = step_lib.make_multi_step(comps, plan, jax.tree.map(lambda _: plan.replicated,
                                                              abstract))
    return (abstract,) + tuple(jax.eval_shape(step, abstract, batch, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_is_valid_and_its_train_step_traces(name):
    """Full and smoke variants pass every config check, build for their data's shape (from the
    config alone, no data read) and trace one train step under jax.eval_shape: no compilation,
    no training (the end-to-end runs below train one 2-D and one image config)."""
    for variant in ("", "smoke"):
        config = cli.load_config_file(os.path.join(ROOT, "configs", f"{name}.py")
                                      + (f":{variant}" if variant else ""))
        config = config.copy_and_resolve_references()
        for section in components.DRIVER_SECTIONS:
            if section in config:
                del config[section]
        if config.data.name in ("cifar10", "image_folder") and not config.data.path:
            config.data.path = "/the/data/is/not/read"
        settings = training.read_settings(config)
        if config.data.name == "arrayrecord":  # no shards here: the shape the config states
            d = config.data
            spec = training.RunSpec(d.name, "image", (d.image_size, d.image_size, d.channels),
                                    config.model.num_classes)
        else:
            spec = runs._legacy_spec(config)
        if spec.kind == "toy2d":  # a 2-D set's labels come from its source (no file is read)
            spec = runs.spec_of_source(data_lib.make_source(config.data.name), config.data.name)
        comps = training.build(settings, spec)
        key = (config.to_json(sort_keys=True), spec)
        if key not in _TRACED:  # a config identical to one traced already: the same trace
            _TRACED[key] = _trace_train_step(settings, comps)
        abstract, new_state, m = _TRACED[key]
        assert m["loss"].shape == (1,)
        assert jax.tree.map(lambda a: a.shape, new_state.params) == jax.tree.map(
            lambda a: a.shape, abstract.params)


@pytest.mark.parametrize("name", ["moons", "digits"])
def test_end_to_end_run_logs_evaluates_and_checkpoints(name, tmp_path):
    config = load_config(name)
    config.eval.w2_in_training = True  # off by default (the small configs' 2-D check below)
    if config.model.name == "unet":
        # One level at 8x8 with its attention block: every kind of U-Net layer, trained end to
        # end, at half the compile time of the smoke's two levels (what is checked is the loop).
        config.model.update(base_channels=8, channel_mult=(1,), attn_resolutions=(8,),
                            num_groups=4)
    state = training.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == config.num_train_steps
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(
        range(config.log_every_steps, config.num_train_steps + 1, config.log_every_steps))
    for r in rows:
        assert {"step", "loss", "grad_norm", "learning_rate", "steps_per_sec"} <= set(r)
        assert np.isfinite(r["loss"])
    assert os.path.exists(tmp_path / f"samples_{config.num_train_steps}.png")
    if config.model.name == "mlp":
        assert {"tv", "w2", "nonfinite"} <= set(rows[-1]) and 0.0 <= rows[-1]["tv"] <= 1.0
        assert rows[-1]["w2"] > 0 and rows[-1]["nonfinite"] == 0
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert steps[-1] == config.num_train_steps
    assert runs.read_spec(str(tmp_path)) == runs.spec_of_source(
        training.loop.load_data(training.read_settings(config).data), config.data.name)


def test_resume_continues_to_the_same_parameters_bit_for_bit(tmp_path):
    straight = training.train_and_evaluate(small_config(), str(tmp_path / "a"))
    # Same command run twice: first to step 4, then again to the end, resuming from step 4.
    training.train_and_evaluate(small_config(num_train_steps=4), str(tmp_path / "b"))
    resumed = training.train_and_evaluate(small_config(), str(tmp_path / "b"))
    assert leaves_equal(straight.params, resumed.params)
    assert leaves_equal(straight.ema_params, resumed.ema_params)
    assert leaves_equal(straight.opt_state, resumed.opt_state)
    rows_a = metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    rows_b = metrics.read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == [2, 4, 6, 8]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == rb["loss"]
    # the default evaluation scores tv, no w2 (an assignment solve: eval.w2_in_training)
    assert "tv" in rows_a[-1] and "w2" not in rows_a[-1]
    # a finished run started again does nothing more
    before = open(tmp_path / "a" / "metrics.jsonl").read()
    assert int(training.train_and_evaluate(small_config(), str(tmp_path / "a")).step) == 8
    assert open(tmp_path / "a" / "metrics.jsonl").read() == before


def test_steps_per_call_does_not_change_the_trajectory(tmp_path):
    one = training.train_and_evaluate(small_config(steps_per_call=1), str(tmp_path / "one"))
    two = training.train_and_evaluate(small_config(steps_per_call=2), str(tmp_path / "two"))
    # Same maths, different program boundaries: equal up to float reassociation.
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    rows_1 = metrics.read_metrics(str(tmp_path / "one" / "metrics.jsonl"))
    rows_2 = metrics.read_metrics(str(tmp_path / "two" / "metrics.jsonl"))
    np.testing.assert_allclose([r["loss"] for r in rows_1], [r["loss"] for r in rows_2],
                               rtol=1e-5)


def test_learning_rate_follows_warmup_and_cosine_and_eval_can_be_off(tmp_path):
    config = small_config(num_train_steps=8, log_every_steps=1, steps_per_call=1,
                          eval_every_steps=0)
    config.optimizer.warmup_steps = 4
    config.optimizer.learning_rate = 0.01
    training.train_and_evaluate(config, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    lrs = [r["learning_rate"] for r in rows]
    # Row k holds the rate used by step k (schedule evaluated at k - 1).
    np.testing.assert_allclose(lrs[:4], [0.0, 0.0025, 0.005, 0.0075], atol=1e-7)
    assert lrs[4] == pytest.approx(0.01) and lrs[4] > lrs[5] > lrs[6] > lrs[7]
    # eval_every_steps = 0: no evaluation at all, the final one included
    assert not any("tv" in r for r in rows) and not glob.glob(str(tmp_path / "samples_*.png"))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_baseline_trains_in_the_same_loop(prediction, tmp_path):
    config = small_config()
    config.objective.name = "ddpm"
    config.objective.prediction = prediction
    state = training.train_and_evaluate(config, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert int(state.step) == 8 and np.isfinite(rows[-1]["loss"]) and "tv" in rows[-1]
