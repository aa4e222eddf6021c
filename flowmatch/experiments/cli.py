"""What every command-line entry point shares: running a main function with actionable errors.

scripts/*.py define their own absl flags and call `run(main)`, which turns a configuration or input
error (`checks.ConfigError`, FileNotFoundError, a bad flag, a config file that fails to load)
into one line on stderr and exit status 2, a run stopped by non-finite values or unusable
checkpoints into one line and exit status 1 (no traceback), and a preemption (SIGTERM: checkpoint
saved) into exit status 0.  Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from absl import app
from absl import flags

from flowmatch.checkpoint import CheckpointError
from flowmatch.checkpoint import Preempted
from flowmatch.checks import ConfigError  # noqa: F401  (re-exported: cli.ConfigError)
from flowmatch.training.monitor import NonFiniteError


def one_line(message: str) -> str:
    """A multi-line message on one line; one carrying a traceback (ml_collections embeds one
    when a config file fails to load) is cut to where it comes from and its final error."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)]
        if errors:
            return f"{lines[0].split(': ')[0]}: {errors[-1].split(': ', 1)[1]}"
    return " ".join(lines)


def fail(message: str, status: int = 2):
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(status)


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag (or a config file that fails to load) as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}; see --helpshort")


def no_arguments(argv, example: str = "--workdir=DIR"):
    """Refuses stray positional arguments (a flag written without its --)."""
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like {example}")


def run(main):
    """absl.app.run(main) with actionable errors reported without a traceback."""

    def wrapped(argv):
        try:
            return main(argv)
        except (ConfigError, FileNotFoundError) as e:
            fail(str(e))
        except (NonFiniteError, CheckpointError) as e:
            fail(str(e), status=1)
        except Preempted as e:  # the checkpoint is saved: a clean exit the scheduler can restart
            sys.stderr.write(f"{e}\n")
            sys.stderr.flush()
            sys.exit(0)

    app.run(wrapped, flags_parser=_parse_flags)


def parse_list(name: str, values, kind, what: str) -> list:
    """A comma-separated flag's values converted by `kind`; a ConfigError naming the flag."""
    try:
        return [kind(v) for v in values]
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of {what}, got "
                          f"{','.join(values)!r}") from None


def named_runs(values) -> dict:
    """NAME=DIR items (or bare DIRs, named by their last folder) -> {name: dir}."""
    runs = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = v.rstrip("/").split("/")[-1], v
        runs[name] = path
    return runs


def load_config_file(path: str):
    """get_config(variant) of a config file given as 'configs/X.py[:variant]', as config_flags
    loads it (the one config loader of the drivers)."""
    file, _, variant = path.partition(":")
    if not os.path.exists(file):
        raise ConfigError(f"no config file {file!r}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.dirname(root) not in sys.path:  # configs/ imports `from configs import default`
        sys.path.insert(0, os.path.dirname(root))
    spec = importlib.util.spec_from_file_location(
        f"flowmatch_config_{abs(hash(os.path.abspath(file)))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
