"""Tests for flowmatch.models: shapes, conditioning, dropout, dtypes, parameter counts, errors,
gradients. All jitted; tiny widths so the file runs in seconds on CPU."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs_util import QUICK_COMPILE  # noqa: E402  (tests/ on sys.path)
from flowmatch.models import (MLP, MODELS, FourierFeatures, TimeEmbedding, UNet, build_model,
                              count_params, sinusoidal_embedding)

# Small UNets for the three image sizes the project uses: digits, MNIST, CIFAR-10.
UNET_CASES = {
    "digits8": (dict(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(4,), num_groups=8, num_classes=10, dropout=0.1),
                (2, 8, 8, 1)),
    "mnist28": (dict(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                     attn_resolutions=(7,), num_groups=4, num_heads=2, dropout=0.0),
                (2, 28, 28, 1)),
    "cifar32": (dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(16,), num_groups=4, dropout=0.1), (2, 32, 32, 3)),
}


@functools.lru_cache(maxsize=None)
def _apply(model):
    """Jitted model.apply with the shared signature; one per model, so tests share compilations."""
    return jax.jit(model.apply, static_argnames=("train",), compiler_options=QUICK_COMPILE)


def _max_diff(a, b):
    """max |a - b|, computed in numpy (an eager jnp op would compile per shape)."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _random_params(model, x, seed=0):
    """Random parameters (numpy, std 1/sqrt(fan_in)) in the model's tree: no init compilation,
    and layers that the real init sets to zero stop hiding their inputs."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros(x.shape[:1]))["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        std = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(std * rng.standard_normal(s.shape), s.dtype)
    return jax.tree_util.tree_map(draw, shapes)


@functools.lru_cache(maxsize=None)
def _unet(case):
    """(model, random params, x) for a UNET_CASES entry; cached across tests."""
    kwargs, shape = UNET_CASES[case]
    model = UNet(**kwargs)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)  # no compile
    return model, _random_params(model, x), x


# ----------------------------------------------------------------------------- embeddings

def test_sinusoidal_embedding_formula_and_odd_dim():
    t = jnp.array([0.0, 0.25, 1.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == jnp.float32
    np.testing.assert_allclose(emb[0], np.r_[np.zeros(4), np.ones(4)], atol=1e-6)
    # Frequency k of t is w_k = 10000^(-k/4) applied to 1000 t: same as a DDPM timestep 250.
    w = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.r_[np.sin(250 * w), np.cos(250 * w)], rtol=1e-4,
                               atol=1e-4)
    odd = sinusoidal_embedding(t, 7)
    assert odd.shape == (3, 7)
    np.testing.assert_allclose(odd[:, 6], 0.0)


def test_fourier_features_fixed_and_parameter_free():
    ff = FourierFeatures(dim=9, scale=4.0)
    t = jnp.linspace(0.0, 1.0, 5)
    variables = ff.init(jax.random.key(0), t)
    assert jax.tree_util.tree_leaves(variables) == []
    a = ff.apply(variables, t)
    b = FourierFeatures(dim=9, scale=4.0).apply({}, t)
    assert a.shape == (5, 9)
    np.testing.assert_array_equal(a, b)  # frequencies are a constant, not drawn per init
    np.testing.assert_allclose(a[0, :4], 0.0, atol=1e-6)  # sin(0)
    np.testing.assert_allclose(a[:, 8], 0.0)


@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
def test_time_embedding(kind):
    te = TimeEmbedding(dim=16, hidden=32, kind=kind)
    t = jnp.array([0.1, 0.9])
    params = te.init(jax.random.key(0), t)
    y = jax.jit(te.apply)(params, t)
    assert y.shape == (2, 32)
    assert not np.allclose(y[0], y[1])


# ----------------------------------------------------------------------------- MLP

@pytest.fixture(scope="module")
def cond_mlp():
    model = MLP(hidden_sizes=(32, 32), num_classes=3, time_embed_dim=16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)), jnp.float32)
    params = jax.jit(model.init, compiler_options=QUICK_COMPILE)(
        jax.random.key(1), x, jnp.zeros(4))["params"]
    return model, params, x


def test_mlp_shapes_and_scalar_time(cond_mlp):
    model, params, x = cond_mlp
    apply = _apply(model)
    y = apply({"params": params}, x, jnp.full((4,), 0.3))
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(apply({"params": params}, x, 0.3), y, rtol=1e-6)
    y_other = apply({"params": params}, x, jnp.full((4,), 0.7))
    assert np.all(np.abs(np.asarray(y) - np.asarray(y_other)).sum(axis=-1) > 1e-4)



@pytest.mark.parametrize("num_classes", [0, 3])
def test_mlp_embeds_a_scalar_time_once_for_all_rows(num_classes):
    """A scalar t without labels (a sampler's call): the time embedding and its projection run
    on one row, not on B: the compiled call has at least (B - 1) x the projection's FLOPs less."""
    model = MLP(hidden_sizes=(32, 32), num_classes=num_classes, time_embed_dim=16)
    b = 64
    x = jnp.zeros((b, 2))
    params = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros(b))["params"]

    def flops(t):
        f = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
        return f.lower(params, x, t).compile().cost_analysis()["flops"]

    projection = 2 * 16 * (32 + 32)  # embed_proj: [16] -> [64] per row
    assert flops(jnp.zeros(b)) - flops(jnp.zeros(())) >= (b - 1) * projection

