"""Loading configs/*.py by path, as config_flags does, for the tests, and overriding their keys;
and the environment of a subprocess on simulated CPU devices."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# compiler_options for a test's own programs (`jax.jit(f, compiler_options=QUICK_COMPILE)`): they
# run once or a few times on tiny inputs, so LLVM's optimisation of them (most of an XLA:CPU
# compile) buys nothing, and backend level 0 compiles the same jaxpr in about half the CPU time
# (below the suite-wide level 1 of tests/conftest.py).  Results may differ from the default level
# in the last bits (a U-Net's init: 564 of 42,884 floats, at most 3e-7 relative).
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def load_config(name, variant="smoke"):
    """get_config(variant) of configs/<name>.py."""
    spec = importlib.util.spec_from_file_location(
        f"configs.{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def override(config, overrides: dict | None):
    """config with {"section.field": value} (or {"field": value}) set; returns it."""
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


def simulated_devices_env(num_devices: int) -> dict:
    """os.environ for a subprocess with `num_devices` simulated CPU devices: the device count
    added to XLA_FLAGS (keeping the suite's flags, tests/conftest.py), the repository on
    PYTHONPATH, the CPU platform."""
    flags = os.environ.get("XLA_FLAGS", "")
    return dict(os.environ,
                XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={num_devices}".strip(),
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                JAX_PLATFORMS="cpu")
