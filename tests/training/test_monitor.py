"""Non-finite steps: the guard in the step keeps the state, the monitor applies config.nonfinite
(skip / stop, naming the steps), and a state with non-finite values is never saved."""

import os
import signal

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs_util import load_config, override
from flowmatch import checkpoint as ckpt_lib
from flowmatch import data as data_lib
from flowmatch import metrics, training
from flowmatch.training import monitor as monitor_lib, runs, state as state_lib, step as step_lib


def moons(**overrides):
    """configs/moons.py:smoke with overrides {"a.b": value}."""
    config = load_config("moons")
    return override(config, overrides)


def leaves_equal(a, b):
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def abstract_of(config):
    comps = training.build(training.read_settings(config), runs._legacy_spec(config))
    return state_lib.abstract_state(comps.model, comps.tx, comps.spec.example_shape,
                                    comps.conditional)


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
    config = moons()
    settings_ = training.read_settings(config)
    comps = training.build(settings_, runs._legacy_spec(config))
    plan = training.loop.make_plan(settings_)
    state = state_lib.create_state(comps.model, comps.tx, (2,), False, jax.random.PRNGKey(0),
                                   plan)
    multi_step = step_lib.make_multi_step(comps, plan, jax.tree.map(lambda a: a.sharding, state))
    key = plan.replicate(jax.random.PRNGKey(1))
    it = data_lib.BatchIterator(training.loop.load_data(settings_.data), 16, seed=0)
    state, m = multi_step(state, plan.put_batches(it.batches(0, 1)), key)
    before = jax.device_get(state)  # the state is donated to the next call
    for bad in (np.nan, np.inf):
        x = np.array(it.batches(1, 1)["x"])
        x[0, 3, 1] = bad
        state, m2 = multi_step(state, plan.put_batches({"x": x, "label": np.zeros((1, 16),
                                                                                np.int32)}), key)
        assert float(m2["skipped"][0]) == 1.0 and not np.isfinite(float(m2["loss"][0]))
        assert leaves_equal(state.params, before.params)
        assert leaves_equal(state.opt_state, before.opt_state)
        assert leaves_equal(state.ema_params, before.ema_params)
    assert int(state.step) == 3 and float(m["skipped"][0]) == 0.0
    # A good batch afterwards updates again.
    state, m3 = multi_step(state, plan.put_batches(it.batches(2, 1)), key)
    assert float(m3["skipped"][0]) == 0.0 and not leaves_equal(state.params, before.params)


def test_skipped_steps_are_logged_and_too_many_in_a_row_stop_the_run(tmp_path, inject):
    inject(nan_at={4, 7, 8, 9})  # batch i is step i + 1: steps 5 and 8, 9, 10
    config = moons(num_train_steps=16, log_every_steps=2, eval_every_steps=16,
                   checkpoint_every_steps=2)
    config.nonfinite.max_consecutive_skips = 2
    with pytest.raises(monitor_lib.NonFiniteError, match=r"steps 8\.\.10: 3 consecutive steps .*"
                                                   r"max_consecutive_skips=2.*after step 8"):
        training.train_and_evaluate(config, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1]  # steps 2, 4, 6, 8
    assert all(np.isfinite(r["loss"]) for r in rows)  # means over the applied steps
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
    try:
        assert ckpt.all_steps()[-1] == 8 and ckpt.sealed_steps() == ckpt.all_steps()
        _, state, meta = ckpt.restore_latest(
            ckpt_lib.abstract_like(abstract_of(config)))
        assert ckpt_lib.all_finite(state)
        assert meta["nonfinite"] == {"total": 2, "streak": 1, "streak_start": 8}
    finally:
        ckpt.close()


@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.booleans(), min_size=1, max_size=40), bound=st.integers(1, 4),
       policy=st.sampled_from(["skip", "stop"]), first=st.integers(1, 1000))
def test_the_nonfinite_policy_stops_exactly_when_it_should_naming_the_steps(flags, bound, policy,
                                                                             first):
    monitor = monitor_lib.NonfiniteMonitor(policy=policy, max_consecutive_skips=bound)
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
    except monitor_lib.NonFiniteError as e:
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
    with pytest.raises(monitor_lib.NonFiniteError, match="step 2 has non-finite values; it is not "
                                                   "saved"):
        training.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path / "checkpoints")


# -- SIGTERM, in process -----------------------------------------------------------------------
