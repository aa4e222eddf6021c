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
