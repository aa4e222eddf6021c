"""Writing ArrayRecord shards (`flowmatch.data.arrayrecord`) from the sources flowmatch reads.

- ``image_folder``: every image under a folder; class subfolders (sorted names -> labels
  0..K-1) or a flat, unlabelled folder, exactly as `images.load_image_folder` orders, decodes,
  resizes (shorter side to image_size, bicubic) and centre-crops them; stored uint8 HWC.  Images
  are decoded one at a time (optionally in ``num_workers`` processes), so a folder of any size
  fits in memory.
- ``cifar10``: the python release (`images.load_cifar10`), split train or test; uint8 HWC.
- ``latents``: an array file of precomputed latents: ``.npy`` holding x [N, h, w, c], or ``.npz``
  with ``x`` (float [N, h, w, c]) and optionally ``label`` (int [N], >= 0) and ``class_names``;
  stored float32 (exact) or float16 (half the bytes; values must lie within float16 range).

The output directory may hold several splits (one manifest each).
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import multiprocessing
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from flowmatch.data import arrayrecord
from flowmatch.data import images as images_lib

logger = logging.getLogger(__name__)

SOURCES = ("image_folder", "cifar10", "latents")
TARGET_SHARD_BYTES = 256 << 20  # default shard size when num_shards is not given
_LOG_EVERY = 10_000
_SPLIT_NAME = re.compile(r"[a-z0-9_]+")


class _Plan(NamedTuple):
    """What a source will write: ``examples`` yields ``num_inputs`` items (example, label) or
    None (an input left out), lazily."""

    spec: arrayrecord.ExampleSpec
    examples: Iterable
    num_inputs: int
    num_classes: int
    class_names: tuple[str, ...]
    source: dict


def prepare(source: str, input_path: str | os.PathLike, output: str | os.PathLike, *,
            split: str = "train", image_size: int | None = None, channels: int = 3,
            num_shards: int | None = None, latent_dtype: str = "float32",
            skip_bad: bool = False, overwrite: bool = False,
            num_workers: int = 0) -> arrayrecord.Manifest:
    """Writes ``split`` of ``source`` (one of :data:`SOURCES`) read from ``input_path`` as shards
    plus manifest into ``output``; returns the manifest.

    ``image_size`` (required) and ``channels`` (1 or 3) apply to image folders, ``num_workers``
    (decoding processes, 0: this one) too; ``split`` selects the CIFAR-10 split (train / test)
    and names the output of the others; ``latent_dtype`` (float32 / float16) applies to latents;
    ``skip_bad`` leaves unreadable images (or CIFAR-10 batch files) out, logged and recorded in
    the manifest's ``source.num_skipped``.  ``num_shards`` defaults to about 256 MiB per shard.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split must be a name of lowercase letters, digits and _ (e.g. train, "
                         f"test), got {split!r}")
    if input_path in (None, ""):
        raise ValueError(f"source {source!r} needs an input path (--input=...)")
    input_path = Path(input_path).expanduser()
    if not input_path.exists():
        raise FileNotFoundError(f"input {str(input_path)!r} does not exist; give --input the "
                                + {"image_folder": "folder of images (or class subfolders)",
                                   "cifar10": "CIFAR-10 python release (cifar-10-python.tar.gz "
                                              "or its extracted folder)",
                                   "latents": ".npy / .npz file of latents"}[source])
    if num_shards is not None and (not isinstance(num_shards, (int, np.integer))
                                   or num_shards < 1):
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if source == "image_folder":
        plan = _image_folder_plan(input_path, image_size, channels, skip_bad, num_workers)
    elif source == "cifar10":
        plan = _cifar10_plan(input_path, split, skip_bad)
    else:
        plan = _latents_plan(input_path, latent_dtype)
    n = plan.num_inputs
    if num_shards is None:
        record_bytes = arrayrecord.HEADER_BYTES + math.prod(plan.spec.example_shape) * np.dtype(
            plan.spec.dtype).itemsize
        num_shards = max(1, math.ceil(n * record_bytes / TARGET_SHARD_BYTES))
    manifest = arrayrecord.write_split(
        output, split, plan.examples, n, plan.spec, num_classes=plan.num_classes,
        class_names=plan.class_names, source=plan.source, num_shards=min(int(num_shards), n),
        overwrite=overwrite)
    logger.info("wrote %d examples of split %r in %d shard(s) to %s", manifest.num_examples,
                split, len(manifest.shards), output)
    return manifest


# ------------------------------------------------------------------------------ image folder


def _decode_or_error(file: Path, image_size: int, mode: str) -> np.ndarray | str:
    try:
        return images_lib._read_image(file, image_size, mode)  # pylint: disable=protected-access
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"


