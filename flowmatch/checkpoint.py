"""Orbax checkpoints under `workdir/checkpoints/<step>/`: sealed, verified, kept safely.

Each checkpoint holds the train state (a pytree of arrays) and a small JSON `meta` record (the
data iterator's position and anything else the loop needs to continue exactly).

The life of a checkpoint:
  1. `save(step, state, meta)` starts an asynchronous orbax save: orbax writes every file into
     `<step>.orbax-checkpoint-tmp` and renames that folder to `<step>` once all are written
     (the commit).  A save that is killed leaves the temporary folder, never a `<step>` folder.
  2. Seal: once the save is committed (checked at the next save, at `wait()` and at `close()`,
     so every exit path of the training loop seals), process 0 reads the files back and writes
     `<step>/flowmatch_manifest.json` with the size and CRC-32 of each.  A sealed checkpoint is
     proven: it was written completely, and any later change to its files is detectable.
  3. Retention is done here, not by orbax's max_to_keep: after each seal, keep the
     `max_to_keep` newest sealed checkpoints and every checkpoint newer than the newest sealed
     one, and delete the rest.  So the newest proven checkpoint is never deleted while a newer
     one is unproven (still being written, or committed but not yet sealed), whatever
     `max_to_keep` is.

`restore_latest` walks from the newest step down and takes the first checkpoint that passes:
  - a temporary folder (a save cut short) is no checkpoint: it is reported and, with
    `repair=True`, removed;
  - a sealed checkpoint whose files differ from its manifest (missing, truncated or changed
    bytes: orbax itself restores a flipped byte in an array file silently), that orbax cannot
    read, or whose arrays are not all finite is reported as damaged;
  - an unsealed committed checkpoint (killed between commit and seal) is used if it restores
    cleanly with finite arrays, and is then sealed.
With `repair=True` (the training loop) the damaged checkpoints newer than the one used are moved
to `<directory>_damaged/<step>` (never deleted), so that training can write those steps again.
If checkpoints exist but none restores, `CheckpointError`: starting from scratch would silently
throw the run away.  Multi-process: orbax writes and reads collectively; process 0 alone seals,
verifies and moves folders, and all processes follow its decisions.

Preemption (`PreemptionWatcher`): SIGTERM asks the loop to save at the next step boundary and
stop (`Preempted`); multi-process runs agree on that step through JAX's preemption sync point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

MANIFEST = "flowmatch_manifest.json"
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a save in progress
# Written by orbax after the commit (a timestamp); not needed to restore, so not sealed.
_UNSEALED_FILES = ("_CHECKPOINT_METADATA",)
_CHUNK = 1 << 22
# Replicated arrays (every data-parallel layout's parameters) are written cooperatively by their
# replicas only when each replica's slice is at least this big.  Orbax's default slices every
# replicated leaf R ways, one dispatched `lax.slice` program per slice and device, which for
# small leaves costs far more than the bytes it spreads: in a profile of a 20-step run of the
# checkerboard smoke MLP on 8 simulated CPU devices (8.6 s profiled), its one save spent 2.4 s
# compiling 352 slices; unprofiled, the run took 6.3 s by default and 4.6 s with this threshold
# (4 devices: 5.0 -> 4.2 s).
# Large leaves (a U-Net's convolutions, a DiT's blocks) are still split across replicas.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be used; the message lists why for each."""


class Preempted(Exception):
    """Training stopped on a preemption notice (or Ctrl-C) after saving (and waiting for) a
    checkpoint; `reason` says which."""

    def __init__(self, step: int, directory: str, reason: str = "preemption notice"):
        super().__init__(f"flowmatch: {reason}: saved a checkpoint at step {step} in {directory}; "
                         "rerun the same command to continue")
        self.step, self.reason = step, reason


def _report(message: str):
    """A message about checkpoints for the person running the job (process 0 prints it)."""
    logging.info("%s", message)
    if jax.process_index() == 0:
        print(f"flowmatch: {message}", flush=True)


