"""The FID Inception-v3 network (pool3 features) in Flax, and its weights from pytorch-fid.

FID compares generated images with real ones in the 2048-d pool3 feature space of the
Inception-v3 graph `inception-2015-12-05` used by the original TensorFlow FID code (TTUR) and by
pytorch-fid, whose PyTorch port of those weights is the file this module loads.  That graph
differs from torchvision's Inception-v3 in its pooling branches, written here from the
architecture description:
  Mixed_5b..5d (block A), Mixed_6b..6e (block C), Mixed_7b (block E, first): the pool branch is
    a 3x3 / stride 1 / pad 1 average pool that does NOT count the padding (count_include_pad
    False);
  Mixed_7c (block E, second): the pool branch is a 3x3 / stride 1 / pad 1 MAX pool;
  Mixed_6a (B) and Mixed_7a (D): 3x3 / stride 2 max pool, as in torchvision.
Every conv is conv (no bias) -> BatchNorm (inference mode, eps 1e-3) -> ReLU.  Input: images in
[-1, 1] (pytorch-fid maps [0, 1] to [-1, 1]; our images already are), resized to 299 x 299 by
bilinear interpolation with half-pixel centres and no antialiasing (torch's
F.interpolate(mode="bilinear", align_corners=False)); 1-channel images are repeated to 3.

Weights file (the naming scheme): a .npz whose keys and array layouts are exactly the
pytorch-fid state_dict of `pt_inception-2015-12-05-6726825d.pth`, e.g.
    Conv2d_1a_3x3.conv.weight      [32, 3, 3, 3]   (torch OIHW; transposed to HWIO on load)
    Conv2d_1a_3x3.bn.weight / .bn.bias / .bn.running_mean / .bn.running_var   [32]
    Mixed_5b.branch_pool.conv.weight, Mixed_7c.branch3x3dbl_3b.bn.running_var, ...
(the module names below are the state_dict's names).  `fc.*`, `AuxLogits.*` and
`*.num_batches_tracked` entries are ignored; any other unknown key, a missing key or a shape
mismatch raises ValueError naming the parameter.  To make the file, on a machine with torch:

    # download FID_WEIGHTS_URL (below): pytorch-fid's release asset
    # https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/
    #     pt_inception-2015-12-05-6726825d.pth
    import numpy as np, torch
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    np.savez("pt_inception-2015-12-05-6726825d.npz",
             **{k: v.numpy() for k, v in sd.items()})

This project neither depends on torch nor downloads anything at run time.

What has been validated (tests/test_image_metrics.py): output shapes (2048 features at 299 x 299
via jax.eval_shape; a tiny width_multiplier network run end to end); the parameter count
(21,785,568 = torchvision's Inception-v3 minus its fc and AuxLogits heads); the number of max
pools (5) and padding-excluding average pools (8) in the traced graph, and both pools against
NumPy; the resize against a NumPy transcription of torch's bilinear align_corners=False formula;
the weight-file round trip and its errors with a synthetic file built through the naming map.
The branch order and pools of the FID blocks were also checked by reading pytorch-fid's
inception.py.  What has NOT been validated: agreement with pytorch-fid's features or FID numbers
(neither the real weights nor torch nor internet access were available here), so a wrong detail
that keeps every shape intact (say, the order of branches in a concatenation) would go
unnoticed.  Before reporting FIDs, compare the features of a few images with pytorch-fid's
InceptionV3([3]) once (they should agree to ~1e-4).
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_FEATURE_DIM = 2048
FID_INPUT_SIZE = 299
BN_EPSILON = 1e-3
CONVERT_SNIPPET = (
    "import numpy as np, torch; "
    "sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu'); "
    "np.savez('pt_inception-2015-12-05-6726825d.npz', **{k: v.numpy() for k, v in sd.items()})"
)
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)

Padding = tuple[tuple[int, int], tuple[int, int]]


def _pad(ph: int, pw: int | None = None) -> Padding:
    pw = ph if pw is None else pw
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU.  x: [B, H, W, C]."""
    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = _pad(0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                    use_bias=False, dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                         name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), padding=_pad(1), count_include_pad=False)


