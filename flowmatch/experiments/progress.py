"""The drivers' progress bar: what a long loop is iterating over, and how far it is.

    for entry in progress(grid, "benchmark: samplers", unit="sampler"):
        ...

A tqdm bar on stderr, drawn only when stderr is a terminal (tqdm's disable=None): output
redirected to a file, piped, or captured by tests holds no bar, only the loop's own lines.
While the bar is drawn, each line the loop prints on stdout clears the bar, is written, and the
bar is redrawn under it, so printed rows and the bar do not break each other.  The training
loop has its own bar (`flowmatch.training.loop`); this one is for the drivers in
flowmatch/experiments/.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator, TypeVar

import tqdm

T = TypeVar("T")


class _AboveBar:
    """stdout while `bar` is drawn: whole lines are written above the bar, the rest is kept
    until its newline (or the end of the loop)."""

    def __init__(self, bar: tqdm.tqdm, stream):
        self._bar, self._stream, self._pending = bar, stream, ""

    def write(self, text: str) -> int:
        lines, newline, self._pending = (self._pending + text).rpartition("\n")
        if newline:
            self._bar.clear()
            self._stream.write(lines + newline)
            self._stream.flush()
            self._bar.refresh()
        return len(text)

    def close(self) -> None:
        if self._pending:
            self._stream.write(self._pending)
        self._stream.flush()

    def __getattr__(self, name):  # flush, isatty, encoding, ...: the terminal's
        return getattr(self._stream, name)


def progress(items: Iterable[T], desc: str, total: int | None = None,
             unit: str = "it") -> Iterator[T]:
    """Yields every item of `items` once, in order, under a bar labelled `desc` ("benchmark:
    samplers") counting `unit`s up to `total` (default len(items)).  Silent unless stderr is a
    terminal.  Raises ValueError when `items` has no length and no total is given."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"progress({desc!r}): {type(items).__name__} has no length; pass "
                             "total=, the number of items the loop will take") from None
    bar = tqdm.tqdm(items, desc=desc, total=total, unit=unit, disable=None, file=sys.stderr,
                    dynamic_ncols=True)
    if bar.disable:
        yield from bar
        return
    above = _AboveBar(bar, sys.stdout)
    try:
        with contextlib.redirect_stdout(above):
            yield from bar
    finally:
        above.close()