def _barrier(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"flowmatch_checkpoint_{name}")


def _broadcast_json(value):
    """Process 0's `value` (JSON-serialisable) on every process."""
    if jax.process_count() == 1:
        return value
    raw = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(raw.size)))
    buf = np.zeros(size, np.uint8)
    buf[:raw.size] = raw[:size]
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return json.loads(out.tobytes().decode())


def _all_processes(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


@jax.jit
def _finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _on_host_cpu(leaves) -> bool:
    """True if one process holds every element of `leaves` in host (CPU device) memory."""
    return jax.process_count() == 1 and all(
        isinstance(x, jax.Array) and all(d.platform == "cpu" for d in x.sharding.device_set)
        for x in leaves)


def all_finite(tree) -> bool:
    """True if every floating-point leaf of `tree` (arrays, possibly sharded) is finite.

    On CPU devices of one process the shards are read in place with numpy (no copy): `_finite`
    would compile one program per state layout, 1-2 s in every fresh process that saves.
    Elsewhere `_finite` reduces on the devices, so the state is not copied to the host twice
    per save (orbax copies it once) and every process gets the global answer.
    """
    leaves = jax.tree.leaves(tree)
    if _on_host_cpu(leaves):
        return all(bool(np.isfinite(np.asarray(s.data)).all())
                   for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)
                   for s in x.addressable_shards if s.replica_id == 0)
    result = _finite(tree)
    return bool(np.asarray(result.addressable_data(0)))


def _file_record(path: str) -> dict:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"size": size, "crc32": crc}


