"""Tests for flowmatch.models.dit: published sizes and FLOPs (abstract shapes only, nothing big
is allocated), the zero output at init, the position embedding's closed form, conditioning,
dtypes, rematerialisation, input checks, and a few steps of flow matching on a tiny model."""
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs_util import QUICK_COMPILE  # noqa: E402  (tests/ on sys.path)
from flowmatch import objectives, paths, threefry
from flowmatch.models import build_model, count_params, precision
from flowmatch.models import dit as dit_lib
from flowmatch.models.dit import (DiT, dit_preset, memory_estimate, param_logical_axes,
                                  patchify, unpatchify)
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
    """MODEL's real initial parameters (jitted: an eager init dispatches op by op, slowly; with
    Threefry unrolled, as `training.state.create_state` compiles an init: half the compile time
    of jax's rolled hash, the same random bits)."""
    with threefry.unrolled(True):
        init = jax.jit(MODEL.init, compiler_options=QUICK_COMPILE)
        return init(jax.random.key(0), jnp.zeros(X_SHAPE), TIMES, LABELS)["params"]


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


def _x(seed=1, shape=X_SHAPE):
    return jax.random.normal(jax.random.key(seed), shape)


@functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
def _forward_suite(params):
    """Every forward pass of MODEL that the tests look at, in one program (each compilation
    costs seconds on CPU): with `params` at the times TIMES and labels LABELS, unless changed."""
    x = _x()

    def run(model=MODEL, t=TIMES, cond=LABELS, dropout_seed=None):
        train = dropout_seed is not None
        rngs = {"dropout": jax.random.key(dropout_seed)} if train else None
        return model.apply({"params": params}, x, t, cond, train=train, rngs=rngs)
    return dict(y=run(), times_reversed=run(t=TIMES[::-1]), no_labels=run(cond=None),
                bfloat16=run(model=MODEL.clone(dtype=jnp.bfloat16)),
                train_1=run(dropout_seed=1), train_2=run(dropout_seed=2))


@functools.lru_cache(maxsize=None)
def _outputs(which):
    """_forward_suite at the real init ('init') or at random parameters ('random'), as numpy."""
    params = _init_params() if which == "init" else _random_params()
    return {k: np.asarray(v) for k, v in _forward_suite(params).items()}


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
    # scan_blocks: the same parameters, stacked (test_remat_and_scan_... checks that the two
    # trees agree), and one block traced instead of depth.
    model = DiT(**dit_preset(preset), num_classes=1000, out_channels=8, scan_blocks=True)
    n = count_params(_abstract_params(model, (1, 32, 32, 4), conditional=True))
    f = dit_preset(preset)
    assert n == _closed_form_count(f["width"], f["depth"], f["patch_size"], 4, 8, 1000)
    assert round(n / 1e6) == millions


def _forward_flops(model):
    """XLA's flop count of the lowered forward at batch 1 on [32, 32, 4] (nothing allocated)."""
    shapes = [jax.ShapeDtypeStruct(s, d) for s, d in
              (((1, 32, 32, 4), jnp.float32), ((1,), jnp.float32), ((1,), jnp.int32))]
    params = _abstract_params(model, (1, 32, 32, 4), conditional=True)
    fwd = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
    cost = fwd.lower(params, *shapes).cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


def test_xl2_forward_flops_match_dit_table4():
    # DiT Table 4: XL/2 118.6 Gflops per 256x256 image. That figure counts a multiply-add as one
    # flop (12 D^2 T + 2 T^2 D per block, T = 256 tokens, D = 1152: 118.4e9 over 28 blocks);
    # XLA's cost analysis counts two per multiply-add (and also counts the element-wise ops).
    # Flops are affine in depth, so XL/2 = one block + 27 x (two blocks - one block): two
    # shallow lowerings instead of tracing 28 blocks.
    xl2 = dict(dit_preset("XL/2"), num_classes=1000, out_channels=8)
    one, two = (_forward_flops(DiT(**{**xl2, "depth": d})) for d in (1, 2))
    gmacs = (one + 27 * (two - one)) / 2 / 1e9
    assert gmacs == pytest.approx(118.6, rel=0.01)


