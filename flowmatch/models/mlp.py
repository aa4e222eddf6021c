"""An MLP f(x, t, cond) for vector data (toy 2-D distributions and the like)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowmatch.models import precision
from flowmatch.models.embeddings import (TimeEmbedding, batch_times, check_time_embedding,
                                         class_labels, get_activation)


# The MLP's own time input besides the shared embeddings: t appended to the input (torchcfm).
CONCAT = "concat"


class MLP(nn.Module):
    """MLP for x: [B, D] (any [B, ...] is flattened to [B, D] and the output reshaped back).

    Layers: e = act(TimeEmbedding(t) [+ class embedding]) of width time_embed_dim;
    h_0 = x; h_{i+1} = act(Dense(h_i) + Dense_i(e)) for each width in hidden_sizes; out = Dense(D).
    The time/class embedding thus enters every hidden layer; its projections for all layers are one
    fused Dense. The output layer uses the default (LeCun normal) init, not zeros, so every
    parameter gets a nonzero gradient at step 0.

    time_embedding="concat" is torchcfm's tutorial network instead (its models.MLP with
    time_varying=True): t is appended to the input, h_0 = [x, t (, class embedding)], and no
    embedding or per-layer projection is built: h_{i+1} = act(Dense(h_i)).  It is about a third
    of the default's arithmetic at width 64, for like-for-like speed comparisons with torchcfm.

    Class conditioning (num_classes > 0): an embedding table of num_classes + 1 rows; row
    num_classes is the null class, used when cond is None and for classifier-free guidance dropout.

    Call: (x [B, ...], t [B] or scalar in [0, 1], cond [B] int32 or None, train)
      -> float32 with x's shape.
    Compute runs in `dtype`; parameters are float32. matmul_dtype="bfloat16" rounds the operands
    of every product (the Dense layers, the time embedding's included) to bfloat16 and keeps
    their results, and all else, in float32 (`flowmatch.models.precision`; on the project's
    2-core CPU with AMX the quickstart's train step ran 1.6x and its sampling 2x faster,
    docs/speed.md). `train` is accepted for the shared signature (this network has no
    dropout).
    """
    hidden_sizes: Sequence[int] = (256, 256, 256)
    activation: str = "silu"
    time_embedding: str = "sinusoidal"
    time_scale: float = 1000.0
    time_embed_dim: int = 64
    num_classes: int = 0
    dtype: Any = jnp.float32
    matmul_dtype: Any = "float32"

    def __post_init__(self):
        super().__post_init__()
        get_activation(self.activation)
        precision.check_matmul_dtype(self.matmul_dtype)
        if self.time_embedding != CONCAT:
            check_time_embedding(self.time_embedding)
        if not self.hidden_sizes or any(int(w) <= 0 for w in self.hidden_sizes):
            raise ValueError(
                f"hidden_sizes must be a non-empty sequence of positive widths; "
                f"got {self.hidden_sizes!r}")
        if self.time_embed_dim <= 0 or self.num_classes < 0:
            raise ValueError(
                f"need time_embed_dim > 0 and num_classes >= 0; got "
                f"time_embed_dim={self.time_embed_dim}, num_classes={self.num_classes}")

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | float, cond: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        del train
        act = get_activation(self.activation)
        product = precision.product_fn(self.matmul_dtype)
        if self.time_embedding == CONCAT:
            return self._concat(x, t, cond, act, product)
        batch, shape = x.shape[0], x.shape
        h = x.reshape(batch, -1)
        data_dim = h.shape[-1]

        # One time for every row (a sampler's call) and no labels: the rows share their
        # embedding and its projection, computed once ([1, ...]) and broadcast to the rows.
        shared = jnp.ndim(t) == 0 and cond is None
        rows = 1 if shared else batch
        emb = TimeEmbedding(self.time_embed_dim, self.time_embed_dim, kind=self.time_embedding,
                            time_scale=self.time_scale,
                            activation=self.activation, dtype=self.dtype,
                            matmul_dtype=self.matmul_dtype, name="time_embed")(batch_times(t, rows))
        if self.num_classes > 0 or cond is not None:
            labels = class_labels(cond, rows, self.num_classes)
            emb = emb + nn.Embed(self.num_classes + 1, self.time_embed_dim, dtype=self.dtype,
                                 name="class_embed")(labels)
        emb = act(emb)

        widths = [int(w) for w in self.hidden_sizes]
        emb_proj = nn.Dense(sum(widths), dtype=self.dtype, dot_general=product,
                            name="embed_proj")(emb)
        start = 0
        for i, width in enumerate(widths):
            h = nn.Dense(width, dtype=self.dtype, dot_general=product, name=f"hidden_{i}")(h)
            h = act(h + emb_proj[:, start:start + width])
            start += width
        out = nn.Dense(data_dim, dtype=self.dtype, dot_general=product, name="out")(h)
        return out.astype(jnp.float32).reshape(shape)

    def _concat(self, x, t, cond, act, product):
        """torchcfm's network: h_0 = [x, t (, class embedding)], h_{i+1} = act(Dense(h_i))."""
        batch, shape = x.shape[0], x.shape
        inputs = [x.reshape(batch, -1).astype(self.dtype),
                  batch_times(t, batch)[:, None].astype(self.dtype)]
        if self.num_classes > 0 or cond is not None:
            labels = class_labels(cond, batch, self.num_classes)
            inputs.append(nn.Embed(self.num_classes + 1, self.time_embed_dim, dtype=self.dtype,
                                   name="class_embed")(labels))
        h = jnp.concatenate(inputs, axis=-1)
        data_dim = inputs[0].shape[-1]
        for i, width in enumerate(int(w) for w in self.hidden_sizes):
            h = act(nn.Dense(width, dtype=self.dtype, dot_general=product, name=f"hidden_{i}")(h))
        out = nn.Dense(data_dim, dtype=self.dtype, dot_general=product, name="out")(h)
        return out.astype(jnp.float32).reshape(shape)
