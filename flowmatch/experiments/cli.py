"""What every command-line entry point shares: running a main function with actionable errors.

scripts/*.py define their own absl flags and call `run(main)`, which turns a configuration or input
error (`checks.ConfigError`, FileNotFoundError, a bad flag, a config file that fails to load)
into one line on stderr and exit status 2, a run stopped by non-finite values or unusable
checkpoints into one line and exit status 1 (no traceback), and a preemption (SIGTERM: checkpoint
saved, on SIGTERM or a first Ctrl-C) into exit status 0, and a Ctrl-C outside training (or a second
one during it) into one line and exit status 130.  Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import sys

from absl import app
from absl import flags

from flowmatch.checks import ConfigError  # noqa: F401  (re-exported: cli.ConfigError)


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


_DID_YOU_MEAN = re.compile(r"'(?P<key>[\w.]+)'.*?Did you mean \"(?P<guess>[\w.]+)\"", re.S)


def _config_override_error(argv, error: Exception) -> str | None:
    """A bad --config.a.b=... override (ml_collections raises AttributeError or KeyError while
    absl parses flags) as one line naming the flag, with ml_collections' suggestion."""
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
    match = _DID_YOU_MEAN.search(text)
    key = match.group("key") if match else re.sub(r"[\"'\\]", "", text).strip()
    flag = next((a.split("=", 1)[0] for a in argv[1:]
                 if a.startswith("--config.") and key.split(".")[-1] in a.split("=", 1)[0]),
                None)
    if flag is None:
        return None
    hint = f"; did you mean --config.{'.'.join(flag[9:].split('.')[:-1] + [match.group('guess')])}"\
        if match else ""
    return (f"unknown config key {flag}{hint}? (every key is listed in configs/default.py; "
            "--helpshort lists the script's flags)") if match else (
            f"unknown config key {flag} (every key is listed in configs/default.py)")


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag, a misspelt config key or a config file that fails to
    load as one line."""
    if any(a in ("-h", "--help", "--helpshort", "-?") for a in argv[1:]):
        print_help(argv[0])
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}; see --helpshort")
    except (AttributeError, KeyError) as e:  # raised by a --config.a.b override
        message = _config_override_error(argv, e)
        if message is None:
            raise
        fail(message)


def print_help(program: str) -> None:
    """The script's docstring, then each of its own flags on one line (name, default, the first
    sentence of its help); `--helpfull` still lists every flag of every module."""
    main = sys.modules["__main__"]
    print((main.__doc__ or "").strip() + "\n")
    print(f"flags of {os.path.basename(program)} (--helpfull: every flag of every module):")
    own = flags.FLAGS.get_key_flags_for_module(sys.argv[0]) or []
    for flag in own:
        text = " ".join(flag.help.split())
        first = re.split(r"(?<!e\.g)(?<!i\.e)(?<=[.;])\s+(?=[A-Z(])", text, maxsplit=1)[0]
        default = "" if flag.default is None else f"={flag.default_as_str.strip(chr(39))}"
        print(f"  --{flag.name}{default}: {first}")
    if any(flag.name == "config" for flag in own):
        print("Config keys: --config.KEY=VALUE overrides any key; every key is documented in "
              "configs/default.py (top level: seed, batch_size, num_train_steps, steps_per_call,"
              " log/eval/checkpoint_every_steps, ema_decay, ...; sections: data, model, path, "
              "source, coupling, objective, optimizer, sampling, eval, checkpoint, nonfinite, "
              "parallel).")


def no_arguments(argv, example: str = "--workdir=DIR"):
    """Refuses stray positional arguments (a flag written without its --)."""
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; flags look like {example}")


# Where the scripts keep compiled XLA programs between runs (`use_compilation_cache`).
CACHE_ENV = "FLOWMATCH_COMPILATION_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "flowmatch", "xla")


def use_compilation_cache(environ=os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache for a script; returns its directory or None.

    A rerun of a command (the usual loop of a researcher) then loads its compiled programs
    instead of compiling them again (a 2-D run's train step, data and sampler programs: about
    10 s of compilation on 2 CPU cores).  The cache is keyed by the program, the compile options
    and the jax version, so it changes no result.  Directory: JAX_COMPILATION_CACHE_DIR when set
    (JAX's own setting wins), else $FLOWMATCH_COMPILATION_CACHE, else ~/.cache/flowmatch/xla;
    FLOWMATCH_COMPILATION_CACHE=off turns it off.
    """
    import jax  # pylint: disable=g-import-not-at-top
    choice = environ.get(CACHE_ENV, "")
    if choice.lower() in ("off", "0", "false", "no"):
        return None
    path = environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(choice or DEFAULT_CACHE)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def run(main):
    """absl.app.run(main) with actionable errors reported without a traceback, the persistent
    compilation cache on (`use_compilation_cache`) and Threefry lowered unrolled on CPU in the
    train step and its toy batches (`flowmatch.threefry.unroll_hot_programs`: the same random
    bits; a 2-D train step's draws 86 -> 14 us; other programs keep jax's loop, quicker to
    compile) and the imports' objects frozen out of the garbage collector's walks (gc.freeze)."""

    def wrapped(argv):
        import logging as pylogging  # pylint: disable=g-import-not-at-top
        from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
        absl_logging.get_absl_handler().setLevel(pylogging.WARNING)  # the terminal: warnings up
        use_compilation_cache()
        from flowmatch import threefry  # pylint: disable=g-import-not-at-top
        threefry.unroll_hot_programs()
        # Imported here, not at the top: `--help` is answered before this and needs neither jax
        # nor orbax (1.6-2.0 s of CPU per --help before, 0.26-0.36 s after).
        from flowmatch.checkpoint import (  # pylint: disable=g-import-not-at-top
            CheckpointError, Preempted)
        from flowmatch.training.monitor import (  # pylint: disable=g-import-not-at-top
            NonFiniteError)
        # The imports' objects (jax, flax, optax, orbax: about 230,000) live as long as the
        # process.  Frozen (gc.freeze), the cycle collector no longer walks them in each full
        # collection (tracing triggers several, 0.06-0.08 s each) nor at exit, where the
        # interpreter's last collections over them took 0.28 s (0.44 -> 0.16 s from the end of
        # the script to the end of the process); frozen again at the end, for the run's objects.
        # Only cycles among frozen objects are never collected: fine for a process about to
        # end (every file we write is closed by a with block, or, metrics.jsonl, flushed at each
        # row and closed in the loop's finally).  torchcfm_moons' whole process,
        # 10 alternating pairs: median 10.17 -> 9.93 s (docs/results/gc_freeze_xeon_0140/).
        gc.freeze()
        try:
            return main(argv)
        except (ConfigError, FileNotFoundError) as e:
            fail(str(e))
        except (NonFiniteError, CheckpointError) as e:
            fail(str(e), status=1)
        except Preempted as e:  # the checkpoint is saved: a clean exit the scheduler can restart
            import jax  # pylint: disable=g-import-not-at-top
            if jax.process_index() == 0:
                sys.stderr.write(f"{e}\n")
                sys.stderr.flush()
            sys.exit(0)
        except KeyboardInterrupt:  # Ctrl-C outside training, or a second one during it
            fail("interrupted (Ctrl-C); rerun the same command to continue from the newest "
                 "checkpoint", status=130)
        finally:
            gc.freeze()

    app.run(wrapped, flags_parser=_parse_flags)


def log_to_file(path: str) -> None:
    """Library logs (flowmatch's and orbax's INFO lines) go to `path`; the terminal keeps
    warnings and errors only, beside the progress bar and flowmatch's own one-line messages."""
    import logging as pylogging  # pylint: disable=g-import-not-at-top
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(pylogging.WARNING)
    handler = pylogging.FileHandler(path)
    handler.setLevel(pylogging.INFO)
    handler.setFormatter(absl_logging.PythonFormatter())
    pylogging.getLogger().addHandler(handler)


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
