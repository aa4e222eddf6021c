"""Couplings solved a call ahead on the host (`training.ahead`): the same draws and pairs as the
train step's own, in any number of threads; runs with them train and resume bit for bit as runs
without; how many threads a run gets; errors in a thread reach the caller."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_util import load_config, override
from flowmatch import metrics, training
from flowmatch import parallel as parallel_lib
from flowmatch.checks import ConfigError
from flowmatch.training import ahead, runs
from flowmatch.training import step as step_lib


def coupled_config(coupling="sinkhorn", **overrides):
    config = load_config("moons")
    config.batch_size = 32
    config.model.hidden_sizes = (32, 32)
    config.source.name = "8gaussians"
    config.coupling.name = coupling
    config.num_train_steps = 12
    config.steps_per_call = 3
    config.log_every_steps = 3
    config.checkpoint_every_steps = 6
    config.eval_every_steps = 0
    return override(config, overrides)


def built(config):
    settings = training.read_settings(config)
    source = training.loop.load_data(settings.data)  # a toy set: nothing read
    comps = training.build(settings, runs.spec_of_source(source, settings.data.name))
    return comps, training.loop.make_plan(settings)


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(host(a)), jax.tree.leaves(host(b))):
        np.testing.assert_array_equal(x, y)


def test_prepared_batches_are_the_train_steps_own_draws_and_pairs():
    """`prepare_steps` on the host = each step's draw and pair as the train step makes them, bit
    for bit: per class with label dropout (pairs by the labels from before their dropout), and
    with the local scope a device's rows paired alone."""
    config = coupled_config(**{"coupling.per_class": True, "objective.label_dropout": 0.5,
                               "model.num_classes": 2, "batch_size": 8})
    comps, plan = built(config)
    k, first_step, key = 3, 7, jax.random.PRNGKey(3)
    batches = {"x": jax.random.normal(jax.random.PRNGKey(1), (k, 8, 2)),
               "label": jnp.tile(jnp.arange(8, dtype=jnp.int32) % 2, (k, 1))}
    ready = step_lib.make_prepare(comps, plan)(batches, jnp.int32(first_step), key)
    draw = step_lib.make_draw(comps.objective, comps.source, comps.settings.coupling, 8, plan,
                              null_label=comps.model.num_classes)
    whole = jax.jit(draw, static_argnums=1)
    for i in range(k):
        own = whole(jax.tree.map(lambda v, i=i: v[i], batches), 0,
                    jax.random.fold_in(key, first_step + i))
        assert_trees_equal(jax.tree.map(lambda v, i=i: v[i], ready), own)
    assert (np.asarray(ready["label"]) == comps.model.num_classes).any()  # some were dropped

    # Scope 'local' on the host: blocks of rows paired alone, as each device's in the step.
    rows = jnp.arange(12, dtype=jnp.float32)
    paired = step_lib.in_blocks(lambda r, s: r[::-1] + s, 3)(rows, rows)
    np.testing.assert_array_equal(paired, [3, 3, 3, 3, 11, 11, 11, 11, 19, 19, 19, 19])


@pytest.fixture(scope="module")
def exact_prepare():
    """(plan, `make_prepare`'s program) of an exact-coupled run: one per module, so the tests
    share its compilations (one per chunk size, the auction's a few seconds each)."""
    comps, plan = built(coupled_config("exact"))
    return plan, step_lib.make_prepare(comps, plan)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_split_a_call_into_chunks_with_the_same_result(threads, exact_prepare):
    plan, prepare = exact_prepare
    key = jax.random.PRNGKey(5)
    k = 5  # 2 threads: chunks of 3 and 2 steps; 3 threads: 2, 1, 2
    batches = {"x": np.asarray(jax.random.normal(jax.random.PRNGKey(2), (k, 32, 2))),
               "label": np.zeros((k, 32), np.int32)}
    one = ahead.Feeder(plan, 1, prepare=prepare, train_key=key)
    several = ahead.Feeder(plan, threads, prepare=prepare, train_key=key)
    try:
        a = one.result(one.start(batches, 10))
        b = several.result(several.start(batches, 10))
    finally:
        one.close()
        several.close()
    assert_trees_equal(a, b)
    assert_trees_equal(a, prepare(batches, jnp.int32(10), key))
    assert sorted(a) == ["label", "times", "x", "x0"]


