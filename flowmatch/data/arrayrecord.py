"""ArrayRecord shards of examples and their manifest: the on-disk format read by grain.

A prepared split lives in one directory::

    DIR/manifest-<split>.json                     the manifest (written last, atomically)
    DIR/<split>-00000-of-00004.array_record       the shards: ArrayRecord files, group_size:1

Record encoding (fixed, no pickle), version 1: ``b"FMR1"``, the label as int32 little-endian,
then the example's bytes in C order, little-endian, of the manifest's ``example_shape`` and
``dtype``: uint8 HWC for images (kind "image", pixel v -> v / 255 * 2 - 1 when read), float16 or
float32 for latents (kind "latent", read as float32, values unchanged).  A record is
``8 + prod(example_shape) * itemsize`` bytes.

Manifest (JSON): ``format``, ``format_version``, ``kind``, ``split``, ``example_shape``,
``dtype``, ``num_examples``, ``num_classes`` (0: unlabelled, labels all 0), ``class_names``,
``source`` (what the shards were made from), ``writer_options`` and ``shards``: a list of
``{"file", "num_records", "num_bytes", "crc32"}`` (CRC-32 of the whole file, 8 hex digits).
Global record r is record r - (records of the shards before it) of its shard.

Integrity: riegeli (ArrayRecord's container) hashes every chunk, so a changed byte in a record
fails when that record is read; a truncated shard is caught by its size against the manifest
when the split is opened; ``verify_checksums`` also compares the CRC-32 of every shard (a full
read of the data).  Shards are written under temporary names and renamed once complete; the
manifest is written after them with `fileio.write_atomic`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import zlib
from typing import Any, Iterable

import numpy as np

from flowmatch import fileio

logger = logging.getLogger(__name__)

FORMAT = "flowmatch.arrayrecord"
FORMAT_VERSION = 1
MAGIC = b"FMR1"
HEADER_BYTES = 8  # MAGIC + int32 label
KINDS = ("image", "latent")
DTYPES = {"image": ("uint8",), "latent": ("float16", "float32")}
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access reads only that record
SHARD_SUFFIX = ".array_record"
_CRC_CHUNK = 1 << 22
_INSTALL_HINT = "pip install 'grain>=0.2.18' 'array-record>=0.8.6' (or pip install -e '.[grain]')"


class DamagedDataError(ValueError):
    """A shard or record that cannot be used; the message names the file and what to do."""


def array_record_module():
    """The ArrayRecord reader/writer module; ImportError with the install command otherwise."""
    try:
        from array_record.python import array_record_module as module
    except ImportError as e:
        raise ImportError(f"ArrayRecord shards need array-record: {_INSTALL_HINT}") from e
    return module


def manifest_path(directory: str | os.PathLike, split: str) -> str:
    return os.path.join(os.fspath(directory), f"manifest-{split}.json")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


# ------------------------------------------------------------------------------------ records


def encode_record(example: np.ndarray, label: int, dtype: np.dtype) -> bytes:
    """MAGIC + int32 LE label + example bytes (C order, little-endian ``dtype``)."""
    data = np.ascontiguousarray(example, dtype=np.dtype(dtype).newbyteorder("<"))
    return MAGIC + struct.pack("<i", int(label)) + data.tobytes()


def decode_record(record: bytes, shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, int]:
    """Inverse of `encode_record`: (example [*shape] of ``dtype``, label); ValueError when the
    record is not one (wrong length or magic)."""
    dt = np.dtype(dtype).newbyteorder("<")
    want = HEADER_BYTES + int(np.prod(shape)) * dt.itemsize
    if len(record) != want or record[:4] != MAGIC:
        raise ValueError(f"not a flowmatch record of shape {list(shape)} {dtype}: "
                         f"{len(record)} bytes starting {bytes(record[:4])!r}, expected {want} "
                         f"starting {MAGIC!r}")
    label = struct.unpack_from("<i", record, 4)[0]
    return np.frombuffer(record, dt, offset=HEADER_BYTES).reshape(shape), label


def decode_records(records: list, shape: tuple[int, ...],
                   dtype: str) -> tuple[np.ndarray, np.ndarray] | None:
    """`decode_record` of many records at once: (x [m, *shape] of ``dtype``, read-only, label
    [m] int32), or None when any of them is not a well-formed record (then decode them one by
    one to find which)."""
    dt = np.dtype(dtype).newbyteorder("<")
    size = HEADER_BYTES + int(np.prod(shape)) * dt.itemsize
    if not all(isinstance(r, bytes) and len(r) == size for r in records):
        return None
    rows = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), size)
    if not np.all(rows[:, :4] == np.frombuffer(MAGIC, np.uint8)):
        return None
    label = np.ascontiguousarray(rows[:, 4:HEADER_BYTES]).view("<i4")[:, 0].astype(np.int32)
    x = rows[:, HEADER_BYTES:]  # uint8: a view, no copy
    if dt != np.uint8:
        x = np.ascontiguousarray(x).view(dt)
    return x.reshape(len(records), *shape), label


# ----------------------------------------------------------------------------------- manifest


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str  # name inside the directory
    num_records: int
    num_bytes: int
    crc32: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A prepared split (see the module docstring); ``directory`` is where it was read from."""

    directory: str
    kind: str
    split: str
    example_shape: tuple[int, ...]
    dtype: str
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...]
    shards: tuple[Shard, ...]
    source: dict
    writer_options: str = WRITER_OPTIONS

    def shard_path(self, shard: Shard) -> str:
        return os.path.join(self.directory, shard.file)

    def fingerprint(self) -> str:
        """CRC-32 (8 hex digits) of the shards' names, counts and checksums."""
        text = json.dumps([dataclasses.astuple(s) for s in self.shards])
        return f"{zlib.crc32(text.encode()):08x}"

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                "split": self.split, "example_shape": list(self.example_shape),
                "dtype": self.dtype, "num_examples": self.num_examples,
                "num_classes": self.num_classes, "class_names": list(self.class_names),
                "record_encoding": "b'FMR1' + int32 LE label + C-order LE example bytes",
                "source": self.source, "writer_options": self.writer_options,
                "shards": [dataclasses.asdict(s) for s in self.shards]}


