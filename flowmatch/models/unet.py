"""DDPM-style U-Net f(x, t, cond) for images (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", appendix B), written with flax.linen.

Images are NHWC. Layout for channel_mult of length L:
  conv_in 3x3 -> base_channels
  down:   for each level: num_res_blocks x (ResBlock [+ attention]), then a stride-2 conv
          (not after the last level); every block output is kept as a skip
  middle: ResBlock, attention, ResBlock
  up:     for each level, deepest first: (num_res_blocks + 1) x (concat skip -> ResBlock
          [+ attention]), then nearest x2 + conv (not after the first level)
  out:    GroupNorm -> SiLU -> conv 3x3 -> out_channels
As in DDPM, the last conv of every ResBlock, the output projection of every attention block and
conv_out are zero-initialised: each block starts as the identity and the network predicts 0.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowmatch.models import convolution
from flowmatch.models.embeddings import (TimeEmbedding, batch_times, check_time_embedding,
                                         class_labels)

_zeros = nn.initializers.zeros
# Every convolution's gradient in the train step is written out so that XLA:CPU runs it fast
# inside a loop of steps too (models.convolution).
Conv = functools.partial(nn.Conv, conv_general_dilated=convolution.conv_general_dilated)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> + Dense(SiLU(emb)) -> GroupNorm -> SiLU -> dropout ->
    conv3x3 (zero-init), plus a 1x1-conv skip when the channel count changes.

    Call: (x [B, H, W, C_in], emb [B, E], train) -> [B, H, W, out_channels].
    """
    out_channels: int
    num_groups: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        h = nn.silu(nn.GroupNorm(self.num_groups, dtype=self.dtype, name="norm_0")(x))
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_0")(h)
        emb = nn.Dense(self.out_channels, dtype=self.dtype, name="emb_proj")(nn.silu(emb))
        h = h + emb[:, None, None, :]
        h = nn.silu(nn.GroupNorm(self.num_groups, dtype=self.dtype, name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.out_channels, (3, 3), kernel_init=_zeros, dtype=self.dtype,
                    name="conv_1")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, (1, 1), dtype=self.dtype, name="skip")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions: x + proj(softmax(q k^T / sqrt(d)) v), with q, k, v
    from GroupNorm(x), `num_heads` heads of width d = C / num_heads, zero-init proj.
    Logits and softmax are computed in float32.

    Call: x [B, H, W, C] -> [B, H, W, C].
    """
    num_heads: int
    num_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        head_dim = channels // self.num_heads
        h = nn.GroupNorm(self.num_groups, dtype=self.dtype, name="norm")(x)
        qkv = nn.Dense(3 * channels, dtype=self.dtype, name="qkv")(h)
        qkv = qkv.reshape(batch, height * width, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # [B, L, heads, d]
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1).astype(v.dtype)
        h = jnp.einsum("bnqk,bknd->bqnd", weights, v).reshape(batch, height, width, channels)
        return x + nn.Dense(channels, kernel_init=_zeros, dtype=self.dtype, name="proj")(h)


class Downsample(nn.Module):
    """Halves H and W: 3x3 conv with stride 2 ('SAME' padding, as in DDPM), or 2x2 average pooling.

    Call: x [B, H, W, C] (H, W even) -> [B, H/2, W/2, C].
    """
    with_conv: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return Conv(x.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype, name="conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Doubles H and W by nearest-neighbour repetition, then (optionally) a 3x3 conv.

    Call: x [B, H, W, C] -> [B, 2H, 2W, C].
    """
    with_conv: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
        x = x.reshape(batch, 2 * height, 2 * width, channels)
        if self.with_conv:
            x = Conv(channels, (3, 3), dtype=self.dtype, name="conv")(x)
        return x


def _halvings(size: int) -> int:
    """How many times `size` can be halved exactly."""
    n = 0
    while size > 0 and size % 2 == 0:
        size //= 2
        n += 1
    return n


