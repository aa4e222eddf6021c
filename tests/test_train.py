"""The training loop: one smoke step per shipped config, exact resume, errors, checkpoints."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from flowmatch import metrics, train
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not os.path.basename(p).startswith(("_", "default")))
NEEDS_PATH = {"cifar10", "image_folder"}


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))))


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in NEEDS_PATH])
def test_smoke_variant_of_every_config_trains_and_evaluates(name, tmp_path):
    config = load_config(name)
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == config.num_train_steps
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(
        range(config.log_every_steps, config.num_train_steps + 1, config.log_every_steps))
    for r in rows:
        assert {"step", "loss", "grad_norm", "learning_rate", "steps_per_sec"} <= set(r)
        assert np.isfinite(r["loss"])
    assert os.path.exists(tmp_path / f"samples_{config.num_train_steps}.png")
    if config.model.name == "mlp":
        assert {"tv", "w2"} <= set(rows[-1]) and 0.0 <= rows[-1]["tv"] <= 1.0
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())[-1] == \
        config.num_train_steps


def small_config(**overrides):
    config = load_config("checkerboard")
    config.num_train_steps = 8
    config.checkpoint_every_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 8
    for k, v in overrides.items():
        config[k] = v
    return config


def test_resume_continues_to_the_same_parameters_bit_for_bit(tmp_path):
    straight = train.train_and_evaluate(small_config(), str(tmp_path / "a"))
    # Same command run twice: first to step 4, then again to the end, resuming from step 4.
    first = small_config(num_train_steps=4)
    train.train_and_evaluate(first, str(tmp_path / "b"))
    resumed = train.train_and_evaluate(small_config(), str(tmp_path / "b"))
    assert leaves_equal(straight.params, resumed.params)
    assert leaves_equal(straight.ema_params, resumed.ema_params)
    assert leaves_equal(straight.opt_state, resumed.opt_state)
    rows_a = metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    rows_b = metrics.read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == [2, 4, 6, 8]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == rb["loss"]


def test_steps_per_call_does_not_change_the_trajectory(tmp_path):
    one = train.train_and_evaluate(small_config(steps_per_call=1), str(tmp_path / "one"))
    two = train.train_and_evaluate(small_config(steps_per_call=2), str(tmp_path / "two"))
    # Same maths, different program boundaries: equal up to float reassociation.
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    rows_1 = metrics.read_metrics(str(tmp_path / "one" / "metrics.jsonl"))
    rows_2 = metrics.read_metrics(str(tmp_path / "two" / "metrics.jsonl"))
    np.testing.assert_allclose([r["loss"] for r in rows_1], [r["loss"] for r in rows_2],
                               rtol=1e-5)


def test_a_restarted_finished_run_does_nothing_more(tmp_path):
    config = small_config()
    train.train_and_evaluate(config, str(tmp_path))
    before = open(tmp_path / "metrics.jsonl").read()
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 8
    assert open(tmp_path / "metrics.jsonl").read() == before


def test_learning_rate_follows_warmup_and_cosine(tmp_path):
    config = small_config(num_train_steps=8, log_every_steps=1, steps_per_call=1)
    config.optimizer.warmup_steps = 4
    config.optimizer.learning_rate = 0.01
    train.train_and_evaluate(config, str(tmp_path))
    lrs = [r["learning_rate"] for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))]
    # Row k holds the rate used by step k (schedule evaluated at k - 1).
    np.testing.assert_allclose(lrs[:4], [0.0, 0.0025, 0.005, 0.0075], atol=1e-7)
    assert lrs[4] == pytest.approx(0.01) and lrs[4] > lrs[5] > lrs[6] > lrs[7]


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("num_train_steps", -5, "num_train_steps must be a positive integer"),
    ("log_every_steps", 3, "not a multiple of steps_per_call"),
])
def test_bad_config_values_fail_before_compiling(field, value, match, tmp_path):
    config = small_config()
    config[field] = value
    with pytest.raises(train.ConfigError, match=match):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("section,field,value,match", [
    ("data", "name", "mnist2", "mnist2"),
    ("model", "name", "transformer", "transformer"),
    ("model", "activation", "swishy", "swishy"),
    ("model", "dtype", "float16", "float16"),
    ("path", "schedule", "sigmoid", "cond_ot, cosine, polynomial"),
    ("objective", "prediction", "score", "velocity, x1, x0"),
    ("objective", "name", "score_sde", "flow_matching, ddpm"),
    ("objective", "time_sampling", "beta", "uniform, logit_normal"),
    ("optimizer", "learning_rate", -1.0, "learning_rate must be > 0"),
    ("optimizer", "schedule", "step", "cosine, constant"),
    ("sampling", "method", "rk5", "rk5"),
])
def test_unknown_names_are_reported_with_the_allowed_ones(section, field, value, match, tmp_path):
    config = small_config()
    config[section][field] = value
    with pytest.raises(train.ConfigError, match=match):
        train.train_and_evaluate(config, str(tmp_path))


def test_tolerance_on_fixed_step_sampler_is_refused(tmp_path):
    config = small_config()
    config.sampling.rtol = 1e-3
    config.sampling.atol = 1e-3
    with pytest.raises(train.ConfigError, match="rtol"):
        train.train_and_evaluate(config, str(tmp_path))


def test_config_json_round_trips(tmp_path):
    config = small_config()
    train.save_config(config, str(tmp_path))
    loaded = train.load_config(str(tmp_path))
    assert loaded.model.hidden_sizes == tuple(config.model.hidden_sizes)
    assert json.loads(loaded.to_json()) == json.loads(config.to_json())


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_baseline_trains_in_the_same_loop(prediction, tmp_path):
    config = small_config()
    config.objective.name = "ddpm"
    config.objective.prediction = prediction
    state = train.train_and_evaluate(config, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert int(state.step) == 8 and np.isfinite(rows[-1]["loss"]) and "tv" in rows[-1]


def test_ddpm_run_samples_with_ancestral_ddim_and_ode(tmp_path):
    from flowmatch import generate
    config = small_config()
    config.objective.name = "ddpm"
    config.objective.prediction = "eps"
    config.objective.num_timesteps = 50
    train.train_and_evaluate(config, str(tmp_path / "run"))
    for method, steps, nfe in (("ancestral", None, 50), ("ancestral", 5, 5), ("ddim", 7, 7),
                               ("heun", 3, 6)):
        out = generate.sample_to_file(str(tmp_path / "run"), str(tmp_path / f"{method}.npz"),
                                      num_samples=64, method=method, num_steps=steps)
        assert out["nfe"] == nfe and out["success"]
        assert np.load(tmp_path / f"{method}.npz")["samples"].shape == (64, 2)
    with pytest.raises(train.ConfigError, match="samples DDPM models"):
        generate.make_ddpm_sampler(train.Experiment.from_config(small_config()), "ddim")
