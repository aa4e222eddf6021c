"""Reliability: exact resume after kill -9 and SIGTERM, damaged checkpoints, non-finite steps,
invalid configs (hypothesis), a workdir holding another run, damaged data files.

Fault injection happens for real where it can: subprocesses killed with SIGKILL during training
and while a checkpoint is being written, SIGTERM to the training script, files truncated or
changed after a checkpoint was sealed, NaN written into a data batch.
"""

import glob
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)
from flowmatch import checkpoint as ckpt_lib
from flowmatch import data as data_lib
from flowmatch import generate, metrics, train, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("steps_per_sec", "eval_seconds")


def moons(**overrides):
    """configs/moons.py:smoke with overrides {"a.b": value}."""
    config = load_config("moons")
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


def leaves_equal(a, b):
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def rows_without_timing(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_rows(a, b):
    ra, rb = rows_without_timing(a), rows_without_timing(b)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == y[k] or (np.isnan(x[k]) and np.isnan(y[k])), (x["step"], k)


@pytest.fixture
def inject(monkeypatch):
    """inject(nan_at={global batch indices}, sigterm_at=index): faults in the data batches."""
    original = data_lib.BatchIterator.batches

    def install(nan_at=(), sigterm_at=None):
        def batches(self, i, k):
            out = original(self, i, k)
            if sigterm_at is not None and i <= sigterm_at < i + k:
                os.kill(os.getpid(), signal.SIGTERM)
            rows = [j for j in range(k) if i + j in set(nan_at)]
            if rows:
                x = np.array(out["x"])
                x[rows, 0] = np.nan
                out = dict(out, x=x)
            return out

        monkeypatch.setattr(data_lib.BatchIterator, "batches", batches)

    return install


# -- non-finite steps --------------------------------------------------------------------------


def test_a_nonfinite_step_leaves_params_opt_state_and_ema_unchanged():
    exp = train.Experiment.from_config(moons())
    multi_step = exp.make_multi_step()
    key = exp.plan.replicate(jax.random.PRNGKey(1))
    it = data_lib.BatchIterator(exp.source, 16, seed=0)
    state, m = multi_step(exp.create_state(jax.random.PRNGKey(0)),
                          exp.plan.put_batches(it.batches(0, 1)), key)
    before = jax.device_get(state)  # the state is donated to the next call
    for bad in (np.nan, np.inf):
        x = np.array(it.batches(1, 1)["x"])
        x[0, 3, 1] = bad
        state, m2 = multi_step(state, exp.plan.put_batches({"x": x, "label": np.zeros((1, 16),
                                                                                     np.int32)}),
                               key)
        assert float(m2["skipped"][0]) == 1.0 and not np.isfinite(float(m2["loss"][0]))
        assert leaves_equal(state.params, before.params)
        assert leaves_equal(state.opt_state, before.opt_state)
        assert leaves_equal(state.ema_params, before.ema_params)
    assert int(state.step) == 3 and float(m["skipped"][0]) == 0.0
    # A good batch afterwards updates again.
    state, m3 = multi_step(state, exp.plan.put_batches(it.batches(2, 1)), key)
    assert float(m3["skipped"][0]) == 0.0 and not leaves_equal(state.params, before.params)


def test_skipped_steps_are_logged_and_too_many_in_a_row_stop_the_run(tmp_path, inject):
    inject(nan_at={4, 7, 8, 9})  # batch i is step i + 1: steps 5 and 8, 9, 10
    config = moons(num_train_steps=16, log_every_steps=2, eval_every_steps=16,
                   checkpoint_every_steps=2)
    config.nonfinite.max_consecutive_skips = 2
    with pytest.raises(train.NonFiniteError, match=r"steps 8\.\.10: 3 consecutive steps .*"
                                                   r"max_consecutive_skips=2.*after step 8"):
        train.train_and_evaluate(config, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1]  # steps 2, 4, 6, 8
    assert all(np.isfinite(r["loss"]) for r in rows)  # means over the applied steps
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
    try:
        assert ckpt.all_steps()[-1] == 8 and ckpt.sealed_steps() == ckpt.all_steps()
        _, state, meta = ckpt.restore_latest(
            ckpt_lib.abstract_like(train.Experiment.from_config(config).abstract_state()))
        assert ckpt_lib.all_finite(state)
        assert meta["nonfinite"] == {"total": 2, "streak": 1, "streak_start": 8}
    finally:
        ckpt.close()


@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.booleans(), min_size=1, max_size=40), bound=st.integers(1, 4),
       policy=st.sampled_from(["skip", "stop"]), first=st.integers(1, 1000))
