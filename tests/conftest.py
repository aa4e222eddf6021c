"""Test-wide JAX settings.

Strict rank promotion catches silent broadcasting bugs ([B] + [B, 1] -> [B, B]).  Library
modules never touch jax.config; tests that need float64 use ``with jax.enable_x64(True):``.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
