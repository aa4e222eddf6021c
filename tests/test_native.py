"""Native CPU kernels (flowmatch.native): the auction kernel against the lax auction it replaces
on the CPU (the same permutation, round count and convergence flag, bit for bit, on adversarial
problems), its use by exact_assignment, its build and cache, and the fallback without it."""

import functools
import os

import numpy as np
import pytest


def _native_or_skip():
    from flowmatch import native  # pylint: disable=g-import-not-at-top
    if native.compiler() is None or not native.enabled():
        pytest.skip("no C++ compiler here (or FLOWMATCH_NATIVE=off): the lax auction is used")
    assert native.target("auction") is not None, native.reason("auction")


def test_the_auction_kernel_builds_where_there_is_a_compiler():
    _native_or_skip()


def _problems(n, count, seed):
    """count [n, n] cost matrices of the kinds the auction must get right: moons vs Gaussian
    noise (the training problem), duplicated points (ties), integer costs, per-class costs (+inf
    between classes), a row with no allowed column, NaN entries, a range beyond float32's."""
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(seed)
    sq = lambda a, b: np.asarray(couplings.squared_distances(a, b))
    dup = rng.normal(size=(max(n // 3, 1), 2)).astype(np.float32)
    dup = np.resize(dup, (n, 2))
    labels = rng.integers(0, 3, size=n)
    cases = [
        sq(rng.normal(size=(n, 2)) * [1.0, 0.5] + [0.5, 0.0], 4 * rng.normal(size=(n, 2))),
        sq(dup, dup[rng.permutation(n)]),
        rng.integers(0, 4, size=(n, n)).astype(np.float32),
        np.asarray(couplings.class_cost(sq(rng.normal(size=(n, 3)), rng.normal(size=(n, 3))),
                                        labels)),
        (1.0 + 1e-4 * rng.uniform(size=(n, n))).astype(np.float32),
    ]
    forbidden = rng.uniform(size=(n, n)).astype(np.float32)
    forbidden[n // 2] = np.inf   # a row with no allowed column: not converged
    cases.append(forbidden)
    nan = rng.uniform(size=(n, n)).astype(np.float32)
    nan[rng.uniform(size=(n, n)) < 0.05] = np.nan
    cases.append(nan)
    wide = rng.uniform(size=(n, n)).astype(np.float32)
    wide[0, 0], wide[-1, -1] = -3e38, 3e38   # C - min C overflows: those entries forbidden
    cases.append(wide)
    return np.stack([c.astype(np.float32) for c in cases[:count]])


@functools.lru_cache(maxsize=None)
def _solver(kernel, bidders, tolerance, max_rounds):
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    return jax.jit(jax.vmap(lambda c: couplings.exact_assignment(
        c, kernel=kernel, bidders=bidders, tolerance=tolerance, max_rounds=max_rounds)))


@pytest.mark.parametrize("n,bidders,tolerance,max_rounds", [
    (5, 8, 1e-6, None),      # fewer rows than bidders, no full 32-column block
    (39, 1, 1e-6, None),     # the chain alone; 32 columns and a tail of 7
    (39, 3, 1e-3, None),     # slot stages of 3 (no halving), a looser tolerance
    (100, 8, 1e-6, None),
    (100, 8, 1e-6, 12),      # max_rounds hit (96 bids < 100 rows): not converged
    (256, 16, 1e-6, None),
    (1100, 8, 1e-3, None),   # beyond the kernel's kept buffer (n > 1024): a buffer of its own
])
def test_the_kernel_is_the_lax_auction_bit_for_bit(n, bidders, tolerance, max_rounds):
    _native_or_skip()
    costs = _problems(n, 8, seed=n + bidders)
    lax_result = _solver("lax", bidders, tolerance, max_rounds)(costs)
    native_result = _solver("native", bidders, tolerance, max_rounds)(costs)
    for field in ("index", "rounds", "converged"):
        np.testing.assert_array_equal(np.asarray(getattr(native_result, field)),
                                      np.asarray(getattr(lax_result, field)), err_msg=field)
    rounds = np.asarray(lax_result.rounds)
    assert rounds.min() > 0
    converged = np.asarray(lax_result.converged)
    if max_rounds is None:   # the ones meant to converge did (not the row with no column...)
        assert converged[:5].all() and not converged[5]
    else:
        assert not converged.any()


def test_exact_assignment_runs_the_kernel_in_cpu_programs():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings  # pylint: disable=g-import-not-at-top
    _native_or_skip()
    cost = jnp.asarray(_problems(64, 1, seed=0)[0])
    hlo = jax.jit(couplings.exact_assignment).lower(cost).as_text()
    assert "flowmatch_auction" in hlo and "while" not in hlo
    lax_hlo = jax.jit(functools.partial(couplings.exact_assignment, kernel="lax")).lower(
        cost).as_text()
    assert "flowmatch_auction" not in lax_hlo and "while" in lax_hlo
    # One problem at a time (lax.map, as the trainer pairs a call's steps) and a batch in one
    # kernel call (vmap) give the same as solving each alone.
    costs = jnp.asarray(_problems(64, 4, seed=1))
    mapped = jax.jit(lambda c: jax.lax.map(couplings.exact_assignment, c))(costs)
    batched = jax.jit(jax.vmap(couplings.exact_assignment))(costs)
    for b in range(4):
        alone = jax.jit(couplings.exact_assignment)(costs[b])
        np.testing.assert_array_equal(mapped.index[b], alone.index)
        np.testing.assert_array_equal(batched.index[b], alone.index)


def test_without_the_kernel_the_lax_auction_runs(monkeypatch):
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import couplings, native  # pylint: disable=g-import-not-at-top
    cost = _problems(5, 1, seed=2)[0]
    monkeypatch.setattr(native, "target", lambda name: None)
    monkeypatch.setattr(native, "_reasons", {"auction": "no C++ compiler found"})
    hlo = jax.jit(couplings.exact_assignment).lower(cost).as_text()
    assert "flowmatch_auction" not in hlo and "while" in hlo
    with pytest.raises(RuntimeError, match="unavailable .no C.. compiler found.; use kernel='lax'"):
        couplings.exact_assignment(cost, kernel="native")
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        couplings.exact_assignment(cost, kernel="fast")


def test_the_switch_and_a_missing_compiler_make_the_kernel_unavailable(monkeypatch, caplog):
    from flowmatch import native  # pylint: disable=g-import-not-at-top
    monkeypatch.setattr(native, "_reasons", {})
    monkeypatch.setenv(native.ENV_SWITCH, "off")
    assert not native.enabled()
    assert native._load("auction") is None   # pylint: disable=protected-access
    assert native.reason("auction") == "FLOWMATCH_NATIVE=off"
    monkeypatch.setenv(native.ENV_SWITCH, "1")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with caplog.at_level("WARNING", logger="flowmatch.native"):
        assert native._load("auction") is None   # pylint: disable=protected-access
    assert native.reason("auction") == "CXX='/nonexistent/c++' is not a command found on the PATH"
    assert "using its lax version" in caplog.text
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "")   # no c++, g++ or clang++ to be found
    assert native._load("auction") is None   # pylint: disable=protected-access
    assert native.reason("auction") == "no C++ compiler found (set CXX, or install g++ or clang++)"
    with pytest.raises(ValueError, match="unknown native kernel 'nope'"):
        native.target("nope")


def test_processes_building_at_once_share_one_library_then_reuse_it(monkeypatch, tmp_path):
    """Two processes (the test workers of a fresh machine) build into an empty cache at once:
    both load a whole library, one file is left, and a later build finds it."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    from flowmatch import native  # pylint: disable=g-import-not-at-top
    _native_or_skip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **{native.ENV_CACHE: str(tmp_path), "PYTHONPATH": root})
    code = ("import ctypes; from flowmatch import native; p = native._build('auction'); "
            "ctypes.CDLL(p).FlowmatchAuction; print(p)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    path = paths.pop()
    assert os.path.dirname(path) == str(tmp_path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]   # no partial files left
    stamp = os.stat(path).st_mtime_ns
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    assert native._build("auction") == path   # pylint: disable=protected-access
    assert os.stat(path).st_mtime_ns == stamp   # found, not built again