def test_the_nonfinite_policy_stops_exactly_when_it_should_naming_the_steps(flags, bound, policy,
                                                                             first):
    monitor = train.NonfiniteMonitor(policy=policy, max_consecutive_skips=bound)
    # The first offending step: any skip ('stop'), or the one ending a run of bound + 1 ('skip').
    run, expect = 0, None
    for i, f in enumerate(flags):
        run = run + 1 if f else 0
        if f and (policy == "stop" or run > bound):
            expect = (first + i - run + 1 if policy == "skip" else first + i, first + i)
            break
    try:
        for i in range(0, len(flags), 3):  # fed in calls of up to 3 steps, as the loop does
            monitor.observe(first + i, np.asarray(flags[i:i + 3], np.float32), last_saved=None)
    except train.NonFiniteError as e:
        assert expect is not None, str(e)
        lo, hi = expect
        want = f"at step {hi} " if policy == "stop" else f"steps {lo}..{hi}: {hi - lo + 1} "
        assert want in str(e) and "\n" not in str(e)
    else:
        assert expect is None
        assert monitor.total == sum(flags)


def test_a_state_with_nonfinite_values_is_never_saved(tmp_path, monkeypatch):
    config = moons(num_train_steps=4, log_every_steps=2, eval_every_steps=4,
                   checkpoint_every_steps=2)
    monkeypatch.setattr(ckpt_lib, "all_finite", lambda tree: False)  # as if the guard failed
    with pytest.raises(train.NonFiniteError, match="step 2 has non-finite values; it is not "
                                                   "saved"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path / "checkpoints")


# -- SIGTERM, in process -----------------------------------------------------------------------


def test_sigterm_saves_a_sealed_checkpoint_at_the_next_boundary(tmp_path, inject):
    config = moons(num_train_steps=12, log_every_steps=4, eval_every_steps=12,
                   checkpoint_every_steps=8)
    inject(sigterm_at=4)  # signalled while loading batches 4-5: stop after step 6
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ckpt_lib.Preempted) as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert info.value.step == 6
    assert signal.getsignal(signal.SIGTERM) is handler  # the handler is put back
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.sealed_steps() == [6]  # saved, waited for and sealed before raising
    _, _, meta = ckpt.restore_latest(ckpt_lib.abstract_like(
        train.Experiment.from_config(config).abstract_state()))
    ckpt.close()
    # Step 6 is inside the log window 5..8: its per-step metrics travel in the checkpoint, so
    # the resumed run logs the same row at step 8 (compared bit for bit in the slow test below).
    assert meta["data"] == {"index": 6} and len(meta["window"]["loss"]) == 2
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))] == [4]


# -- damaged checkpoints -----------------------------------------------------------------------


def _tree(step):
    return {"w": jnp.full((64, 8), float(step)), "b": jnp.arange(8.0) + step,
            "n": jnp.asarray(step, jnp.int32)}


def _save_steps(directory, steps, max_to_keep=5):
    ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=max_to_keep)
    for s in steps:
        ckpt.save(s, _tree(s), {"step": s})
    ckpt.close()