def test_memory_estimate_xl2():
    count = _closed_form_count(1152, 28, 2, 4, 4, 1000)
    est = memory_estimate("XL/2", batch_per_chip=2)
    assert est.params == est.ema == est.grads == 4 * count and est.optimizer == 8 * count
    assert memory_estimate("XL/2", 2, fsdp=8).optimizer == 8 * -(-count // 8)
    # Per example and block (T = 256, D = 1152, N = 16): T (14 D + 6 M) + 2 N T^2 floats.
    per_block = 4 * (256 * (14 + 24) * 1152 + 2 * 16 * 256 ** 2)
    assert est.activations == 2 * 28 * per_block
    full, dots = (memory_estimate("XL/2", 2, remat=r).activations for r in ("full", "dots"))
    assert full == 2 * (28 * 4 * 256 * 1152 + per_block) and full < dots < est.activations
    with pytest.raises(ValueError, match="unknown remat 'all'"):
        memory_estimate("XL/2", 2, remat="all")


def test_presets_and_errors():
    assert dit_preset("B/4") == dict(width=768, depth=12, num_heads=12, patch_size=4)
    with pytest.raises(ValueError, match="unknown DiT preset 'XL/3'.*S/2, S/4"):
        dit_preset("XL/3")
    with pytest.raises(ValueError, match="unknown DiT preset 'H/2'"):
        dit_preset("H/2")


# ----------------------------------------------------------------------------- the network

def test_output_is_exactly_zero_at_init_shape_and_dtype():
    for name, y in _outputs("init").items():      # train and eval modes, float32 and bfloat16
        assert y.shape == X_SHAPE and y.dtype == np.float32, name
        assert np.all(y == 0.0), name
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(_init_params()))


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
    assert not np.any(params["blocks_0"]["mlp"]["fc1"]["bias"])
    for zero in (params["blocks_0"]["adaLN_modulation"], params["final_layer"]["linear"],
                 params["final_layer"]["adaLN_modulation"]):
        assert not np.any(zero["kernel"]) and not np.any(zero["bias"])


def test_time_and_class_conditioning_and_null_label():
    out = _outputs("random")
    change = {k: np.abs(out[k] - out["y"]).max(axis=(1, 2, 3)) for k in ("times_reversed",
                                                                          "no_labels")}
    assert np.all(change["times_reversed"] > 1e-3)
    # cond=None is the null class: labels 0, 1, 2 give other outputs, label 3 (null) the same.
    assert np.all(change["no_labels"][:3] > 1e-3) and change["no_labels"][3] == 0.0


def test_bfloat16_compute_close_to_float32():
    out = _outputs("random")
    assert out["bfloat16"].dtype == np.float32
    err = np.linalg.norm(out["bfloat16"] - out["y"]) / np.linalg.norm(out["y"])
    assert 0 < err < 0.03


def test_dropout_only_in_training():
    out = _outputs("random")
    assert not np.allclose(out["train_1"], out["train_2"])
    assert not np.allclose(out["train_1"], out["y"])


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


def _stack_blocks(params):
    """Loop parameters (blocks_0, blocks_1, ...) in the scan_blocks layout (blocks, stacked)."""
    loop = [params[f"blocks_{i}"] for i in range(MODEL.depth)]
    rest = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    return {**rest, "blocks": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *loop)}


def _values_and_grads(variants, gradient_context=contextlib.nullcontext):
    """{name: (loss, gradients)} of each model in `variants` at _random_params(), in one
    program (each compilation costs seconds on CPU); scan_blocks models take the parameters
    stacked.  Gradients are taken inside `gradient_context()`."""
    params, x = _random_params(), _x()

    def loss(model, p):
        y = model.apply({"params": p}, x, TIMES, LABELS)
        return jnp.sum(jnp.square(y - x))

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def value_and_grads(p):
        out = {}
        with gradient_context():
            for name, model in variants.items():
                out[name] = jax.value_and_grad(functools.partial(loss, model))(
                    _stack_blocks(p) if model.scan_blocks else p)
        return out
    return value_and_grads(params)


def test_remat_and_scan_same_outputs_and_gradients():
    results = _values_and_grads({"none": MODEL, "full": MODEL.clone(remat="full"),
                                 "scan+dots": MODEL.clone(remat="dots", scan_blocks=True)})
    value, grads = results["none"]
    for name in ("full", "scan+dots"):
        value_r, grads_r = results[name]
        np.testing.assert_allclose(value_r, value, rtol=1e-6)
        want = _stack_blocks(grads) if name.startswith("scan") else grads
        # Scanning changes the order of some sums: equal up to float32 rounding.
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
            a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max()), grads_r, want)


