"""flowmatch.models.precision: products of bfloat16-rounded operands, summed in float32, in the
forward pass and (inside `gradient_products`, as the train step takes its gradient) in both
products of the gradient; jax's own derivatives elsewhere; the networks' `matmul_dtype`."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch.models import MLP, build_model, precision


def _rounded(a):
    """a rounded to bfloat16, as float64 numpy."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32),
                      np.float64)


# (features, axis, x shape): nn.Dense's product, several output axes, two contracted axes.
CASES = [(7, -1, (5, 3)), ((3, 4), -1, (2, 5, 6)), (6, (-2, -1), (4, 3, 5))]


@pytest.mark.parametrize("features,axis,shape", CASES)
def test_products_and_their_gradients_sum_rounded_operands_in_float32(features, axis, shape):
    layer = nn.DenseGeneral(features, axis=axis, use_bias=False,
                            dot_general=precision.product_fn("bfloat16"))
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    params = layer.init(kw, x)
    w = params["params"]["kernel"]
    y = layer.apply(params, x)
    c = jax.random.normal(kc, y.shape)               # the cotangent of y
    with precision.gradient_products():
        _, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)
    dparams, dx = vjp(c)
    dw = dparams["params"]["kernel"]
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32

    k = len(axis) if isinstance(axis, tuple) else 1
    xr = _rounded(x).reshape(-1, int(np.prod(x.shape[x.ndim - k:])))
    wr = _rounded(w).reshape(xr.shape[1], -1)
    cr = _rounded(c).reshape(xr.shape[0], -1)
    # float32 sums of exact bfloat16 x bfloat16 products: within float32 round-off of float64.
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(xr.shape[0], -1), xr @ wr, **tol)
    np.testing.assert_allclose(np.asarray(dx).reshape(xr.shape), cr @ wr.T, **tol)
    np.testing.assert_allclose(np.asarray(dw).reshape(wr.shape), xr.T @ cr, **tol)
    # ... and not the float32 products: the operands' rounding shows.
    x64 = np.asarray(x, np.float64).reshape(xr.shape)
    assert np.max(np.abs(np.asarray(y).reshape(xr.shape[0], -1) - x64 @ wr)) > 1e-4


def test_float32_is_flax_own_product_and_other_dtypes_are_refused():
    assert precision.product_fn(None) is None
    assert precision.product_fn("float32") is None
    with pytest.raises(ValueError,
                       match="matmul_dtype must be one of float32, bfloat16; got .float16."):
        precision.product_fn("float16")
    with pytest.raises(ValueError, match="no batch axes"):
        precision.product_fn("bfloat16")(jnp.ones((2, 3)), jnp.ones((2, 3)),
                                         (((1,), (1,)), ((0,), (0,))))


def test_cpu_gradient_products_are_row_major_with_bfloat16_operands():
    """On XLA:CPU every product of the gradient keeps bfloat16 operands and contracts its left
    operand's last axis: the weight gradient runs on the transposed rows (XLA:CPU runs a product
    that contracts its left operand's rows slowly, and widens its operands to float32)."""
    layer = nn.Dense(64, dot_general=precision.product_fn("bfloat16"))
    x = jnp.ones((128, 32))
    params = layer.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, x))), argnums=(0, 1)))
    with precision.gradient_products():
        hlo = grad.lower(params, x).compile().as_text()
    products = [c for c in hlo.split("\n\n") if " dot(" in c]
    # forward, input gradient, weight gradient (in both branches of its conditional)
    assert len(products) == 4, hlo
    for c in products:
        assert re.search(r"dot\([^)]*\), lhs_contracting_dims=\{1\}", c), c
        assert len(re.findall(r"bf16\[[\d,]+\]\{[\d,]+\} parameter", c)) == 2, c


def test_mlp_matmul_dtype():
    x = jax.random.normal(jax.random.key(1), (16, 2))
    for kind in ("sinusoidal", "concat"):
        m32 = MLP(hidden_sizes=(32, 32), time_embedding=kind, time_embed_dim=16)
        m16 = build_model("mlp", hidden_sizes=[32, 32], time_embedding=kind, time_embed_dim=16,
                          matmul_dtype="bfloat16")
        params = m32.init(jax.random.key(0), x, 0.3)
        assert (jax.tree.structure(params)
                == jax.tree.structure(m16.init(jax.random.key(0), x, 0.3)))
        y32, y16 = m32.apply(params, x, 0.3), m16.apply(params, x, 0.3)
        assert y16.dtype == jnp.float32
        err = float(jnp.max(jnp.abs(y16 - y32)))
        assert 0 < err < 0.05 * float(jnp.max(jnp.abs(y32))), (kind, err)
        g32 = jax.grad(lambda p: jnp.sum(m32.apply(p, x, 0.3) ** 2))(params)
        g16 = jax.grad(lambda p: jnp.sum(m16.apply(p, x, 0.3) ** 2))(params)
        for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
            assert b.dtype == jnp.float32
            np.testing.assert_allclose(b, a, rtol=0.1, atol=0.05 * float(jnp.max(jnp.abs(a))))
    with pytest.raises(ValueError,
                       match="matmul_dtype must be one of float32, bfloat16; got 'fp8'"):
        MLP(matmul_dtype="fp8")


def test_outside_gradient_products_every_derivative_is_jaxs_own():
    """Forward mode (jax.linearize, as the likelihood takes it) works, and reverse mode gives
    the written-out gradient up to the cotangent's rounding; the values are the same."""
    layer = nn.Dense(5, dot_general=precision.product_fn("bfloat16"))
    x = jax.random.normal(jax.random.key(0), (6, 3))
    params = layer.init(jax.random.key(1), x)
    f = lambda x: jnp.sin(layer.apply(params, x))  # noqa: E731
    y, jvp = jax.linearize(f, x)
    u = jax.random.normal(jax.random.key(2), x.shape)
    w = _rounded(params["params"]["kernel"])
    z = _rounded(x) @ w + np.asarray(params["params"]["bias"], np.float64)
    np.testing.assert_allclose(y, np.sin(z), rtol=1e-5, atol=1e-6)
    # the tangent of the rounded product: cos(z) * (round(u) w), u rounded as x is
    np.testing.assert_allclose(jvp(u), np.cos(z) * (_rounded(u) @ w), rtol=1e-5, atol=1e-5)
    loss = lambda x: jnp.sum(f(x) ** 2)  # noqa: E731
    own = jax.grad(loss)(x)
    with precision.gradient_products():
        written = jax.grad(loss)(x)
    np.testing.assert_array_equal(jax.jit(loss)(x), loss(x))
    np.testing.assert_allclose(written, own, rtol=0.02, atol=0.02 * float(jnp.max(jnp.abs(own))))
    assert not np.array_equal(np.asarray(written), np.asarray(own))
