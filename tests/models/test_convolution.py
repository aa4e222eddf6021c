"""flowmatch.models.convolution: inside `precision.gradient_products` a convolution in flax's
layout differentiates by a written-out VJP whose gradient convolutions are the ones XLA:CPU runs
through its fast kernel (canonical dimension numbers) even inside a loop, with jax's gradients'
values; jax's own convolution and derivatives everywhere else."""
import json
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs_util import ROOT, simulated_devices_env
from flowmatch.models import UNet, convolution, precision

# (input spatial shape, kernel spatial shape, strides, kernel dilation, padding): 1-D, 2-D and
# 3-D; strides that do and do not divide the input; padding as a string or explicit pairs.
CASES = [
    ((9,), (3,), (1,), (1,), "SAME"),
    ((10,), (4,), (3,), (2,), "VALID"),
    ((8, 8), (3, 3), (1, 1), (1, 1), "SAME"),
    ((8, 8), (3, 3), (2, 2), (1, 1), "SAME"),
    ((9, 7), (1, 1), (2, 2), (1, 1), "VALID"),
    ((18, 18), (3, 3), (2, 2), (1, 1), "VALID"),     # the last input row meets no output
    ((9, 7), (4, 2), (3, 1), (2, 1), ((1, 0), (0, 1))),
    ((6, 5, 4), (3, 2, 3), (2, 1, 1), (1, 1, 1), "SAME"),
]


def _numbers(ndim):
    spatial = "DHW"[3 - (ndim - 2):]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _operands(in_shape, kernel_shape, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (3, *in_shape, 5))
    w = jax.random.normal(kw, (*kernel_shape, 5, 4))
    return x, w


def _conv(fn, strides, dilation, padding, **kw):
    def conv(x, w):
        numbers = lax.conv_dimension_numbers(x.shape, w.shape, _numbers(x.ndim))
        return fn(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers, **kw)
    return conv


@pytest.mark.parametrize("in_shape,kernel_shape,strides,dilation,padding", CASES)
def test_written_out_gradients_equal_jax_gradients(in_shape, kernel_shape, strides, dilation,
                                                   padding):
    x, w = _operands(in_shape, kernel_shape)
    ours = _conv(convolution.conv_general_dilated, strides, dilation, padding)
    ref = _conv(lax.conv_general_dilated, strides, dilation, padding)
    cot = jax.random.normal(jax.random.key(7), ref(x, w).shape)
    with precision.gradient_products():
        jaxpr = str(jax.make_jaxpr(jax.vjp, static_argnums=0)(ours, x, w))
        y, vjp = jax.vjp(ours, x, w)
    assert "custom_vjp_call" in jaxpr                  # the written-out VJP was taken
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    np.testing.assert_array_equal(y, y_ref)
    for got, want in zip(jax.jit(vjp)(cot), vjp_ref(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("in_shape,kernel_shape,strides,dilation,padding", CASES)
def test_the_other_backends_branch_is_jax_transpose(in_shape, kernel_shape, strides, dilation,
                                                    padding):
    """Off CPU the VJP is jax's own transposes (`_jax_gradients`); both branches agree."""
    x, w = _operands(in_shape, kernel_shape, seed=1)
    nd = len(in_shape)
    if isinstance(padding, str):
        dilated = [d * (k - 1) + 1 for k, d in zip(kernel_shape, dilation)]
        padding = lax.padtype_to_pads(in_shape, dilated, strides, padding)
    spec = (tuple(strides), tuple(map(tuple, padding)), tuple(dilation), None, None)
    y = convolution._conv(x, w, spec)
    g = jax.random.normal(jax.random.key(3), y.shape)
    ours = convolution._canonical_gradients(x, w, g, spec)
    theirs = convolution._jax_gradients(x, w, g, spec)
    assert len(ours) == len(theirs) == 2 and nd == x.ndim - 2
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("kwargs,padding", [
    (dict(feature_group_count=5), "SAME"),             # groups: jax's own
    (dict(lhs_dilation=(2, 2)), ((1, 1), (1, 1))),     # input dilation: jax's own
])
def test_convolutions_it_does_not_write_out_keep_jax_derivatives(kwargs, padding):
    x, _ = _operands((6, 6), (3, 3))
    groups = kwargs.get("feature_group_count", 1)
    w = jax.random.normal(jax.random.key(4), (3, 3, 5 // groups, 5))
    ours = _conv(convolution.conv_general_dilated, (1, 1), (1, 1), padding, **kwargs)
    ref = _conv(lax.conv_general_dilated, (1, 1), (1, 1), padding, **kwargs)
    with precision.gradient_products():
        jaxpr = str(jax.make_jaxpr(jax.vjp, static_argnums=0)(ours, x, w))
        y, vjp = jax.vjp(ours, x, w)
    assert "custom_vjp_call" not in jaxpr
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    np.testing.assert_array_equal(y, y_ref)
    for got, want in zip(vjp(y), vjp_ref(y)):
        np.testing.assert_array_equal(got, want)


def test_padding_beyond_the_kernel_reach_keeps_jax_derivatives():
    """An output that sees padding only would need the cotangent cropped: jax's own VJP."""
    x, w = _operands((8, 8), (3, 3))
    padding = ((0, 4), (1, 1))
    ours = _conv(convolution.conv_general_dilated, (1, 1), (1, 1), padding)
    with precision.gradient_products():
        jaxpr = str(jax.make_jaxpr(jax.vjp, static_argnums=0)(ours, x, w))
    assert "custom_vjp_call" not in jaxpr


def _small_unet():
    model = UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                 dropout=0.0, num_groups=4)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1), minval=-1, maxval=1)
    t = jnp.linspace(0.1, 0.9, 4)
    params = model.init(jax.random.key(1), x, t)["params"]
    return model, params, x, t


def _loss(model, x, t):
    return lambda p: jnp.mean((model.apply({"params": p}, x, t) - x) ** 2)


def _scanned_gradient_steps(model, params, x, t, context: bool):
    """Three gradient steps of the U-Net under lax.scan, compiled for CPU: (its program's text,
    the parameters after the steps)."""
    def steps(p):
        def body(p, _):
            if context:
                with precision.gradient_products():
                    g = jax.grad(_loss(model, x, t))(p)
            else:
                g = jax.grad(_loss(model, x, t))(p)
            return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), None
        return lax.scan(body, p, None, length=3)[0]
    compiled = jax.jit(steps).lower(params).compile()
    return compiled.as_text(), compiled(params)


