"""Diffusion transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers")
as a velocity field f(x, t, cond) for images x [B, H, W, C] (NHWC); t = 0 noise, t = 1 data.
SiT (Ma et al. 2024) trains this same network with flow matching.

Layout (D = width, p = patch_size, T = (H / p)(W / p) tokens, row-major over patches):
  patchify      x -> [B, T, p*p*C];  patch_embed (a linear map of each patch) -> [B, T, D]
                + fixed 2-D sin-cos position embedding (embeddings.sincos_2d_embedding)
  condition     c = time_embed(t) (+ class_embed(label))                             [B, D]
  blocks_i      adaLN-Zero: (shift, scale, gate) for attention and MLP = Dense(SiLU(c))
                  x = x + gate_a * attn(LN(x) (1 + scale_a) + shift_a)
                  x = x + gate_m * mlp(LN(x) (1 + scale_m) + shift_m)
                LN without affine parameters (eps 1e-6); attention through
                jax.nn.dot_product_attention; MLP D -> mlp_ratio D -> D with tanh-GELU
  final_layer   Dense(LN(x) (1 + scale) + shift) -> [B, T, p*p*out];  unpatchify
Initialisation as in DiT: Xavier-uniform kernels (the patch embedding as a linear map of the
flattened patch), zero biases, time MLP and class table normal(0.02), every adaLN modulation and
the output layer zero: at init every block is the identity and the network outputs exactly 0.

Parameter paths (i < depth; N heads of width d = D / N; K classes; F = time_freq_dim) and the
logical axes a sharding rule can map (embed -> fsdp, heads / mlp -> tensor); PARAM_AXES holds
the same table for code. Biases take the last axes of their kernel.
  patch_embed/kernel                   [p*p*C, D]       (None, embed)
  time_embed/dense_0/kernel            [F, D]           (None, embed)
  time_embed/dense_1/kernel            [D, D]           (None, embed)
  class_embed/embedding                [K + 1, D]       (None, embed)
  blocks_i/adaLN_modulation/kernel     [D, 6 D]         (embed, None)
  blocks_i/attn/qkv/kernel             [D, 3, N, d]     (embed, None, heads, None)
  blocks_i/attn/{q,k}_norm/scale       [d]              (None,)           (qk_norm only)
  blocks_i/attn/proj/kernel            [N, d, D]        (heads, None, embed)
  blocks_i/mlp/fc1/kernel              [D, mlp_ratio D] (embed, mlp)
  blocks_i/mlp/fc2/kernel              [mlp_ratio D, D] (mlp, embed)
  final_layer/adaLN_modulation/kernel  [D, 2 D]         (embed, None)
  final_layer/linear/kernel            [D, p*p*out]     (embed, None)
With scan_blocks, blocks_i/X becomes blocks/X with a leading [depth] axis (logical "layers").

Published sizes (DiT Table 4, 256x256 ImageNet: latents [32, 32, 4], 1,000 classes, the
paper's models predict 8 channels, noise and a learned variance): S/2 33M, B/2 130M, L/2 458M,
XL/2 675M parameters; XL/2 118.6 GFLOPs per image, counting a multiply-add as ONE flop
(XLA's cost analysis counts two). tests/models/test_dit.py checks both.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowmatch.models import precision
from flowmatch.models.embeddings import (TimeEmbedding, batch_times, class_labels,
                                         sincos_2d_embedding)

# (width, depth, num_heads) of DiT Table 1; patch sizes of the paper's models.
DIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
DIT_PATCH_SIZES = (2, 4, 8)

# remat name -> the jax.checkpoint (nn.remat) policy of each block:
#   none: no rematerialisation, the backward pass keeps every residual;
#   full: jax.checkpoint_policies.nothing_saveable: keep each block's input, recompute the rest;
#   dots: dots_with_no_batch_dims_saveable: keep the Dense matmuls' outputs, recompute the
#         element-wise ops and the attention (whose matmuls have batch dimensions).
# XLA on CPU drops remat (it removes the optimization barriers and merges the recomputation
# with the forward pass): the choice matters on GPU and TPU only.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

LN_EPS = 1e-6
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_normal_002 = nn.initializers.normal(0.02)

# (regex over "a/b/c" parameter paths, logical axes); the table of the module docstring.
# Block rules are relative to a block: "blocks_{i}/" (a Python loop over blocks) or "blocks/"
# (scan_blocks, where every block parameter has a leading [depth] axis, logical axis "layers").
BLOCK_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"adaLN_modulation/kernel", ("embed", None)),
    (r"adaLN_modulation/bias", (None,)),
    (r"attn/qkv/kernel", ("embed", None, "heads", None)),
    (r"attn/qkv/bias", (None, "heads", None)),
    (r"attn/[qk]_norm/scale", (None,)),
    (r"attn/proj/kernel", ("heads", None, "embed")),
    (r"(attn/proj|mlp/fc2)/bias", ("embed",)),
    (r"mlp/fc1/kernel", ("embed", "mlp")),
    (r"mlp/fc1/bias", ("mlp",)),
    (r"mlp/fc2/kernel", ("mlp", "embed")),
)
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"patch_embed/kernel", (None, "embed")),
    (r"time_embed/dense_\d/kernel", (None, "embed")),
    (r"(patch_embed|time_embed/dense_\d)/bias", ("embed",)),
    (r"class_embed/embedding", (None, "embed")),
    (r"final_layer/adaLN_modulation/kernel", ("embed", None)),
    (r"final_layer/linear/kernel", ("embed", None)),
    (r"final_layer/(adaLN_modulation|linear)/bias", (None,)),
) + tuple((r"blocks_\d+/" + p, a) for p, a in BLOCK_AXES) + tuple(
    (r"blocks/" + p, ("layers",) + a) for p, a in BLOCK_AXES)


def param_logical_axes(params: Any) -> Any:
    """The logical axes of each parameter of a DiT (PARAM_AXES), as a pytree like `params`.

    Raises ValueError naming a parameter that no rule, or more than one, matches.
    """
    def axes(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        hits = [a for pattern, a in PARAM_AXES if re.fullmatch(pattern, name)]
        if len(hits) != 1 or len(hits[0]) != len(leaf.shape):
            raise ValueError(f"PARAM_AXES has {len(hits)} rule(s) for {name} {leaf.shape}: {hits}")
        return hits[0]
    return jax.tree_util.tree_map_with_path(axes, params)


def dit_preset(name: str) -> dict[str, int]:
    """The size fields of a published DiT: dit_preset("B/2") -> dict(width=768, depth=12,
    num_heads=12, patch_size=2). Sizes S, B, L, XL; patch sizes 2, 4, 8."""
    size, _, patch = str(name).partition("/")
    if size not in DIT_PRESETS or not patch.isdigit() or int(patch) not in DIT_PATCH_SIZES:
        names = ", ".join(f"{s}/{p}" for s in DIT_PRESETS for p in DIT_PATCH_SIZES)
        raise ValueError(f"unknown DiT preset {name!r}; choose one of: {names}")
    width, depth, num_heads = DIT_PRESETS[size]
    return dict(width=width, depth=depth, num_heads=num_heads, patch_size=int(patch))


class MemoryEstimate(NamedTuple):
    """Bytes per chip of one training step (an ESTIMATE: XLA's buffer assignment decides)."""
    params: int        # float32 parameters, split over the fsdp devices
    optimizer: int     # AdamW's two float32 moments
    ema: int           # one float32 EMA copy
    grads: int         # float32 gradients (reduce-scattered over the fsdp devices)
    activations: int   # what the backward pass keeps, for batch_per_chip examples

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.ema + self.grads + self.activations


def activation_bytes_per_example(width: int, depth: int, num_heads: int, tokens: int,
                                 mlp_ratio: float = 4.0, remat: str = "none",
                                 compute_bytes: int = 4) -> int:
    """Bytes that one example's activations hold for the backward pass: an ESTIMATE, counted
    from the residuals JAX's autodiff keeps (jax.ad_checkpoint.print_saved_residuals) before
    XLA fuses element-wise ops, so an upper bound on what XLA keeps.

    Per block, with T tokens, D = width, M = mlp hidden width, N heads (elements):
      "none": T (14 D + 6 M) + 2 N T^2  (LN and modulate 8 D, q k v 3 D, attention output and
              projection 2 D, fc2 output D; fc1 output and tanh-GELU's terms 6 M; the softmax's
              exp and quotient per head); blocks' small [B, D] terms are left out;
      "full": T D, each block's input; "dots": T (6 D + M), the Dense outputs and the input.
    Rematerialised variants also hold one block's "none" set while it is recomputed.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat {remat!r}; choose one of: {', '.join(REMAT_POLICIES)}")
    hidden = int(mlp_ratio * width)
    full_block = tokens * (14 * width + 6 * hidden) + 2 * num_heads * tokens ** 2
    kept = {"none": full_block, "full": tokens * width,
            "dots": tokens * (6 * width + hidden)}[remat]
    transient = 0 if remat == "none" else full_block
    return compute_bytes * (depth * kept + transient)


@functools.lru_cache(maxsize=None)
def _param_count(preset: str, image_size: int, channels: int, num_classes: int) -> int:
    """Parameters of DiT `preset` on [image_size, image_size, channels] (jax.eval_shape)."""
    # scan_blocks: the same parameters (stacked), one block traced instead of depth.
    model = DiT(**dit_preset(preset), num_classes=num_classes, scan_blocks=True)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


def memory_estimate(preset: str, batch_per_chip: int, fsdp: int = 1, remat: str = "none", *,
                    image_size: int = 32, channels: int = 4, num_classes: int = 1000,
                    compute_bytes: int = 4) -> MemoryEstimate:
    """Per-chip bytes of training DiT `preset` (e.g. "XL/2") on [image_size, image_size,
    channels] inputs, parameters and optimizer state split over `fsdp` chips. An ESTIMATE.

    DiT-XL/2 on 256x256 ImageNet latents (32x32x4), GiB per chip (bytes / 2^30):
      float32 state: params 2.51, AdamW 5.03, EMA 2.51, grads 2.51 = 12.6 (1.57 with fsdp=8);
      activations per example, float32: 1.39 (remat none), 0.080 (full), 0.36 (dots);
      so a 16 GiB chip with fsdp=8 fits about 10 examples without remat, 40 with "dots" and
      180 with "full", before XLA's own workspace (bfloat16 compute, compute_bytes=2, about
      halves the activations).
    Checked against XLA (CPU, float32, no remat: compiled grad's memory_analysis, the change
    per block and example): XL/2 33 MB against the 53 MB counted here, B/2 24 to 30 MB against
    36. XLA on CPU cannot check the rest: it removes remat's optimization barriers and CSEs the
    recomputation away (the same temp bytes for every policy), and computes bfloat16 in float32.
    """
    sizes = dit_preset(preset)
    if batch_per_chip <= 0 or fsdp <= 0:
        raise ValueError(f"need batch_per_chip > 0 and fsdp > 0; got {batch_per_chip}, {fsdp}")
    count = _param_count(preset, image_size, channels, num_classes)
    state = 4 * -(-count // fsdp)
    tokens = (image_size // sizes["patch_size"]) ** 2
    act = activation_bytes_per_example(sizes["width"], sizes["depth"], sizes["num_heads"],
                                       tokens, remat=remat, compute_bytes=compute_bytes)
    return MemoryEstimate(params=state, optimizer=2 * state, ema=state, grads=state,
                          activations=batch_per_chip * act)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C]; tokens row-major, each patch flattened (row,
    column, channel)."""
    batch, height, width, channels = x.shape
    p = patch_size
    x = x.reshape(batch, height // p, p, width // p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """The inverse of patchify: [B, (H/p)(W/p), p*p*C] -> [B, H, W, C]."""
    batch, _, dim = tokens.shape
    p = patch_size
    channels = dim // (p * p)
    x = tokens.reshape(batch, height // p, width // p, p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, channels)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x (1 + scale) + shift; x [B, T, D], shift and scale [B, 1, D]."""
    return x * (1 + scale) + shift


def _layer_norm(x: jax.Array, dtype: Any) -> jax.Array:
    """LayerNorm over the last axis without affine parameters (adaLN supplies them)."""
    return nn.LayerNorm(epsilon=LN_EPS, use_bias=False, use_scale=False, dtype=dtype)(x)


# attention: "auto" (cuDNN's fused kernel where it applies, else jax's choice), "xla", "cudnn".
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _cudnn_may_apply(q: jax.Array) -> bool:
    """Whether cuDNN's fused attention is worth trying for q [B, T, N, d]: a GPU backend,
    bfloat16 or float16, d a multiple of 8 up to 128 (the kernel's limits; jax checks the rest
    when it traces the call)."""
    d = q.shape[-1]
    return (jax.default_backend() == "gpu" and q.dtype in _CUDNN_DTYPES and d % 8 == 0
            and d <= 128)


def dot_product_attention(q, k, v, implementation: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for q, k, v [B, T, N, d] through jax.nn.dot_product_attention.

    implementation "auto": cuDNN's fused (flash) attention where it applies (`_cudnn_may_apply`;
    should jax refuse it while tracing, e.g. no cuDNN or a ROCm GPU, the next choice), else
    jax's own choice (implementation=None: XLA's softmax(q k^T) v on CPU and, in jax 0.11.2,
    on GPUs too, where it materialises the [T, T] scores).  On one H200, DiT-B/2 at 64x64 (1,024
    tokens, bfloat16, batch 32): a train step 54.8 ms with cuDNN's kernel against 101.9 ms with
    XLA's (docs/speed.md).  "xla" / "cudnn": that implementation (jax raises if cuDNN's cannot
    be used).
    """
    if implementation == "auto":
        if _cudnn_may_apply(q):
            try:
                return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not usable here: jax's own choice below
        return jax.nn.dot_product_attention(q, k, v, implementation=None)
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d)) v over the T tokens
    (`dot_product_attention` with `implementation`). With qk_norm, q and k are RMS-normalised
    per head (learned scale [d]) before the product.

    Call: x [B, T, D] -> [B, T, D].
    """
    num_heads: int
    qk_norm: bool = False
    dtype: Any = jnp.float32
    matmul_dtype: Any = "float32"
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        product = precision.product_fn(self.matmul_dtype)
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), kernel_init=_xavier,
                              dtype=self.dtype, dot_general=product,
                              name="qkv")(x)                         # [B, T, 3, N, d]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]           # [B, T, N, d]
        if self.qk_norm:
            q = nn.RMSNorm(epsilon=LN_EPS, dtype=self.dtype, name="q_norm")(q)
            k = nn.RMSNorm(epsilon=LN_EPS, dtype=self.dtype, name="k_norm")(k)
        h = dot_product_attention(q, k, v, self.implementation)
        return nn.DenseGeneral(width, axis=(-2, -1), kernel_init=_xavier, dtype=self.dtype,
                               dot_general=product, name="proj")(h)