def test_mlp_class_conditioning(cond_mlp):
    model, params, x = cond_mlp
    apply = _apply(model)
    ys = [apply({"params": params}, x, 0.5, cond=jnp.full((4,), c, jnp.int32))
          for c in range(4)]
    for i in range(4):
        for j in range(i):
            assert not np.allclose(ys[i], ys[j])
    np.testing.assert_allclose(apply({"params": params}, x, 0.5, cond=None), ys[3], rtol=1e-6)


def test_mlp_flattens_trailing_dims():
    model = MLP(hidden_sizes=(16,))
    x = jnp.ones((3, 4, 5))
    params = jax.jit(model.init, compiler_options=QUICK_COMPILE)(jax.random.key(0), x, 0.0)
    assert params["params"]["out"]["kernel"].shape == (16, 20)
    assert _apply(model)(params, x, 0.5).shape == (3, 4, 5)


def test_mlp_gradients_nonzero_at_init(cond_mlp):
    model, params, x = cond_mlp
    cond = jnp.array([0, 1, 2, 3], jnp.int32)  # every row of the table, null class included
    target = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape), jnp.float32)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(
        (model.apply({"params": p}, x, jnp.linspace(0, 1, 4), cond) - target) ** 2)),
        compiler_options=QUICK_COMPILE)(params)
    grads = jax.device_get(grads)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


@functools.lru_cache(maxsize=None)
def _small_mlp_params():
    model = MLP(hidden_sizes=(8,), time_embedding="fourier")
    return jax.jit(model.init, compiler_options=QUICK_COMPILE)(jax.random.key(0),
                                                                jnp.ones((2, 3)), 0.5)


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu", "tanh", "elu", "selu", "softplus"])
def test_mlp_activations(activation):
    model = MLP(hidden_sizes=(8,), activation=activation, time_embedding="fourier")
    # The activation has no parameters: every one runs on the same (jitted, once) init.
    params = _small_mlp_params()
    assert np.all(np.isfinite(model.apply(params, jnp.ones((2, 3)), 0.5)))



def test_selu_is_jax_selu_to_float32_round_off_and_faster_to_compute():
    """flowmatch's SELU (exp(x) - 1 below 0) against jax.nn.selu (expm1): values and gradients
    within 2 float32 ulps of the activation's scale over [-30, 5] and close to 0, the same at 0
    (the negative branch's slope, as jax's), dtype kept; and the compiled program has exp
    where jax's has expm1 (slower on XLA:CPU)."""
    from flowmatch.models import embeddings  # pylint: disable=g-import-not-at-top
    assert embeddings.ACTIVATIONS["selu"] is embeddings.selu
    x = np.concatenate([np.linspace(-30, 5, 200_001), np.linspace(-1e-3, 1e-3, 20_001),
                        [0.0]]).astype(np.float32)
    ours, ref = jax.jit(embeddings.selu), jax.jit(jax.nn.selu)
    np.testing.assert_allclose(ours(x), ref(x), rtol=0, atol=2.5e-7)
    grads = [jax.jit(jax.vmap(jax.grad(f)))(x) for f in (embeddings.selu, jax.nn.selu)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=0, atol=2.5e-7)
    assert float(jax.grad(embeddings.selu)(0.0)) == float(jax.grad(jax.nn.selu)(0.0))
    assert embeddings.selu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16

    def compiled(f):
        return jax.jit(f).lower(jnp.zeros(1000)).compile().as_text()

    assert "exponential-minus-one" not in compiled(embeddings.selu)
    assert "exponential-minus-one" in compiled(jax.nn.selu)  # what the test is about

