"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

No flowmatch imports: every module that writes files may use it.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

TEMP_PREFIX = ".tmp_"
# The process's umask, read once at import (os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Calls write(binary file object) on a temporary file in path's folder (named
    TEMP_PREFIX...), flushes and fsyncs it, then renames it over `path`.

    The new file keeps the permissions of the file it replaces, or gets those `open` would give
    a new file (0666 less the umask; mkstemp alone makes 0600).  On any failure the temporary
    file is removed, `path` is left as it was and the error propagates.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX,
                               suffix="_" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path)
                     else 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, *, indent: int = 1, **kwargs) -> None:
    """json.dumps(obj) to `path` atomically (kwargs go to json.dumps)."""
    import json  # pylint: disable=g-import-not-at-top
    write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def write_csv(path: str | os.PathLike, rows, fieldnames) -> None:
    """Rows (dicts) as CSV with the given columns (others ignored), atomically."""
    import csv  # pylint: disable=g-import-not-at-top
    import io  # pylint: disable=g-import-not-at-top
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def wide_rows(rows, keys, *, metric: str = "metric", value: str = "value") -> tuple[list, list]:
    """Long rows (one per metric: {**keys, metric: name, value: v, ...}) as wide rows, one per
    distinct tuple of `keys` in first-appearance order, with one column per metric name (a key
    not among `keys`, metric or value keeps its first row's value).  Returns (rows, columns):
    the columns are `keys`, then the other shared keys, then the metric names."""
    out: dict[tuple, dict] = {}
    names: list = []
    for row in rows:
        ident = tuple(row.get(k) for k in keys)
        wide = out.setdefault(ident, {k: v for k, v in row.items() if k not in (metric, value)})
        wide[row[metric]] = row[value]
        if row[metric] not in names:
            names.append(row[metric])
    extra = [k for k in (next(iter(out.values()), {}) or {}) if k not in keys and k not in names]
    return list(out.values()), list(keys) + extra + names


def write_wide_csv(path: str | os.PathLike, rows, keys, **kwargs) -> None:
    """`wide_rows(rows, keys)` as CSV, atomically: one row per sampler and NFE (say), one column
    per metric, beside the long CSV that has one row per metric."""
    wide, columns = wide_rows(rows, keys, **kwargs)
    write_csv(path, wide, columns)


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """np.savez(path, **arrays) atomically."""
    import io  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """A matplotlib figure saved atomically (format from the file name: png, pdf, svg)."""
    import io  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    write_bytes(path, buf.getvalue())
