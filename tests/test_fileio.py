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
