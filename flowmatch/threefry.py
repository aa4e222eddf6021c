"""Threefry-2x32 on XLA:CPU as one fused kernel instead of a loop: the same bits, less time.

Every `jax.random` draw is a Threefry-2x32 hash of counters under the key (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011).  On CPU jax lowers the hash's 20
rounds as a `while` loop of 5 iterations, to keep compile times short; XLA:CPU then runs each
iteration as its own sequence of small kernels, and a draw costs tens of microseconds however
small it is.  A flow-matching train step of a 2-D MLP makes several (the step key, the rows'
uniforms, a toy source's centres and noise): about 70 of its ~500 us on 2 cores.  Unrolled, the
rounds are one elementwise fusion, a few microseconds.

    threefry.unroll_hot_programs()    # programs wrapped by hot_program (the scripts do this)
    step = threefry.hot_program(jax.jit(train_step))   # the train step (training.step)
    threefry.unroll_on_cpu()          # every program lowered from then on
    with threefry.unrolled(False):    # jax's rolled loop again, e.g. for a reference loop
        ...

It changes how programs lowered from then on are compiled, never a bit of their results (the
known-answer vectors of Random123 and jax's own lowering are checked in tests/test_threefry.py);
the cost is a larger program (about 100 more fused elementwise operations per draw) for XLA to
compile, more where XLA copies a hash into several fusions, so the scripts unroll only the
programs marked with `hot_program` (`unroll_hot_programs`): the train step, which a run executes
thousands of times, and a toy source's batches, which XLA:CPU compiles faster unrolled.  A
network's init compiles faster unrolled too, and `training.state.create_state` always lowers it
so.  GPU and TPU lowerings are untouched.
"""

from __future__ import annotations

import contextlib
import threading

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random
from jax.interpreters import mlir

# Threefry-2x32 with 20 rounds: rotation constants of Salmon et al. (2011), Table 4, used in
# alternating groups of four rounds, and the key-schedule parity constant of Skein.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
PARITY = 0x1BD11BDA
NUM_GROUPS = 5

_state = {"unrolled": False, "registered": False, "hot": False}
# `unrolled`'s setting, per thread (a program lowered in a background thread keeps its own).
_local = threading.local()


def _rotate_left(x, r):
    """x rotated left by r bits (uint32; r a Python int or a traced uint32)."""
    r = jnp.asarray(r, jnp.uint32)
    return lax.shift_left(x, r) | lax.shift_right_logical(x, np.uint32(32) - r)


def _group(x1, x2, rotations, inject1, inject2):
    """Four rounds (add, rotate, xor) then the key injection: returns the new (x1, x2)."""
    for r in rotations:
        x1 = x1 + x2
        x2 = _rotate_left(x2, r) ^ x1
    return x1 + inject1, x2 + inject2


def hash_unrolled(k1, k2, x1, x2):
    """Threefry-2x32-20 of the counters (x1, x2) under the key (k1, k2), all uint32 arrays that
    broadcast together; returns the two uint32 output words, straight-line code."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(PARITY))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for g in range(NUM_GROUPS):
        x1, x2 = _group(x1, x2, ROTATIONS[g % 2], ks[(g + 1) % 3],
                        ks[(g + 2) % 3] + np.uint32(g + 1))
    return x1, x2


def hash_rolled(k1, k2, x1, x2):
    """The same hash as `hash_unrolled` as a loop of NUM_GROUPS iterations, the key words and
    rotation constants rotating through the carry (jax's own CPU form)."""
    x1, x2 = jnp.broadcast_arrays(x1 + k1, x2 + k2)
    keys = (k2, k1 ^ k2 ^ np.uint32(PARITY), k1)  # injected: keys[0], keys[1] + g + 1
    rotations = tuple(jnp.asarray(r, jnp.uint32) for r in ROTATIONS)

    def body(g, carry):
        (y1, y2), keys, rotations = carry
        y1, y2 = _group(y1, y2, [rotations[0][i] for i in range(4)], keys[0],
                        keys[1] + (g + 1).astype(jnp.uint32))
        return (y1, y2), keys[1:] + keys[:1], rotations[1:] + rotations[:1]

    return lax.fori_loop(0, NUM_GROUPS, body, ((x1, x2), keys, rotations))[0]


def _hash(k1, k2, x1, x2):
    return (hash_unrolled if is_unrolled() else hash_rolled)(k1, k2, x1, x2)


def _register():
    if not _state["registered"]:
        mlir.register_lowering(jex_random.threefry2x32_p,
                               mlir.lower_fun(_hash, multiple_results=True), platform="cpu")
        _state["registered"] = True


def unroll_on_cpu(enabled: bool = True) -> bool:
    """From now on, lower Threefry on CPU unrolled (enabled) or as a loop; returns the previous
    setting.  Takes effect for programs traced and lowered afterwards (jax's caches of already
    compiled functions keep what they had)."""
    _register()
    previous = _state["unrolled"]
    _state["unrolled"] = bool(enabled)
    return previous


def is_unrolled() -> bool:
    """Whether a program lowered now, in this thread, gets the unrolled hash."""
    override = getattr(_local, "unrolled", None)
    return _state["unrolled"] if override is None else override


@contextlib.contextmanager
def unrolled(enabled: bool = True):
    """The setting of `unroll_on_cpu` for programs lowered inside, in this thread only (others
    keep theirs); the previous one after."""
    _register()
    previous = getattr(_local, "unrolled", None)
    _local.unrolled = bool(enabled)
    try:
        yield
    finally:
        _local.unrolled = previous


def unroll_hot_programs(enabled: bool = True) -> bool:
    """From now on, lower the programs wrapped by `hot_program` (the train step, a toy source's
    batches of a train call) with the unrolled hash, and leave every other program to jax's
    rolled loop; returns the previous setting.  The scripts turn this on (`experiments.cli.run`).

    The unrolled form pays where a program runs many times; elsewhere its compile time is the
    larger cost: XLA:CPU copies a small hash that feeds several fusions into each of them (a toy
    sampler's key split feeding randint's and normal's draws), so 100,000 samples of
    8gaussians compiled in 4.1 s unrolled against 0.8 s rolled, checkerboard in 2.1 s against
    0.7 s, each running in a few milliseconds either way; the evaluation program of
    configs/torchcfm_moons.py (4 hashes, 80 rotations as lowered, 294 as compiled) took 5.1-5.4 s
    against 0.8 s, and ran in 3.4 s either way."""
    _register()
    previous = _state["hot"]
    _state["hot"] = bool(enabled)
    return previous


class _HotProgram:
    """`hot_program`'s wrapper: calls and lowerings of fn under `unrolled(True)` when
    `unroll_hot_programs` is on; every other attribute is fn's."""

    def __init__(self, fn):
        self._fn = fn

    def _context(self):
        return unrolled(True) if _state["hot"] else contextlib.nullcontext()

    def __call__(self, *args, **kwargs):
        with self._context():
            return self._fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with self._context():
            return self._fn.lower(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def hot_program(fn):
    """fn (a jitted or pmapped function, lowered at its first call) marked as a program to lower
    with the unrolled hash when `unroll_hot_programs` is on (as any other program otherwise): one
    a run executes thousands of times (the train step), or one XLA:CPU compiles faster unrolled
    (a toy source's batches of a train call, vmapped over the call's steps).  Its results are
    the same bits either way."""
    return _HotProgram(fn)
