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