class UNet(nn.Module):
    """DDPM U-Net for images x: [B, H, W, C] (NHWC, values in [-1, 1]).

    Fields:
      base_channels: width of level 0; level i has base_channels * channel_mult[i] channels.
      channel_mult: one entry per resolution; H and W are halved len(channel_mult) - 1 times.
        Every halving needs an even size: an odd one (e.g. 7 after 28 -> 14 -> 7) is rejected
        with a ValueError that says how many levels the input allows (28x28: at most 3 levels).
      num_res_blocks: ResBlocks per level in the down path (num_res_blocks + 1 in the up path).
      attn_resolutions: feature-map heights at which an attention block follows each ResBlock;
        a value that no level reaches for the given input is an error (not silently ignored).
      dropout: dropout rate inside ResBlocks (active only with train=True, rngs={"dropout": k}).
      num_groups: GroupNorm groups; must divide base_channels * m for every m in channel_mult.
      num_heads: attention heads; must divide the channel count at every attention level.
      num_classes: 0 = unconditional; else labels in [0, num_classes] where num_classes is the
        null class (used for cond=None and classifier-free guidance dropout).
      time_embedding: "sinusoidal" | "fourier"; width base_channels, MLP to 4 * base_channels.
      resample_with_conv: strided conv / nearest + conv (True) or avg-pool / nearest (False).
      out_channels: output channels; None means C (same as the input).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, output is float32.

    Call: (x [B, H, W, C], t [B] or scalar in [0, 1], cond [B] int32 or None, train)
      -> float32 [B, H, W, out_channels or C].
    """
    base_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    num_heads: int = 1
    num_classes: int = 0
    time_embedding: str = "sinusoidal"
    time_scale: float = 1000.0
    resample_with_conv: bool = True
    out_channels: int | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        super().__post_init__()
        check_time_embedding(self.time_embedding)
        if self.base_channels <= 0 or not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(
                f"need base_channels > 0 and a non-empty channel_mult of positive integers; got "
                f"base_channels={self.base_channels}, channel_mult={tuple(self.channel_mult)}")
        if self.num_res_blocks < 0 or self.num_heads <= 0 or self.num_classes < 0:
            raise ValueError(
                f"need num_res_blocks >= 0, num_heads > 0 and num_classes >= 0; got "
                f"num_res_blocks={self.num_res_blocks}, num_heads={self.num_heads}, "
                f"num_classes={self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.out_channels is not None and self.out_channels <= 0:
            raise ValueError(f"out_channels must be positive or None; got {self.out_channels}")
        # Concatenated skips in the up path have sums of these widths, so checking these suffices.
        widths = [self.base_channels] + [self.base_channels * m for m in self.channel_mult]
        if self.num_groups <= 0:
            raise ValueError(f"num_groups must be positive; got {self.num_groups}")
        if any(w % self.num_groups for w in widths):
            common = math.gcd(*widths)
            fit = max(d for d in range(1, min(self.num_groups, common) + 1) if common % d == 0)
            raise ValueError(
                f"num_groups={self.num_groups} must divide every channel count of this UNet, "
                f"but base_channels={self.base_channels} with channel_mult="
                f"{tuple(self.channel_mult)} gives {sorted(set(widths))}: set num_groups to a "
                f"divisor of {common} (e.g. num_groups={fit}), or make base_channels a multiple "
                f"of {self.num_groups}")

    def _check_input(self, x: jax.Array) -> None:
        """Shape checks that need the input: rank, even sizes, attention levels, heads."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects images [B, H, W, C]; got shape {x.shape}")
        _, height, width, _ = x.shape
        levels = len(self.channel_mult)
        max_levels = 1 + min(_halvings(height), _halvings(width))
        if levels > max_levels:
            raise ValueError(
                f"a {height}x{width} input can be halved only {max_levels - 1} times before an "
                f"odd size, but channel_mult={tuple(self.channel_mult)} asks for {levels - 1} "
                f"halvings: use at most {max_levels} entries in channel_mult, or pad the images")
        heights = [height // 2 ** i for i in range(levels)]
        unused = [r for r in self.attn_resolutions if r not in heights]
        if unused:
            raise ValueError(
                f"attn_resolutions={tuple(self.attn_resolutions)} has {unused}, which no level "
                f"reaches for {height}x{width} inputs (feature-map heights: {heights}); use a "
                f"subset of these, or () for no attention")
        for level, h in enumerate(heights):
            channels = self.base_channels * self.channel_mult[level]
            if h in self.attn_resolutions and channels % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} must divide the {channels} channels of the "
                    f"attention level at resolution {h}; change num_heads")

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | float, cond: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        self._check_input(x)
        batch = x.shape[0]
        out_channels = self.out_channels or x.shape[-1]
        attn = set(self.attn_resolutions)
        levels = len(self.channel_mult)

        def res_block(h, channels):
            return ResBlock(channels, self.num_groups, self.dropout, self.dtype)(h, emb, train)

        def attn_block(h):
            return AttentionBlock(self.num_heads, self.num_groups, self.dtype)(h)

        emb_dim = 4 * self.base_channels
        emb = TimeEmbedding(self.base_channels, emb_dim, kind=self.time_embedding,
                            time_scale=self.time_scale,
                            activation="silu", dtype=self.dtype,
                            name="time_embed")(batch_times(t, batch))
        if self.num_classes > 0 or cond is not None:
            labels = class_labels(cond, batch, self.num_classes)
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype,
                                 name="class_embed")(labels)

        h = Conv(self.base_channels, (3, 3), dtype=self.dtype, name="conv_in")(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(h, self.base_channels * mult)
                if h.shape[1] in attn:
                    h = attn_block(h)
                skips.append(h)
            if level != levels - 1:
                h = Downsample(self.resample_with_conv, self.dtype)(h)
                skips.append(h)

        h = res_block(h, h.shape[-1])
        h = attn_block(h)
        h = res_block(h, h.shape[-1])

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = res_block(jnp.concatenate([h, skips.pop()], axis=-1),
                              self.base_channels * mult)
                if h.shape[1] in attn:
                    h = attn_block(h)
            if level != 0:
                h = Upsample(self.resample_with_conv, self.dtype)(h)

        h = nn.silu(nn.GroupNorm(self.num_groups, dtype=self.dtype, name="norm_out")(h))
        h = Conv(out_channels, (3, 3), kernel_init=_zeros, dtype=self.dtype,
                    name="conv_out")(h)
        return h.astype(jnp.float32)