def _largest_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
             if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_clean_one(tmp_path, damage, capsys):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2, 3])
    victim = _largest_file(os.path.join(d, "3"))
    blob = open(victim, "rb").read()
    if damage == "truncate":
        open(victim, "wb").write(blob[: len(blob) // 2])
    elif damage == "flip":  # orbax alone restores this silently with one wrong number
        b = bytearray(blob)
        b[len(b) // 2] ^= 0x01
        open(victim, "wb").write(bytes(b))
    else:
        os.remove(victim)
    abstract = ckpt_lib.abstract_like(_tree(0))
    ckpt = ckpt_lib.Checkpointer(d)
    with pytest.raises(ckpt_lib.CheckpointError, match="step 3 .* damaged"):
        ckpt.restore(3, abstract)
    step, state, meta = ckpt.restore_latest(abstract)  # read-only: nothing moved
    assert step == 2 and meta == {"step": 2} and leaves_equal(state, _tree(2))
    assert ckpt.all_steps() == [1, 2, 3]
    step, _, _ = ckpt.restore_latest(abstract, repair=True)
    assert step == 2 and ckpt.all_steps() == [1, 2]
    assert os.listdir(d + "_damaged") == ["3"]  # set aside, not deleted
    ckpt.save(3, _tree(3), {"step": 3})  # the step can be written again
    ckpt.close()
    out = capsys.readouterr().out
    assert "checkpoint at step 3 is damaged" in out and "moved the damaged checkpoint" in out


def test_half_written_and_unsealed_checkpoints(tmp_path, capsys):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2])
    # A save killed mid-write leaves orbax's temporary folder; one killed between orbax's commit
    # and our seal leaves a checkpoint without a manifest.
    shutil.copytree(os.path.join(d, "2"), os.path.join(d, "3.orbax-checkpoint-tmp"))
    os.remove(os.path.join(d, "2", ckpt_lib.MANIFEST))
    ckpt = ckpt_lib.Checkpointer(d)
    assert ckpt.all_steps() == [1, 2]  # the temporary folder is no checkpoint
    step, state, _ = ckpt.restore_latest(ckpt_lib.abstract_like(_tree(0)), repair=True)
    assert step == 2 and leaves_equal(state, _tree(2))
    assert not os.path.exists(os.path.join(d, "3.orbax-checkpoint-tmp"))
    assert ckpt_lib.check_manifest(os.path.join(d, "2")) is None  # sealed now
    ckpt.close()
    assert "half-written checkpoint" in capsys.readouterr().out


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1])
    victim = _largest_file(os.path.join(d, "1"))
    open(victim, "wb").write(b"")
    ckpt = ckpt_lib.Checkpointer(d)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint .*\(step 1: file .* bytes"):
        ckpt.restore_latest(ckpt_lib.abstract_like(_tree(0)), repair=True)
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_retention_keeps_the_proven_checkpoint_while_a_newer_one_is_unproven(tmp_path):
    d = str(tmp_path / "checkpoints")
    ckpt = ckpt_lib.Checkpointer(d, max_to_keep=1)
    ckpt.save(1, _tree(1), {"step": 1})
    ckpt.wait()
    assert ckpt.sealed_steps() == [1]
    ckpt.save(2, _tree(2), {"step": 2})
    assert 1 in ckpt.all_steps()  # step 2 is still being written
    # The process dies after orbax commits step 2 but before it is sealed.
    ckpt._manager.wait_until_finished()  # pylint: disable=protected-access
    assert ckpt.all_steps() == [1, 2] and ckpt.sealed_steps() == [1]
    # ... and step 2 turns out damaged: the run falls back to step 1, which was kept.
    open(_largest_file(os.path.join(d, "2")), "wb").write(b"\0")
    again = ckpt_lib.Checkpointer(d, max_to_keep=1)
    step, state, _ = again.restore_latest(ckpt_lib.abstract_like(_tree(0)), repair=True)
    assert step == 1 and leaves_equal(state, _tree(1))
    # Once a newer checkpoint is sealed, the older one goes.
    again.save(2, _tree(2), {"step": 2})
    again.wait()
    assert again.all_steps() == [2] == again.sealed_steps()
    again.close()
    ckpt._manager.close()  # pylint: disable=protected-access


# -- kill -9 and SIGTERM, as a user runs it -----------------------------------------------------


CHAIN_STEPS = 1600
CHAIN_FLAGS = [f"--config.num_train_steps={CHAIN_STEPS}", "--config.log_every_steps=100",
               f"--config.eval_every_steps={CHAIN_STEPS}", "--config.checkpoint_every_steps=200"]


def _start(workdir, log, cache):
    # One persistent compilation cache for the runs of this test: every run executes the same
    # compiled programs (and starts in seconds instead of recompiling).
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "scripts/train.py", "--config=configs/moons.py:smoke",
         f"--workdir={workdir}", *CHAIN_FLAGS], cwd=ROOT, env=env, stdout=out,
        stderr=subprocess.STDOUT), out