def test_a_run_with_couplings_ahead_trains_and_resumes_as_one_without(tmp_path):
    """The same losses and parameters whether the couplings are solved in the step, by one or
    by two host threads; and a run resumed from a checkpoint saved while the next call's batches
    were already being prepared continues exactly (the saved data position is the call's)."""
    inside = training.train_and_evaluate(coupled_config(**{"coupling.ahead_threads": 0}),
                                         str(tmp_path / "inside"))
    rows = metrics.read_metrics(str(tmp_path / "inside" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    for threads in (1, 2):
        name = f"ahead{threads}"
        state = training.train_and_evaluate(
            coupled_config(**{"coupling.ahead_threads": threads}), str(tmp_path / name))
        assert_trees_equal(state.params, inside.params)
        again = metrics.read_metrics(str(tmp_path / name / "metrics.jsonl"))
        assert [r["loss"] for r in again] == [r["loss"] for r in rows]
        # (the logged mean pair cost sums the same pairs in another order: x0 is an input here)
        np.testing.assert_allclose([r["pair_cost"] for r in again],
                                   [r["pair_cost"] for r in rows], rtol=1e-6)
    # Resume from the checkpoint at step 6 (saved after the batches of steps 7-9 were fetched).
    work = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ahead1", work)
    shutil.rmtree(work / "checkpoints" / "12")
    resumed = training.train_and_evaluate(coupled_config(**{"coupling.ahead_threads": 1}),
                                          str(work))
    assert_trees_equal(resumed.params, inside.params)
    assert_trees_equal(resumed.opt_state, inside.opt_state)


def test_how_many_threads_a_run_gets(monkeypatch):
    monkeypatch.setattr(ahead, "host_cores", lambda: 6)

    def threads(coupling, processes=1, **overrides):
        settings = training.read_settings(coupled_config(coupling, **overrides))
        return ahead.ahead_threads(settings, processes)

    assert threads("independent") == 0
    assert threads("sinkhorn") == 1
    assert threads("exact") == 3  # one per core, at most one per step of a call (3)
    assert threads("exact", steps_per_call=12, log_every_steps=12, checkpoint_every_steps=12) == 6
    assert threads("exact", **{"coupling.ahead_threads": 0}) == 0
    assert threads("sinkhorn", **{"coupling.ahead_threads": 2}) == 2
    # DDPM has no couplings (a coupling on it is refused when the settings are read).
    ddpm = training.read_settings(coupled_config(
        "independent", **{"objective.name": "ddpm", "objective.prediction": "eps",
                          "source.name": "normal"}))
    assert ahead.ahead_threads(ddpm) == 0
    # Several processes: no host holds the global batch.
    assert threads("exact", processes=2) == 0
    assert threads("exact", processes=2, **{"coupling.scope": "local"}) == 3
    with pytest.raises(ConfigError, match="set coupling.scope='local' or coupling.ahead_threads=0"):
        threads("exact", processes=2, **{"coupling.ahead_threads": 2})
    with pytest.raises(ConfigError, match="coupling.ahead_threads must be an integer >= -1"):
        training.read_settings(coupled_config(**{"coupling.ahead_threads": -2}))


def test_an_error_in_a_thread_reaches_the_caller():
    plan = parallel_lib.Plan(parallel_lib.make_mesh(1, devices=jax.devices()[:1]), "sharding",
                             2**14)

    def broken(batches, first_step, key):
        raise RuntimeError(f"cannot prepare step {int(first_step)}")

    feeder = ahead.Feeder(plan, 2, prepare=broken, train_key=jax.random.PRNGKey(0))
    pending = feeder.start({"x": np.zeros((4, 8, 2), np.float32)}, 20)
    with pytest.raises(RuntimeError, match="cannot prepare step 2[02]"):
        feeder.result(pending)
    feeder.close()
    feeder.close()  # a second close does nothing
    with pytest.raises(ValueError, match="needs prepare and train_key"):
        ahead.Feeder(plan, 1)
    inside = ahead.Feeder(plan, 0)  # no threads: the batches go to the devices as they are
    assert not inside.ahead
    out = inside.result(inside.start({"x": np.ones((2, 8, 2), np.float32)}, 0))
    assert isinstance(out["x"], jax.Array) and out["x"].shape == (2, 8, 2)


def test_a_containers_cpu_limit_caps_the_cores(tmp_path, monkeypatch):
    """cgroup v2 and v1 CPU limits (quota / period, rounded up) cap the affinity mask's cores;
    no limit ("max", -1, or no files) leaves them."""
    monkeypatch.setattr(ahead.os, "sched_getaffinity", lambda pid: set(range(16)))
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    monkeypatch.setattr(ahead, "CGROUP_V2_CPU_MAX", str(v2))
    monkeypatch.setattr(ahead, "CGROUP_V1_CPU_QUOTA", (str(quota), str(period)))
    assert ahead.cpu_limit() is None and ahead.host_cores() == 16  # no files
    v2.write_text("250000 100000\n")
    assert ahead.cpu_limit() == 2.5 and ahead.host_cores() == 3
    v2.write_text("max 100000\n")
    assert ahead.cpu_limit() is None and ahead.host_cores() == 16
    v2.unlink()
    quota.write_text("400000\n")
    period.write_text("100000\n")
    assert ahead.host_cores() == 4
    quota.write_text("-1\n")
    assert ahead.host_cores() == 16
    quota.write_text("6400000\n")  # more than the machine has
    assert ahead.host_cores() == 16
