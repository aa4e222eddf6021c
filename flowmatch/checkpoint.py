"""Orbax checkpoints under `workdir/checkpoints/<step>/`.

Each checkpoint holds the train state (a pytree of arrays) and a small JSON `meta` record (the
data iterator's position and anything else the loop needs to continue exactly).  Saving is
asynchronous; `wait()` blocks until pending saves are committed, and every exit path of the
training loop calls it.  Restoring walks back from the newest step to the newest one that
restores cleanly, so a checkpoint damaged after being written costs one checkpoint, not the run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """A thin, typed wrapper over `orbax.checkpoint.CheckpointManager`."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep < 1:
            raise ValueError(
                f"checkpoint max_to_keep must be >= 1, got {max_to_keep} "
                "(config key: checkpoint.max_to_keep)")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts saving `state` and `meta` at `step` (asynchronously).  Returns True if saved."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force)

    def restore(self, step: int, abstract_state: Any):
        """(state, meta) at `step`; `abstract_state` gives shapes, dtypes and shardings."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: Any):
        """(step, state, meta) of the newest checkpoint that restores cleanly, or None if none."""
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:  # pylint: disable=broad-except
                # orbax raises many types for damaged files; any failure means "try an older one".
                logging.error("checkpoint at step %d in %s could not be restored (%s: %s); "
                              "trying an older one", step, self.directory, type(e).__name__, e)
                continue
            return step, state, meta
        return None

    def wait(self):
        """Blocks until every pending asynchronous save is committed to disk."""
        self._manager.wait_until_finished()

    def close(self):
        self.wait()
        self._manager.close()


def abstract_like(tree):
    """A pytree of jax.ShapeDtypeStruct (with shardings) matching `tree`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
