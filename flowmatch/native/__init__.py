"""Native CPU kernels: C++ sources here, built on first use and called from XLA programs.

A kernel is an XLA FFI handler (`jax.ffi`): the host's C++ compiler builds its source against
jaxlib's FFI headers into a shared library, once per machine (cached by the source, the
compiler, its flags, jaxlib's version and the CPU's features), and `jax.ffi` registers it for
the CPU platform.  A caller asks `target(name)` for the registered name and falls back to its
lax version where there is none (no compiler, a failed build, FLOWMATCH_NATIVE=off): each kernel
here computes exactly what its lax version does, bit for bit (tests/test_native.py), only
without XLA:CPU's cost of launching many small operations one after another, so a result never
depends on whether it was used.

Kernels:
- 'auction': the rounds of `couplings.exact_assignment` (auction.cc).

Environment: FLOWMATCH_NATIVE=off (or 0, false, no) never builds or uses a kernel;
FLOWMATCH_NATIVE_CACHE is the directory of built libraries (default ~/.cache/flowmatch/native);
CXX the compiler (default: the first of c++, g++, clang++ on the PATH).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

from flowmatch import fileio

logger = logging.getLogger(__name__)

KERNELS = {"auction": ("auction.cc", "FlowmatchAuction")}
ENV_SWITCH = "FLOWMATCH_NATIVE"
ENV_CACHE = "FLOWMATCH_NATIVE_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "flowmatch", "native")
# -march=native: the library is built on (and keyed by the CPU features of) the machine that
# runs it.  -ffp-contract=off: no fused multiply-adds (the lax versions round every operation);
# the compiler's default keeps IEEE semantics otherwise (no -ffast-math).
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off")
ARCH_FLAGS = ("-march=native",)
BUILD_TIMEOUT_S = 300

_lock = threading.Lock()
_targets: dict[str, str | None] = {}
_reasons: dict[str, str] = {}
_libraries: list = []   # loaded libraries stay loaded while their handlers are registered


def enabled(environ=os.environ) -> bool:
    return environ.get(ENV_SWITCH, "").strip().lower() not in ("off", "0", "false", "no")


def target(name: str) -> str | None:
    """The FFI target name of native kernel `name`, registered for the CPU (built on first
    use), or None where it is unavailable (`reason(name)` says why)."""
    if name not in KERNELS:
        raise ValueError(f"unknown native kernel {name!r}; known: {', '.join(KERNELS)}")
    with _lock:
        if name not in _targets:
            _targets[name] = _load(name)
        return _targets[name]


def reason(name: str) -> str | None:
    """Why kernel `name` is unavailable (None: available or not asked for yet)."""
    return _reasons.get(name)


def _load(name: str) -> str | None:
    if not enabled():
        _reasons[name] = f"{ENV_SWITCH}={os.environ.get(ENV_SWITCH)}"
        return None
    try:
        path = _build(name)
        import jax  # pylint: disable=g-import-not-at-top
        library = ctypes.CDLL(path)
        symbol = getattr(library, KERNELS[name][1])
        ffi_name = f"flowmatch_{name}"
        jax.ffi.register_ffi_target(ffi_name, jax.ffi.pycapsule(symbol), platform="cpu")
        _libraries.append(library)
        return ffi_name
    except _Unavailable as e:
        _reasons[name] = str(e)
    except OSError as e:   # loading the library, or no writable directory
        _reasons[name] = f"{type(e).__name__}: {e}"
    logger.warning("flowmatch: native kernel %r unavailable (%s); using its lax version (the "
                   "same results, slower on CPU)", name, _reasons[name])
    return None


class _Unavailable(Exception):
    pass


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else the first of c++, g++, clang++ found."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    for candidate in ("c++", "g++", "clang++"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _cpu_features() -> str:
    """The CPU's feature list (Linux), else the processor's name: part of a build's key, so a
    library built with -march=native on one machine is never loaded on another kind."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dirs() -> list[str]:
    configured = os.environ.get(ENV_CACHE)
    if configured:
        return [os.path.expanduser(configured)]
    return [os.path.expanduser(DEFAULT_CACHE),
            # per user where there are uids (Windows' temporary folder is per user already)
            os.path.join(tempfile.gettempdir(),
                         f"flowmatch-native-{getattr(os, 'getuid', lambda: 0)()}")]


def _build(name: str) -> str:
    """The path of kernel `name`'s shared library, built unless a build with its key exists."""
    import jax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top
    cxx = compiler()
    if cxx is None and os.environ.get("CXX"):
        raise _Unavailable(f"CXX={os.environ['CXX']!r} is not a command found on the PATH")
    if cxx is None:
        raise _Unavailable("no C++ compiler found (set CXX, or install g++ or clang++)")
    source = os.path.join(os.path.dirname(__file__), KERNELS[name][0])
    with open(source, "rb") as f:
        code = f.read()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unavailable(f"{cxx} --version failed: {e}") from e
    include = jax.ffi.include_dir()
    key = hashlib.sha256(b"\0".join(s if isinstance(s, bytes) else s.encode() for s in (
        code, cxx, version, " ".join(FLAGS + ARCH_FLAGS), jaxlib.__version__, include,
        platform.machine(), _cpu_features()))).hexdigest()[:20]
    file = f"{name}-{key}.so"
    for directory in _cache_dirs():
        if os.path.exists(os.path.join(directory, file)):
            return os.path.join(directory, file)
    with tempfile.TemporaryDirectory(prefix="flowmatch-native-") as scratch:
        built = os.path.join(scratch, file)
        logger.info("flowmatch: building the native kernel %r with %s (once per machine)",
                    name, cxx)
        _compile(cxx, source, include, built)
        with open(built, "rb") as f:
            library = f.read()
    # Written atomically (`fileio`): processes building at once (the test workers, a pod's hosts
    # sharing a home directory) never load a partial file.
    errors = []
    for directory in _cache_dirs():
        path = os.path.join(directory, file)
        try:
            os.makedirs(directory, exist_ok=True)
            fileio.write_bytes(path, library)
            return path
        except OSError as e:
            errors.append(f"{directory}: {e}")
    raise _Unavailable("no writable directory for the built library: " + "; ".join(errors))


def _compile(cxx: str, source: str, include: str, output: str):
    for arch in (ARCH_FLAGS, ()):   # a compiler without -march=native: the generic build
        command = [cxx, *FLAGS, *arch, "-I", include, source, "-o", output]
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise _Unavailable(f"building {source} failed: {e}") from e
        if done.returncode == 0:
            return
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    raise _Unavailable(f"building {source} with {cxx} failed: {tail}")
