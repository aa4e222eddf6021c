"""Data sources and deterministic, resumable, shardable batch iterators.

Global batch ``i`` (``batch_size`` rows) is a pure function of ``(seed, i)``, so an iterator is
resumed from one integer (the number of global batches consumed) and every process of a
multi-host run computes the same global batch and keeps its own rows:

- toy2d: ``sample(fold_in(PRNGKey(seed), i), batch_size)``, computed on device under jit, with
  the natural labels of the same draws (`toy2d.ToySpec.sample_labeled`);
- images: an endless stream over epochs.  Global example position p = i * batch_size + j lies in
  epoch e = p // N and is example ``perm_e[p % N]`` with ``perm_e =
  np.random.default_rng([seed, e]).permutation(N)``; with ``random_flip`` it is mirrored left-right
  iff ``np.random.default_rng([seed, e, 1]).integers(0, 2, N)[p % N] == 1``;
- pairs (``flowmatch.data.pairs``, the data of reflow): the same epoch stream over N (x0, x1)
  pairs, without flips; their batches also carry ``"x0"``.

Process k of P gets rows [k B / P, (k + 1) B / P) of each global batch, so the processes' rows
concatenated in process order are exactly the single-process batch.
"""
from __future__ import annotations

import collections
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import threefry
from flowmatch.data import images as images_lib
from flowmatch.data import pairs as pairs_lib
from flowmatch.data import toy2d

DATASETS: tuple[str, ...] = tuple(toy2d.TOY_DATASETS) + tuple(images_lib.IMAGE_DATASETS)

_MAX_SEED = 2**31 - 1  # seeds travel as int32 into jitted code
_EPOCH_CACHE_SIZE = 4


def _check_seed(seed: Any) -> int:
    if (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)
            or not 0 <= seed <= _MAX_SEED):
        raise ValueError(f"seed must be an int in [0, 2**31 - 1], got {seed!r}")
    return int(seed)


class ToySource:
    """A 2-D toy distribution: infinite, freshly sampled, examples float32 [2] with their natural
    labels in 0 .. num_classes - 1 (see `flowmatch.data.toy2d`)."""

    kind = "toy2d"
    example_shape = (2,)
    num_examples = None

    def __init__(self, name: str):
        spec = toy2d.toy_spec(name)
        self.name = name
        self.sample = spec.sample
        self.sample_labeled = spec.sample_labeled
        self.num_classes = spec.num_classes
        self.box = toy2d.toy_box(name)

    def sample_reference(self, key_or_seed: jax.Array | int, n: int) -> jax.Array:
        """Fresh float32 [n, 2] data: ``sample(key, n)``; an int seed means ``PRNGKey(seed)``."""
        key = key_or_seed
        if isinstance(key_or_seed, (int, np.integer)):
            key = jax.random.PRNGKey(_check_seed(key_or_seed))
        return self.sample(key, int(n))

    def __repr__(self) -> str:
        return f"ToySource({self.name!r})"


