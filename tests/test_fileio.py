"""Atomic writes: all or nothing, permissions kept."""

import os
import stat

import pytest

from flowmatch import fileio


def test_write_atomic_replaces_whole_and_keeps_permissions(tmp_path):
    path = tmp_path / "f.json"
    fileio.write_atomic(path, lambda f: f.write(b"one"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would make it
    os.chmod(path, 0o640)
    fileio.write_atomic(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"ne")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        fileio.write_atomic(path, half)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_wide_rows_put_each_metric_in_its_own_column():
    long = [dict(model="fm", sampler="heun", nfe=8, metric="tv", value=0.2, seconds=1.0),
            dict(model="fm", sampler="heun", nfe=8, metric="w2", value=0.4, seconds=1.0),
            dict(model="ddpm", sampler="ddim", nfe=8, metric="tv", value=0.3, seconds=2.0)]
    rows, columns = fileio.wide_rows(long, ("model", "sampler", "nfe"))
    assert columns == ["model", "sampler", "nfe", "seconds", "tv", "w2"]
    assert rows == [dict(model="fm", sampler="heun", nfe=8, seconds=1.0, tv=0.2, w2=0.4),
                    dict(model="ddpm", sampler="ddim", nfe=8, seconds=2.0, tv=0.3)]


def test_write_wide_csv(tmp_path):
    import csv  # pylint: disable=g-import-not-at-top
    long = [dict(m="a", n=1, metric=k, value=v) for k, v in (("tv", 0.5), ("w2", 1.5))]
    fileio.write_wide_csv(tmp_path / "w.csv", long, ("m", "n"))
    with open(tmp_path / "w.csv") as f:
        assert list(csv.DictReader(f)) == [{"m": "a", "n": "1", "tv": "0.5", "w2": "1.5"}]
