"""Run directories for tests that sample or score runs without training them."""

import os

import jax
import jax.numpy as jnp

from flowmatch import checkpoint
from flowmatch import training
from flowmatch.training import loop
from flowmatch.training import runs
from flowmatch.training import state as state_lib


def untrained_run(config, workdir, *, step=None, seed=0):
    """A run directory as training leaves it (config.json, run.json, a checkpoint at `step`,
    default num_train_steps, so train_and_evaluate finds it finished) holding the initial
    parameters of `config` drawn from PRNGKey(seed): restoring, sampling and scoring a run
    without the cost of compiling a train step."""
    settings = training.read_settings(config)
    spec = runs.spec_of_source(loop.load_data(settings.data), settings.data.name)
    comps = training.build(settings, spec)
    step = settings.train.num_train_steps if step is None else step
    state = state_lib.create_state(comps.model, comps.tx, spec.example_shape, comps.conditional,
                                   jax.random.PRNGKey(seed), loop.make_plan(settings))
    os.makedirs(workdir, exist_ok=True)
    runs.save_config(config, workdir)
    runs.write_spec(spec, workdir)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(step, state.replace(step=jnp.asarray(step, jnp.int32)),
              {"data": {"index": step}, "step": step})
    ckpt.close()
    return workdir
