"""Pairs (x0, x1) on disk: the training data of reflow and of one-step distillation.

A pairs directory (written by `flowmatch.reflow.generate_pairs`, read by `load_pairs`):

    manifest.json      {"format": FORMAT, "spec": {...}, "chunks": {"<i>": {"file", "rows",
                       "sha256"}}}, replaced atomically after every chunk
    chunk_00000.npz    x0 float32 [rows, *example_shape] (source samples), x1 likewise (their
                       images under the generating flow), label int32 [rows]
    chunk_00001.npz    ...

``spec`` says what the pairs are: ``num_pairs``, ``chunk_size`` (every chunk has that many rows
but the last), ``example_shape``, ``kind`` ('toy2d' | 'image'), ``data`` (the data set the
generating flow was trained towards, e.g. 'moons'), ``num_classes``, and how they were made
(source run, step, integrator, seed).  A chunk is finished when the manifest lists it and its
file's SHA-256 matches; chunk files are written under a temporary name and renamed, so a killed
writer leaves no half-written chunk under a chunk's name.

`PairSource` serves the pairs to `BatchIterator` like an image dataset serves images: an endless
stream over epochs, global position p = i * batch_size + j being pair ``perm_e[p % N]`` of epoch
e = p // N with ``perm_e = np.random.default_rng([seed, e]).permutation(N)``.  Batches are
``{"x": x1, "x0": x0, "label": label}``, the paired form the trainer's loss takes.
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import os
from typing import Any

import jax
import numpy as np

from flowmatch import fileio
from flowmatch.data import toy2d

FORMAT = "flowmatch-pairs/1"
MANIFEST = "manifest.json"
KINDS = ("toy2d", "image")
_EPOCH_CACHE_SIZE = 4
_MAX_SEED = 2**31 - 1


def chunk_filename(index: int) -> str:
    """The file name of chunk ``index``: chunk_00000.npz, chunk_00001.npz, ..."""
    return f"chunk_{index:05d}.npz"


def num_chunks(num_pairs: int, chunk_size: int) -> int:
    return math.ceil(num_pairs / chunk_size)


def chunk_rows(index: int, num_pairs: int, chunk_size: int) -> int:
    """Rows of chunk ``index``: chunk_size, fewer for the last chunk."""
    return min(chunk_size, num_pairs - index * chunk_size)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as JSON to `path` so that a reader sees the old file or the new, never half."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    fileio.write_atomic(path, lambda f: f.write(text.encode()))


def remove_temporary_files(directory: str) -> list[str]:
    """Deletes what a killed writer left (files named .tmp_*); returns their names."""
    names = [n for n in os.listdir(directory) if n.startswith(fileio.TEMP_PREFIX)]
    for n in names:
        os.remove(os.path.join(directory, n))
    return names


def write_chunk(directory: str, index: int, x0: np.ndarray, x1: np.ndarray,
                label: np.ndarray) -> dict:
    """Writes chunk `index` atomically; returns its manifest entry {"file", "rows", "sha256"}."""
    x0 = np.asarray(x0, np.float32)
    x1 = np.asarray(x1, np.float32)
    label = np.asarray(label, np.int32)
    if x0.shape != x1.shape or label.shape != x0.shape[:1]:
        raise ValueError(f"a chunk needs x0 and x1 of one shape [rows, ...] and label [rows]; got "
                         f"{x0.shape}, {x1.shape} and {label.shape}")
    name = chunk_filename(index)
    path = os.path.join(directory, name)
    fileio.write_atomic(path, lambda f: np.savez(f, x0=x0, x1=x1, label=label))
    return {"file": name, "rows": int(x0.shape[0]), "sha256": file_sha256(path)}


def read_manifest(directory: str) -> dict | None:
    """The manifest of a pairs directory, or None when it has none yet."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the pairs manifest {path}: {e}; it is rewritten after every "
                         "chunk, so delete it and rerun the pair generation (finished chunks are "
                         "then redone)") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pairs manifest of format {FORMAT!r} (got format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r}); "
                         "data.path must be a directory written by flowmatch.reflow.generate_pairs")
    return manifest


def chunk_is_finished(directory: str, index: int, manifest: dict | None) -> bool:
    """Whether chunk `index` is listed in the manifest and its file is intact (same SHA-256)."""
    entry = (manifest or {}).get("chunks", {}).get(str(index))
    if entry is None:
        return False
    path = os.path.join(directory, entry["file"])
    return os.path.exists(path) and file_sha256(path) == entry["sha256"]


