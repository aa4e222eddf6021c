"""Convolutions whose gradient XLA:CPU runs through its fast kernel inside loops too.

XLA:CPU runs a convolution through Eigen's kernel only in the canonical form: input
[batch, spatial..., feature], kernel [spatial..., in, out], output [batch, spatial..., feature],
all row-major. Any other form is emitted as a generic loop nest, tens of times slower. A flax
`nn.Conv`'s convolution is canonical, but jax's transpose rules write the two convolutions of
its gradient in other forms: the input gradient takes the kernel with its feature axes swapped
(`01oi`), the kernel gradient exchanges batch and feature (`f01b_i01o->01bf`). XLA's pass that
rewrites such a convolution as transposes around a canonical one (`ConvCanonicalization`) visits
the entry computation only, so a gradient taken inside a loop keeps the slow forms: train steps
under `lax.scan` ran configs/digits.py's U-Net step in 216.5 ms against 51.7 ms as one jitted
step (2 CPU cores, one run; docs/speed.md).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` in flax's `nn.Conv`
(`conv_general_dilated=`). Inside `precision.gradient_products()` (the train step takes its
gradient there) a convolution in flax's layout differentiates by a written-out VJP: on CPU its
two gradient convolutions are canonical, with the transposes around them written out, and on
other backends they are jax's own (`lax.platform_dependent`); the values are the same sums.
A custom VJP has no forward mode, so outside that context (sampling, `jax.linearize` for
likelihoods) the convolution is jax's own.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from flowmatch.models import precision as precision_lib


def _canonical_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """[batch, spatial..., feature] input and output, [spatial..., in, out] kernel."""
    spatial = tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1) + spatial,
                                    rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
                                    out_spec=(0, ndim - 1) + spatial)


def _pairs(value, n: int, name: str) -> tuple:
    value = (1,) * n if value is None else tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} {value} for {n} spatial axes")
    return value


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, spec):
    strides, pads, dilation, prec, out_type = spec
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                    dimension_numbers=_canonical_numbers(x.ndim),
                                    precision=prec, preferred_element_type=out_type)


def _conv_forward(x, w, spec):
    return _conv(x, w, spec), (x, w)


def _conv_backward(spec, residuals, g):
    x, w = residuals
    dx, dw = lax.platform_dependent(
        x, w, g, cpu=functools.partial(_canonical_gradients, spec=spec),
        default=functools.partial(_jax_gradients, spec=spec))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def _jax_gradients(x, w, g, spec):
    """jax's own transposes of the convolution."""
    strides, pads, dilation, prec, out_type = spec
    numbers = _canonical_numbers(x.ndim)
    conv = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=pads,
                             rhs_dilation=dilation, dimension_numbers=numbers, precision=prec,
                             preferred_element_type=out_type)
    g = g.astype(jax.eval_shape(conv, x, w).dtype)
    (dx,) = jax.linear_transpose(lambda v: conv(v, w), x)(g)
    (dw,) = jax.linear_transpose(lambda v: conv(x, v), w)(g)
    return dx, dw


def _gradient_pads(spec, in_sizes, kernel_sizes, out_sizes):
    """Per spatial axis, for the forward pass y[p] = sum_a xpad[s p + d a] w[a] (stride s, kernel
    dilation d, kernel size k, input size n padded by (lo, hi), P outputs): the padding of the
    input gradient's convolution (the cotangent dilated by s against the flipped kernel),
    (d (k - 1) - lo, n - s (P - 1) - 1 + lo); and the padding of the input in the kernel
    gradient's convolution (the cotangent dilated by s as its kernel, at stride d),
    (lo, d (k - 1) + s (P - 1) + 1 - n - lo), whose upper end, when negative, counts trailing
    input positions that meet no output (cropped instead)."""
    strides, pads, dilation = spec[:3]
    input_pads, kernel_pads = [], []
    for n, k, p, s, d, (lo, _) in zip(in_sizes, kernel_sizes, out_sizes, strides, dilation, pads):
        input_pads.append((d * (k - 1) - lo, n - s * (p - 1) - 1 + lo))
        kernel_pads.append((lo, d * (k - 1) + s * (p - 1) + 1 - n - lo))
    return input_pads, kernel_pads


def _canonical_gradients(x, w, g, spec):
    """The two gradient convolutions in XLA:CPU's canonical form: dx = g (dilated by the stride)
    against the flipped kernel with its feature axes exchanged; dw = the input with batch and
    feature exchanged ([in, spatial..., batch]) against the cotangent as a kernel
    ([spatial..., batch, out]), then [in, spatial..., out] -> [spatial..., in, out]."""
    strides, pads, dilation, prec, _ = spec
    nd = x.ndim - 2
    spatial = tuple(range(1, nd + 1))
    numbers = _canonical_numbers(x.ndim)
    input_pads, kernel_pads = _gradient_pads(spec, x.shape[1:-1], w.shape[:-2], g.shape[1:-1])
    g = g.astype(x.dtype)
    w_t = jnp.flip(w, tuple(range(nd))).swapaxes(-1, -2)
    dx = lax.conv_general_dilated(g, w_t, (1,) * nd, input_pads, lhs_dilation=strides,
                                  rhs_dilation=dilation, dimension_numbers=numbers,
                                  precision=prec)
    crop = tuple(slice(None) if hi >= 0 else slice(0, n + hi)
                 for n, (_, hi) in zip(x.shape[1:-1], kernel_pads))
    x_t = x[(slice(None),) + crop].transpose((x.ndim - 1,) + spatial + (0,))
    g_t = g.transpose(spatial + (0, x.ndim - 1))
    dw = lax.conv_general_dilated(x_t, g_t, dilation, [(lo, max(hi, 0)) for lo, hi in kernel_pads],
                                  rhs_dilation=strides, dimension_numbers=numbers,
                                  precision=prec)
    return dx, dw.transpose(spatial + (0, x.ndim - 1))


def _written_out(x, w, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count, batch_group_count, precision_, preferred_element_type):
    """The static spec for `_conv` if this convolution is one it writes out (flax's layout, no
    input dilation or groups, non-negative padding whose gradients pad non-negatively too), else
    None."""
    nd = x.ndim - 2
    if nd < 1 or w.ndim != x.ndim or feature_group_count != 1 or batch_group_count != 1:
        return None
    if dimension_numbers is None:
        return None
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers)
    if numbers != _canonical_numbers(x.ndim):
        return None
    strides = _pairs(strides, nd, "window_strides")
    dilation = _pairs(rhs_dilation, nd, "rhs_dilation")
    if any(v != 1 for v in _pairs(lhs_dilation, nd, "lhs_dilation")):
        return None
    if isinstance(padding, str):
        dilated = [d * (k - 1) + 1 for k, d in zip(w.shape[:-2], dilation)]
        padding = lax.padtype_to_pads(x.shape[1:-1], dilated, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != nd or any(lo < 0 or hi < 0 for lo, hi in pads):
        return None
    spec = (strides, pads, dilation, precision_, preferred_element_type)
    out = jax.eval_shape(functools.partial(_conv, spec=spec), x, w)
    input_pads, _ = _gradient_pads(spec, x.shape[1:-1], w.shape[:-2], out.shape[1:-1])
    if any(lo < 0 or hi < 0 for lo, hi in input_pads):
        return None
    return spec


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, differentiated as the module's docstring says inside
    `precision.gradient_products()`; for flax's `nn.Conv(conv_general_dilated=...)`."""
    if precision_lib.gradients_written_out():
        spec = _written_out(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count, batch_group_count, precision,
                            preferred_element_type)
        if spec is not None:
            return _conv(lhs, rhs, spec)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)