def _bad_manifest(path: str, what: str) -> DamagedDataError:
    return DamagedDataError(f"{path} is not a usable manifest ({what}); prepare the split again "
                            "with scripts/prepare_data.py")


def read_manifest(directory: str | os.PathLike, split: str = "train") -> Manifest:
    """The manifest of ``split`` in ``directory``, checked for consistency.

    FileNotFoundError when there is none (the message lists the splits that exist);
    DamagedDataError when it cannot be parsed or disagrees with itself.
    """
    directory = os.path.expanduser(os.fspath(directory))
    path = manifest_path(directory, split)
    if not os.path.isfile(path):
        found = sorted(n[len("manifest-"):-len(".json")] for n in
                       (os.listdir(directory) if os.path.isdir(directory) else ())
                       if n.startswith("manifest-") and n.endswith(".json"))
        raise FileNotFoundError(
            f"no prepared split {split!r} in {directory!r} (no {os.path.basename(path)}; splits "
            f"there: {', '.join(found) or 'none'}); write it with scripts/prepare_data.py "
            f"--output={directory} --split={split}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get("format") != FORMAT:
            raise _bad_manifest(path, f"format {raw.get('format')!r}, expected {FORMAT!r}")
        if raw.get("format_version") != FORMAT_VERSION:
            raise _bad_manifest(path, f"format_version {raw.get('format_version')!r}; this "
                                f"flowmatch reads version {FORMAT_VERSION}")
        shards = tuple(Shard(str(s["file"]), int(s["num_records"]), int(s["num_bytes"]),
                             str(s["crc32"])) for s in raw["shards"])
        manifest = Manifest(
            directory=directory, kind=raw["kind"], split=raw["split"],
            example_shape=tuple(int(d) for d in raw["example_shape"]), dtype=raw["dtype"],
            num_examples=int(raw["num_examples"]), num_classes=int(raw["num_classes"]),
            class_names=tuple(raw.get("class_names", ())), shards=shards,
            source=dict(raw.get("source", {})),
            writer_options=raw.get("writer_options", WRITER_OPTIONS))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, DamagedDataError):
            raise
        raise _bad_manifest(path, f"{type(e).__name__}: {e}") from None
    if manifest.kind not in KINDS or manifest.dtype not in DTYPES[manifest.kind]:
        raise _bad_manifest(path, f"kind {manifest.kind!r} with dtype {manifest.dtype!r}")
    if sum(s.num_records for s in shards) != manifest.num_examples or not shards:
        raise _bad_manifest(path, f"the shards hold {sum(s.num_records for s in shards)} records, "
                            f"num_examples is {manifest.num_examples}")
    if manifest.split != split:
        raise _bad_manifest(path, f"it describes split {manifest.split!r}")
    return manifest


