"""Networks f(x, t, cond): they take widths as arguments and know nothing of paths or training.

Every model is called as
    y = model.apply({"params": params}, x, t, cond=None, train=False, rngs={"dropout": key})
with x [B, ...], t [B] (or a scalar) in [0, 1] (t = 0 noise, t = 1 data), cond [B] int32 labels or
None; y is float32 with x's shape (or out_channels for the UNet). `rngs` is needed only when
train=True and the model has dropout > 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowmatch.models.dit import DiT
from flowmatch.models.embeddings import FourierFeatures, TimeEmbedding, sinusoidal_embedding
from flowmatch.models.mlp import MLP
from flowmatch.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet, "dit": DiT}


def model_fields(cls: type[nn.Module]) -> tuple[str, ...]:
    """The constructor fields of a model class (without flax's `parent` and `name`)."""
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.init and f.name not in ("parent", "name"))


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds MODELS[name](**kwargs), validating names before anything is traced.

    Lists become tuples (config files may hold either) and a string `dtype` ("bfloat16") becomes
    a numpy dtype. Raises ValueError for an unknown model name or an unknown keyword argument.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name]
    allowed = model_fields(cls)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for model {name!r}; "
            f"allowed: {', '.join(allowed)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return cls(**kwargs)


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


__all__ = [
    "MODELS", "build_model", "count_params", "model_fields",
    "MLP", "UNet", "DiT", "sinusoidal_embedding", "TimeEmbedding", "FourierFeatures",
]
