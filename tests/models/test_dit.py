"""Tests for flowmatch.models.dit: published sizes and FLOPs (abstract shapes only, nothing big
is allocated), the zero output at init, the position embedding's closed form, conditioning,
dtypes, rematerialisation, input checks, and a few steps of flow matching on a tiny model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowmatch import objectives, paths
from flowmatch.models import build_model, count_params
from flowmatch.models.dit import (DiT, dit_preset, param_logical_axes, patchify,
                                  unpatchify)
from flowmatch.models.embeddings import sincos_2d_embedding

# One tiny DiT on digit-sized images (8x8x1, 2x2 patches -> 16 tokens of width 32) serves every
# test that runs the network, so that the file compiles few programs.
TINY = dict(width=32, depth=2, num_heads=2, patch_size=2)
MODEL = DiT(**TINY, num_classes=3, qk_norm=True, dropout=0.1)
X_SHAPE = (4, 8, 8, 1)
TIMES = jnp.array([0.1, 0.4, 0.6, 0.9])
LABELS = jnp.array([0, 1, 2, 3], jnp.int32)   # 3 is the null class


def _abstract_params(model, x_shape, conditional):
    """Parameter shapes from jax.eval_shape: nothing is allocated."""
    batch = x_shape[0]
    args = [jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.float32)]
    if conditional:
        args.append(jax.ShapeDtypeStruct((batch,), jnp.int32))
    return jax.eval_shape(model.init, jax.random.key(0), *args)["params"]


@functools.lru_cache(maxsize=None)
def _init_params():
    """MODEL's real initial parameters (jitted: an eager init dispatches op by op, slowly)."""
    return jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros(X_SHAPE), TIMES, LABELS)["params"]


@functools.lru_cache(maxsize=None)
def _random_params(seed=0):
    """Random parameters (std 1/sqrt(fan_in)) in MODEL's tree, so that the layers the real
    init sets to zero stop hiding their inputs."""
    shapes = _abstract_params(MODEL, X_SHAPE, conditional=True)
    rng = np.random.default_rng(seed)

    def draw(s):
        std = 1.0 / np.sqrt(s.shape[0]) if len(s.shape) > 1 else 0.1
        return jnp.asarray(std * rng.standard_normal(s.shape), jnp.float32)
    return jax.tree_util.tree_map(draw, shapes)


@functools.lru_cache(maxsize=None)
def _apply(model):
    return jax.jit(model.apply, static_argnames=("train",))


def _x(seed=1, shape=X_SHAPE):
    return jax.random.normal(jax.random.key(seed), shape)


# ----------------------------------------------------------------------------- published sizes

def _closed_form_count(width, depth, patch_size, channels, out_channels, num_classes,
                       freq=256, mlp_ratio=4):
    """Parameters of a DiT counted by hand (kernels + biases; the position embedding is a fixed
    constant, not a parameter)."""
    d, m, pp = width, mlp_ratio * width, patch_size ** 2
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (d * 6 * d + 6 * d)
    embed = (pp * channels * d + d) + (freq * d + d) + (d * d + d) + (num_classes + 1) * d
    final = (d * 2 * d + 2 * d) + (d * pp * out_channels + pp * out_channels)
    return depth * block + embed + final


@pytest.mark.parametrize("preset,millions", [("S/2", 33), ("B/2", 130), ("L/2", 458),
                                             ("XL/2", 675)])
def test_parameter_counts_match_dit_table4(preset, millions):
    # DiT Table 4 (ImageNet 256x256: latents [32, 32, 4], 1,000 classes). The paper's models
    # predict 8 channels (noise and the learned variance), so its counts are out_channels=8;
    # with learn_sigma off (out_channels=4) the model has p*p*4*(D + 1) fewer parameters
    # (18,448 for XL/2), below the paper's rounding.
    model = DiT(**dit_preset(preset), num_classes=1000, out_channels=8)
    n = count_params(_abstract_params(model, (1, 32, 32, 4), conditional=True))
    f = dit_preset(preset)
    assert n == _closed_form_count(f["width"], f["depth"], f["patch_size"], 4, 8, 1000)
    assert round(n / 1e6) == millions


def test_xl2_forward_flops_match_dit_table4():
    # DiT Table 4: XL/2 118.6 Gflops per 256x256 image. That figure counts a multiply-add as one
    # flop (12 D^2 T + 2 T^2 D per block, T = 256 tokens, D = 1152: 118.4e9 over 28 blocks);
    # XLA's cost analysis counts two per multiply-add (and also counts the element-wise ops).
    model = DiT(**dit_preset("XL/2"), num_classes=1000, out_channels=8)
    x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = _abstract_params(model, (1, 32, 32, 4), conditional=True)
    fwd = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
    cost = fwd.lower(params, x, t, y).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gmacs = cost["flops"] / 2 / 1e9
    assert gmacs == pytest.approx(118.6, rel=0.01)