class ImageSource:
    """An in-memory image dataset: x [N, H, W, C] float32 in [-1, 1], labels int32.

    Serves the epoch stream of the module docstring; ``random_flip`` mirrors examples left-right
    with probability 1/2, fixed by (seed, position).
    """

    kind = "image"
    box = None

    def __init__(self, name: str, data: images_lib.ImageDataset, *, random_flip: bool = False,
                 reference_loader: Callable[[], np.ndarray] | None = None):
        if data.x.ndim != 4 or data.label.shape != data.x.shape[:1]:
            raise ValueError(
                f"image data must be x [N, H, W, C] with labels [N], got {data.x.shape} and "
                f"{data.label.shape}")
        if len(data.x) == 0:
            raise ValueError(f"dataset {name!r} is empty")
        self.name = name
        self.data = data
        self.random_flip = bool(random_flip)
        self.example_shape = tuple(data.x.shape[1:])
        self.num_classes = data.num_classes
        self.num_examples = len(data.x)
        self._reference_loader = reference_loader
        self._reference = None
        self._epochs: collections.OrderedDict = collections.OrderedDict()

    def sample_reference(self, key_or_seed: Any, n: int) -> np.ndarray:
        """The first ``n`` held-out images (test split), or of the data in a fixed shuffled order
        when there is no held-out split (image folders).  ``key_or_seed`` is unused: the
        reference set is fixed so that metrics are comparable across runs.  [n, H, W, C]."""
        del key_or_seed
        if self._reference is None:
            if self._reference_loader is not None:
                ref = self._reference_loader()
            else:
                ref = self.data.x[np.random.default_rng(0).permutation(self.num_examples)]
            ref = np.array(ref, dtype=np.float32)  # a private copy, read-only
            ref.flags.writeable = False
            self._reference = ref
        if not 0 < n <= len(self._reference):
            raise ValueError(
                f"asked for {n} reference images of {self.name!r}, which has "
                f"{len(self._reference)}; ask for 1..{len(self._reference)}")
        return self._reference[:n]

    def _epoch(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(permutation [N], flip bits [N] or None) of ``epoch``; a few recent epochs cached."""
        key = (seed, epoch)
        if key in self._epochs:
            self._epochs.move_to_end(key)
            return self._epochs[key]
        perm = np.random.default_rng([seed, epoch]).permutation(self.num_examples)
        flip = (np.random.default_rng([seed, epoch, 1]).integers(0, 2, self.num_examples)
                .astype(bool) if self.random_flip else None)
        self._epochs[key] = (perm, flip)
        if len(self._epochs) > _EPOCH_CACHE_SIZE:
            self._epochs.popitem(last=False)
        return perm, flip

    def examples(self, seed: int, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Examples at global stream positions (int [m]): x [m, H, W, C], label [m]."""
        n = self.num_examples
        index = np.empty(positions.shape, dtype=np.int64)
        flip = np.zeros(positions.shape, dtype=bool)
        epochs = positions // n
        for e in np.unique(epochs):
            sel = epochs == e
            perm, flips = self._epoch(seed, int(e))
            index[sel] = perm[positions[sel] % n]
            if flips is not None:
                flip[sel] = flips[positions[sel] % n]
        x = self.data.x[index]
        if flip.any():
            x[flip] = x[flip, :, ::-1, :]
        return {"x": x, "label": self.data.label[index]}

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, {self.num_examples} examples of {self.example_shape})"


def make_source(
    name: str,
    *,
    split: str = "train",
    path: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int = 3,
    random_flip: bool = False,
    skip_bad: bool = False,
) -> ToySource | ImageSource | pairs_lib.PairSource:
    """The data source ``name`` (one of :data:`DATASETS`).

    Toy datasets ignore every other argument.  Image datasets load ``split`` into memory;
    ``path`` (``""`` counts as unset) is required for cifar10 / image_folder, ``image_size``
    (``0`` counts as unset) for image_folder; ``channels`` applies to image folders,
    ``skip_bad`` (leave unreadable files out, counted) to image folders and cifar10.
    ``"pairs"`` loads the (x0, x1) pairs in the directory ``path`` (`pairs.load_pairs`).
    """
    if name in toy2d.TOY_DATASETS:
        return ToySource(name)
    if name == "pairs":  # (x0, x1) pairs written by reflow: data.path is their directory
        return pairs_lib.load_pairs(path)
    if name == "arrayrecord":  # shards from scripts/prepare_data.py, streamed through grain
        from flowmatch.data import grain_pipeline  # pylint: disable=g-import-not-at-top
        grain_pipeline._grain()  # pylint: disable=protected-access  (fails early, with the fix)
        return grain_pipeline.ArrayRecordSource(path, split)
    if name not in images_lib.IMAGE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, pairs")
    info = images_lib.IMAGE_DATASETS[name]
    path = path if path not in (None, "") else None
    image_size = image_size or None
    if info.needs_path and path is None:
        raise ValueError(
            f"dataset {name!r} needs a path: set --config.data.path=..."
            + (f" (download it from {images_lib.CIFAR10_URL})" if name == "cifar10" else ""))
    kwargs = dict(path=path, image_size=image_size, channels=channels, skip_bad=skip_bad)
    data = images_lib.load_image_dataset(name, split=split, **kwargs)
    reference_loader = None
    if info.has_test_split:
        if split == "test":
            reference_loader = lambda: data.x  # noqa: E731
        else:
            reference_loader = lambda: images_lib.load_image_dataset(  # noqa: E731
                name, split="test", **kwargs).x
    return ImageSource(name, data, random_flip=random_flip, reference_loader=reference_loader)


