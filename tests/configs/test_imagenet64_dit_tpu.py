"""configs/imagenet64_dit_tpu.py: it builds from the config alone (no data read, nothing
compiled), its mesh fits the 64 chips it is written for and 8 devices, its parameters split by
their logical axes, and the FLOP count its docstring's speed estimate starts from."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_util import ROOT
from flowmatch import parallel, training
from flowmatch.experiments import cli
from flowmatch.models import axes as axes_lib
from flowmatch.models import count_params
from flowmatch.models.dit import DiT, dit_preset, memory_estimate
from flowmatch.training import state as state_lib, step as step_lib

PATH = os.path.join(ROOT, "configs", "imagenet64_dit_tpu.py")
SHAPE = (64, 64, 3)


@pytest.fixture(scope="module")
def built():
    settings = training.read_settings(cli.load_config_file(PATH))
    comps = training.build(settings, training.RunSpec("arrayrecord", "image", SHAPE, 1000))
    abstract = state_lib.abstract_state(comps.model, comps.tx, SHAPE, comps.conditional)
    return settings, comps, abstract


def test_the_config_builds_and_one_train_step_traces(built):
    settings, comps, abstract = built
    assert comps.conditional and settings.objective.label_dropout == 0.1
    assert round(count_params(abstract.params) / 1e6) == 130  # 130,297,356
    plan = training.loop.make_plan(settings._replace(parallel=parallel.ParallelSettings()))
    b = settings.train.batch_size
    batch = {"x": jax.ShapeDtypeStruct((1, b, *SHAPE), np.float32),
             "label": jax.ShapeDtypeStruct((1, b), np.int32)}
    step = step_lib.make_multi_step(comps, plan, jax.tree.map(lambda _: plan.replicated, abstract))
    _, metrics = jax.eval_shape(step, abstract, batch, jax.random.PRNGKey(0))
    assert metrics["loss"].shape == (1,)


def test_the_mesh_fits_a_v5e_64_and_8_devices_and_splits_the_parameters(built):
    settings, _, abstract = built
    p = settings.parallel
    assert parallel.mesh_shape(p, 64) == (8, 4, 2)
    assert parallel.mesh_shape(p, 8) == (1, 4, 2)  # scaled down: 8 simulated devices
    parallel.check_batch(settings.train.batch_size, 8 * 4)
    sizes = {"data": 8, "fsdp": 4, "tensor": 2}
    names = [parallel.leaf_name(k) for k, _ in jax.tree_util.tree_leaves_with_path(abstract.params)]
    logical = jax.tree.leaves(axes_lib.logical_axes("dit", abstract.params),
                              is_leaf=lambda a: isinstance(a, tuple))
    leaves = jax.tree.leaves(abstract.params)
    specs = {n: parallel.logical_spec(a, x.shape, sizes, min_size=p.fsdp_min_size)
             for n, a, x in zip(names, logical, leaves)}
    assert specs["blocks/mlp/fc1/kernel"] == parallel.P(None, "fsdp", "tensor")
    assert specs["blocks/mlp/fc2/kernel"] == parallel.P(None, "tensor", "fsdp")
    assert specs["blocks/attn/qkv/kernel"] == parallel.P(None, "fsdp", None, "tensor")
    # float32 parameter bytes per chip: 88.2 MB of 521.2 MB; the MLP and attention weights
    # split 8 ways (fsdp x tensor), adaLN's 4 (fsdp); at most memory_estimate's fsdp-only figure.
    per_chip = sum(4 * x.size / np.prod([sizes[a] for a in jax.tree.leaves(tuple(s))])
                   for s, x in zip(specs.values(), leaves))
    total = 4 * count_params(abstract.params)
    est = memory_estimate("B/2", 32, fsdp=4, image_size=64, channels=3)
    assert total / 8 < per_chip <= est.params and per_chip == pytest.approx(88.18e6, rel=1e-3)


def test_the_docstring_flop_count_of_the_64x64_forward():
    """XLA's flops of the lowered forward (batch 1), affine in depth: one block + 11 x (two
    blocks - one block) = 214.1 GFLOP for B/2 on 64x64x3, the docstring's figure."""
    def flops(depth):
        model = DiT(**{**dit_preset("B/2"), "depth": depth}, num_classes=1000)
        args = [jax.ShapeDtypeStruct(s, d) for s, d in
                (((1, *SHAPE), jnp.float32), ((1,), jnp.float32), ((1,), jnp.int32))]
        params = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
        cost = jax.jit(lambda q, x, t, y: model.apply({"params": q}, x, t, y)).lower(
            params, *args).cost_analysis()
        return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    one, two = flops(1), flops(2)
    assert (one + 11 * (two - one)) / 1e9 == pytest.approx(214.1, rel=0.005)
