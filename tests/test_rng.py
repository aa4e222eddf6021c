"""flowmatch.rng: named streams and the permutation that toy batches draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import rng


@pytest.mark.parametrize("n", [1, 2, 3, 7, 255, 256, 257, 1625, 1626, 4096, 2**16, 2**16 + 1])
def test_permutation_is_jax_permutation(n):
    # The same integers as jax.random.permutation, key for key: one sort round up to n = 1625,
    # two above (jax's rounds), jax's own function beyond FAST_PERMUTATION_MAX.
    assert rng.FAST_PERMUTATION_MAX == 2**16
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(n), i))(
        jnp.arange(16 if n <= 4096 else 3))
    want = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
    got = jax.jit(jax.vmap(lambda k: rng.permutation(k, n)))(keys)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rng.permutation(keys[3], n), want[3])  # unbatched, eager


def _stable(u):
    return np.argsort(np.asarray(u), axis=-1, kind="stable")


def test_stable_argsort_u32_breaks_ties_by_index():
    r = np.random.default_rng(0)
    # Keys that tie in the packed high bits but not in full (the fix-up passes), keys that tie
    # outright, the extremes of uint32, and a run of equal keys in reverse index order.
    near = (r.integers(0, 4, (64, 256)) << 24) | r.integers(0, 256, (64, 256))
    equal = r.integers(0, 3, (64, 256)) * 0x7FFFFFFF
    cases = {"near": near, "equal": equal,
             "extremes": r.choice([0, 1, 2**31 - 1, 2**31, 2**32 - 1], (64, 256)),
             "odd length": r.integers(0, 2**32, (8, 37)),
             "length 1": r.integers(0, 2**32, (4, 1))}
    for name, u in cases.items():
        u = np.asarray(u, np.uint32)
        got = jax.jit(rng.stable_argsort_u32)(jnp.asarray(u))
        np.testing.assert_array_equal(got, _stable(u), err_msg=name)
        got = jax.vmap(rng.stable_argsort_u32)(jnp.asarray(u))  # batched while loop
        np.testing.assert_array_equal(got, _stable(u), err_msg=name)


def test_stable_argsort_u32_random_keys():
    u = jax.random.bits(jax.random.PRNGKey(1), (200, 256), jnp.uint32)
    np.testing.assert_array_equal(jax.jit(rng.stable_argsort_u32)(u), _stable(u))
