"""Streaming prepared ArrayRecord splits (`flowmatch.data.arrayrecord`) through grain.

When to use which:
- in memory (`flowmatch.data.pipeline.make_source`): the 2-D toys, digits, the MNIST subset,
  CIFAR-10 and image folders that fit in host memory comfortably (the whole split is decoded
  to float32 once, 12 KiB per 32x32x3 image);
- grain (this module): data that does not fit (ImageNet-size folders, precomputed latents), or
  whose decoding should run in worker processes.  Prepare it once with
  ``scripts/prepare_data.py``; each process then reads only the records of its own rows.

The stream is the in-memory pipeline's, so the same records and seed give the same batches
whichever you use (a prepared image folder or CIFAR-10 keeps the loader's order).  With N
records, global stream position p lies in epoch e = p // N and is record
``perm_e[p % N]``, ``perm_e = np.random.default_rng([seed, e]).permutation(N)``; with
``random_flip`` it is mirrored left-right iff ``np.random.default_rng([seed, e, 1]).integers(0,
2, N)[p % N] == 1`` (a function of (seed, epoch, record)).  A global batch of B rows starting at
position s covers positions [s, s + B); process k of P keeps rows [k B / P, (k + 1) B / P) and
reads only their records.  So the global batch sequence does not depend on P nor on the number
of worker processes, and over the positions of an epoch the processes read every record once.

Worker processes (grain ``mp_prefetch``) each build whole local batches (read, decode, flip,
convert), handed back in order.  Output: images float32 NHWC in [-1, 1] (v / 255 * 2 - 1),
latents float32 as stored; labels int32.

State: ``{"position": s, ...}``, the next batch's first global position, is all the stream
needs: restoring it rebuilds the grain pipeline at s, whatever worker_count, prefetch, process
count or batch size the new run uses.  (grain's own iterator state is not stored: with worker
processes it holds one position per worker, so it restores only into the same worker_count.)

Damage: a shard whose size differs from the manifest (truncated) or, with
``verify_checksums``, whose CRC-32 differs, stops the iterator when it opens; a record that
fails to read (riegeli's chunk hash) or to decode stops it when met.  Each raises
`arrayrecord.DamagedDataError` naming the file and what to do.  With ``skip_bad`` a damaged
shard is left out of every epoch (``skipped_shards``; the permutation is then over the records
left), and a damaged record's row is filled with the next good row of the same local batch, so
shapes and the stream stay fixed; ``num_skipped_reads`` counts such rows.
"""
from __future__ import annotations

import bisect
import collections
import logging
import os
from typing import Any

import numpy as np

from flowmatch.data import arrayrecord
from flowmatch.data import images as images_lib

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_MAX_SEED = 2**31 - 1
_EPOCH_CACHE = 2
_HORIZON = 2**40  # batches in the (endless) grain range; never reached
_PROBLEM_CHARS = 240
# float32 of each 8-bit value v, exactly as the in-memory loaders map it (v / 255 * 2 - 1).
_PIXEL_VALUES = images_lib._to_unit_range(np.arange(256), 255.0)  # pylint: disable=protected-access


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _PROBLEM_CHARS else text[:_PROBLEM_CHARS] + "..."


def _grain():
    try:
        import grain  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise ImportError("streaming ArrayRecord shards needs grain: pip install "
                          "'grain>=0.2.18' 'array-record>=0.8.6' (or pip install -e '.[grain]')"
                          ) from e
    return grain


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo
            or (hi is not None and value > hi)):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")
    return int(value)