def _wait_for(pred, proc, what, timeout=300.0, poll=0.02):
    t = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}")
        if time.monotonic() - t > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def _steps_in(ckpt_dir):
    return [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []


def _last_logged_step(workdir):
    rows = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    return json.loads(rows[-1])["step"] if rows and rows[-1].endswith("}") else 0


def _temporary(ckpt_dir):
    try:
        return [n for n in os.listdir(ckpt_dir) if ckpt_lib.TMP_MARKER in n]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_kill_9_anywhere_and_sigterm_then_resume_gives_the_same_run_bit_for_bit(tmp_path):
    rng = random.Random(int(os.environ.get("FLOWMATCH_FAULT_SEED", "0")))
    cache = tmp_path / "jax_cache"
    ref = str(tmp_path / "ref")
    proc, out = _start(ref, tmp_path / "ref.log", cache)  # uninterrupted
    assert proc.wait(timeout=600) == 0, open(tmp_path / "ref.log").read()[-3000:]
    out.close()
    wd = str(tmp_path / "run")
    ckpts = os.path.join(wd, "checkpoints")
    log = lambda i: open(tmp_path / f"{i}.log").read()  # noqa: E731

    # 1. SIGKILL at a random moment of training, after the first checkpoint.
    proc, out = _start(wd, tmp_path / "1.log", cache)
    _wait_for(lambda: _steps_in(ckpts), proc, "the first checkpoint")
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out.close()

    # 2. SIGKILL while a checkpoint is being written (orbax's temporary folder exists).
    before = sorted(_steps_in(ckpts))
    proc, out = _start(wd, tmp_path / "2.log", cache)
    _wait_for(lambda: "resuming from step" in log(2), proc, "the resume")
    _wait_for(lambda: _temporary(ckpts), proc, "a checkpoint save", poll=0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out.close()
    half_written = bool(_temporary(ckpts))

    # 3. SIGTERM at a random moment of training: a checkpoint at that step, exit status 0.
    proc, out = _start(wd, tmp_path / "3.log", cache)
    _wait_for(lambda: "resuming from step" in log(3), proc, "the resume")
    restored = int(log(3).split("resuming from step ")[1].split()[0])
    _wait_for(lambda: _last_logged_step(wd) > restored, proc, "training after the resume")
    if half_written:
        assert "half-written checkpoint" in log(3)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGTERM)
    t = time.monotonic()
    assert proc.wait(timeout=120) == 0, log(3)[-3000:]
    seconds = time.monotonic() - t
    out.close()
    assert "Traceback" not in log(3) and "saved a checkpoint at step" in log(3)
    step = int(log(3).split("saved a checkpoint at step ")[1].split(";")[0])
    assert step in _steps_in(ckpts) and step < CHAIN_STEPS
    assert ckpt_lib.check_manifest(os.path.join(ckpts, str(step))) is None

    # 4. The same command again runs to the end.
    proc, out = _start(wd, tmp_path / "4.log", cache)
    assert proc.wait(timeout=600) == 0, log(4)[-3000:]
    out.close()
    assert f"resuming from step {step}" in log(4)

    _, a, step_a = generate.restore_run(ref)
    _, b, step_b = generate.restore_run(wd)
    assert step_a == step_b == CHAIN_STEPS
    assert leaves_equal(a.params, b.params) and leaves_equal(a.ema_params, b.ema_params)
    assert leaves_equal(a.opt_state, b.opt_state)
    assert_same_rows(ref, wd)  # no step missing or twice, every logged number equal
    print(f"checkpoints before the save kill: {before}; half-written left: {half_written}; "
          f"SIGTERM at step {step}, exit {seconds:.1f} s after the signal")


# -- invalid configs (property-based) ----------------------------------------------------------


def _bad_name(allowed):
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1,
                   max_size=10).filter(lambda s: s not in allowed)


def _non_positive():
    return st.integers(min_value=-10**6, max_value=0)