def _convolution_forms(hlo: str) -> set:
    return set(re.findall(r"convolution\([^)]*\).*?dim_labels=(\S+?),", hlo))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's canonical convolutions")
def test_unet_gradient_in_a_loop_runs_canonical_convolutions_with_jax_values():
    """The property that makes a scanned U-Net step as fast as a plain one on CPU: every
    convolution of its gradient inside the loop is input [N, H, W, C], kernel [H, W, I, O],
    output [N, H, W, C] (`b01f_01io->b01f`).  jax's own gradient in the same loop is not; both
    loops end at the same parameters."""
    model, params, x, t = _small_unet()
    ours, after = _scanned_gradient_steps(model, params, x, t, context=True)
    theirs, after_ref = _scanned_gradient_steps(model, params, x, t, context=False)
    assert _convolution_forms(ours) == {"b01f_01io->b01f"}
    assert _convolution_forms(theirs) - {"b01f_01io->b01f"}   # what the written-out VJP replaces
    moved = 0.0
    for a, b, p in zip(jax.tree.leaves(after), jax.tree.leaves(after_ref), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(jnp.abs(b - p).max()))
    assert moved > 1e-3                                       # the steps did change them


def test_forward_mode_outside_the_context():
    """A custom VJP has no forward mode: outside `gradient_products` the convolution is jax's
    own, so jax.jvp and jax.linearize (likelihoods) work through it."""
    x, w = _operands((6, 6), (3, 3))
    conv = _conv(convolution.conv_general_dilated, (2, 2), (1, 1), "SAME")
    ref = _conv(lax.conv_general_dilated, (2, 2), (1, 1), "SAME")
    tx, tw = jnp.ones_like(x), jnp.full_like(w, 0.5)
    for got, want in zip(jax.jvp(conv, (x, w), (tx, tw)), jax.jvp(ref, (x, w), (tx, tw))):
        np.testing.assert_array_equal(got, want)


def test_a_flax_conv_with_it_has_flax_parameters_and_values():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    layer = nn.Conv(4, (3, 3), strides=(2, 2))
    ours = nn.Conv(4, (3, 3), strides=(2, 2),
                   conv_general_dilated=convolution.conv_general_dilated)
    p = layer.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x))
    with precision.gradient_products():
        np.testing.assert_array_equal(layer.apply(p, x), ours.apply(p, x))


# Two scanned gradient steps of a small U-Net, its batch of 16 on one device and split over a
# data mesh of 8 simulated devices (the train step's data parallelism): the written-out kernel
# gradient contracts the batch, which the mesh shards.
_MESH_CHILD = """
import json, re, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flowmatch.models import UNet, precision
model = UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
             dropout=0.0, num_groups=4)
x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1), minval=-1, maxval=1)
t = jnp.linspace(0.05, 0.95, 16)
params = model.init(jax.random.key(1), x, t)["params"]
def loss(p, x, t):
    return jnp.mean((model.apply({"params": p}, x, t) - x) ** 2)
def steps(p, x, t):
    def body(p, _):
        with precision.gradient_products():
            g = jax.grad(loss)(p, x, t)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), None
    return jax.lax.scan(body, p, None, length=2)[0]
one = jax.jit(steps)(params, x, t)
mesh = Mesh(np.array(jax.devices()), ("data",))
rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
sharded = jax.jit(steps, out_shardings=same)
args = (jax.device_put(params, same), jax.device_put(x, rows), jax.device_put(t, rows))
eight = sharded(*args)
hlo = sharded.lower(*args).compile().as_text()
diff = lambda a, b: max(float(jnp.max(jnp.abs(u - v))) for u, v in
                        zip(jax.tree.leaves(a), jax.tree.leaves(b)))
print(json.dumps({"devices": jax.device_count(), "difference": diff(one, eight),
                  "moved": diff(one, params),
                  "forms": sorted(set(re.findall(r"convolution\\([^)]*\\).*?dim_labels=(\\S+?),", hlo)))}))
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="simulated CPU devices")
def test_unet_steps_on_a_data_mesh_of_eight_devices_match_one_device():
    proc = subprocess.run([sys.executable, "-c", _MESH_CHILD], cwd=ROOT,
                          env=simulated_devices_env(8), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8
    assert r["moved"] > 1e-3 and r["difference"] < 1e-6
    assert r["forms"] == ["b01f_01io->b01f"]