def _max_pool_3x3_pad(x: jax.Array) -> jax.Array:
    """3x3 / stride 1 max pool; the padding is -inf, so it never wins."""
    return nn.max_pool(x, (3, 3), (1, 1), padding=_pad(1))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class _Block(nn.Module):
    """Base for the mixed blocks: `c(n)` scales a channel count by width_multiplier."""
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32

    def c(self, n: int) -> int:
        return scaled_channels(n, self.width_multiplier)

    def conv(self, name: str, n: int, kernel, strides=(1, 1), padding=_pad(0)) -> BasicConv2d:
        return BasicConv2d(self.c(n), kernel, strides, padding, dtype=self.dtype, name=name)


class InceptionA(_Block):
    """Mixed_5b..5d (35 x 35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(excl. pad)-1x1."""
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 64, (1, 1))(x)
        b5 = self.conv("branch5x5_1", 48, (1, 1))(x)
        b5 = self.conv("branch5x5_2", 64, (5, 5), padding=_pad(2))(b5)
        b3 = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
        b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=_pad(1))(b3)
        b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=_pad(1))(b3)
        bp = self.conv("branch_pool", self.pool_features, (1, 1))(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """Mixed_6a (35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3", 384, (3, 3), strides=(2, 2))(x)
        bd = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
        bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=_pad(1))(bd)
        bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=(2, 2))(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    """Mixed_6b..6e (17 x 17): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool(excl.)-1x1."""
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192, (1, 1))(x)
        b7 = self.conv("branch7x7_1", c7, (1, 1))(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=_pad(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=_pad(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7, (1, 1))(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=_pad(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=_pad(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=_pad(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=_pad(0, 3))(bd)
        bp = self.conv("branch_pool", 192, (1, 1))(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """Mixed_7a (17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3_1", 192, (1, 1))(x)
        b3 = self.conv("branch3x3_2", 320, (3, 3), strides=(2, 2))(b3)
        b7 = self.conv("branch7x7x3_1", 192, (1, 1))(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=_pad(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=_pad(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=(2, 2))(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
    """Mixed_7b / 7c (8 x 8): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1.

    pool "avg": 3x3 average excluding padding (Mixed_7b); "max": 3x3 / stride 1 / pad 1 max
    pool (Mixed_7c, a quirk of the FID graph).
    """
    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 320, (1, 1))(x)
        b3 = self.conv("branch3x3_1", 384, (1, 1))(x)
        b3 = jnp.concatenate([
            self.conv("branch3x3_2a", 384, (1, 3), padding=_pad(0, 1))(b3),
            self.conv("branch3x3_2b", 384, (3, 1), padding=_pad(1, 0))(b3)], axis=-1)
        bd = self.conv("branch3x3dbl_1", 448, (1, 1))(x)
        bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=_pad(1))(bd)
        bd = jnp.concatenate([
            self.conv("branch3x3dbl_3a", 384, (1, 3), padding=_pad(0, 1))(bd),
            self.conv("branch3x3dbl_3b", 384, (3, 1), padding=_pad(1, 0))(bd)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3_exclude_pad(x)
        elif self.pool == "max":
            pooled = _max_pool_3x3_pad(x)
        else:
            raise ValueError(f"unknown pool {self.pool!r}; choose 'avg' or 'max'")
        bp = self.conv("branch_pool", 192, (1, 1))(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def scaled_channels(n: int, width_multiplier: float) -> int:
    """Channel count n * width_multiplier, rounded, at least 1."""
    return max(1, int(round(n * width_multiplier)))


class FIDInceptionV3(nn.Module):
    """Inception-v3 pool3 features as used by FID.

    Call: x [B, H, W, C] in [-1, 1] with C = 1 or 3 -> features [B, F] float32 (the global
    average of Mixed_7c), F = 2048 at width_multiplier 1.  x is resized to resize_to x resize_to
    (bilinear, half-pixel centres, no antialiasing) unless resize_to is None; the network needs
    spatial size >= 75.  width_multiplier scales every conv's channel count (tests use a tiny
    one; only 1.0 matches the weights).  Variables: {"params", "batch_stats"}.
    """
    width_multiplier: float = 1.0
    resize_to: int | None = FID_INPUT_SIZE
    dtype: Any = jnp.float32

    def __post_init__(self):
        super().__post_init__()
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0; got {self.width_multiplier!r}")
        if self.resize_to is not None and self.resize_to < 75:
            raise ValueError(f"resize_to must be >= 75 (Inception-v3's smallest input) or None; "
                             f"got {self.resize_to!r}")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"FIDInceptionV3 expects images [B, H, W, 1 or 3]; got {x.shape}")
        x = x.astype(jnp.float32)
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        if self.resize_to is not None and x.shape[1:3] != (self.resize_to, self.resize_to):
            x = jax.image.resize(x, (x.shape[0], self.resize_to, self.resize_to, 3), "bilinear",
                                 antialias=False)
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"FIDInceptionV3 needs images of at least 75 x 75 after resizing; "
                             f"got {x.shape[1:3]}")
        x = x.astype(self.dtype)
        wm, dt = self.width_multiplier, self.dtype

        def conv(name, n, kernel, strides=(1, 1), padding=_pad(0)):
            return BasicConv2d(scaled_channels(n, wm), kernel, strides, padding, dtype=dt,
                               name=name)

        x = conv("Conv2d_1a_3x3", 32, (3, 3), strides=(2, 2))(x)  # 299 -> 149
        x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)  # 147
        x = conv("Conv2d_2b_3x3", 64, (3, 3), padding=_pad(1))(x)
        x = _max_pool_3x3_s2(x)  # 73
        x = conv("Conv2d_3b_1x1", 80, (1, 1))(x)
        x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)  # 71
        x = _max_pool_3x3_s2(x)  # 35
        x = InceptionA(wm, dt, pool_features=32, name="Mixed_5b")(x)
        x = InceptionA(wm, dt, pool_features=64, name="Mixed_5c")(x)
        x = InceptionA(wm, dt, pool_features=64, name="Mixed_5d")(x)
        x = InceptionB(wm, dt, name="Mixed_6a")(x)  # 17
        x = InceptionC(wm, dt, channels_7x7=128, name="Mixed_6b")(x)
        x = InceptionC(wm, dt, channels_7x7=160, name="Mixed_6c")(x)
        x = InceptionC(wm, dt, channels_7x7=160, name="Mixed_6d")(x)
        x = InceptionC(wm, dt, channels_7x7=192, name="Mixed_6e")(x)
        x = InceptionD(wm, dt, name="Mixed_7a")(x)  # 8
        x = InceptionE(wm, dt, pool="avg", name="Mixed_7b")(x)
        x = InceptionE(wm, dt, pool="max", name="Mixed_7c")(x)
        return x.astype(jnp.float32).mean(axis=(1, 2))


# ------------------------------------------------------------------------------ weight files

# (collection, flax leaf name) <-> torch suffix within a BasicConv2d ("<module path>.<suffix>").
_LEAF_TO_TORCH = {
    ("params", "conv", "kernel"): "conv.weight",
    ("params", "bn", "scale"): "bn.weight",
    ("params", "bn", "bias"): "bn.bias",
    ("batch_stats", "bn", "mean"): "bn.running_mean",
    ("batch_stats", "bn", "var"): "bn.running_var",
}


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
    """("params", ("Mixed_5b", "branch1x1", "conv", "kernel")) ->
    "Mixed_5b.branch1x1.conv.weight"."""
    suffix = _LEAF_TO_TORCH.get((collection, *path[-2:]))
    if suffix is None:
        raise ValueError(f"no torch name for variable {collection}/{'/'.join(path)}")
    return ".".join((*path[:-2], suffix))


def _to_torch_layout(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    return value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value  # HWIO -> OIHW


def _from_torch_layout(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value  # OIHW -> HWIO


def variable_shapes(model: FIDInceptionV3 | None = None):
    """Variables {"params", "batch_stats"} of `model` (default FIDInceptionV3()) as a pytree of
    jax.ShapeDtypeStruct, via jax.eval_shape (nothing is computed)."""
    model = FIDInceptionV3() if model is None else model
    size = model.resize_to or FID_INPUT_SIZE
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def random_variables(model: FIDInceptionV3 | None = None, seed: int = 0):
    """Random variables for `model` (tests, timing): He-normal conv kernels, BatchNorm scale 1,
    bias 0, running mean 0, running var 1.  Drawn in NumPy from `seed`, because model.init
    compiles one random-number kernel per conv shape (about 40 s on 2 CPU cores)."""
    rng = np.random.default_rng(seed)
    fill = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}

    def make(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
        else:
            value = np.full(leaf.shape, fill[name])
        return jnp.asarray(value, dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, variable_shapes(model))


def state_dict_shapes(model: FIDInceptionV3 | None = None) -> dict[str, tuple[int, ...]]:
    """The weight file's expected {torch name: torch-layout shape} for `model`."""
    shapes = variable_shapes(model)
    out = {}
    for collection, tree in shapes.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            shape = tuple(leaf.shape)
            if path[-1] == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1])
            out[_torch_name(collection, path)] = shape
    return out


def variables_to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax variables -> {torch name: float32 array in torch layout} (the weight-file format)."""
    out = {}
    for collection, tree in variables.items():
        for path, value in traverse_util.flatten_dict(dict(tree)).items():
            value = np.asarray(value, dtype=np.float32)
            out[_torch_name(collection, path)] = _to_torch_layout(value, path)
    return out


def _ignored(name: str) -> bool:
    return name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES)


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray],
                            model: FIDInceptionV3 | None = None, *, source: str = "the weights"):
    """{torch name: array} -> Flax variables {"params", "batch_stats"} for `model`.

    Raises ValueError naming the parameter for a missing key, an unknown key or a wrong shape.
    """
    shapes = variable_shapes(model)
    expected = {}
    for collection, tree in shapes.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            expected[_torch_name(collection, path)] = (collection, path, tuple(leaf.shape))
    unknown = sorted(k for k in state_dict if k not in expected and not _ignored(k))
    if unknown:
        raise ValueError(
            f"{source} has {len(unknown)} unexpected parameter(s), e.g. {unknown[:3]}; expected "
            f"the pytorch-fid FID Inception state_dict (pt_inception-2015-12-05-6726825d.pth "
            f"converted to .npz)")
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(
            f"{source} lacks {len(missing)} parameter(s), e.g. {missing[:3]}; is it the "
            f"complete pytorch-fid FID Inception state_dict?")
    trees: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, (collection, path, shape) in expected.items():
        value = np.asarray(state_dict[name])
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"parameter {name!r} in {source} has dtype {value.dtype}; "
                             "expected floating point")
        value = _from_torch_layout(value, path) if value.ndim == 4 else value
        if value.shape != shape:
            torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
            got = tuple(np.asarray(state_dict[name]).shape)
            raise ValueError(
                f"parameter {name!r} in {source} has shape {got}; expected {torch_shape} "
                f"(torch layout) for width_multiplier="
                f"{(model or FIDInceptionV3()).width_multiplier}")
        trees[collection][path] = jnp.asarray(value, dtype=jnp.float32)
    return {c: traverse_util.unflatten_dict(t) for c, t in trees.items()}


def load_inception_params(path: str | os.PathLike, model: FIDInceptionV3 | None = None):
    """Flax variables {"params", "batch_stats"} of `model` (default full width) from a .npz
    in the naming scheme of the module docstring (the converted pytorch-fid state_dict).

    Raises FileNotFoundError (with where to get and how to convert the file) if it is missing,
    ValueError for a .pth given directly, an unreadable file, or wrong names / shapes.
    """
    path = os.fspath(path)
    how = (f"Download {FID_WEIGHTS_URL} and convert it on a machine with torch: "
           f"python -c \"{CONVERT_SNIPPET}\"")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights not found at {path!r}. {how}")
    if path.endswith((".pth", ".pt")):
        raise ValueError(f"{path!r} looks like the PyTorch file itself; this project reads the "
                         f"converted .npz (torch is not a dependency). {how}")
    try:
        with np.load(path, allow_pickle=False) as f:
            state_dict = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"cannot read FID Inception weights {path!r} ({type(e).__name__}: "
                         f"{e}); delete it and convert it again. {how}") from e
    return state_dict_to_variables(state_dict, model, source=repr(path))


__all__ = [
    "FID_FEATURE_DIM", "FID_INPUT_SIZE", "FID_WEIGHTS_URL", "FIDInceptionV3", "BasicConv2d",
    "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "load_inception_params",
    "random_variables", "scaled_channels", "state_dict_shapes", "state_dict_to_variables",
    "variable_shapes", "variables_to_state_dict",
]