def _files(step_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST and rel not in _UNSEALED_FILES:
                out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str):
    """Seals a committed checkpoint folder: size and CRC-32 of each file, written atomically."""
    files = {rel: _file_record(os.path.join(step_dir, rel)) for rel in _files(step_dir)}
    tmp = os.path.join(step_dir, f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def check_manifest(step_dir: str) -> str | None:
    """None if `step_dir` is sealed and intact, "unsealed" without a manifest, else the fault."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return "unsealed"
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its manifest {MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for rel, want in sorted(files.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"file {rel} is missing"
        size = os.path.getsize(full)
        if size != want["size"]:
            return f"file {rel} has {size} bytes, {want['size']} were written (truncated?)"
        if _file_record(full)["crc32"] != want["crc32"]:
            return f"file {rel} does not match its checksum (changed after writing)"
    return None


_array_handler_set = False


def _use_array_handler():
    """Registers orbax's jax.Array handler with `REPLICA_PARALLEL_MIN_BYTES` (once a process).

    The handler is orbax's own class with its default metadata store: only which replica writes
    which part of a small replicated leaf changes (the values written are the same, and
    checkpoints written either way restore alike).  Orbax keeps one registry per process, so
    this applies to any orbax save in the process.
    """
    global _array_handler_set
    if _array_handler_set:
        return
    # The metadata store is the default handler's (orbax exports no public name for it).
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
    handler = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES,
        array_metadata_store=array_metadata_store.Store())
    # Orbax logs a WARNING for every override, which would be the first line a user sees on
    # every run; the override is deliberate, so that one message is filtered out (only while
    # registering, only on absl's logger, which orbax logs through).
    absl_logger = logging.get_absl_logger()
    quiet = lambda record: "overriding" not in record.getMessage()  # noqa: E731
    absl_logger.addFilter(quiet)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.removeFilter(quiet)
    _array_handler_set = True


class Checkpointer:
    """A typed wrapper over `orbax.checkpoint.CheckpointManager` (see the module docstring)."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        _use_array_handler()
        if not isinstance(max_to_keep, (int, np.integer)) or max_to_keep < 1:
            raise ValueError(
                f"checkpoint max_to_keep must be an integer >= 1, got {max_to_keep!r} "
                "(config key: checkpoint.max_to_keep)")
        self.directory = os.path.abspath(directory)
        self.damaged_directory = self.directory + "_damaged"
        self.max_to_keep = int(max_to_keep)
        # Retention is ours (max_to_keep=None here): orbax would delete by age alone.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._unsealed: list[int] = []  # our saves not yet sealed, oldest first

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def sealed_steps(self) -> list[int]:
        return [s for s in self.all_steps()
                if os.path.exists(os.path.join(self.step_dir(s), MANIFEST))]

    def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> bool:
        """Starts saving `state` and `meta` at `step` (asynchronously).  Returns True if saved.

        The previous save is first committed, sealed and retention applied (orbax would wait
        for it anyway before starting another).
        """
        self._seal_committed()
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=force)
        if saved:
            self._unsealed.append(step)
        return saved

    def _seal_committed(self):
        """Waits for pending saves, seals them (process 0) and applies retention."""
        self._manager.wait_until_finished()
        if not self._unsealed:
            return
        if jax.process_index() == 0:
            for step in self._unsealed:
                if os.path.isdir(self.step_dir(step)):
                    write_manifest(self.step_dir(step))
        self._unsealed = []
        _barrier("sealed")
        self._apply_retention()

    def _apply_retention(self):
        steps = self.all_steps()
        sealed = self.sealed_steps()
        if not sealed:
            return
        keep = set(sealed[-self.max_to_keep:]) | {s for s in steps if s > sealed[-1]}
        for step in steps:
            if step not in keep:
                self._manager.delete(step)

    def restore(self, step: int, abstract_state: Any, *, verify: bool = True):
        """(state, meta) at `step`; `abstract_state` gives shapes, dtypes and shardings.

        With `verify`, a sealed checkpoint's files are first checked against its manifest
        (CheckpointError if they differ).
        """
        if verify:
            problem = _broadcast_json(
                check_manifest(self.step_dir(step)) if jax.process_index() == 0 else None)
            if problem not in (None, "unsealed"):
                raise CheckpointError(f"checkpoint at step {step} in {self.directory} is "
                                      f"damaged: {problem}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def temporary_folders(self) -> list[str]:
        """Folders of saves that never committed (killed or failed mid-write)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(os.path.join(self.directory, n) for n in os.listdir(self.directory)
                      if TMP_MARKER in n)

    def restore_latest(self, abstract_state: Any, *, repair: bool = False):
        """(step, state, meta) of the newest checkpoint that restores cleanly; None if none exist.

        repair: remove temporary folders, move damaged checkpoints newer than the one restored
        aside and seal an unsealed one (what training needs before it saves again); without it
        nothing is changed on disk.  Raises CheckpointError if checkpoints exist but none passes.
        """
        for tmp in self.temporary_folders():
            if repair:
                _report(f"found a half-written checkpoint {tmp} (a save that was interrupted); "
                        "removing it")
                if jax.process_index() == 0:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                _report(f"ignoring a half-written checkpoint {tmp} (a save that was interrupted)")
        _barrier("tmp_removed")
        self._manager.reload()
        steps = self.all_steps()
        problems = {}
        for step in reversed(steps):
            status = _broadcast_json(
                check_manifest(self.step_dir(step)) if jax.process_index() == 0 else None)
            if status not in (None, "unsealed"):
                problems[step] = status
                _report(f"checkpoint at step {step} is damaged ({status}); trying an older one")
                continue
            try:
                state, meta = self.restore(step, abstract_state, verify=False)
                ok = all_finite(state)
                why = "its arrays are not all finite"
            except Exception as e:  # pylint: disable=broad-except
                # orbax and tensorstore raise many types for damaged files.
                ok, why = False, f"it cannot be read: {type(e).__name__}: {str(e)[:300]}"
            if not _all_processes(ok):
                problems[step] = why
                _report(f"checkpoint at step {step} is damaged ({why}); trying an older one")
                continue
            if repair:
                self._set_aside([s for s in steps if s > step])
                if status == "unsealed" and jax.process_index() == 0:
                    write_manifest(self.step_dir(step))
                _barrier("repaired")
                self._manager.reload()
            return step, state, meta
        if steps:
            listing = "; ".join(f"step {s}: {p}" for s, p in sorted(problems.items()))
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored ({listing}); move the "
                "folder aside (or pass --overwrite) to start the run again from scratch")
        return None

    def _set_aside(self, steps: list[int]):
        if not steps or jax.process_index() != 0:
            return
        os.makedirs(self.damaged_directory, exist_ok=True)
        for step in steps:
            target = os.path.join(self.damaged_directory, str(step))
            n = 1
            while os.path.exists(target):
                n += 1
                target = os.path.join(self.damaged_directory, f"{step}-{n}")
            shutil.move(self.step_dir(step), target)
            _report(f"moved the damaged checkpoint at step {step} to {target}")

    def wait(self):
        """Blocks until every pending asynchronous save is committed to disk, and seals it."""
        self._seal_committed()

    def close(self):
        try:
            self.wait()
        finally:
            self._manager.close()


def abstract_like(tree):
    """A pytree of jax.ShapeDtypeStruct (with shardings) matching `tree`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# -- preemption ------------------------------------------------------------------------------


class PreemptionWatcher:
    """Says when the training loop should save and stop because of a preemption notice.

    Use as a context manager around the loop and call `reached(first_step, last_step)` after
    every jitted call (steps first_step..last_step just ran), on every process.

    - One process: a SIGTERM handler sets a flag; `reached` returns it.  Ctrl-C (SIGINT) does the
      same, with one line on stderr; a second Ctrl-C raises KeyboardInterrupt at once.
    - Several processes with JAX's preemption service (`jax.distributed` on, the default): JAX
      catches SIGTERM itself, and `multihost_utils.reached_preemption_sync_point` is asked for
      every step id in order, so all processes stop at the same boundary (the sync point is the
      step after the largest any process had reported when the notice arrived).
    - Several processes without that service: each catches SIGTERM, and the processes combine
      their flags at every boundary (an all-gather of one integer).
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.reason = "preemption notice"  # what asked for the stop (for the final message)
        self._flag = threading.Event()
        self._previous = {}
        multi = jax.process_count() > 1
        self._sync_point = (multi and jax.distributed.is_initialized()
                            and bool(jax.config.jax_enable_preemption_service))
        self._gather = multi and not self._sync_point

    def request(self, signum=None, _frame=None):
        """Asks for a stop at the next boundary (the signal handler; also callable directly).

        A second SIGINT (Ctrl-C pressed again) aborts at once with KeyboardInterrupt."""
        if signum == signal.SIGINT:
            if self._flag.is_set():
                raise KeyboardInterrupt("a second Ctrl-C: aborted without waiting")
            self.reason = "interrupted"
            sys.stderr.write("\nflowmatch: Ctrl-C: saving a checkpoint at the next step boundary, "
                             "then stopping (press Ctrl-C again to abort at once)\n")
            sys.stderr.flush()
        self._flag.set()

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            logging.warning("not on the main thread: SIGTERM will not save a checkpoint")
            return self
        for s in self.signals:
            # JAX's preemption service handles SIGTERM itself across processes; Ctrl-C there
            # stays a local interrupt.
            if self._sync_point and s == signal.SIGTERM:
                continue
            self._previous[s] = signal.signal(s, self.request)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False

    def reached(self, first_step: int, last_step: int) -> bool:
        if self._sync_point:
            hit = False
            for s in range(first_step, last_step + 1):  # every id, in order, on every process
                hit = multihost_utils.reached_preemption_sync_point(s) or hit
            return hit
        if self._gather:
            return bool(np.any(multihost_utils.process_allgather(np.int32(self._flag.is_set()))))
        return self._flag.is_set()


__all__ = ["Checkpointer", "CheckpointError", "Preempted", "PreemptionWatcher", "abstract_like",
           "all_finite", "check_manifest", "write_manifest"]
