"""The train call's program compiled ahead, in a background thread while the state is created:
its abstract inputs are exactly what the call receives, and the call compiles nothing more."""

import logging

import jax
import numpy as np
import pytest

from configs_util import load_config
from flowmatch import data as data_lib
from flowmatch import training
from flowmatch.training import loop


def _plan(config):
    return loop.make_plan(training.read_settings(config))


@pytest.mark.parametrize("name", ["moons", "digits"])
def test_abstract_batches_are_the_placed_batches(name):
    """Shapes, dtypes (weak types included) and shardings of `plan.put_batches(next_batches(k))`,
    for a toy source (drawn under jit) and a finite image set (read on the host)."""
    config = load_config(name)
    settings = training.read_settings(config)
    plan = _plan(config)
    source = loop.load_data(settings.data)
    iterator = loop.make_iterator(source, settings.data, settings.train)
    want = plan.put_batches(iterator.next_batches(3))
    got = loop.abstract_batches(iterator, 3, plan)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert (g.shape, g.dtype, g.weak_type, g.sharding) == (
            w.shape, w.dtype, w.aval.weak_type, w.sharding)
    assert isinstance(iterator, data_lib.BatchIterator) and iterator.index == 3  # not advanced


def test_a_run_compiles_its_train_call_once_in_the_background(tmp_path, caplog):
    """The compilation logged for the train call is the background thread's; the first call
    finds it in jit's cache (no second compilation of the program)."""
    config = load_config("checkerboard")
    config.num_train_steps = 4
    config.steps_per_call = 2
    config.log_every_steps = config.checkpoint_every_steps = 4
    config.eval_every_steps = 0
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # process-wide: the thread's compile logs too
    try:
        with caplog.at_level(logging.WARNING):
            training.train_and_evaluate(config, str(tmp_path / "run"))
    finally:
        jax.config.update("jax_log_compiles", previous)
    threads = [r.threadName for r in caplog.records
               if "XLA compilation of jit(multi_step)" in r.getMessage()]
    assert threads == ["flowmatch-compile-step"], threads


def test_a_call_of_another_size_still_compiles_its_own_program(tmp_path, caplog):
    """num_train_steps not a multiple of steps_per_call: the last, shorter call compiles its own
    program at the call (the ahead one is for the first call's size), and the run finishes."""
    config = load_config("checkerboard")
    config.num_train_steps = 3
    config.steps_per_call = 2
    config.log_every_steps = config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            state = training.train_and_evaluate(config, str(tmp_path / "run"))
    finally:
        jax.config.update("jax_log_compiles", previous)
    threads = [r.threadName for r in caplog.records
               if "XLA compilation of jit(multi_step)" in r.getMessage()]
    assert threads == ["flowmatch-compile-step", "MainThread"], threads
    assert int(state.step) == 3 and np.isfinite(
        np.asarray(jax.tree.leaves(state.params)[0])).all()
