"""Products with low-precision operands and float32 results, for flax layers' `dot_general`.

`product_fn(matmul_dtype)` is a drop-in `dot_general` for `nn.Dense` / `nn.DenseGeneral`: both
operands are rounded to `matmul_dtype` (bfloat16), the product accumulates and returns in
float32, and so do the two products of its gradient (the cotangent is rounded to bfloat16 too).
Everything between the products (biases, activations, the loss, the optimizer) stays in the
layer's `dtype`. This is the arithmetic a TPU applies to float32 matmuls at jax's default
precision, and the one bfloat16 matrix units (a TPU's, GPU tensor cores, a CPU's AMX) are built
for.

Against `dtype=bfloat16` (flax's compute dtype): that rounds every activation to bfloat16 and
returns the products in bfloat16, which halves activation memory but, on XLA:CPU, converts
around every elementwise operation; here only the products' operands are rounded, so the
network's values differ from float32 by the rounding of its products' inputs alone (relative
error about 2^-8 per operand, accumulated in float32).

Gradients: jax's own transpose of a product with bfloat16 operands and a float32 result takes
the float32 cotangent against a bfloat16 operand, which XLA runs as a float32 product. Inside
`gradient_products()` (the train step's gradient is taken there) the products differentiate by
a written-out VJP instead, whose two products also take bfloat16 operands (the cotangent rounded)
and whose residuals are the bfloat16 operands, half the memory of float32 ones. A custom VJP has
no forward mode, so everywhere else (sampling, `jax.linearize` for likelihoods, `jacfwd` through
an integrator) the products are jax's own: the same values, every kind of derivative.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

MATMUL_DTYPES = ("float32", "bfloat16")


def _contracted(x_ndim: int, dimension_numbers) -> int:
    """k, where dimension_numbers contract x's last k axes with w's first k, in order, and have
    no batch axes (every nn.Dense and nn.DenseGeneral product); ValueError otherwise."""
    (x_axes, w_axes), (x_batch, w_batch) = dimension_numbers
    k = len(x_axes)
    if (x_batch or w_batch or k == 0 or tuple(x_axes) != tuple(range(x_ndim - k, x_ndim))
            or tuple(w_axes) != tuple(range(k))):
        raise ValueError(
            f"mixed-precision products take a layer's inputs' trailing axes against its "
            f"kernel's leading axes, no batch axes; got dimension_numbers {dimension_numbers}")
    return k


def _product(x, w, k: int):
    """x [..., K...] . w [K..., N...] over the k contracted axes, result in float32."""
    return lax.dot_general(x, w, ((tuple(range(x.ndim - k, x.ndim)), tuple(range(k))), ((), ())),
                           preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_product(x, w, k: int, dtype):
    return _product(x.astype(dtype), w.astype(dtype), k)


def _mixed_forward(x, w, k, dtype):
    xl, wl = x.astype(dtype), w.astype(dtype)
    # Zero-size stand-ins carry the operands' own dtypes to the backward pass.
    return _product(xl, wl, k), (xl, wl, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mixed_backward(k, dtype, residuals, g):
    xl, wl, x_tag, w_tag = residuals
    gl = g.astype(dtype)
    n = wl.ndim - k                                  # the kernel's output axes
    # dx = g . w^T over the output axes: [..., N...] x [K..., N...] -> [..., K...].
    w_out_axes = tuple(range(k, wl.ndim))
    dx = lax.dot_general(gl, wl, ((tuple(range(gl.ndim - n, gl.ndim)), w_out_axes), ((), ())),
                         preferred_element_type=jnp.float32)
    # dw = x^T . g over the rows: [M, K] x [M, N] -> [K, N], reshaped to the kernel's shape.
    x2 = xl.reshape(-1, math.prod(xl.shape[xl.ndim - k:]))
    g2 = gl.reshape(x2.shape[0], -1)
    dw = lax.platform_dependent(x2, g2, cpu=_rows_product_cpu, default=_rows_product)
    return dx.astype(x_tag.dtype), dw.reshape(wl.shape).astype(w_tag.dtype)


def _rows_product(x2, g2):
    """x2^T . g2 over the rows: [M, K] x [M, N] -> [K, N] in float32."""
    return lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _row_major_product(a, b):
    """a [K, M] . b [M, N] -> [K, N] in float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _rows_product_cpu(x2, g2):
    """`_rows_product` on XLA:CPU, as the row-major product of x2's transpose, taken inside a
    conditional whose two branches are that same product.  XLA:CPU runs a product that
    contracts its left operand's rows (the form above) through a slow general kernel, folds a
    transpose next to a product back into that form, and with bfloat16 operands widens them to
    float32 there; a branch is a computation of its own, so inside it the product keeps its
    bfloat16, row-major operands.  The predicate is a constant behind an optimization barrier:
    XLA cannot drop the conditional, and nothing is read or communicated for it."""
    keep = lax.optimization_barrier(jnp.bool_(True))
    return lax.cond(keep, _row_major_product, _row_major_product, x2.T, g2)


_mixed_product.defvjp(_mixed_forward, _mixed_backward)


_traced = threading.local()


@contextlib.contextmanager
def gradient_products():
    """Within (while a program is traced, on this thread): low-precision products differentiate
    by the written-out VJP (reverse mode only; the module's docstring), and so do the U-Net's
    convolutions (`models.convolution`).  The train step takes its gradient here."""
    previous = getattr(_traced, "written_out", False)
    _traced.written_out = True
    try:
        yield
    finally:
        _traced.written_out = previous


def gradients_written_out() -> bool:
    """Whether the program being traced on this thread is inside `gradient_products()`."""
    return getattr(_traced, "written_out", False)


def check_matmul_dtype(matmul_dtype: Any):
    """The dtype of a network's `matmul_dtype` ("float32", "bfloat16", a dtype or None);
    ValueError naming the choices for anything else."""
    if matmul_dtype is None:
        return None
    try:
        dtype = jnp.dtype(matmul_dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be one of {', '.join(MATMUL_DTYPES)}; "
                         f"got {matmul_dtype!r}")
    return dtype


def product_fn(matmul_dtype: Any) -> Callable | None:
    """A `dot_general` for flax's Dense layers whose products take `matmul_dtype` operands and
    return float32, differentiated as the module's docstring says (`gradient_products`); None
    (flax's own product, in the layer's dtype) for None or float32."""
    dtype = check_matmul_dtype(matmul_dtype)
    if dtype is None or dtype == jnp.float32:
        return None

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        del precision, preferred_element_type       # the product's own: float32 accumulation
        k = _contracted(lhs.ndim, dimension_numbers)
        if gradients_written_out():
            return _mixed_product(lhs, rhs, k, dtype)
        return _product(lhs.astype(dtype), rhs.astype(dtype), k)

    return dot_general
