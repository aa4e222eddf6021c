"""Network evaluations in cache-sized row chunks, inside one XLA program.

A sampler evaluates its network on the whole batch at every stage.  Past a few thousand rows the
activations ([rows, width] per layer) no longer fit in the CPU's caches and every layer streams
them through memory; evaluated in chunks of `CHUNK_ROWS` rows (a `lax.map`, one compiled body)
they stay in cache.  Rows are independent, so the result is the same function of each row (equal
up to float round-off of the matmul kernels chosen for another row count); the number of
evaluations, the solver (fixed-grid or adaptive: its step control still sees the whole batch),
the randomness of stochastic samplers and guidance are untouched, since only the network call
is split.

Chunk c holds rows c, c + k, c + 2k, ... (k chunks): a batch whose rows are split over devices
keeps each device's rows on that device in every chunk, so no chunk gathers across devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Rows per chunk: [2048, 256] float32 activations are 2 MiB, the size of this project's CPUs'
# L2 caches together (2 x 1 MiB); a measured sweep is in docs/sampling.md ("speed").
CHUNK_ROWS = 2048


def check_chunk_rows(chunk_rows) -> None:
    """ValueError unless chunk_rows is None (no chunking) or an int >= 1."""
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int)
                                   or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be None (evaluate the whole batch at once) or a "
                         f"positive number of rows, e.g. {CHUNK_ROWS}; got {chunk_rows!r}")


def num_chunks(n: int, chunk_rows: int | None) -> int:
    """k = ceil(n / chunk_rows) chunks of ceil(n / k) rows (1 when chunk_rows is None)."""
    return 1 if chunk_rows is None else max(1, -(-n // chunk_rows))


def apply_rows(apply, params, x, t, cond, chunk_rows: int | None):
    """apply(params, x [B, ...], t [B] or scalar, cond [B] or None) -> [B, ...], in row chunks.

    With k = num_chunks(B, chunk_rows) > 1: the rows are padded to k m (m = ceil(B / k), so at
    most k - 1 padded rows, copies of row 0), strided into [k, m, ...] (chunk c = rows c, c + k,
    ...), mapped with lax.map and put back in order.  A scalar t goes to every chunk as it is.
    """
    n = x.shape[0]
    k = num_chunks(n, chunk_rows)
    if k == 1:
        return apply(params, x, t, cond)
    m = -(-n // k)
    rows = {"x": x, "cond": cond} if jnp.ndim(t) == 0 else {"x": x, "t": t, "cond": cond}

    def split(a):
        if k * m > n:  # pad with copies of the first row: any valid input will do
            a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (k * m - n, *a.shape[1:]))])
        return jnp.swapaxes(a.reshape(m, k, *a.shape[1:]), 0, 1)

    def one(chunk):
        return apply(params, chunk["x"], chunk.get("t", t), chunk["cond"])

    out = lax.map(one, jax.tree.map(split, rows))  # [k, m, ...]
    return jnp.swapaxes(out, 0, 1).reshape(k * m, *out.shape[2:])[:n]