def _fixed_methods():
    from flowmatch import integrators
    return [m for m in integrators.METHODS if m not in integrators.ADAPTIVE_METHODS]


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
    ("data.name", _bad_name(validation._known_datasets()), "choose one of"),
    ("model.name", _bad_name(("mlp", "unet")), "choose one of: mlp, unet"),
    ("model.dtype", _bad_name(validation.COMPUTE_DTYPES), "float32, bfloat16"),
    ("path.schedule", _bad_name(("cond_ot", "cosine", "polynomial")), "cond_ot, cosine"),
    ("objective.name", _bad_name(("flow_matching", "ddpm")), "flow_matching, ddpm"),
    ("sampling.method", _bad_name(("euler", "midpoint", "heun", "ralston", "rk3", "rk4",
                                   "bosh3", "dopri5", "tsit5")), "choose one of"),
    ("optimizer.schedule", _bad_name(validation.LR_SCHEDULES), "cosine, constant"),
    ("nonfinite.policy", _bad_name(validation.NONFINITE_POLICIES), "skip, stop"),
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(INVALID).flatmap(
    lambda c: st.tuples(st.just(c), c[1])))
def test_every_invalid_setting_is_one_clear_config_error(case):
    (key, _, must), value = case
    config = moons()
    section, _, field = key.rpartition(".")
    with config.ignore_type():
        (config[section] if section else config)[field] = value
    with pytest.raises(train.ConfigError) as info:
        train.Experiment.from_config(config)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert field in message, message
    assert repr(value) in message or str(value) in message, message
    if must:
        assert must in message, message


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(_fixed_methods()),
       tol=st.floats(min_value=1e-9, max_value=1.0))
def test_a_tolerance_on_a_fixed_step_method_is_refused(method, tol):
    config = moons()
    config.sampling.method = method
    config.sampling.rtol = tol
    with pytest.raises(train.ConfigError, match=f"method='{method}' is a fixed-step method.*"
                                                "bosh3, dopri5, tsit5"):
        train.Experiment.from_config(config)


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
    with pytest.raises(train.ConfigError) as info:
        train.Experiment.from_config(config)
    message = str(info.value)
    assert "\n" not in message and field in message and "digits" in message, message


def test_batch_not_divisible_by_devices_or_accumulation():
    with pytest.raises(train.ConfigError, match="data_axis_size"):
        train.Experiment.from_config(moons(**{"parallel.data_axis_size": 2}))
    with pytest.raises(train.ConfigError, match="grad_accum_steps"):
        train.Experiment.from_config(moons(batch_size=16, grad_accum_steps=3))


# -- a workdir holding another run ------------------------------------------------------------


def test_a_workdir_with_a_different_config_is_refused_and_nothing_is_touched(tmp_path):
    wd = str(tmp_path)
    old = moons()
    train.save_config(old, wd)
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    before = {p: open(os.path.join(wd, p)).read() for p in os.listdir(wd)}
    new = moons(**{"optimizer.learning_rate": 1e-3, "model.hidden_sizes": (64, 64)})
    with pytest.raises(train.ConfigError, match=r"different config \(model\.hidden_sizes: .*"
                                                r"optimizer\.learning_rate: 0\.002 -> 0\.001\).*"
                                                r"--resume.*--overwrite"):
        train.train_and_evaluate(new, wd)
    assert {p: open(os.path.join(wd, p)).read() for p in os.listdir(wd)} == before
    # Logging, evaluation and checkpoint settings do not make another run; training longer
    # (num_train_steps) is allowed with a warning.
    assert validation.check_workdir(moons(progress_bar=True, log_every_steps=4,
                                          **{"eval.num_tv_samples": 10}), wd) == "none"
    assert validation.check_workdir(moons(num_train_steps=40), wd) == "none"
    # --resume keeps the old config beside the new one; --overwrite moves the run aside.
    assert validation.check_workdir(new, wd, "resume") == "keep_old_config"
    assert validation.check_workdir(new, wd, "overwrite") == "move_aside"
    validation.apply_workdir_action(wd, "move_aside")
    (moved,) = glob.glob(os.path.join(wd, validation.PREVIOUS_RUNS, "*"))
    assert {p: open(os.path.join(moved, p)).read() for p in os.listdir(moved)} == before
    assert os.listdir(wd) == [validation.PREVIOUS_RUNS]