def save_pairs(directory: str, x0, x1, label=None, *, data: str, kind: str = "toy2d",
               chunk_size: int = 10_000, num_classes: int = 0, **info) -> str:
    """Writes pairs made elsewhere (any coupling: x0 [N, ...], x1 like it, label [N] or None)
    as a pairs directory that `load_pairs` reads; `info` goes into the manifest's spec.

    data: the data set x1 imitates (a toy data set's name gives the evaluation box).
    Refuses to write into a directory that already holds a manifest.
    """
    x0, x1 = np.asarray(x0, np.float32), np.asarray(x1, np.float32)
    label = np.zeros(len(x0), np.int32) if label is None else np.asarray(label, np.int32)
    if kind not in KINDS:
        raise ValueError(f"unknown pairs kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if x0.shape != x1.shape or label.shape != x0.shape[:1] or len(x0) == 0:
        raise ValueError(f"pairs need x0 and x1 of one shape [N >= 1, ...] and label [N]; got "
                         f"{x0.shape}, {x1.shape} and {label.shape}")
    os.makedirs(directory, exist_ok=True)
    if read_manifest(directory) is not None:
        raise ValueError(f"{directory} already holds pairs; choose an empty directory")
    n = len(x0)
    spec = dict(info, num_pairs=n, chunk_size=int(chunk_size), example_shape=list(x0.shape[1:]),
                kind=kind, data=data, num_classes=int(num_classes))
    chunks = {}
    for i in range(num_chunks(n, chunk_size)):
        rows = slice(i * chunk_size, i * chunk_size + chunk_rows(i, n, chunk_size))
        chunks[str(i)] = write_chunk(directory, i, x0[rows], x1[rows], label[rows])
    write_json_atomic(os.path.join(directory, MANIFEST),
                      {"format": FORMAT, "spec": spec, "chunks": chunks})
    return directory


def _key_seed(key_or_seed: Any) -> list[int]:
    """A NumPy seed sequence from a JAX key (raw uint32 or typed) or an int seed."""
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        if not 0 <= key_or_seed <= _MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**31 - 1], got {key_or_seed!r}")
        return [int(key_or_seed)]
    key = key_or_seed
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(b) for b in np.asarray(key, np.uint32).ravel()]