def test_presets_and_errors():
    assert dit_preset("B/4") == dict(width=768, depth=12, num_heads=12, patch_size=4)
    with pytest.raises(ValueError, match="unknown DiT preset 'XL/3'.*S/2, S/4"):
        dit_preset("XL/3")
    with pytest.raises(ValueError, match="unknown DiT preset 'H/2'"):
        dit_preset("H/2")


# ----------------------------------------------------------------------------- the network

def test_output_is_exactly_zero_at_init_shape_and_dtype():
    params = _init_params()
    y = _apply(MODEL)({"params": params}, _x(), TIMES, cond=LABELS, train=True,
                      rngs={"dropout": jax.random.key(3)})
    assert y.shape == X_SHAPE and y.dtype == jnp.float32
    assert np.all(np.asarray(y) == 0.0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_init_statistics_follow_dit():
    params = _init_params()
    fc1 = np.asarray(params["blocks_0"]["mlp"]["fc1"]["kernel"])      # Xavier on [32, 128]
    assert np.abs(fc1).max() <= np.sqrt(6 / (32 + 128))
    assert np.std(fc1) == pytest.approx(np.sqrt(2 / (32 + 128)), rel=0.05)
    qkv = np.asarray(params["blocks_1"]["attn"]["qkv"]["kernel"])     # [32, 3, 2, 16]: fans 32, 96
    assert np.std(qkv) == pytest.approx(np.sqrt(2 / (32 + 96)), rel=0.05)
    patch = np.asarray(params["patch_embed"]["kernel"])               # fans 2*2*1 and 32
    assert patch.shape == (4, 32) and np.abs(patch).max() <= np.sqrt(6 / (4 + 32))
    assert np.std(patch) == pytest.approx(np.sqrt(2 / (4 + 32)), rel=0.15)
    assert np.std(params["time_embed"]["dense_0"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["class_embed"]["embedding"]) == pytest.approx(0.02, rel=0.15)
    for layer in (params["blocks_0"]["adaLN_modulation"], params["final_layer"]["linear"],
                  params["final_layer"]["adaLN_modulation"], params["blocks_0"]["mlp"]["fc1"]):
        assert not np.any(layer["kernel"]) or layer is params["blocks_0"]["mlp"]["fc1"]
        assert not np.any(layer["bias"])


def test_time_and_class_conditioning_and_null_label():
    params, apply, x = _random_params(), _apply(MODEL), _x()
    y = apply({"params": params}, x, TIMES, cond=LABELS)
    y_t = apply({"params": params}, x, TIMES[::-1], cond=LABELS)
    y_c = apply({"params": params}, x, TIMES, cond=LABELS[::-1])
    for other in (y_t, y_c):
        assert np.all(np.abs(np.asarray(other - y)).max(axis=(1, 2, 3)) > 1e-3)
    null = apply({"params": params}, x, TIMES, cond=None)
    np.testing.assert_array_equal(null[3], y[3])      # row 3 of LABELS is the null class


def test_bfloat16_compute_close_to_float32():
    params, x = _random_params(), _x()
    y32 = _apply(MODEL)({"params": params}, x, TIMES, cond=LABELS)
    y16 = _apply(MODEL.clone(dtype=jnp.bfloat16))({"params": params}, x, TIMES, cond=LABELS)
    assert y16.dtype == jnp.float32
    err = np.linalg.norm(np.asarray(y16) - np.asarray(y32)) / np.linalg.norm(np.asarray(y32))
    assert 0 < err < 0.03


def test_dropout_only_in_training():
    params, x = _random_params(), _x()
    run = functools.partial(_apply(MODEL), {"params": params}, x, TIMES, cond=LABELS)
    a = run(train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, run(train=True, rngs={"dropout": jax.random.key(1)}))
    assert not np.allclose(a, run(train=True, rngs={"dropout": jax.random.key(2)}))
    assert not np.allclose(a, run())


def test_position_embedding_closed_form():
    emb = sincos_2d_embedding(3, 5, 16)       # rows i < 3, columns j < 5, q = 4 per block
    assert emb.shape == (15, 16) and emb.dtype == np.float32
    w = 10000.0 ** (-np.arange(4) / 4)
    for i, j in [(0, 0), (1, 3), (2, 4)]:
        want = np.r_[np.sin(j * w), np.cos(j * w), np.sin(i * w), np.cos(i * w)]
        np.testing.assert_allclose(emb[i * 5 + j], want, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4; got grid 3x5 and dim=18"):
        sincos_2d_embedding(3, 5, 18)


def test_patchify_round_trip_and_token_order():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 6, 12)
    # Token 4 is patch row 1, column 1: pixels (2..3, 2..3), flattened (row, column, channel).
    np.testing.assert_array_equal(tokens[0, 4], np.asarray(x[0, 2:4, 2:4, :]).reshape(-1))
    np.testing.assert_array_equal(unpatchify(tokens, 2, 4, 6), x)


def test_non_square_images():
    model = DiT(**{**TINY, "patch_size": 4})
    x = jax.ShapeDtypeStruct((2, 8, 12, 3), jnp.float32)
    params = _abstract_params(model, x.shape, conditional=False)
    assert params["patch_embed"]["kernel"].shape == (48, 32)
    assert jax.eval_shape(model.apply, {"params": params}, x, 0.5).shape == (2, 8, 12, 3)


def test_remat_same_outputs_and_gradients():
    params, x = _random_params(), _x()

    def loss(model, p):
        y = model.apply({"params": p}, x, TIMES, LABELS)
        return jnp.sum(jnp.square(y - x))
    # One program for the three variants: each compilation costs seconds on CPU.
    results = jax.jit(lambda p: {r: jax.value_and_grad(functools.partial(
        loss, MODEL.clone(remat=r)))(p) for r in ("none", "full", "dots")})(params)
    value, grads = results["none"]
    for remat in ("full", "dots"):
        value_r, grads_r = results[remat]
        np.testing.assert_allclose(value_r, value, rtol=1e-6)
        for g_r, g in zip(jax.tree_util.tree_leaves(grads_r), jax.tree_util.tree_leaves(grads)):
            np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-6)


def test_logical_axes_cover_every_parameter():
    axes = param_logical_axes(_abstract_params(MODEL, X_SHAPE, conditional=True))
    assert axes["blocks_1"]["attn"]["qkv"]["kernel"] == ("embed", None, "heads", None)
    assert axes["blocks_0"]["mlp"]["fc2"]["kernel"] == ("mlp", "embed")


def test_input_and_construction_errors():
    model = DiT(**{**TINY, "patch_size": 4})
    with pytest.raises(ValueError, match="a 8x10 image does not split into 4x4 patches"):
        model._check_input(jax.ShapeDtypeStruct((1, 8, 10, 1), jnp.float32))
    with pytest.raises(ValueError, match=r"DiT expects images \[B, H, W, C\]; got shape \(1, 64\)"):
        model._check_input(jax.ShapeDtypeStruct((1, 64), jnp.float32))
    model._check_input(jax.ShapeDtypeStruct((1, 8, 12, 1), jnp.float32))
    with pytest.raises(ValueError, match="width=30 must be divisible by num_heads=4"):
        DiT(width=30, num_heads=4)
    with pytest.raises(ValueError, match="width=6 must be a multiple of 4"):
        DiT(width=6, num_heads=2)
    with pytest.raises(ValueError, match="positive integer sizes.*'depth': 0"):
        DiT(depth=0)
    with pytest.raises(ValueError, match="unknown remat 'some'; choose one of: none, full, dots"):
        build_model("dit", remat="some")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        DiT(dropout=1.0)
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(DiT(**TINY).init, jax.random.key(0), _x(), 0.5, jnp.zeros(4, jnp.int32))


# ----------------------------------------------------------------------------- training

def test_flow_matching_loss_decreases():
    x1 = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1), minval=-1.0, maxval=1.0)
    objective = objectives.FlowMatching(paths.make_path("cond_ot"))
    tx = optax.adam(3e-3)

    def loss_fn(p, key):
        return objective.loss(lambda x_t, t: MODEL.apply({"params": p}, x_t, t), x1, key)[0]

    @jax.jit
    def train(p):
        def step(carry, i):
            p, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(jax.random.key(2), i))
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss
        return jax.lax.scan(step, (p, tx.init(p)), jnp.arange(30))[1]

    losses = np.asarray(train(_init_params()))
    # At init f = 0, so the loss is E|x1 - x0|^2 = 1 + 1/3 (uniform data on [-1, 1]).
    assert losses[0] == pytest.approx(4 / 3, rel=0.1)
    # Fresh (t, x0) every step, so single losses are noisy: compare means of ten.
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), losses
