"""Argument checks shared by every component, and config sections read into typed records.

Components (schedules, objectives, couplings, samplers, models, the optimizer settings) check their
own arguments with these helpers and raise ValueError naming the argument, what was given and what
is allowed.  Config validation (`flowmatch.training.checks`) composes them: `from_section` reads a
config section into a component's settings record, refusing keys the record does not have, and
turns the record's own ValueError into a `ConfigError` that names the config key.  Only those
become one-line errors at the command line; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Iterable

import numpy as np


class ConfigError(ValueError):
    """A configuration or input that cannot run: the message says what was wrong and what to do."""


def is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, (numbers.Real, np.integer, np.floating)) and not isinstance(v, bool)


def positive_int(name: str, value: Any) -> int:
    """value as an int >= 1, else ValueError."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def choice(name: str, value: Any, allowed: Iterable, what: str | None = None):
    """value if it is one of `allowed`, else a ValueError listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}: unknown {what or 'value'} {value!r}; choose one of: "
                         f"{', '.join(map(str, allowed))}")
    return value


def real(name: str, value: Any, lo=None, hi=None, *, lo_open=False, hi_open=False) -> float:
    """value as a finite float in the interval (None: unbounded on that side), else ValueError."""
    ok = is_real(value) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            want = f"{'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            want = f"{'<' if hi_open else '<='} {hi:g}"
        else:
            want = "a finite number"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return float(value)


def known_keys(where: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raises ConfigError naming the first key of `given` not in `allowed`, with a suggestion."""
    allowed = sorted(set(allowed))
    for key in given:
        if key not in allowed:
            import difflib  # pylint: disable=g-import-not-at-top
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {where}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {where}{key}{hint}; allowed under "
                              f"{where.rstrip('.') or 'the top level'}: {', '.join(allowed)}")


def field_names(cls) -> tuple[str, ...]:
    """The init fields of a dataclass."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def from_section(cls, section, prefix: str, *, extra_allowed: Iterable[str] = (),
                 ignore: Iterable[str] = ()):
    """cls(**section) for a config section (a mapping; None: all defaults), as a config check.

    Keys must be fields of cls (or `extra_allowed`, which are then skipped along with `ignore`):
    an unknown key is a ConfigError naming it.  The record's own ValueError becomes a
    ConfigError prefixed with the section ("coupling.tolerance must be ...").
    """
    section = dict(section or {})
    fields = field_names(cls)
    known_keys(f"{prefix}.", section, set(fields) | set(extra_allowed) | set(ignore))
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()
              if k in fields}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(_in_section(prefix, e)) from e


def _in_section(prefix: str, error: Exception) -> str:
    """A component's message about its field `f` ("f must be ...", "f: unknown ...") as one about
    the config key prefix.f; other messages get the section in front."""
    message = str(error)
    if not prefix or f"{prefix}." in message:
        return message
    head = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)( must |: |=)", message)
    if head:
        return f"{prefix}.{message}"
    return f"{prefix}: {message}"


def as_config_error(prefix: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its ValueError turned into a ConfigError about config section prefix."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(_in_section(prefix, e)) from e
