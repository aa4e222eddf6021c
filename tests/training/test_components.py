"""Config validation: every section read into its component's own record, unknown keys named at
any depth with a suggestion, one-line errors that give the key, the value and what is allowed,
model-vs-data checks before anything compiles, and bugs that keep their traceback."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs_util import load_config
from runs_util import untrained_run
from flowmatch import integrators, training
from flowmatch.checks import ConfigError
from flowmatch.training import components, runs
from flowmatch.training import settings as settings_lib


def moons(**overrides):
    """configs/moons.py:smoke with overrides {"a.b": value}."""
    config = load_config("moons")
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        with config.ignore_type():
            (config[section] if section else config)[field] = value
    return config


def check(config):
    s = training.read_settings(config)
    return training.build(s, runs._legacy_spec(config))


@pytest.mark.parametrize("key,suggestion", [
    ("num_train_step", "num_train_steps"),
    ("optimizer.learnig_rate", "optimizer.learning_rate"),
    ("objective.time_samplng", "objective.time_sampling"),
    ("path.sigma_mn", "path.sigma_min"),
    ("coupling.tolerence", None),
    ("model.hidden_size", "model.hidden_sizes"),
])
def test_unknown_keys_at_any_depth_are_named_with_a_suggestion(key, suggestion):
    config = moons()
    config.unlock()
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = 1
    with pytest.raises(ConfigError) as info:
        check(config)
    message = str(info.value)
    assert f"unknown config key {key}" in message and "allowed" in message and "\n" not in message
    if suggestion:
        assert f"did you mean {suggestion}?" in message


def test_a_drivers_config_section_is_refused_with_the_script_to_use():
    config = moons()
    config.unlock()
    config.reflow = {"num_reflows": 1}
    with pytest.raises(ConfigError, match="belongs to scripts/reflow.py"):
        check(config)


def _bad_name(allowed):
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1,
                   max_size=10).filter(lambda s: s not in allowed)


def _non_positive():
    return st.integers(min_value=-10**6, max_value=0)


# (key, strategy of invalid values, what the message must contain besides the key)
INVALID = [
    ("batch_size", _non_positive(), None),
    ("num_train_steps", _non_positive(), None),
    ("steps_per_call", _non_positive(), None),
    ("log_every_steps", _non_positive(), None),
    ("checkpoint_every_steps", _non_positive(), None),
    ("grad_accum_steps", _non_positive(), None),
    ("seed", st.integers(max_value=-1) | st.integers(min_value=2**31), None),
    ("eval.num_tv_samples", _non_positive(), None),
    ("eval.chunk_size", _non_positive(), None),
    ("sampling.num_steps", _non_positive(), None),
    ("checkpoint.max_to_keep", _non_positive(), None),
    ("nonfinite.max_consecutive_skips", _non_positive(), None),
    ("ema_decay", st.floats(min_value=1.0) | st.floats(max_value=-1e-9) | st.just(float("nan")),
     None),
    ("optimizer.learning_rate", st.floats(max_value=0.0) | st.sampled_from(
        [float("nan"), float("inf")]), None),
    ("optimizer.b1", st.floats(min_value=1.0, allow_infinity=False), None),
    ("optimizer.eps", st.floats(max_value=0.0, allow_infinity=False), None),
    ("optimizer.warmup_steps", st.integers(max_value=-1), None),
    ("data.name", _bad_name(("moons", "checkerboard", "8gaussians", "spirals", "circles",
                             "swissroll", "digits", "mnist", "cifar10", "image_folder", "pairs")),
     "choose one of"),
    ("model.name", _bad_name(("mlp", "unet", "dit")), "choose one of: mlp, unet"),
    ("model.dtype", _bad_name(components.DTYPES), "float32, bfloat16"),
    ("path.schedule", _bad_name(("cond_ot", "cosine", "polynomial")), "cond_ot, cosine"),
    ("objective.name", _bad_name(("flow_matching", "ddpm")), "flow_matching, ddpm"),
    ("sampling.method", _bad_name(integrators.METHODS + ("ancestral", "ddim")), "choose one of"),
    ("optimizer.schedule", _bad_name(settings_lib.LR_SCHEDULES), "cosine, constant"),
    ("nonfinite.policy", _bad_name(settings_lib.NONFINITE_POLICIES), "skip, stop"),
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(INVALID).flatmap(lambda c: st.tuples(st.just(c), c[1])))
def test_every_invalid_setting_is_one_clear_config_error(case):
    (key, _, must), value = case
    with pytest.raises(ConfigError) as info:
        check(moons(**{key: value}))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert key.rpartition(".")[2] in message, message
    assert repr(value) in message or str(value) in message, message
    if must:
        assert must in message, message


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from([m for m in integrators.METHODS
                               if m not in integrators.ADAPTIVE_METHODS]),
       tol=st.floats(min_value=1e-9, max_value=1.0))
def test_a_tolerance_on_a_fixed_step_method_is_refused(method, tol):
    with pytest.raises(ConfigError, match=f"method='{method}' is no adaptive ODE method.*"
                                          "bosh3, dopri5, tsit5"):
        check(moons(**{"sampling.method": method, "sampling.rtol": tol}))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(
    st.tuples(st.just("channel_mult"), st.lists(st.integers(1, 4), min_size=5, max_size=7)),
    st.tuples(st.just("attn_resolutions"), st.lists(
        st.integers(1, 64).filter(lambda r: r not in (8, 4)), min_size=1, max_size=3)),
    st.tuples(st.just("out_channels"), st.integers(2, 8)),
    st.tuples(st.just("num_classes"), st.integers(1, 9)),
))
def test_an_image_model_that_does_not_fit_the_data_is_refused_before_compiling(case):
    field, value = case
    config = load_config("digits")
    with config.ignore_type():
        config.model[field] = tuple(value) if isinstance(value, list) else value
    with pytest.raises(ConfigError) as info:
        check(config)
    message = str(info.value)
    assert "\n" not in message and field in message and "digits" in message, message


@pytest.mark.parametrize("overrides,match", [
    ({"batch_size": 16, "grad_accum_steps": 3}, "grad_accum_steps"),
    ({"objective.name": "ddpm", "objective.prediction": "eps", "coupling.name": "exact"},
     "draws its own Gaussian noise"),
    ({"coupling.per_class": True}, "no labels"),
    ({"objective.label_dropout": 0.1}, "label_dropout=0.1 trains the null label.*"
                                       "model.num_classes=0"),
    ({"objective.label_dropout": 1.0}, r"label_dropout must be in \[0, 1\)"),
    ({"source.name": "moons2"}, "choose one of: normal"),
    ({"path.schedule": "polynomial", "path.exponent": -1.0}, "exponent must be > 0"),
    ({"eval_every_steps": 6, "log_every_steps": 4}, "multiple of log_every_steps"),
])
def test_combinations_between_sections(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check(moons(**overrides))


def test_read_settings_gives_typed_records():
    s = training.read_settings(moons(**{"eval_every_steps": 0}))
    assert s.train.batch_size == 16 and not s.train.evaluates
    assert s.objective.name if hasattr(s.objective, "name") else True
    assert s.sampling["method"] == "heun" and s.optimizer.schedule == "cosine"


def test_a_bug_in_a_component_keeps_its_traceback(monkeypatch):
    """Only config errors become ConfigError: a TypeError inside a component is a bug."""
    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(components.models_lib, "build_model", broken)
    with pytest.raises(TypeError, match="a bug"):
        check(moons())


def test_restoring_a_run_needs_no_training_data(tmp_path):
    """An image-folder run restores and samples after its data is gone (run.json)."""
    from PIL import Image
    import numpy as np
    data = tmp_path / "images" / "a"
    data.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(data / f"{i}.png")
    config = load_config("image_folder")
    config.data.path = str(tmp_path / "images")
    config.data.channels = 1
    # the run directory as training leaves it, without compiling a train step: restoring is
    # what is tested (that the trainer writes run.json: tests/training/test_loop.py's end-to-end
    # runs).  The U-Net, the image shape and the sampler are those of test_loop's end-to-end
    # digits run, whose init and sampler programs the session's compilation cache then holds.
    config.model.update(base_channels=8, channel_mult=(1,), num_res_blocks=1,
                        attn_resolutions=(8,), num_groups=4)
    config.update(num_train_steps=1, steps_per_call=1, log_every_steps=1, eval_every_steps=0,
                  checkpoint_every_steps=1)
    untrained_run(config, str(tmp_path / "run"))
    for p in data.iterdir():
        p.unlink()
    run = training.restore(str(tmp_path / "run"))
    assert run.components.spec.example_shape == (8, 8, 1)
    from flowmatch.experiments import sample
    out = sample.draw(run, 4, method="heun", num_steps=2)
    assert out.x.shape == (4, 8, 8, 1) and np.isfinite(out.x).all()
    assert os.path.exists(tmp_path / "run" / "run.json")