# ----------------------------------------------------------------------------- UNet

@pytest.mark.parametrize("case", list(UNET_CASES))
def test_unet_shape_dtype_and_time_dependence(case):
    model, params, x = _unet(case)
    apply = _apply(model)
    y = apply({"params": params}, x, jnp.full(x.shape[:1], 0.2))
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    assert _max_diff(y, apply({"params": params}, x, jnp.full(x.shape[:1], 0.8))) > 1e-3


def test_unet_scalar_t_is_broadcast():
    model, params, x = _unet("digits8")
    apply = _apply(model)
    np.testing.assert_allclose(apply({"params": params}, x, 0.2),
                               apply({"params": params}, x, jnp.full(x.shape[:1], 0.2)),
                               rtol=1e-5, atol=1e-6)


def test_unet_out_channels():
    model = UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                 num_groups=4, out_channels=5, resample_with_conv=False)
    x = jnp.zeros((1, 8, 8, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, 0.0)
    assert jax.eval_shape(model.apply, shapes, x, 0.0).shape == (1, 8, 8, 5)


def test_unet_class_conditioning():
    model, params, x = _unet("digits8")
    apply = _apply(model)
    ys = [apply({"params": params}, x, 0.5, cond=jnp.full((2,), c, jnp.int32)) for c in (0, 1, 10)]
    assert _max_diff(ys[0], ys[1]) > 1e-3
    np.testing.assert_allclose(apply({"params": params}, x, 0.5), ys[2], rtol=1e-5, atol=1e-6)


def test_unet_dropout():
    model, params, x = _unet("digits8")
    apply = _apply(model)
    variables = {"params": params}
    eval_a = apply(variables, x, 0.5, train=False)
    np.testing.assert_array_equal(eval_a, apply(variables, x, 0.5, train=False))
    k1, k2 = jax.random.key(3), jax.random.key(4)
    train_1 = apply(variables, x, 0.5, train=True, rngs={"dropout": k1})
    np.testing.assert_array_equal(train_1, apply(variables, x, 0.5, train=True,
                                                 rngs={"dropout": k1}))
    train_2 = apply(variables, x, 0.5, train=True, rngs={"dropout": k2})
    assert _max_diff(train_1, train_2) > 1e-4
    assert _max_diff(train_1, eval_a) > 1e-4


def test_unet_bfloat16_compute():
    model32, params, x = _unet("digits8")
    model16 = UNet(**UNET_CASES["digits8"][0], dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model16.init, jax.random.key(0), x, 0.0)["params"]
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
    y16 = _apply(model16)({"params": params}, x, 0.5)
    y32 = _apply(model32)({"params": params}, x, 0.5)
    assert y16.dtype == jnp.float32
    y16, y32 = np.asarray(y16), np.asarray(y32)
    rel = np.linalg.norm(y16 - y32) / np.linalg.norm(y32)
    assert rel < 0.05, rel


def test_mlp_bfloat16_compute(cond_mlp):
    model, params, x = cond_mlp
    y16 = _apply(build_model("mlp", hidden_sizes=[32, 32], num_classes=3, time_embed_dim=16,
                             dtype="bfloat16"))({"params": params}, x, 0.5)
    y32 = _apply(model)({"params": params}, x, 0.5)
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, rtol=0.1, atol=0.05)


