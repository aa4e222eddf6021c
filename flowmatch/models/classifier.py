"""A small CNN image classifier whose penultimate layer is the feature space of image metrics.

It is not a generative model, so it does not follow the f(x, t, cond) signature of MODELS; it
is used by `flowmatch.image_metrics` for a Fréchet distance on datasets (digits, the MNIST
subset) where the ImageNet Inception network's features mean little.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Classifier(nn.Module):
    """CNN classifier for x: [B, H, W, C] in [-1, 1].

    Layers: for each width in `channels`: conv 3x3 -> GroupNorm -> ReLU, then a 2x2 average
    pool (SAME padding) after every stage but the last; global average pool over H, W;
    features = ReLU(Dense(feature_dim)); logits = Dense(num_classes)(features).

    Call: (x [B, H, W, C], train=False, return_features=False) -> logits [B, num_classes], or
    (logits, features [B, feature_dim]) with return_features=True.  `train` is accepted for a
    uniform signature (there is no dropout or batch statistics).  Parameters are float32.
    """
    num_classes: int = 10
    channels: Sequence[int] = (32, 64, 128)
    feature_dim: int = 128
    num_groups: int = 8
    dtype: Any = jnp.float32

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2 or self.feature_dim < 1:
            raise ValueError(
                f"need num_classes >= 2 and feature_dim >= 1; got num_classes={self.num_classes}, "
                f"feature_dim={self.feature_dim}")
        if not self.channels or any(int(c) < 1 or int(c) % self.num_groups for c in self.channels):
            raise ValueError(
                f"channels must be a non-empty sequence of positive multiples of num_groups="
                f"{self.num_groups}; got {self.channels!r}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        del train
        if x.ndim != 4:
            raise ValueError(f"Classifier expects images [B, H, W, C]; got shape {x.shape}")
        h = x.astype(self.dtype)
        for i, width in enumerate(self.channels):
            h = nn.Conv(int(width), (3, 3), dtype=self.dtype, name=f"conv_{i}")(h)
            h = nn.relu(nn.GroupNorm(self.num_groups, dtype=self.dtype, name=f"norm_{i}")(h))
            if i < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), (2, 2), padding="SAME")
        h = h.mean(axis=(1, 2))
        features = nn.relu(nn.Dense(self.feature_dim, dtype=self.dtype, name="features")(h))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(features)
        logits = logits.astype(jnp.float32)
        if return_features:
            return logits, features.astype(jnp.float32)
        return logits