# --------------------------------------------------------------------------------- checking


def file_crc32(path: str) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def check_shard(manifest: Manifest, shard: Shard, verify_checksum: bool = False) -> str | None:
    """What is wrong with ``shard`` (missing, size differs from the manifest: truncated or
    changed, CRC-32 differs with ``verify_checksum``), or None when it looks intact."""
    path = manifest.shard_path(shard)
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size != shard.num_bytes:
        return (f"{size} bytes, the manifest says {shard.num_bytes} "
                f"({'truncated' if size < shard.num_bytes else 'changed'})")
    if verify_checksum:
        crc = file_crc32(path)
        if crc != shard.crc32:
            return f"CRC-32 {crc}, the manifest says {shard.crc32} (changed bytes)"
    return None


def damaged_shard_error(path: str, problem: str) -> DamagedDataError:
    return DamagedDataError(
        f"damaged shard {path}: {problem}; prepare the split again with "
        "scripts/prepare_data.py (or copy the shard again), or set data.skip_bad=True to "
        "train without it")


def usable_shards(manifest: Manifest, *, verify_checksums: bool = False,
                  skip_bad: bool = False) -> tuple[tuple[Shard, ...], tuple[str, ...]]:
    """(intact shards, names of the skipped ones).  A damaged shard (`check_shard`) raises
    DamagedDataError naming it unless ``skip_bad``, which leaves it out with a warning."""
    good, skipped = [], []
    for shard in manifest.shards:
        problem = check_shard(manifest, shard, verify_checksums)
        if problem is None:
            good.append(shard)
            continue
        if not skip_bad:
            raise damaged_shard_error(manifest.shard_path(shard), problem)
        logger.warning("skipping shard %s (%d records): %s", manifest.shard_path(shard),
                       shard.num_records, problem)
        skipped.append(shard.file)
    if not good:
        raise DamagedDataError(f"no intact shard of split {manifest.split!r} in "
                               f"{manifest.directory} ({len(skipped)} damaged); prepare it again "
                               "with scripts/prepare_data.py")
    return tuple(good), tuple(skipped)


# ------------------------------------------------------------------------------------ writing


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """What every record of a split holds: kind, example shape and stored dtype."""

    kind: str
    example_shape: tuple[int, ...]
    dtype: str


