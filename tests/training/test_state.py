"""The train state: `create_state` (compiled with Threefry unrolled on CPU) gives bit for bit the
state of the plain jitted `init_state` as jax lowers it, for every kind of model."""

import jax
import numpy as np
import optax
import pytest

from flowmatch import parallel, threefry
from flowmatch.models import build_model
from flowmatch.training import state as state_lib

# Tiny networks with every kind of initializer in them (truncated normal, normal, uniform, zeros;
# dense, conv and embedding tables); the init of each compiles in seconds.
MODELS = {
    "mlp": (dict(hidden_sizes=(16, 16), num_classes=3), (2,)),
    "unet": (dict(base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                  num_groups=4, num_classes=3), (4, 4, 1)),
    "dit": (dict(width=16, depth=1, num_heads=2, patch_size=4, num_classes=3), (8, 8, 1)),
}
# The reference compiles at XLA:CPU's backend optimisation level 1, not the default: LLVM's heavier
# passes took three quarters of the U-Net reference's compile (about 15 s of CPU against 4) and
# change no bit of an init (the bitwise comparison below would show it if they did).
REFERENCE_COMPILE = {"xla_backend_optimization_level": 1}


@pytest.mark.parametrize("name", list(MODELS))
def test_create_state_is_init_state_as_jax_lowers_it(name):
    fields, shape = MODELS[name]
    model = build_model(name, **fields)
    tx = optax.adamw(1e-3)
    key = jax.random.PRNGKey(3)
    plan = parallel.Plan.all_devices()
    state = state_lib.create_state(model, tx, shape, True, key, plan)
    with threefry.unrolled(False):  # jax's own lowering: the hash as a loop
        reference = jax.jit(lambda k: state_lib.init_state(model, tx, shape, True, k),
                            compiler_options=REFERENCE_COMPILE)(key)
    leaves, ref_leaves = jax.tree.leaves(state), jax.tree.leaves(reference)
    assert jax.tree.structure(state) == jax.tree.structure(reference) and len(leaves) > 5
    for a, b in zip(leaves, ref_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the draws are real: the kernels are not constant
    kernels = [p for p in jax.tree.leaves(state.params) if p.ndim >= 2]
    assert sum(np.unique(np.asarray(p)).size > 1 for p in kernels) >= 3
