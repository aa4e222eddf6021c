"""Named random streams: independent keys for every purpose and every seed.

    key = rng.stream(jax.random.PRNGKey(seed), "reference")

A stream is `fold_in(key, id(name))` with id a 32-bit hash of the name, so two purposes never
share a key and seed s's streams are unrelated to seed s + 1's (unlike `PRNGKey(seed + 1)`,
whose draws are seed s + 1's draws).  Numbered sub-streams (chunk c, step k, row j) fold in
small integers after the name, `fold_in(stream(key, "noise"), c)`; the names' ids are 32-bit
hashes, far from such small integers.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np


def stream_id(name: str) -> int:
    """The 32-bit id of a stream name (CRC-32 of its UTF-8 bytes)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a stream name must be a non-empty string, got {name!r}")
    return zlib.crc32(name.encode())


def stream(key, name: str):
    """The key of the named stream under `key`: fold_in(key, stream_id(name))."""
    return jax.random.fold_in(key, stream_id(name))


def seed_stream(seed: int, name: str):
    """The named stream of an integer seed: stream(PRNGKey(seed), name)."""
    return stream(jax.random.PRNGKey(seed), name)


def normal_from_uniform(u):
    """N(0, 1) from U[0, 1) elementwise (inverse-CDF sampling): Phi^{-1}(u) =
    sqrt(2) erfinv(2u - 1), with 2u - 1 kept above -1 so u = 0 stays finite (jax.random.normal
    applies the same transform to its own uniforms on (-1, 1))."""
    u = jnp.asarray(u)
    lo = jnp.nextafter(jnp.asarray(-1.0, u.dtype), jnp.asarray(0.0, u.dtype))
    return jnp.sqrt(2.0).astype(u.dtype) * jax.lax.erf_inv(jnp.maximum(2.0 * u - 1.0, lo))


# jax.random.permutation sorts random 32-bit keys (key-value, stable) in as many rounds as it needs
# for n; XLA:CPU runs such a sort through a generic comparator, 2.7 ms for 100 rows of 256 on this
# project's CPU (a train call's moons batches: 13% of the 64 x 3 step), while a one-operand
# integer sort takes its fast path.  `permutation` gives the same integers by that route: 3.3 ->
# 0.87 ms for 100 x 256, 1.64 -> 0.79 ms for one 4,096, 28.6 -> 16.7 ms for one 65,536, but only
# 43 -> 38 ms at 100,000 (more high-bit ties to mend as n grows), hence the limit
# (docs/results/toy_batches_xeon_2330/bigperm.log).
FAST_PERMUTATION_MAX = 1 << 16


def permutation(key, n: int) -> jax.Array:
    """jax.random.permutation(key, n), the same integers and dtype, sorted faster on XLA:CPU.

    The same rounds and keys as jax's shuffle (round r sorts the current order stably by fresh
    32-bit keys from the r-th split of `key`); each round's stable order comes from
    `stable_argsort_u32`.  n above FAST_PERMUTATION_MAX takes jax.random.permutation itself.
    """
    n = int(n)
    if n > FAST_PERMUTATION_MAX:
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    x = jnp.arange(n)
    for _ in range(rounds):
        key, sub = jax.random.split(key)
        x = x[stable_argsort_u32(jax.random.bits(sub, (n,), jnp.uint32))]
    return x


def stable_argsort_u32(u: jax.Array) -> jax.Array:
    """The indices (int32) that sort uint32 `u` along its last axis, ties in index order: the
    order of the distinct pairs (u_i, i), so exactly jnp.argsort(u, stable=True).

    One sort of single 32-bit integers, u's high bits above the index's m = ceil(log2 n) bits:
    that orders the pairs by (u >> m, i), which is their true order unless two neighbours' high
    bits tie (for n = 256, some pair of a batch's keys shares its top 24 bits with probability
    about 2e-3).  Only then, odd-even transposition passes on the full pairs run until no
    neighbours are out of order (a sorted result is the unique order of distinct pairs, so it is
    exact whatever the passes do); the keys in sorted order are gathered only then (a gather
    is slower than the sort's fast path on XLA:CPU).
    """
    n = u.shape[-1]
    m = max(1, (n - 1).bit_length())
    axis = u.ndim - 1
    idx = jax.lax.broadcasted_iota(jnp.int32, u.shape, axis)
    packed = ((u >> m) << m) | idx.astype(jnp.uint32)
    # Flipping the sign bit maps uint32 order onto int32 order (the fast sort's type here).
    signed = jax.lax.sort(
        jax.lax.bitcast_convert_type(packed ^ jnp.uint32(1 << 31), jnp.int32), dimension=axis)
    order = signed & ((1 << m) - 1)
    high = signed >> m  # the high bits in sorted order (an arithmetic shift keeps their order)
    ties = jnp.any(high[..., :-1] == high[..., 1:])

    def before(k1, i1, k2, i2):  # (k1, i1) > (k2, i2): the pair is out of order
        return (k1 > k2) | ((k1 == k2) & (i1 > i2))

    def passes(carry):
        i, _ = carry
        k = jnp.take_along_axis(u, i, axis=axis)
        for start in (0, 1):  # neighbours (start + 2j, start + 2j + 1)
            pairs = (n - start) // 2
            if pairs == 0:
                continue
            stop = start + 2 * pairs
            kk = k[..., start:stop].reshape(*k.shape[:-1], pairs, 2)
            ii = i[..., start:stop].reshape(*i.shape[:-1], pairs, 2)
            swap = before(kk[..., 0], ii[..., 0], kk[..., 1], ii[..., 1])[..., None]
            kk = jnp.where(swap, kk[..., ::-1], kk).reshape(*k.shape[:-1], 2 * pairs)
            ii = jnp.where(swap, ii[..., ::-1], ii).reshape(*i.shape[:-1], 2 * pairs)
            k = jnp.concatenate([k[..., :start], kk, k[..., stop:]], axis=-1)
            i = jnp.concatenate([i[..., :start], ii, i[..., stop:]], axis=-1)
        return i, jnp.any(before(k[..., :-1], i[..., :-1], k[..., 1:], i[..., 1:]))

    return jax.lax.while_loop(lambda carry: carry[1], passes, (order, ties))[0]
