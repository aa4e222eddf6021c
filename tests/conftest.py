"""Test-wide JAX settings.

Strict rank promotion catches silent broadcasting bugs ([B] + [B, 1] -> [B, B]).  Library
modules never touch jax.config; tests that need float64 use ``with jax.enable_x64(True):``.

One persistent XLA compilation cache for the whole session: the pytest process creates it
before the xdist workers start, and the workers and every subprocess a test starts (the
scripts, the simulated-device runs) inherit it through the environment, so a program that many
tests build (a smoke config's train step, its sampler) is compiled once.  The cache is keyed by
the program and the compile options, so it changes no result; it is removed at the end.  A
cache already named in the environment (JAX_COMPILATION_CACHE_DIR) is used as is.

XLA:CPU's backend (LLVM) optimisation level 1 instead of its default, for the pytest process,
its workers and the subprocesses that inherit XLA_FLAGS: the suite's programs run a few times on
small inputs, so most of their cost is compilation, and LLVM's heavier passes were about an
eighth of it (tests/training/test_loop.py: 172 -> 149 s of CPU).  It is a code-generation
setting: results may differ in float round-off (one vmapped-vs-single comparison did, by 8e-8),
never in what a test checks.  The simulated-device subprocesses keep it
(`configs_util.simulated_devices_env`); a test that needs the default sets XLA_FLAGS itself.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=1").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="flowmatch-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
