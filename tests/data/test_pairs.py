"""Pair files and the pairs data source: batches that keep rows paired, are deterministic, shard
over processes and cover each epoch; a missing, incomplete, damaged or inconsistent directory
says what is wrong and what to do."""

import os

import jax
import numpy as np
import pytest

from flowmatch import data
from flowmatch.data import pairs as pairs_lib

A = np.array([[1.5, 0.3], [0.3, 0.6]], np.float32)
B = np.array([1.0, -0.5], np.float32)


def linear_pairs(directory, n=30, chunk_size=8, seed=0):
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, 2)))
    return data.save_pairs(directory, x0, x0 @ A.T + B, data="moons", chunk_size=chunk_size)


def test_pair_batches_are_deterministic_sharded_and_cover_each_epoch():
    x0 = np.arange(40, dtype=np.float32).reshape(20, 2)
    src = data.PairSource(x0, 2 * x0, np.arange(20, dtype=np.int32) % 3, kind="toy2d",
                          data_name="moons")
    it = data.BatchIterator(src, 10, seed=5)
    b = it.batches(0, 4)
    assert set(b) == {"x", "x0", "label"} and b["x0"].shape == (4, 10, 2)
    np.testing.assert_array_equal(b["x"], 2 * b["x0"])  # rows stay paired
    np.testing.assert_array_equal(b["label"], (b["x0"][..., 0] / 2).astype(int) % 3)
    # two batches = one epoch: every pair once
    epoch = np.sort(b["x0"][:2].reshape(-1, 2)[:, 0])
    np.testing.assert_array_equal(epoch, x0[:, 0])
    again = data.BatchIterator(src, 10, seed=5).batch(3)
    np.testing.assert_array_equal(again["x0"], b["x0"][3])
    assert not np.array_equal(data.BatchIterator(src, 10, seed=6).batch(0)["x0"], b["x0"][0])
    halves = [data.BatchIterator(src, 10, seed=5, process_index=k, process_count=2).batch(2)
              for k in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["x0"] for h in halves]), b["x0"][2])
    ref = src.sample_reference(jax.random.PRNGKey(1), 20)
    np.testing.assert_array_equal(np.sort(ref[:, 0]), np.sort(2 * x0[:, 0]))
    np.testing.assert_array_equal(src.sample_reference(jax.random.PRNGKey(1), 5), ref[:5])
    np.testing.assert_array_equal(src.sample_reference(3, 4), src.sample_reference(3, 4))
    with pytest.raises(ValueError, match="hold 20; ask for 1..20"):
        src.sample_reference(0, 21)


def test_load_pairs_says_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="needs data.path"):
        data.make_source("pairs", path="")
    with pytest.raises(ValueError, match="no pairs in"):
        data.make_source("pairs", path=str(tmp_path / "nothing"))
    d = linear_pairs(str(tmp_path / "ok"))
    src = data.make_source("pairs", path=d)
    assert isinstance(src, data.PairSource) and src.num_examples == 30
    np.testing.assert_allclose(src.x1, src.x0 @ A.T + B, rtol=1e-6)
    with pytest.raises(ValueError, match="already holds pairs"):
        linear_pairs(d)

    def broken(name, change):
        bad = linear_pairs(str(tmp_path / name))
        manifest = pairs_lib.read_manifest(bad)
        change(bad, manifest)
        pairs_lib.write_json_atomic(os.path.join(bad, pairs_lib.MANIFEST), manifest)
        return bad

    def damage(d, m):
        with open(os.path.join(d, pairs_lib.chunk_filename(2)), "r+b") as f:
            f.seek(100)
            f.write(b"\0\1\2")

    with pytest.raises(ValueError, match="chunk_00002.npz is missing or damaged"):
        data.load_pairs(broken("damaged", damage))
    with pytest.raises(ValueError, match=r"incomplete: 1 of 4 chunks missing \(first: \[3\]\)"):
        data.load_pairs(broken("incomplete", lambda d, m: m["chunks"].pop("3")))

    def reshape(d, m):  # a chunk of [8, 3] where the manifest says [8, 2]
        m["chunks"]["0"] = pairs_lib.write_chunk(d, 0, np.zeros((8, 3)), np.zeros((8, 3)),
                                                 np.zeros(8))

    with pytest.raises(ValueError, match=r"holds x0 float32\[8, 3\].*manifest says float32 "
                       r"\[8, 2\]"):
        data.load_pairs(broken("shape", reshape))
    with pytest.raises(ValueError, match="not a pairs manifest"):
        data.load_pairs(broken("format", lambda d, m: m.update(format="other")))