def test_ddpm_cifar10_parameter_count():
    model = build_model("unet", base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                        attn_resolutions=(16,), dropout=0.1)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,)))
    n = count_params(shapes["params"])
    assert abs(n - 35.7e6) / 35.7e6 < 0.01
    assert n == 35_746_307  # measured; Ho et al. (2020) report 35.7M


def test_unet_gradients_after_waking_zero_init_layers():
    """conv_out and each block's last layer start at zero (as in DDPM): at step 0 only conv_out
    gets a gradient; after one step the last layers of blocks do; after two, every leaf does."""
    # The middle block's attention is the only one: enough to cover AttentionBlock, and cheaper
    # to compile.
    model = UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                 num_groups=4, num_classes=10, dropout=0.0)
    shape = (2, 8, 8, 3)
    rng = np.random.default_rng(0)
    x, target = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    t = jnp.array([0.2, 0.7])
    cond = jnp.array([3, 10], jnp.int32)
    opt = optax.adam(1e-3)

    # An "rbg" key draws the same kind of init as the default threefry key, but its init compiles
    # several times faster on CPU (threefry unrolls per parameter); zero-init layers are zero.
    params = jax.jit(model.init, compiler_options=QUICK_COMPILE)(
        jax.random.key(1, impl="rbg"), x, t)["params"]

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def step(params, opt_state):
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x, t, cond)
                                             - target) ** 2))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads

    # Adam's state in one program (eagerly, each zeros_like of a new shape compiles its own).
    opt_state = jax.jit(opt.init, compiler_options=QUICK_COMPILE)(params)
    params, opt_state, grads0 = step(params, opt_state)
    grads0 = jax.device_get(grads0)
    nonzero0 = {jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads0)
                if np.any(g != 0)}
    assert nonzero0 == {"['conv_out']['bias']", "['conv_out']['kernel']"}
    params, opt_state, _ = step(params, opt_state)
    grads2 = jax.device_get(step(params, opt_state)[2])
    for path, g in jax.tree_util.tree_leaves_with_path(grads2):
        assert np.all(np.isfinite(g)), path
        # Unused class rows (labels other than 3 and 10) are the only legitimate zeros.
        if "class_embed" in jax.tree_util.keystr(path):
            assert np.all(np.any(g[np.array([3, 10])] != 0, axis=-1)), path
        else:
            assert np.any(g != 0), path


# ----------------------------------------------------------------------------- errors

def test_build_model_registry_and_conversions():
    assert set(MODELS) == {"mlp", "unet", "dit"}
    model = build_model("mlp", hidden_sizes=[8, 8], dtype="bfloat16")
    assert isinstance(model, MLP) and model.hidden_sizes == (8, 8)
    assert model.dtype == jnp.bfloat16


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*mlp, unet"):
        build_model("resnet")
    with pytest.raises(ValueError, match="'widths' for model 'mlp'.*hidden_sizes"):
        build_model("mlp", widths=(8,))
    with pytest.raises(ValueError, match="unknown activation 'swish'.*silu, relu"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match="unknown time_embedding 'learned'"):
        UNet(time_embedding="learned")
    with pytest.raises(ValueError, match=r"num_groups=32 must divide.*\[48\].*num_groups=24"):
        UNet(base_channels=48, channel_mult=(1, 1), num_groups=32)
    with pytest.raises(ValueError, match="num_groups must be positive"):
        UNet(num_groups=0)
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        MLP(hidden_sizes=())


def test_shape_errors_before_compilation():
    x28 = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="halved only 2 times.*at most 3 entries"):
        jax.eval_shape(UNet(attn_resolutions=()).init, key, x28, 0.0)
    with pytest.raises(ValueError, match=r"attn_resolutions=\(16,\).*\[28, 14, 7\]"):
        jax.eval_shape(UNet(channel_mult=(1, 2, 2)).init, key, x28, 0.0)
    with pytest.raises(ValueError, match="num_heads=3"):
        jax.eval_shape(UNet(channel_mult=(1, 2, 2), attn_resolutions=(14,), num_heads=3).init,
                       key, x28, 0.0)
    x8 = jax.ShapeDtypeStruct((2, 8), jnp.float32)
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(MLP().init, key, x8, 0.0, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        jax.eval_shape(MLP().init, key, x8, jnp.zeros((2, 1)))
