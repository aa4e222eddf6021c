"""Loading configs/*.py by path, as config_flags does, for the tests."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, variant="smoke"):
    """get_config(variant) of configs/<name>.py."""
    spec = importlib.util.spec_from_file_location(
        f"configs.{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)
