"""Time embeddings and small helpers shared by the networks.

Time convention: t = 0 is noise, t = 1 is data; every embedding takes float times t in [0, 1].
Embeddings are computed in float32 whatever the network's compute dtype: sin(1000 t) in bfloat16
would lose the time resolution the network needs.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowmatch.models import precision

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu(x: jax.Array) -> jax.Array:
    """SELU (Klambauer et al. 2017): scale * x for x > 0, scale * alpha * (exp(x) - 1) below.

    The same function as `jax.nn.selu`, which takes exp(x) - 1 as expm1(x): expm1 is exact to
    a relative ulp near 0, where exp(x) - 1 is exact to an absolute one; in float32 the two
    differ by at most 2.4e-7 (2 ulps of the output near x = -0.5; `tests/test_models.py`), and
    the gradient, scale * alpha * exp(x) below 0, likewise.  XLA:CPU's expm1 costs more than its
    exp; with exp, measured 2026-12-04 on the 2-core CPU (docs/speed.md): rk4 of
    torchcfm's 3 x 256 SELU network, 8 steps, 16.3-16.9 ms instead of 18.7-19.7 ms on 256
    points and 558-571 ms instead of 658-664 ms on 10,000; torchcfm's 64 x 3 train step
    3,213-3,420 steps/s instead of 3,026-3,104.
    """
    negative = SELU_ALPHA * (jnp.exp(jnp.where(x > 0, 0, x)) - 1)
    return SELU_SCALE * jnp.where(x > 0, x, negative)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "selu": selu,  # torchcfm's tutorial MLP (self-normalising; Klambauer et al. 2017)
    "softplus": nn.softplus,
}

TIME_EMBEDDINGS = ("sinusoidal", "fourier")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function called `name`; ValueError listing the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_time_embedding(kind: str) -> None:
    """Raises ValueError unless `kind` names a time embedding."""
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(
            f"unknown time_embedding {kind!r}; choose one of: {', '.join(TIME_EMBEDDINGS)}")


def batch_times(t: jax.Array | float, batch_size: int) -> jax.Array:
    """Returns t as float32 [batch_size]; a scalar t is broadcast, a [batch_size] t kept."""
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
        return jnp.broadcast_to(t, (batch_size,))
    if t.shape != (batch_size,):
        raise ValueError(
            f"t must be a scalar or have shape [batch]=({batch_size},); got shape {t.shape}")
    return t


def class_labels(cond: jax.Array | None, batch_size: int, num_classes: int) -> jax.Array:
    """Returns int32 labels [batch_size] for a class-embedding table of num_classes + 1 rows.

    cond=None means "no label": every example gets the null class, index num_classes (the row
    that classifier-free guidance trains by replacing labels with num_classes).
    """
    if num_classes <= 0:
        raise ValueError(
            "cond was given but the model was built with num_classes=0 (unconditional); "
            "pass cond=None or build the model with num_classes > 0")
    if cond is None:
        return jnp.full((batch_size,), num_classes, jnp.int32)
    cond = jnp.asarray(cond)
    if cond.shape != (batch_size,) or not jnp.issubdtype(cond.dtype, jnp.integer):
        raise ValueError(
            f"cond must be integer class labels of shape [batch]=({batch_size},); "
            f"got shape {cond.shape} and dtype {cond.dtype}")
    return cond.astype(jnp.int32)


def sinusoidal_embedding(t: jax.Array, dim: int, scale: float = 1000.0,
                         max_period: float = 10000.0) -> jax.Array:
    """Transformer-style sinusoidal embedding of times t.

    emb = [sin(scale t w_k), cos(scale t w_k)], w_k = max_period^(-k / half), k < half = dim // 2.
    With scale=1000, t in [0, 1] sees the frequencies a DDPM timestep in 0..1000 would.
    An odd `dim` gets a trailing zero column.

    Args:
      t: [B] float times (a scalar is treated as [1]).
      dim: embedding width.
    Returns:
      [B, dim] float32.
    """
    t = jnp.atleast_1d(jnp.asarray(t, jnp.float32))
    if t.ndim != 1:
        raise ValueError(f"t must have shape [batch]; got shape {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (scale * t)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def sincos_2d_embedding(height: int, width: int, dim: int,
                        max_period: float = 10000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of a height x width grid of tokens (MAE, He et al.
    2022; used unchanged by DiT, Peebles & Xie 2023): not learned, a numpy constant.

    Tokens are row-major, n = i * width + j for row i and column j. With q = dim / 4 and
    w_k = max_period^(-k / q), k < q:
        emb[n] = [sin(j w_k), cos(j w_k), sin(i w_k), cos(i w_k)]   (four blocks of q columns)
    so the first half of the channels encodes the column, the second half the row.

    Returns:
      float32 [height * width, dim]; raises ValueError unless dim is a multiple of 4.
    """
    if dim <= 0 or dim % 4 or height <= 0 or width <= 0:
        raise ValueError(
            f"a 2-D sin-cos embedding needs a positive grid and a width that is a multiple of 4; "
            f"got grid {height}x{width} and dim={dim}")
    quarter = dim // 4
    freqs = max_period ** (-np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    col_args = cols.reshape(-1, 1) * freqs[None, :]
    row_args = rows.reshape(-1, 1) * freqs[None, :]
    emb = np.concatenate([np.sin(col_args), np.cos(col_args), np.sin(row_args),
                          np.cos(row_args)], axis=-1)
    return emb.astype(np.float32)


class FourierFeatures(nn.Module):
    """Gaussian random Fourier features of t: [sin(2 pi t w), cos(2 pi t w)], w ~ N(0, scale^2).

    The frequencies w are a constant, drawn with numpy from `seed` when the module is traced, so
    they are fixed, not trainable, the same for every init, and need no variable collection
    besides "params" (this module has no parameters). An odd `dim` gets a trailing zero column.

    Call: t [B] -> [B, dim] float32.
    """
    dim: int
    scale: float = 16.0
    seed: int = 0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.atleast_1d(jnp.asarray(t, jnp.float32))
        freqs = self.scale * np.random.default_rng(self.seed).standard_normal(self.dim // 2)
        args = (2.0 * np.pi) * t[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
        emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
        if self.dim % 2:
            emb = jnp.pad(emb, ((0, 0), (0, 1)))
        return emb


class TimeEmbedding(nn.Module):
    """DDPM time embedding: features of t (sinusoidal or Fourier, width `dim`), then
    Dense(hidden) -> activation -> Dense(hidden).

    `time_scale` multiplies t in the sinusoidal features: 1000 reproduces DDPM's embedding of
    integer timesteps 0..1000 (frequencies up to 1000 rad per unit t); a smaller scale gives a
    field that varies more slowly in t, which suits few-step ODE samplers.

    `kernel_init` initialises both Dense kernels (flax's default, LeCun normal, unless given;
    DiT uses normal(0.02)).

    Call: t [B] -> [B, hidden] in `dtype` (features in float32, Dense layers compute in `dtype`,
    parameters float32; their products' operands in `matmul_dtype`, as
    `flowmatch.models.precision` describes).
    """
    dim: int
    hidden: int
    kind: str = "sinusoidal"
    activation: str = "silu"
    fourier_scale: float = 16.0
    time_scale: float = 1000.0
    dtype: Any = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.linear.default_kernel_init
    matmul_dtype: Any = "float32"

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        check_time_embedding(self.kind)
        act = get_activation(self.activation)
        product = precision.product_fn(self.matmul_dtype)
        if self.kind == "sinusoidal":
            emb = sinusoidal_embedding(t, self.dim, scale=self.time_scale)
        else:
            emb = FourierFeatures(self.dim, scale=self.fourier_scale)(t)
        emb = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=self.kernel_init,
                       dot_general=product, name="dense_0")(emb)
        return nn.Dense(self.hidden, dtype=self.dtype, kernel_init=self.kernel_init,
                        dot_general=product, name="dense_1")(act(emb))