@functools.lru_cache(maxsize=None)
def _toy_batch_fns(sample: Callable, labeled: Callable | None, batch_size: int, lo: int, hi: int):
    """Jitted (one batch, k batches) functions of (seed, start index) for one sampler and shard.

    labeled(key, n) -> (points, labels), the points those of sample(key, n); None: labels 0."""

    def one(seed, index):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
        if labeled is None:
            return {"x": sample(key, batch_size)[lo:hi], "label": jnp.zeros((hi - lo,), jnp.int32)}
        x, label = labeled(key, batch_size)
        return {"x": x[lo:hi], "label": label[lo:hi]}

    def many(seed, start, k):
        indices = start + jnp.arange(k, dtype=jnp.int32)
        return jax.vmap(one, in_axes=(None, 0))(seed, indices)

    # `many` (a train call's batches) is lowered with the unrolled hash where the scripts ask for
    # it (`threefry.hot_program`): XLA:CPU compiles it faster so (moons, 100 batches of 256:
    # 1.65 s against 2.92 s; checkerboard 1.29 s against 2.83 s), and it runs as fast.
    return jax.jit(one), threefry.hot_program(jax.jit(many, static_argnums=2))


class BatchIterator:
    """Deterministic, resumable iterator over global batches of ``source``.

    ``next(it)`` returns ``it.batch(it.index)`` and advances; ``state()`` / ``restore(state)``
    save and set ``{"index": int}``, the number of global batches consumed.  Batches are dicts:
    ``"x"`` float32 [local_batch, *example_shape], ``"label"`` int32 [local_batch] (a toy set's
    natural labels; zeros for a fresh source without labels), with local_batch = batch_size / process_count, and for pairs ``"x0"`` like ``"x"``.
    Toy batches are jax arrays computed under jit; image and pair batches are NumPy arrays.
    """

    def __init__(self, source, batch_size: int, seed: int, index: int = 0,
                 process_index: int = 0, process_count: int = 1):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(process_count, (int, np.integer)) or process_count < 1:
            raise ValueError(f"process_count must be a positive int, got {process_count!r}")
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index must be in [0, {process_count}), got {process_index!r}")
        if batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by process_count={process_count}; "
                "choose a global batch size that is a multiple of the number of processes")
        self.source = source
        self.batch_size = int(batch_size)
        self.seed = _check_seed(seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch_size = self.batch_size // self.process_count
        self._lo = self.process_index * self.local_batch_size
        self._hi = self._lo + self.local_batch_size
        self.index = self._check_index(index)
        # Toy sources sample fresh points on device; finite sets (images, pairs) serve examples.
        self._fresh = not hasattr(source, "examples")
        if self._fresh:
            self._single, self._many = _toy_batch_fns(
                source.sample, getattr(source, "sample_labeled", None), self.batch_size,
                self._lo, self._hi)

    @staticmethod
    def _check_index(index: Any) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
            raise ValueError(f"batch index must be a non-negative int, got {index!r}")
        return int(index)

    def _image_positions(self, start: int, k: int) -> np.ndarray:
        rows = np.arange(self._lo, self._hi, dtype=np.int64)
        batches = np.arange(start, start + k, dtype=np.int64)
        return (batches[:, None] * self.batch_size + rows[None, :]).reshape(-1)

    def batch(self, i: int) -> dict[str, Any]:
        """Global batch ``i`` (this process's rows), a pure function of (seed, i)."""
        i = self._check_index(i)
        if self._fresh:
            return self._single(self.seed, i)
        return self.source.examples(self.seed, self._image_positions(i, 1))

    def batches(self, i: int, k: int) -> dict[str, Any]:
        """Global batches i..i+k-1 stacked: x [k, local_batch, ...], label [k, local_batch]."""
        i = self._check_index(i)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"number of batches k must be a positive int, got {k!r}")
        if self._fresh:
            return self._many(self.seed, i, int(k))
        out = self.source.examples(self.seed, self._image_positions(i, k))
        return {name: v.reshape(k, self.local_batch_size, *v.shape[1:]) for name, v in out.items()}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        out = self.batch(self.index)
        self.index += 1
        return out

    def next_batches(self, k: int) -> dict[str, Any]:
        """The next k global batches stacked (`batches(index, k)`), advancing the position."""
        out = self.batches(self.index, k)
        self.index += int(k)
        return out

    def state(self) -> dict[str, int]:
        """JSON-serialisable position: ``{"index": number of global batches consumed}``."""
        return {"index": self.index}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state`."""
        if not isinstance(state, dict) or "index" not in state:
            raise ValueError(f"expected a data iterator state {{'index': int}}, got {state!r}")
        self.index = self._check_index(state["index"])