def write_split(output: str | os.PathLike, split: str, examples: Iterable, num_inputs: int,
                spec: ExampleSpec, *, num_classes: int, class_names: tuple[str, ...] = (),
                source: dict | None = None, num_shards: int = 1,
                overwrite: bool = False) -> Manifest:
    """Writes ``examples`` as ``num_shards`` shards of ``split`` in ``output`` plus the manifest.

    ``examples`` yields ``num_inputs`` items, each ``(example, label)`` or None (an input left
    out); input j goes to shard ``j * num_shards // num_inputs`` so shards hold contiguous runs
    in input order.  Shards are written under temporary names and renamed when all are done,
    then the manifest is written atomically; on any error everything this call wrote is removed
    (``output`` too if it created it) and the error propagates.  A split that exists already
    is refused unless ``overwrite``, which replaces it (old shards are deleted after the new
    manifest is in place).
    """
    if spec.kind not in KINDS or spec.dtype not in DTYPES[spec.kind]:
        raise ValueError(f"kind {spec.kind!r} stores {', '.join(DTYPES.get(spec.kind, ()))}; "
                         f"got dtype {spec.dtype!r}")
    if not isinstance(num_shards, (int, np.integer)) or not 1 <= num_shards <= max(num_inputs, 1):
        raise ValueError(f"num_shards must be in [1, {max(num_inputs, 1)}] (one record at least "
                         f"per shard for {num_inputs} inputs), got {num_shards!r}")
    output = os.path.expanduser(os.fspath(output))
    mpath = manifest_path(output, split)
    if os.path.exists(mpath) and not overwrite:
        raise ValueError(f"{output} already holds split {split!r} ({os.path.basename(mpath)}); "
                         "choose another output directory or pass --overwrite to replace it")
    old = read_manifest(output, split) if os.path.exists(mpath) else None
    created = not os.path.isdir(output)
    os.makedirs(output, exist_ok=True)
    names = [shard_name(split, s, num_shards) for s in range(num_shards)]
    temps = [os.path.join(output, fileio.TEMP_PREFIX + n) for n in names]
    finals = [os.path.join(output, n) for n in names]
    renamed: list[str] = []
    try:
        counts = _write_shards(temps, examples, num_inputs, spec)
        if sum(counts) == 0:
            raise ValueError(f"no example of split {split!r} could be written (all "
                             f"{num_inputs} inputs were left out)")
        shards = tuple(Shard(n, c, os.path.getsize(t), file_crc32(t))
                       for n, c, t in zip(names, counts, temps))
        manifest = Manifest(output, spec.kind, split, tuple(spec.example_shape), spec.dtype,
                            sum(counts), int(num_classes), tuple(class_names), shards,
                            dict(source or {}))
        if old is not None:
            os.remove(mpath)  # the old shards are about to be replaced
        for t, f in zip(temps, finals):
            os.replace(t, f)
            renamed.append(f)
        text = json.dumps(manifest.to_json(), indent=1).encode()
        fileio.write_atomic(mpath, lambda f: f.write(text))
    except BaseException:
        for path in temps + renamed:
            if os.path.exists(path):
                os.remove(path)
        if created and not os.listdir(output):
            os.rmdir(output)
        raise
    for shard in (old.shards if old is not None else ()):
        if shard.file not in names and os.path.exists(old.shard_path(shard)):
            os.remove(old.shard_path(shard))
    return manifest


def _write_shards(paths: list[str], examples: Iterable, num_inputs: int,
                  spec: ExampleSpec) -> list[int]:
    """Streams ``examples`` into the shard files ``paths``; returns the records per shard."""
    module = array_record_module()
    counts = [0] * len(paths)
    shape = tuple(spec.example_shape)
    writer, current, seen = None, -1, 0
    try:
        for j, item in enumerate(examples):
            seen = j + 1
            s = j * len(paths) // max(num_inputs, 1)
            while current < s:  # also opens shards that end up empty, so every name exists
                if writer is not None:
                    writer.close()
                current += 1
                writer = module.ArrayRecordWriter(paths[current], WRITER_OPTIONS)
            if item is None:
                continue
            example, label = item
            if tuple(example.shape) != shape:
                raise ValueError(f"input {j} has shape {list(example.shape)}, expected "
                                 f"{list(shape)}")
            writer.write(encode_record(example, label, spec.dtype))
            counts[current] += 1
        while current < len(paths) - 1:
            if writer is not None:
                writer.close()
            current += 1
            writer = module.ArrayRecordWriter(paths[current], WRITER_OPTIONS)
    finally:
        if writer is not None:
            writer.close()
    if seen != num_inputs:
        raise ValueError(f"expected {num_inputs} inputs, got {seen}")
    return counts


def read_all(directory: str | os.PathLike, split: str = "train") -> dict[str, Any]:
    """Every record of ``split`` in order, as stored: {"x": [N, *shape] of the stored dtype,
    "label": [N] int32}.  For checks and small sets (it holds everything in memory)."""
    manifest = read_manifest(directory, split)
    module = array_record_module()
    xs, labels = [], []
    for shard in manifest.shards:
        problem = check_shard(manifest, shard)
        if problem is not None:
            raise damaged_shard_error(manifest.shard_path(shard), problem)
        reader = module.ArrayRecordReader(manifest.shard_path(shard))
        try:
            for record in reader.read_all():
                x, label = decode_record(record, manifest.example_shape, manifest.dtype)
                xs.append(x)
                labels.append(label)
        finally:
            reader.close()
    return {"x": np.stack(xs), "label": np.asarray(labels, np.int32)}
