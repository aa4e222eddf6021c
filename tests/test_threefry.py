"""flowmatch.threefry: the unrolled CPU lowering gives jax's random bits exactly, without loops."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import threefry

# Known-answer vectors of Threefry-2x32-20 from Random123's kat_vectors (key, counter, output).
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

# Every kind of draw a train step, a source or a sampler makes.
DRAWS = """
import jax, jax.numpy as jnp
def draws(k):
    return {"uniform": jax.random.uniform(k, (33, 5)),
            "normal": jax.random.normal(jax.random.fold_in(k, 3), (7, 3)),
            "randint": jax.random.randint(k, (100,), 0, 8),
            "permutation": jax.random.permutation(k, 50),
            "split": jax.random.split(k, 4),
            "fold_in": jax.random.fold_in(k, 123456789),
            "bits": jax.random.bits(k, (4, 3), jnp.uint32)}
"""


def _draws(key):
    scope = {}
    exec(DRAWS, scope)  # pylint: disable=exec-used
    return jax.jit(scope["draws"])(key)


@pytest.mark.parametrize("hash_fn", [threefry.hash_unrolled, threefry.hash_rolled])
@pytest.mark.parametrize("key,count,want", KAT)
def test_known_answers(hash_fn, key, count, want):
    u = lambda v: jnp.asarray(v, jnp.uint32)  # noqa: E731
    got = jax.jit(hash_fn)(u(key[0]), u(key[1]), u(count[0]), u(count[1]))
    assert [int(g) for g in got] == list(want)


def test_broadcasts_a_scalar_key_over_counters():
    counts = jnp.arange(12, dtype=jnp.uint32).reshape(3, 4)
    k1, k2 = jnp.uint32(7), jnp.uint32(11)
    a = threefry.hash_unrolled(k1, k2, counts, counts + 1)
    b = threefry.hash_rolled(k1, k2, counts, counts + 1)
    for x, y in zip(a, b):
        assert x.shape == (3, 4) and np.array_equal(x, y)
    one = threefry.hash_unrolled(k1, k2, counts[1, 2], counts[1, 2] + 1)
    assert int(one[0]) == int(a[0][1, 2]) and int(one[1]) == int(a[1][1, 2])


def test_unrolled_lowering_draws_jax_bits_without_loops():
    """The draws under the unrolled lowering equal those of a process that never imported
    flowmatch.threefry (jax's own rolled lowering), and their program has no while loop."""
    script = DRAWS + (
        "import json, numpy as np\n"
        "out = jax.jit(draws)(jax.random.PRNGKey(42))\n"
        "print(json.dumps({k: np.asarray(v).astype(np.int64).tolist() if v.dtype != jnp.float32"
        " else np.asarray(v).view(np.uint32).astype(np.int64).tolist() for k, v in out.items()}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    key = jax.random.PRNGKey(42)
    with threefry.unrolled(True):
        got = _draws(key)
        scope = {}
        exec(DRAWS, scope)  # pylint: disable=exec-used
        hlo = jax.jit(scope["draws"]).lower(key).compile().as_text()
    assert " while(" not in hlo
    for name, value in got.items():
        bits = np.asarray(value)
        bits = bits.view(np.uint32) if bits.dtype == np.float32 else bits
        np.testing.assert_array_equal(bits.astype(np.int64), np.asarray(reference[name]),
                                      err_msg=name)


def test_setting_is_restored_and_rolled_form_loops():
    before = threefry.is_unrolled()
    with threefry.unrolled(False):
        assert not threefry.is_unrolled()
        hlo = jax.jit(lambda k: jax.random.uniform(k, (8,))).lower(
            jax.random.PRNGKey(0)).compile().as_text()
        assert " while(" in hlo
        with threefry.unrolled(True):
            assert threefry.is_unrolled()
        assert not threefry.is_unrolled()
    assert threefry.is_unrolled() == before


def test_only_hot_programs_are_unrolled_and_they_draw_the_same_bits():
    """With unroll_hot_programs on (as the scripts run), a program wrapped by hot_program is
    lowered without loops, any other (e.g. a `sampling.Chunked` draw) with jax's rolled loop, and
    both give the bits of jax's own lowering."""
    from flowmatch import sampling
    from flowmatch.data import toy2d
    key = jax.random.PRNGKey(7)

    def make_draws():  # a fresh function per program: jax caches lowerings by jaxpr
        return lambda k: jax.random.normal(k, (5, 3)) + jax.random.randint(
            jax.random.fold_in(k, 1), (5, 3), 0, 9)

    def sampler(params, x0, k, cond):
        seen.append(threefry.is_unrolled())
        return sampling.Samples(x=x0 * params + jax.random.normal(k, x0.shape),
                                nfe=jnp.int32(0), success=jnp.bool_(True))

    seen = []
    chunked = lambda: sampling.Chunked(sampler, toy2d.eight_gaussians, 10, 4)  # noqa: E731
    with threefry.unrolled(False):
        reference = jax.jit(make_draws())(key), chunked()(jnp.float32(2.0), key).x
    previous = threefry.unroll_hot_programs(True)
    try:
        hot = threefry.hot_program(jax.jit(make_draws()))
        assert " while(" not in hot.lower(key).compile().as_text()
        assert " while(" in jax.jit(make_draws()).lower(key).compile().as_text()
        got = hot(key), chunked()(jnp.float32(2.0), key).x
        assert not threefry.is_unrolled()
    finally:
        threefry.unroll_hot_programs(previous)
    assert seen == [False, False]  # one trace per Chunked (one compilation of its chunks)
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(a, b)


def test_the_unrolled_setting_is_per_thread():
    """`unrolled` sets the lowering of the thread that enters it: a program lowered meanwhile in
    another thread (a background compilation) keeps the process-wide setting."""
    import threading
    seen = {}
    previous = threefry.unroll_on_cpu(False)
    try:
        with threefry.unrolled(True):
            worker = threading.Thread(target=lambda: seen.update(other=threefry.is_unrolled()))
            worker.start()
            worker.join()
            seen["inside"] = threefry.is_unrolled()
        seen["after"] = threefry.is_unrolled()
    finally:
        threefry.unroll_on_cpu(previous)
    assert seen == {"other": False, "inside": True, "after": False}