class PairSource:
    """Pairs (x0, x1) in memory, served as {"x": x1, "x0": x0, "label"} batches (module docstring).

    kind, example_shape and box are those of the data set the pairs' x1 imitate ('toy2d' pairs
    get that toy data set's box), so the trainer, its evaluation and the samplers treat the
    source like that data set.
    """

    name = "pairs"
    random_flip = False

    def __init__(self, x0: np.ndarray, x1: np.ndarray, label: np.ndarray, *, kind: str,
                 data_name: str, num_classes: int = 0, path: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown pairs kind {kind!r}; choose one of: {', '.join(KINDS)}")
        if x0.shape != x1.shape or label.shape != x0.shape[:1] or len(x0) == 0:
            raise ValueError(f"pairs need x0 and x1 of one shape [N >= 1, ...] and label [N]; got "
                             f"{x0.shape}, {x1.shape} and {label.shape}")
        self.x0, self.x1, self.label = x0, x1, label
        self.kind, self.data_name, self.path = kind, data_name, path
        self.example_shape = tuple(x0.shape[1:])
        self.num_classes = int(num_classes)
        self.num_examples = len(x0)
        self.box = toy2d.toy_box(data_name) if kind == "toy2d" else None
        self._epochs: collections.OrderedDict = collections.OrderedDict()

    def sample_reference(self, key_or_seed: Any, n: int) -> np.ndarray:
        """n of the x1 (without replacement), chosen by the key: [n, ...] float32.

        These are the generating flow's samples: what the next flow learns to reproduce.
        """
        if not 0 < n <= self.num_examples:
            raise ValueError(
                f"asked for {n} reference samples of the pairs in {self.path}, which hold "
                f"{self.num_examples}; ask for 1..{self.num_examples} (config keys "
                "eval.num_tv_samples, eval.num_w2_samples) or generate more pairs")
        rows = np.random.default_rng(_key_seed(key_or_seed)).permutation(self.num_examples)[:n]
        return self.x1[rows]

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._epochs:
            self._epochs[key] = np.random.default_rng([seed, epoch]).permutation(self.num_examples)
            if len(self._epochs) > _EPOCH_CACHE_SIZE:
                self._epochs.popitem(last=False)
        self._epochs.move_to_end(key)
        return self._epochs[key]

    def examples(self, seed: int, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Pairs at global stream positions (int [m]): x (= x1), x0 [m, ...], label [m]."""
        n = self.num_examples
        index = np.empty(positions.shape, dtype=np.int64)
        epochs = positions // n
        for e in np.unique(epochs):
            sel = epochs == e
            index[sel] = self._permutation(seed, int(e))[positions[sel] % n]
        return {"x": self.x1[index], "x0": self.x0[index], "label": self.label[index]}

    def __repr__(self) -> str:
        return (f"PairSource({self.path!r}: {self.num_examples} pairs of {self.example_shape}, "
                f"data {self.data_name!r})")


def load_pairs(path: str | os.PathLike | None) -> PairSource:
    """Reads and validates a complete pairs directory into a `PairSource`.

    Raises ValueError, saying what to do, when the directory is missing, incomplete (generation
    was stopped: rerun it, it resumes), damaged (a checksum mismatch: rerun the generation, it
    redoes that chunk) or inconsistent with its manifest.
    """
    if path in (None, ""):
        raise ValueError("data.name='pairs' needs data.path: a directory of (x0, x1) pairs "
                         "written by scripts/reflow.py --pairs_from=WORKDIR --workdir=DIR")
    path = os.fspath(path)
    manifest = read_manifest(path) if os.path.isdir(path) else None
    if manifest is None:
        raise ValueError(f"no pairs in {path!r} (no {MANIFEST}): generate them first with "
                         f"scripts/reflow.py --pairs_from=WORKDIR --workdir={path}")
    spec = manifest.get("spec", {})
    missing = [k for k in ("num_pairs", "chunk_size", "example_shape", "kind", "data")
               if k not in spec]
    if missing:
        raise ValueError(f"the pairs manifest in {path} lacks spec entries {missing}; regenerate "
                         "the pairs into a new directory")
    n, size = int(spec["num_pairs"]), int(spec["chunk_size"])
    shape = tuple(spec["example_shape"])
    todo = [i for i in range(num_chunks(n, size)) if str(i) not in manifest.get("chunks", {})]
    if todo:
        raise ValueError(
            f"the pairs in {path} are incomplete: {len(todo)} of {num_chunks(n, size)} chunks "
            f"missing (first: {todo[:5]}); rerun the same pair generation, it resumes")
    x0s, x1s, labels = [], [], []
    for i in range(num_chunks(n, size)):
        entry = manifest["chunks"][str(i)]
        file = os.path.join(path, entry["file"])
        if not chunk_is_finished(path, i, manifest):
            raise ValueError(
                f"pairs chunk {file} is missing or damaged (its SHA-256 differs from the "
                "manifest's); rerun the same pair generation, it redoes that chunk")
        with np.load(file) as z:
            x0, x1, label = z["x0"], z["x1"], z["label"]
        rows = chunk_rows(i, n, size)
        want = (rows, *shape)
        if (x0.shape != want or x1.shape != want or label.shape != (rows,)
                or x0.dtype != np.float32 or x1.dtype != np.float32 or label.dtype != np.int32):
            raise ValueError(
                f"pairs chunk {file} holds x0 {x0.dtype}{list(x0.shape)}, x1 "
                f"{x1.dtype}{list(x1.shape)}, label {label.dtype}{list(label.shape)}; the "
                f"manifest says float32 {list(want)} and int32 [{rows}]; regenerate the pairs")
        if not (np.isfinite(x0).all() and np.isfinite(x1).all()):
            raise ValueError(f"pairs chunk {file} holds NaN or inf; regenerate the pairs with a "
                             "more accurate integrator")
        x0s.append(x0)
        x1s.append(x1)
        labels.append(label)
    return PairSource(np.concatenate(x0s), np.concatenate(x1s), np.concatenate(labels),
                      kind=spec["kind"], data_name=spec["data"],
                      num_classes=int(spec.get("num_classes", 0)), path=path)