def _image_folder_plan(root: Path, image_size, channels, skip_bad, num_workers):
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"source 'image_folder' needs --image_size, a positive int, got "
                         f"{image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    class_names, files_per_class = images_lib.list_image_folder(root)
    jobs = [(f, label) for label, files in enumerate(files_per_class) for f in files]
    source = {"source": "image_folder", "input": str(root.resolve()), "image_size": image_size,
              "channels": channels, "num_skipped": 0}  # counted while the shards are written

    def examples() -> Iterator:
        decode = functools.partial(_decode_or_error, image_size=image_size,
                                   mode="RGB" if channels == 3 else "L")
        pool = None
        if num_workers:
            pool = concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context("spawn"))
            decoded = pool.map(decode, [f for f, _ in jobs], chunksize=16)
        else:
            decoded = map(decode, (f for f, _ in jobs))
        try:
            for j, ((file, label), image) in enumerate(zip(jobs, decoded)):
                if (j + 1) % _LOG_EVERY == 0:
                    logger.info("decoded %d / %d images", j + 1, len(jobs))
                if isinstance(image, str):
                    if not skip_bad:
                        raise ValueError(f"cannot read image {file} ({image}); remove it or pass "
                                         "--skip_bad to leave unreadable files out")
                    logger.warning("skipping unreadable image %s: %s", file, image)
                    source["num_skipped"] += 1
                    yield None
                    continue
                yield (image[..., None] if channels == 1 else image), label
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    spec = arrayrecord.ExampleSpec("image", (image_size, image_size, channels), "uint8")
    return _Plan(spec, examples(), len(jobs), len(class_names), class_names, source)


# ---------------------------------------------------------------------------------- CIFAR-10


def _cifar10_plan(path: Path, split: str, skip_bad: bool):
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 has splits train and test, got {split!r}")
    data = images_lib.load_cifar10(path, split, skip_bad=skip_bad)
    # Back to the stored bytes: x = (2 v - 255) / 255 exactly as float32, so rounding is exact.
    pixels = np.rint((data.x + np.float32(1.0)) * np.float32(127.5)).astype(np.uint8)
    spec = arrayrecord.ExampleSpec("image", (32, 32, 3), "uint8")
    source = {"source": "cifar10", "input": str(path.resolve()),
              "num_skipped": data.num_skipped}
    examples = zip(pixels, data.label.tolist())
    del data  # the float32 copy (4x the pixels) is no longer needed
    return _Plan(spec, examples, len(pixels), 10, _CIFAR10_CLASSES, source)


# The label names of the CIFAR-10 release (batches.meta), in label order.
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                    "ship", "truck")


# ----------------------------------------------------------------------------------- latents


def _latents_plan(path: Path, dtype: str):
    if dtype not in arrayrecord.DTYPES["latent"]:
        raise ValueError(f"latent_dtype must be one of {', '.join(arrayrecord.DTYPES['latent'])}"
                         f", got {dtype!r}")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read latents {path} ({type(e).__name__}: {e}); expected a "
                         ".npy array x [N, h, w, c] or an .npz with x and optional label") from e
    label, class_names = None, ()
    if isinstance(loaded, np.ndarray):
        x = loaded
    else:
        with loaded:
            if "x" not in loaded.files:
                raise ValueError(f"{path} has no array 'x' (it has: {', '.join(loaded.files)}); "
                                 "store the latents as x [N, h, w, c]")
            x = loaded["x"]
            key = next((k for k in ("label", "labels") if k in loaded.files), None)
            label = None if key is None else loaded[key]
            if "class_names" in loaded.files:
                class_names = tuple(str(c) for c in loaded["class_names"])
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating) or len(x) == 0:
        raise ValueError(f"latents x must be a non-empty float array [N, h, w, c], got "
                         f"{x.dtype} {list(x.shape)} in {path}")
    if label is not None:
        label = np.asarray(label)
        if (label.shape != x.shape[:1] or not np.issubdtype(label.dtype, np.integer)
                or label.min() < 0 or label.max() >= 2**31):
            raise ValueError(f"labels must be non-negative ints [N={len(x)}], got {label.dtype} "
                             f"{list(label.shape)} in {path}")
    num_classes = len(class_names) or (0 if label is None else int(label.max()) + 1)
    if class_names and label is not None and label.max() >= num_classes:
        raise ValueError(f"{path}: labels reach {int(label.max())} but there are "
                         f"{num_classes} class_names")
    limit = float(np.finfo(dtype).max)

    def examples() -> Iterator:
        for j in range(len(x)):
            v = np.asarray(x[j])
            if not np.all(np.isfinite(v)) or np.abs(v).max(initial=0.0) > limit:
                raise ValueError(f"latent {j} of {path} is not finite or exceeds the {dtype} "
                                 f"range (max |x| {float(np.abs(v).max())}); "
                                 + ("store float32" if dtype == "float16" else "fix the input"))
            yield v, (0 if label is None else int(label[j]))

    spec = arrayrecord.ExampleSpec("latent", tuple(int(d) for d in x.shape[1:]), dtype)
    source = {"source": "latents", "input": str(path.resolve()), "input_dtype": str(x.dtype)}
    return _Plan(spec, examples(), len(x), num_classes, class_names, source)