class RecordReader:
    """Reads and decodes records of the intact shards of a split; picklable (grain workers).

    Record keys run over the intact shards only, in manifest order.  ``examples(keys)`` gives
    (x [m, *shape] in the stored dtype, label [m] int32, bad: [m] bool) where a bad row failed
    to read or decode (zeros); it raises DamagedDataError for the first bad row instead unless
    ``skip_bad``.
    """

    def __init__(self, manifest: arrayrecord.Manifest, shards: tuple, skip_bad: bool):
        self.paths = [manifest.shard_path(s) for s in shards]
        self.counts = [s.num_records for s in shards]
        self.ends = list(np.cumsum(self.counts))
        self.shape, self.dtype = tuple(manifest.example_shape), manifest.dtype
        self.num_classes = manifest.num_classes
        self.skip_bad = skip_bad
        self._source = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_source"] = None  # readers are opened again where used
        return state

    def __len__(self) -> int:
        return int(self.ends[-1])

    def where(self, key: int) -> tuple[str, int]:
        """(shard path, record number in it) of ``key``."""
        s = bisect.bisect_right(self.ends, key)
        return self.paths[s], int(key - (self.ends[s] - self.counts[s]))

    def _data_source(self):
        if self._source is None:
            # "path[0:n]" instructions: no shard is opened until it is read.
            self._source = _grain().sources.ArrayRecordDataSource(
                [f"{p}[0:{n}]" for p, n in zip(self.paths, self.counts)])
        return self._source

    def _read(self, keys: list[int]) -> list[bytes | Exception]:
        source = self._data_source()
        try:
            return list(source.__getitems__(keys))
        except Exception:  # noqa: BLE001 -- find which records fail, one at a time
            out = []
            for k in keys:
                try:
                    out.append(source[k])
                except Exception as e:  # noqa: BLE001 -- riegeli raises RuntimeError
                    out.append(e)
            return out

    def _decode(self, record) -> tuple[np.ndarray, int]:
        if isinstance(record, Exception):
            raise ValueError(f"unreadable: {type(record).__name__}: {record}")
        x, label = arrayrecord.decode_record(record, self.shape, self.dtype)
        if not 0 <= label < max(self.num_classes, 1):
            raise ValueError(f"label {label} outside [0, {max(self.num_classes, 1)})")
        return x, label

    def examples(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = [int(k) for k in keys]
        records = self._read(keys)
        bad = np.zeros(len(keys), bool)
        decoded = arrayrecord.decode_records(records, self.shape, self.dtype)
        if decoded is not None and np.all((decoded[1] >= 0)
                                          & (decoded[1] < max(self.num_classes, 1))):
            return decoded[0], decoded[1], bad
        x = np.zeros((len(keys), *self.shape), np.dtype(self.dtype))
        label = np.zeros(len(keys), np.int32)
        for j, record in enumerate(records):  # some record is bad: find which
            try:
                x[j], label[j] = self._decode(record)
            except ValueError as e:
                if not self.skip_bad:
                    path, n = self.where(keys[j])
                    raise arrayrecord.DamagedDataError(
                        f"damaged record {n} of shard {path} ({_one_line(e)}); prepare the "
                        "split again with scripts/prepare_data.py, or set data.skip_bad=True "
                        "to skip damaged records") from None
                bad[j] = True
        return x, label, bad

    def to_float32(self, x: np.ndarray) -> np.ndarray:
        """Stored examples -> float32: pixels v / 255 * 2 - 1 (as the in-memory loaders,
        through a table of the 256 values: one pass), latents unchanged."""
        if self.dtype == "uint8":
            return np.take(_PIXEL_VALUES, x)
        return x.astype(np.float32)


class BatchMaker:
    """Local batch j of a stream starting at global position ``start``: a pure function of
    (seed, start, j); picklable, called by grain (in worker processes when there are some).

    Returns {"x": [b, *shape] float32, "label": [b] int32, "bad": [m] int64 keys skipped}.
    """

    def __init__(self, reader: RecordReader, *, seed: int, start: int, global_batch_size: int,
                 rows: tuple[int, int], random_flip: bool):
        self.reader = reader
        self.seed, self.start, self.batch = seed, start, global_batch_size
        self.rows = rows
        self.random_flip = random_flip
        self._epochs: collections.OrderedDict = collections.OrderedDict()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_epochs"] = collections.OrderedDict()
        return state

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(permutation [N], flip bits [N] or None) of epoch e, as in flowmatch.data.pipeline."""
        if e not in self._epochs:
            n = len(self.reader)
            perm = np.random.default_rng([self.seed, e]).permutation(n)
            flip = (np.random.default_rng([self.seed, e, 1]).integers(0, 2, n).astype(bool)
                    if self.random_flip else None)
            self._epochs[e] = (perm, flip)
            if len(self._epochs) > _EPOCH_CACHE:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        n = len(self.reader)
        positions = self.start + int(j) * self.batch + np.arange(*self.rows, dtype=np.int64)
        keys = np.empty(positions.shape, np.int64)
        flip = np.zeros(positions.shape, bool)
        epochs = positions // n
        for e in np.unique(epochs):
            sel = epochs == e
            perm, flips = self._epoch(int(e))
            keys[sel] = perm[positions[sel] % n]
            if flips is not None:
                flip[sel] = flips[positions[sel] % n]
        x, label, bad = self.reader.examples(keys)
        if bad.any() or flip.any():
            x = np.array(x)  # a writable copy (the decoded records may be a read-only view)
        if bad.any():
            good = np.flatnonzero(~bad)
            if not len(good):
                path, record = self.reader.where(int(keys[0]))
                raise arrayrecord.DamagedDataError(
                    f"every record of a local batch is damaged (e.g. record {record} of {path}); "
                    "prepare the split again with scripts/prepare_data.py")
            for r in np.flatnonzero(bad):  # the next good row of this batch, cyclically
                src = good[np.searchsorted(good, r) % len(good)]
                x[r], label[r] = x[src], label[src]
        if flip.any():
            x[flip] = x[flip, :, ::-1, :]
        return {"x": self.reader.to_float32(x), "label": label, "bad": keys[bad]}


class GrainIterator:
    """This process's rows of consecutive global batches of a prepared split, through grain.

    Args:
      path: directory written by ``scripts/prepare_data.py`` (`flowmatch.data.prepare`).
      global_batch_size: B, rows of a global batch; a multiple of ``process_count``.
      seed: int in [0, 2**31 - 1]; fixes every epoch's permutation and flips.
      process_index, process_count: this process k and P (the trainer passes
        ``jax.process_index()``, ``jax.process_count()``); it keeps rows [k B/P, (k+1) B/P).
      worker_count: grain worker processes building batches; 0 builds them in this process
        (on one background thread when ``prefetch`` > 0).
      prefetch: batches buffered ahead (per worker when worker_count > 0); 0 for none.
      random_flip: mirror examples left-right with probability 1/2, fixed by (seed, position).
      skip_bad: leave damaged shards and records out (see the module docstring) instead of
        raising `arrayrecord.DamagedDataError`.
      split: which prepared split of ``path``.
      verify_checksums: compare every shard's CRC-32 with the manifest when opening (reads all
        the data once); sizes are always compared.

    ``next(it)``: {"x": float32 [b, *example_shape], "label": int32 [b]}, b = B / P.
    ``next_batches(k)``: k batches stacked, x [k, b, ...], label [k, b].
    ``state()`` / ``restore(state)``: a JSON-serialisable dict of the position after the
    batches handed out so far (not those prefetched).  ``close()`` stops the workers.
    """

    def __init__(self, path: str | os.PathLike, *, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                 prefetch: int = 2, random_flip: bool = False, skip_bad: bool = False,
                 split: str = "train", verify_checksums: bool = False):
        self.process_count = _check_int("process_count", process_count, 1)
        self.process_index = _check_int("process_index", process_index, 0, self.process_count - 1)
        self.global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
        if self.global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by process_count="
                f"{process_count}; choose a global batch size that is a multiple of the number "
                "of processes")
        self.seed = _check_int("seed", seed, 0, _MAX_SEED)
        self.worker_count = _check_int("worker_count", worker_count, 0)
        self.prefetch = _check_int("prefetch", prefetch, 0)
        self.random_flip, self.skip_bad = bool(random_flip), bool(skip_bad)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.manifest = arrayrecord.read_manifest(path, split)
        shards, self.skipped_shards = arrayrecord.usable_shards(
            self.manifest, verify_checksums=verify_checksums, skip_bad=self.skip_bad)
        self.reader = RecordReader(self.manifest, shards, self.skip_bad)
        self.kind = self.manifest.kind
        self.example_shape = self.manifest.example_shape
        self.num_classes = self.manifest.num_classes
        self.class_names = self.manifest.class_names
        self.num_examples = len(self.reader)  # records in the intact shards
        self.num_skipped_reads = 0
        self.position = 0
        self._iterator = None

    @property
    def num_skipped(self) -> int:
        """Records left out so far: those of skipped shards plus the skipped reads."""
        return self.manifest.num_examples - self.num_examples + self.num_skipped_reads

    def _start(self):
        grain = _grain()
        k = self.process_index * self.local_batch_size
        maker = BatchMaker(self.reader, seed=self.seed, start=self.position,
                           global_batch_size=self.global_batch_size,
                           rows=(k, k + self.local_batch_size), random_flip=self.random_flip)
        ds = grain.MapDataset.range(_HORIZON).map(maker).to_iter_dataset(
            grain.ReadOptions(num_threads=1 if self.prefetch else 0,
                              prefetch_buffer_size=self.prefetch))
        if self.worker_count:
            from absl import flags  # pylint: disable=g-import-not-at-top
            if not flags.FLAGS.is_parsed():  # grain 0.2.18's mp_prefetch reads an absl flag:
                flags.FLAGS.mark_as_parsed()  # outside an absl app (tests) use the defaults
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.worker_count, per_worker_buffer_size=max(self.prefetch, 1)))
        return iter(ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = self._start()
        out = next(self._iterator)
        self.num_skipped_reads += len(out["bad"])
        self.position += self.global_batch_size
        # Plain copies: worker batches arrive in shared memory, freed once these are made.
        return {"x": np.array(out["x"]), "label": np.array(out["label"])}

    def next_batches(self, k: int) -> dict[str, np.ndarray]:
        """The next ``k`` batches stacked: x [k, b, *example_shape], label [k, b]."""
        k = _check_int("number of batches k", k, 1)
        batches = [next(self) for _ in range(k)]
        return {name: np.stack([b[name] for b in batches]) for name in ("x", "label")}

    def state(self) -> dict[str, Any]:
        """{"version", "position": first global position of the next batch, "num_examples":
        records in use, "fingerprint": the manifest's shard fingerprint, "num_skipped_reads"}."""
        return {"version": STATE_VERSION, "position": self.position,
                "num_examples": self.num_examples, "fingerprint": self.manifest.fingerprint(),
                "num_skipped_reads": self.num_skipped_reads}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a `state`: the next batch is the one that followed it.  ValueError if
        it belongs to another data set; a warning if shards were skipped differently then."""
        if (not isinstance(state, dict) or state.get("version") != STATE_VERSION
                or "position" not in state):
            raise ValueError(f"expected a grain iterator state (version {STATE_VERSION}, with "
                             f"'position'), got {state!r}")
        if state.get("fingerprint") != self.manifest.fingerprint():
            raise ValueError(
                f"the saved data position is for another data set (shard fingerprint "
                f"{state.get('fingerprint')}; {self.manifest.directory} split "
                f"{self.manifest.split!r} has {self.manifest.fingerprint()}); point data.path "
                "at the data the run was trained on")
        if state.get("num_examples") != self.num_examples:
            logger.warning("the saved data position was taken over %s records, %d are usable "
                           "now (skipped shards: %s): the stream differs from the saved run's",
                           state.get("num_examples"), self.num_examples,
                           ", ".join(self.skipped_shards) or "none")
        self.close()
        self.position = _check_int("position", state["position"], 0)
        self.num_skipped_reads = _check_int("num_skipped_reads",
                                            state.get("num_skipped_reads", 0), 0)

    def close(self) -> None:
        """Stops the grain iterator (and its workers); the next batch starts a new one."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    def __repr__(self) -> str:
        return (f"GrainIterator({self.manifest.directory!r}, split={self.manifest.split!r}, "
                f"{self.num_examples} {self.kind}s of {self.example_shape}, rows "
                f"{self.process_index}/{self.process_count} of {self.global_batch_size})")


class ArrayRecordSource:
    """A prepared split's description for the trainer (``exp.source``): kind, example_shape,
    num_classes, num_examples, class_names, box=None, and a fixed reference set."""

    box = None

    def __init__(self, path: str | os.PathLike, split: str = "train"):
        self.path, self.split = os.fspath(path), split
        self.manifest = arrayrecord.read_manifest(path, split)
        self.name = "arrayrecord"
        self.kind = self.manifest.kind
        self.example_shape = self.manifest.example_shape
        self.num_classes = self.manifest.num_classes
        self.class_names = self.manifest.class_names
        self.num_examples = self.manifest.num_examples
        self._reference = None

    def sample_reference(self, key_or_seed: Any, n: int) -> np.ndarray:
        """The first ``n`` examples of the split "test" of the same directory when it has
        one, else of this split in the fixed order ``default_rng(0).permutation(N)``;
        float32 [n, *example_shape].  ``key_or_seed`` is unused (fixed, comparable metrics)."""
        del key_or_seed
        if os.path.exists(arrayrecord.manifest_path(self.path, "test")):
            manifest = arrayrecord.read_manifest(self.path, "test")
            order = np.arange(manifest.num_examples)
        else:
            manifest = self.manifest
            order = np.random.default_rng(0).permutation(manifest.num_examples)
        if not 0 < n <= len(order):
            raise ValueError(f"asked for {n} reference examples of {self.path} split "
                             f"{manifest.split!r}, which has {len(order)}; ask for "
                             f"1..{len(order)}")
        if self._reference is None or len(self._reference) < n:
            shards, _ = arrayrecord.usable_shards(manifest)
            reader = RecordReader(manifest, shards, skip_bad=False)
            x, _, _ = reader.examples(order[:n])
            self._reference = reader.to_float32(x)
            self._reference.flags.writeable = False
        return self._reference[:n]

    def __repr__(self) -> str:
        return (f"ArrayRecordSource({self.path!r}, split={self.split!r}, {self.num_examples} "
                f"{self.kind}s of {self.example_shape})")