class MLPBlock(nn.Module):
    """fc1 (D -> hidden) -> GELU (tanh approximation, as DiT) -> dropout -> fc2 (hidden -> D).

    Call: x [B, T, D] -> [B, T, D].
    """
    hidden: int
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Any = jnp.float32
    matmul_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        product = precision.product_fn(self.matmul_dtype)
        h = nn.Dense(self.hidden, kernel_init=_xavier, dtype=self.dtype, dot_general=product,
                     name="fc1")(x)
        h = nn.Dropout(self.dropout, deterministic=self.deterministic)(nn.gelu(h, approximate=True))
        return nn.Dense(x.shape[-1], kernel_init=_xavier, dtype=self.dtype, dot_general=product,
                        name="fc2")(h)


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (DiT section 3.2): shift, scale and gate
    of both branches come from Dense(SiLU(c)), initialised at zero, so the block starts as the
    identity. Dropout (rate `dropout`, off when `deterministic`) acts on the attention output
    and on the MLP's hidden activations.

    Call: (x [B, T, D], c [B, D]) -> [B, T, D].
    """
    num_heads: int
    mlp_hidden: int
    qk_norm: bool = False
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Any = jnp.float32
    matmul_dtype: Any = "float32"
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        width = x.shape[-1]
        mod = nn.Dense(6 * width, kernel_init=_zeros, dtype=self.dtype,
                       dot_general=precision.product_fn(self.matmul_dtype),
                       name="adaLN_modulation")(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod[:, None, :], 6, -1)
        h = Attention(self.num_heads, self.qk_norm, self.dtype, self.matmul_dtype, self.attention,
                      name="attn")(
            modulate(_layer_norm(x, self.dtype), shift_a, scale_a))
        x = x + gate_a * nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
        h = MLPBlock(self.mlp_hidden, self.dropout, self.deterministic, self.dtype,
                     self.matmul_dtype, name="mlp")(
            modulate(_layer_norm(x, self.dtype), shift_m, scale_m))
        return x + gate_m * h


class FinalLayer(nn.Module):
    """LayerNorm without affine, shift and scale from Dense(SiLU(c)), then a linear map to
    `features` per token; both Dense layers start at zero (the network's output is 0 at init).

    Call: (x [B, T, D], c [B, D]) -> [B, T, features].
    """
    features: int
    dtype: Any = jnp.float32
    matmul_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        product = precision.product_fn(self.matmul_dtype)
        mod = nn.Dense(2 * x.shape[-1], kernel_init=_zeros, dtype=self.dtype, dot_general=product,
                       name="adaLN_modulation")(nn.silu(c))
        shift, scale = jnp.split(mod[:, None, :], 2, -1)
        h = modulate(_layer_norm(x, self.dtype), shift, scale)
        return nn.Dense(self.features, kernel_init=_zeros, dtype=self.dtype, dot_general=product,
                        name="linear")(h)


class DiT(nn.Module):
    """Diffusion transformer for images x: [B, H, W, C] (NHWC, values in [-1, 1]).

    Fields:
      width, depth, num_heads: token width D, number of blocks, attention heads (D / num_heads
        per head); dit_preset("XL/2") gives the published sizes.
      patch_size: p; H and W must be multiples of p (checked on the input).
      mlp_ratio: MLP hidden width = int(mlp_ratio * D).
      qk_norm: RMS-normalise per-head queries and keys (off in DiT; steadies large models).
      dropout: rate in every block (active only with train=True, rngs={"dropout": k}).
      num_classes: 0 = unconditional; else labels in [0, num_classes] where num_classes is the
        null class (used for cond=None and classifier-free guidance dropout).
      time_freq_dim: sinusoidal features of t (DiT: 256) fed to the time MLP (-> D).
      time_scale: t in [0, 1] is multiplied by this in the features (1000: DDPM timesteps).
      out_channels: output channels; None means C (same as the input).
      remat: "none" | "full" | "dots", rematerialisation of each block (REMAT_POLICIES).
      scan_blocks: run the blocks as one nn.scan (parameters blocks/... stacked on a leading
        [depth] axis) instead of a Python loop (blocks_{i}/...): the same function, a program
        compiled once per block instead of depth times (faster compiles for deep models).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, output is float32.
      matmul_dtype: "bfloat16" rounds the operands of every Dense product (patch embedding,
        time embedding, attention projections, MLPs, adaLN, final layer) to bfloat16 and keeps
        their results in float32 (`flowmatch.models.precision`); attention's own q.k and
        softmax.v products stay in `dtype`.
      attention: "auto" | "xla" | "cudnn", the attention kernel (`dot_product_attention`;
        "auto": cuDNN's fused kernel on a GPU in bfloat16 / float16, else jax's choice).

    Call: (x [B, H, W, C], t [B] or scalar in [0, 1], cond [B] int32 or None, train)
      -> float32 [B, H, W, out_channels or C].
    """
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 2
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    dropout: float = 0.0
    num_classes: int = 0
    time_freq_dim: int = 256
    time_scale: float = 1000.0
    out_channels: int | None = None
    remat: str = "none"
    scan_blocks: bool = False
    dtype: Any = jnp.float32
    matmul_dtype: Any = "float32"
    attention: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        precision.check_matmul_dtype(self.matmul_dtype)
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                             f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
        sizes = dict(width=self.width, depth=self.depth, num_heads=self.num_heads,
                     patch_size=self.patch_size, time_freq_dim=self.time_freq_dim)
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v <= 0}
        if bad or self.mlp_ratio <= 0 or self.num_classes < 0:
            raise ValueError(
                f"DiT needs positive integer sizes, mlp_ratio > 0 and num_classes >= 0; got "
                f"{bad or ''} mlp_ratio={self.mlp_ratio}, num_classes={self.num_classes}")
        if self.width % self.num_heads:
            raise ValueError(
                f"width={self.width} must be divisible by num_heads={self.num_heads} (each head "
                f"gets width / num_heads channels); change width or num_heads")
        if self.width % 4:
            raise ValueError(
                f"width={self.width} must be a multiple of 4 for the 2-D sin-cos position "
                "embedding (sin and cos of rows and of columns); change width")
        if int(self.mlp_ratio * self.width) <= 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} gives an empty MLP at width "
                             f"{self.width}; raise mlp_ratio")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.out_channels is not None and self.out_channels <= 0:
            raise ValueError(f"out_channels must be positive or None; got {self.out_channels}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat {self.remat!r}; choose one of: "
                             f"{', '.join(REMAT_POLICIES)}")

    def _check_input(self, x: Any) -> None:
        """Shape checks that need the input (an array or a jax.ShapeDtypeStruct): rank and
        image sizes that are multiples of patch_size."""
        if x.ndim != 4:
            raise ValueError(f"DiT expects images [B, H, W, C]; got shape {tuple(x.shape)}")
        _, height, width, _ = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"a {height}x{width} image does not split into {p}x{p} patches: choose a "
                f"patch_size that divides both sizes, or pad the images")

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | float, cond: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        self._check_input(x)
        batch, height, width, channels = x.shape
        p = self.patch_size
        out_channels = self.out_channels or channels

        h = nn.Dense(self.width, kernel_init=_xavier, dtype=self.dtype,
                     dot_general=precision.product_fn(self.matmul_dtype), name="patch_embed")(
            patchify(x.astype(self.dtype), p))
        pos = sincos_2d_embedding(height // p, width // p, self.width)
        h = h + jnp.asarray(pos, h.dtype)[None]

        c = TimeEmbedding(self.time_freq_dim, self.width, activation="silu",
                          time_scale=self.time_scale, dtype=self.dtype, kernel_init=_normal_002,
                          matmul_dtype=self.matmul_dtype, name="time_embed")(batch_times(t, batch))
        if self.num_classes > 0 or cond is not None:
            labels = class_labels(cond, batch, self.num_classes)
            c = c + nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype,
                             embedding_init=_normal_002, name="class_embed")(labels)

        h = self._blocks(h, c, train)
        h = FinalLayer(p * p * out_channels, self.dtype, self.matmul_dtype,
                       name="final_layer")(h, c)
        return unpatchify(h, p, height, width).astype(jnp.float32)

    def _blocks(self, h: jax.Array, c: jax.Array, train: bool) -> jax.Array:
        """The depth blocks: a Python loop (blocks_{i}) or, with scan_blocks, one nn.scan over
        a block whose parameters are stacked on a leading [depth] axis (blocks)."""
        block = DiTBlock
        if self.remat != "none":
            # Under scan, CSE cannot merge the recomputation with the forward pass anyway.
            block = nn.remat(DiTBlock, policy=REMAT_POLICIES[self.remat],
                             prevent_cse=not self.scan_blocks)
        args = (self.num_heads, int(self.mlp_ratio * self.width), self.qk_norm, self.dropout,
                not train, self.dtype, self.matmul_dtype, self.attention)
        if not self.scan_blocks:
            for i in range(self.depth):
                h = block(*args, name=f"blocks_{i}")(h, c)
            return h
        scan = nn.scan(lambda module, x, cond: (module(x, cond), None),
                       variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                       in_axes=nn.broadcast, length=self.depth)
        return scan(block(*args, name="blocks"), h, c)[0]
