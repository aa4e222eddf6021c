"""The drivers' progress bar: every item once, silent off a terminal, on a terminal a bar that
names its loop and total and leaves the loop's printed lines whole."""

import io
import sys

import pytest

from flowmatch.experiments.progress import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_it_yields_every_item_once_and_writes_nothing(capsys):
    items = [3, 1, 4, 1, 5]
    assert list(progress(items, "test: items")) == items
    assert list(progress(iter(items), "test: items", total=len(items))) == items
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_on_a_terminal_the_bar_names_the_loop_and_keeps_printed_lines_whole(monkeypatch):
    terminal = _Terminal()  # stdout and stderr on one screen, as in a shell
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    seen = []
    for i in progress(range(3), "test: things", unit="thing"):
        seen.append(i)
        print(f"row {i}")
        print("half ", end="")
        print("line")
    assert sys.stdout is terminal  # given back after the loop
    assert seen == [0, 1, 2]
    screen = terminal.getvalue()
    assert "test: things" in screen and "3/3" in screen
    # Each printed line starts on a cleared line ("\r", not after the bar's text) and is whole.
    lines = [line.rsplit("\r", 1)[-1] for line in screen.split("\n")]
    assert [line for line in lines if "row" in line or "line" in line] == [
        text for i in range(3) for text in (f"row {i}", "half line")]


def test_a_loop_left_early_gives_stdout_back(monkeypatch):
    stdout, stderr = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = progress(range(5), "test: early")
    for i in bar:
        print("unfinished", end="")
        break
    bar.close()
    assert sys.stdout is stdout and stdout.getvalue() == "unfinished"


def test_an_iterator_without_a_total_is_refused():
    with pytest.raises(ValueError, match="total="):
        list(progress((i for i in range(3)), "test: generator"))
