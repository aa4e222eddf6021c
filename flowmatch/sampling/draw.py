"""Drawing samples: source draws, a sampler, and chunking, with one key layout everywhere.

    draw = make_draw(sampler, source.sample, n)        # pure; jit it (or let `Chunked` do it)
    out = jax.jit(draw)(params, key, cond)               # Samples

Key layout (the same for every entry point, so the same run, key and settings give the same
samples): the source samples are source_sample(rng.stream(key, "source"), n) and the sampler's
own randomness is rng.stream(key, "sampler").  `Chunked` draws num_samples in equal chunks, chunk
c from fold_in(key, c), with one compilation, which `Chunked.compile_ahead` can start in a
background thread (a training run compiles its evaluation while it trains).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import rng
from flowmatch.sampling.records import Samples

SourceSample = Callable[[Any, int], jnp.ndarray]  # (key, n) -> [n, ...]


def make_draw(sampler: Callable, source_sample: SourceSample, n: int, *,
              with_source: bool = False, constrain: Callable | None = None) -> Callable:
    """draw(params, key, cond=None) -> Samples of n samples (x0 kept with `with_source`).

    constrain (optional) is applied to the source samples and labels before the sampler runs:
    the caller's device layout (e.g. a sharding constraint that splits the rows over a mesh).
    The sampler itself never sees devices.
    """
    constrain = constrain or (lambda v: v)

    def draw(params, key, cond=None):
        x0 = constrain(jnp.asarray(source_sample(rng.stream(key, "source"), n)))
        if cond is not None:
            cond = constrain(cond)
        out = sampler(params, x0, rng.stream(key, "sampler"), cond)
        return out.replace(x0=x0) if with_source else out

    return draw


class Chunked:
    """num_samples drawn in chunks of one size (one compilation), chunk c from fold_in(key, c).

    `__call__(params, key, labels=None)` returns Samples with NumPy arrays: x float32
    [num_samples, ...] (x0 likewise with with_source), nfe and steps the largest chunk's, success
    all of them.  labels: int [num_samples] class labels (cycled into the last chunk) or None.
    wrap: how the draw is compiled (default jax.jit; a device plan may pass its own); place: how
    each chunk's key and labels are put on the devices (default: as they are).
    """

    def __init__(self, sampler: Callable, source_sample: SourceSample, num_samples: int,
                 chunk_size: int, *, with_source: bool = False, constrain=None, wrap=jax.jit,
                 place: Callable | None = None):
        if num_samples < 1 or chunk_size < 1:
            raise ValueError(f"num_samples and chunk_size must be >= 1, got {num_samples}, "
                             f"{chunk_size}")
        self.num_samples = int(num_samples)
        self.chunk_size = min(int(chunk_size), self.num_samples)
        self.with_source = with_source
        self._place = place or (lambda tree: tree)
        self._draw = wrap(make_draw(sampler, source_sample, self.chunk_size,
                                    with_source=with_source, constrain=constrain))
        self._ahead = None  # the thread of compile_ahead, until a call waits for it

    def _chunk_args(self, key, labels, c: int):
        """The placed (key, cond) of chunk c."""
        cond = None
        if labels is not None:
            start = c * self.chunk_size
            cond = jnp.asarray(np.resize(np.asarray(labels)[start:start + self.chunk_size],
                                         self.chunk_size), jnp.int32)
        return self._place((jax.random.fold_in(key, c), cond))

    def compile_ahead(self, params, key, labels=None) -> None:
        """Compiles the chunk program in a background thread; the next call waits for it.

        params: arrays, or jax.ShapeDtypeStruct with the shardings the call's params will have
        (only shapes, dtypes and shardings are read: params may be donated meanwhile).  The
        program is lowered with the call's own arguments, so jit's cache serves the call; were
        it not served (other shardings), the call compiles as it would have.  An error in the
        thread is dropped: the call raises it again, where it can be handled.
        """
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params)
        args = self._chunk_args(key, labels, 0)

        def compile_draw():
            try:
                self._draw.lower(abstract, *args).compile()
            except Exception:  # noqa: BLE001 -- the call itself reports it
                pass

        self._ahead = threading.Thread(target=compile_draw, name="flowmatch-compile-ahead",
                                       daemon=True)
        self._ahead.start()

    def wait(self) -> None:
        """Waits for a `compile_ahead` in flight (a run that stops waits, rather than leave XLA
        compiling while the interpreter shuts down)."""
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None

    def __call__(self, params, key, labels=None) -> Samples:
        self.wait()
        n, size = self.num_samples, self.chunk_size
        xs, x0s, nfe, steps, ok = [], [], 0, 0, True
        for c in range(-(-n // size)):
            out = self._draw(params, *self._chunk_args(key, labels, c))
            xs.append(np.asarray(out.x, np.float32))
            if self.with_source:
                x0s.append(np.asarray(out.x0, np.float32))
            nfe = max(nfe, int(out.nfe))
            steps = max(steps, int(out.steps)) if out.steps is not None else steps
            ok = ok and bool(out.success)
        x0 = np.concatenate(x0s)[:n] if self.with_source else None
        return Samples(x=np.concatenate(xs)[:n], nfe=nfe, success=ok, x0=x0, steps=steps)
