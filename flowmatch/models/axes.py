"""Logical axes of every model's parameters: a name (or None) per dimension, which
flowmatch.parallel's LOGICAL_RULES map to mesh axes (embed -> fsdp, heads / mlp -> tensor).

DiT: the table of flowmatch/models/dit.py (PARAM_AXES).  MLP and U-Net, by path and rank:
  dense kernel [in, out]           (embed, mlp); the MLP's hidden_i and out layers alternate
                                   (embed, mlp), (mlp, embed), ... (layer i even / odd), so
                                   one layer's output split over "tensor" is the next one's
                                   split input (Megatron's column- then row-parallel pair)
  conv kernel [kh, kw, in, out]    (None, None, embed, mlp)
  embedding table [K + 1, D]       (None, embed)
  bias [out]                       the last axis of its kernel
  norm scale / bias [C]            (None,)  (small; replicated)
"""
from __future__ import annotations

import re
from typing import Any

import jax

from flowmatch.models import dit as dit_lib

_MLP_LAYER = re.compile(r"hidden_(\d+)")


def _kernel_axes(name: str, rank: int, mlp_layers: int | None) -> tuple:
    """The logical axes of the MLP or U-Net kernel `name` ("a/b/kernel") of rank 2 or 4."""
    if rank == 4:
        return (None, None, "embed", "mlp")
    if rank != 2:
        raise ValueError(f"no logical axes for the kernel {name} of rank {rank} (2 or 4)")
    if mlp_layers is None:
        return ("embed", "mlp")
    module = name.split("/")[-2]  # the MLP's hidden_i / out chain alternates
    match = _MLP_LAYER.fullmatch(module)
    index = int(match.group(1)) if match else (mlp_layers if module == "out" else 0)
    return ("embed", "mlp") if index % 2 == 0 else ("mlp", "embed")


def logical_axes(model_name: str, params: Any) -> Any:
    """The logical axes of each parameter of model `model_name` ('mlp' | 'unet' | 'dit'), as a
    pytree like `params` (tuples of names or None, one per dimension)."""
    if model_name == "dit":
        return dit_lib.param_logical_axes(params)
    if model_name not in ("mlp", "unet"):
        raise ValueError(f"no logical axes for model {model_name!r}; known: mlp, unet, dit")
    shapes = {"/".join(str(k.key) for k in path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    mlp_layers = (sum(1 for n in shapes if re.fullmatch(r"hidden_\d+/kernel", n))
                  if model_name == "mlp" else None)

    def axes(name: str, shape: tuple[int, ...]) -> tuple:
        leaf, kernel = name.rpartition("/")[2], name.rpartition("/")[0] + "/kernel"
        if leaf == "embedding":
            return (None, "embed")
        if leaf == "kernel":
            return _kernel_axes(name, len(shape), mlp_layers)
        if leaf == "bias" and kernel in shapes and len(shape) == 1:
            return (_kernel_axes(kernel, len(shapes[kernel]), mlp_layers)[-1],)
        return (None,) * len(shape)  # norm scales and offsets

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: axes("/".join(str(k.key) for k in path), tuple(leaf.shape)), params)