def test_train_script_refuses_another_run_in_one_line(tmp_path):
    train.save_config(moons(), str(tmp_path))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    base = [sys.executable, "scripts/train.py", "--config=configs/moons.py:smoke",
            f"--workdir={tmp_path}"]
    proc = subprocess.run(base + ["--config.optimizer.learning_rate=0.01"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "optimizer.learning_rate: 0.002 -> 0.01" in last
    assert "--resume" in last and "--overwrite" in last
    # A config file that fails to load is one line too (ml_collections embeds a traceback).
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config=configs/moons.py:big",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: flag --config=configs/moons.py:big: unknown config variant 'big'; choose one of: "
        "(none), smoke  (e.g. --config=configs/moons.py:smoke)")


# -- damaged data files ------------------------------------------------------------------------


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _image_folder_config(path):
    config = load_config("image_folder")
    config.data.path = str(path)
    config.data.image_size = 8
    config.model.channel_mult = (1, 2)
    config.model.attn_resolutions = ()
    return config


def test_an_unreadable_image_is_a_clear_error_or_skipped_and_counted(tmp_path):
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", 40 * i)
    blob = (tmp_path / "imgs" / "3.png").read_bytes()
    (tmp_path / "imgs" / "3.png").write_bytes(blob[: len(blob) // 2])  # truncated
    os.symlink(tmp_path / "nowhere.png", tmp_path / "imgs" / "4.png")  # a broken link
    config = _image_folder_config(tmp_path / "imgs")
    with pytest.raises(train.ConfigError, match=r"cannot read image .*3\.png.*"
                                                r"--config\.data\.skip_bad=True"):
        train.Experiment.from_config(config)
    config.data.skip_bad = True
    exp = train.Experiment.from_config(config)
    assert exp.source.num_examples == 3 and exp.source.data.num_skipped == 2


def _cifar_folder(root, sizes=(2, 3, 2, 2, 2)):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, m in enumerate(list(sizes) + [4], start=1):
        name = f"data_batch_{i}" if i <= len(sizes) else "test_batch"
        obj = {b"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
               b"labels": [int(v) for v in rng.integers(0, 10, m)]}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


def test_damaged_cifar_batches_are_named_or_skipped_and_counted(tmp_path):
    folder = _cifar_folder(tmp_path)
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[:100])
    with pytest.raises(ValueError, match=r"data_batch_2 is not a valid CIFAR-10 batch.*"
                                         r"skip_bad=True"):
        data_lib.load_cifar10(folder)
    ds = data_lib.load_cifar10(folder, skip_bad=True)
    assert ds.num_skipped == 1 and len(ds.x) == 8  # 11 images less batch 2's 3
    (folder / "data_batch_2").write_bytes(blob)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        data_lib.load_cifar10(folder)
    ds = data_lib.load_cifar10(folder, skip_bad=True)
    assert ds.num_skipped == 1 and len(ds.x) == 9
    # A truncated archive: with skip_bad the members before the damage are kept.
    archive = tmp_path / "cifar-10-python.tar.gz"
    _cifar_folder(tmp_path / "clean")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "clean" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: int(len(blob) * 0.6)])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        data_lib.load_cifar10(archive)
    ds = data_lib.load_cifar10(archive, skip_bad=True)
    assert 1 <= ds.num_skipped <= 4 and len(ds.x) > 0


@settings(max_examples=60, deadline=None)
@given(cut=st.floats(0.0, 0.999), flip=st.integers(0, 10**6), byte=st.integers(1, 255))
def test_any_damage_to_a_cifar_pickle_is_a_value_error(cut, flip, byte):
    obj = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 7]}
    blob = pickle.dumps(obj, protocol=2)
    from flowmatch.data import images as images_lib
    for damaged in (blob[: int(len(blob) * cut)],
                    blob[: flip % len(blob)] + bytes([blob[flip % len(blob)] ^ byte])
                    + blob[flip % len(blob) + 1:]):
        try:
            x, y = images_lib._parse_cifar_batch(damaged, "batch")  # pylint: disable=W0212
        except ValueError as e:
            assert "batch" in str(e)
        else:  # a flipped pixel byte is undetectable; the result is still well formed
            assert x.shape == (2, 32, 32, 3) and y.shape == (2,)