def test_bfloat16_products_under_loop_remat_and_scan():
    """matmul_dtype="bfloat16" (every Dense product with bfloat16 operands, float32 results):
    the output within bfloat16 rounding of float32's, and the train step's written-out gradient
    (`precision.gradient_products`) the same through the block loop, nn.remat and nn.scan, and
    close to float32's gradient."""
    mixed = MODEL.clone(matmul_dtype="bfloat16")
    results = _values_and_grads({"float32": MODEL, "none": mixed, "full": mixed.clone(remat="full"),
                                 "scan+dots": mixed.clone(remat="dots", scan_blocks=True)},
                                precision.gradient_products)
    value, grads = results["none"]
    value32, grads32 = results["float32"]
    assert 0 < abs(float(value) - float(value32)) < 0.02 * abs(float(value32))
    for name in ("full", "scan+dots"):
        value_r, grads_r = results[name]
        np.testing.assert_allclose(value_r, value, rtol=1e-5)
        want = _stack_blocks(grads) if name.startswith("scan") else grads
        # A float32 sum in another order can round to the other bfloat16 neighbour.
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
            a, b, rtol=0, atol=1e-2 * np.abs(b).max()), grads_r, want)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=0, atol=0.1 * np.abs(b).max()), grads, grads32)


def test_logical_axes_cover_every_parameter():
    axes = param_logical_axes(_abstract_params(MODEL, X_SHAPE, conditional=True))
    assert axes["blocks_1"]["attn"]["qkv"]["kernel"] == ("embed", None, "heads", None)
    assert axes["blocks_0"]["mlp"]["fc2"]["kernel"] == ("mlp", "embed")
    scanned = MODEL.clone(scan_blocks=True)
    axes = param_logical_axes(_abstract_params(scanned, X_SHAPE, conditional=True))
    assert axes["blocks"]["attn"]["proj"]["kernel"] == ("layers", "heads", None, "embed")


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
    with pytest.raises(ValueError, match="unknown attention 'flash'; choose one of: auto, xla, "
                                         "cudnn"):
        build_model("dit", attention="flash")
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(DiT(**TINY).init, jax.random.key(0), _x(), 0.5, jnp.zeros(4, jnp.int32))


def _qkv(dtype, head_dim=16):
    keys = jax.random.split(jax.random.key(3), 3)
    return [jax.random.normal(k, (2, 16, 2, head_dim), jnp.float32).astype(dtype) for k in keys]


def test_attention_is_softmax_of_scaled_scores_and_auto_is_jax_default_off_gpu():
    q, k, v = _qkv(jnp.float32)
    scores = jnp.einsum("btnd,bsnd->bnts", q, k) / jnp.sqrt(16.0)
    expected = jnp.einsum("bnts,bsnd->btnd", jax.nn.softmax(scores, axis=-1), v)
    for implementation in ("auto", "xla"):
        out = dit_lib.dot_product_attention(q, k, v, implementation)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Off a GPU "auto" is exactly jax's own choice, the network's attention before this option.
    np.testing.assert_array_equal(dit_lib.dot_product_attention(q, k, v),
                                  jax.nn.dot_product_attention(q, k, v))


def test_auto_attention_tries_cudnn_only_where_it_may_apply_and_falls_back(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, implementation=None):
        calls.append(implementation)
        return real(q, k, v, implementation=implementation)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    bf16 = _qkv(jnp.bfloat16)
    dit_lib.dot_product_attention(*bf16)
    assert calls == [None]  # the CPU: jax's choice, cuDNN not tried
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    calls.clear()
    out = dit_lib.dot_product_attention(*bf16)  # as on a GPU: cuDNN first; this CPU refuses it
    assert calls == ["cudnn", None]
    np.testing.assert_array_equal(out, real(*bf16))
    for q, k, v in (_qkv(jnp.float32), _qkv(jnp.bfloat16, head_dim=12),
                    _qkv(jnp.bfloat16, head_dim=256)):
        calls.clear()
        dit_lib.dot_product_attention(q, k, v)
        assert calls == [None]  # float32, d not a multiple of 8, d > 128: not tried
    with pytest.raises(RuntimeError):
        dit_lib.dot_product_attention(*bf16, implementation="cudnn")  # asked for: jax's error


def test_the_attention_setting_reaches_every_block():
    seen = []
    real = dit_lib.dot_product_attention

    def spy(q, k, v, implementation="auto"):
        seen.append(implementation)
        return real(q, k, v, "xla")

    model = DiT(**{**TINY, "attention": "cudnn"})
    with pytest.MonkeyPatch.context() as m:
        m.setattr(dit_lib, "dot_product_attention", spy)
        jax.eval_shape(model.init, jax.random.key(0), _x(), 0.5)
    assert seen == ["cudnn"] * TINY["depth"]


# ----------------------------------------------------------------------------- training

def test_flow_matching_loss_decreases():
    x1 = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1), minval=-1.0, maxval=1.0)
    objective = objectives.FlowMatching(paths.make_path("cond_ot"))
    tx = optax.adam(3e-3)

    def loss_fn(p, key):
        return objective.loss(lambda x_t, t: MODEL.apply({"params": p}, x_t, t), x1, key)[0]

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
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
