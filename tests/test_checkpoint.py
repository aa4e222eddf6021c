"""Checkpoints: damaged files (truncated, flipped, deleted) fall back to the newest clean
checkpoint, half-written and unsealed saves, no silent fresh start, safe retention."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import checkpoint as ckpt_lib


def leaves_equal(a, b):
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _tree(step):
    return {"w": jnp.full((64, 8), float(step)), "b": jnp.arange(8.0) + step,
            "n": jnp.asarray(step, jnp.int32)}


def _save_steps(directory, steps, max_to_keep=5):
    ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=max_to_keep)
    for s in steps:
        ckpt.save(s, _tree(s), {"step": s})
    ckpt.close()


def _largest_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
             if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_clean_one(tmp_path, damage, capsys):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2, 3])
    victim = _largest_file(os.path.join(d, "3"))
    blob = open(victim, "rb").read()
    if damage == "truncate":
        open(victim, "wb").write(blob[: len(blob) // 2])
    elif damage == "flip":  # orbax alone restores this silently with one wrong number
        b = bytearray(blob)
        b[len(b) // 2] ^= 0x01
        open(victim, "wb").write(bytes(b))
    else:
        os.remove(victim)
    abstract = ckpt_lib.abstract_like(_tree(0))
    ckpt = ckpt_lib.Checkpointer(d)
    with pytest.raises(ckpt_lib.CheckpointError, match="step 3 .* damaged"):
        ckpt.restore(3, abstract)
    step, state, meta = ckpt.restore_latest(abstract)  # read-only: nothing moved
    assert step == 2 and meta == {"step": 2} and leaves_equal(state, _tree(2))
    assert ckpt.all_steps() == [1, 2, 3]
    step, _, _ = ckpt.restore_latest(abstract, repair=True)
    assert step == 2 and ckpt.all_steps() == [1, 2]
    assert os.listdir(d + "_damaged") == ["3"]  # set aside, not deleted
    ckpt.save(3, _tree(3), {"step": 3})  # the step can be written again
    ckpt.close()
    out = capsys.readouterr().out
    assert "checkpoint at step 3 is damaged" in out and "moved the damaged checkpoint" in out


def test_half_written_and_unsealed_checkpoints(tmp_path, capsys):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2])
    # A save killed mid-write leaves orbax's temporary folder; one killed between orbax's commit
    # and our seal leaves a checkpoint without a manifest.
    shutil.copytree(os.path.join(d, "2"), os.path.join(d, "3.orbax-checkpoint-tmp"))
    os.remove(os.path.join(d, "2", ckpt_lib.MANIFEST))
    ckpt = ckpt_lib.Checkpointer(d)
    assert ckpt.all_steps() == [1, 2]  # the temporary folder is no checkpoint
    step, state, _ = ckpt.restore_latest(ckpt_lib.abstract_like(_tree(0)), repair=True)
    assert step == 2 and leaves_equal(state, _tree(2))
    assert not os.path.exists(os.path.join(d, "3.orbax-checkpoint-tmp"))
    assert ckpt_lib.check_manifest(os.path.join(d, "2")) is None  # sealed now
    ckpt.close()
    assert "half-written checkpoint" in capsys.readouterr().out


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1])
    victim = _largest_file(os.path.join(d, "1"))
    open(victim, "wb").write(b"")
    ckpt = ckpt_lib.Checkpointer(d)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint .*\(step 1: file .* bytes"):
        ckpt.restore_latest(ckpt_lib.abstract_like(_tree(0)), repair=True)
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_retention_keeps_the_proven_checkpoint_while_a_newer_one_is_unproven(tmp_path):
    d = str(tmp_path / "checkpoints")
    ckpt = ckpt_lib.Checkpointer(d, max_to_keep=1)
    ckpt.save(1, _tree(1), {"step": 1})
    ckpt.wait()
    assert ckpt.sealed_steps() == [1]
    ckpt.save(2, _tree(2), {"step": 2})
    assert 1 in ckpt.all_steps()  # step 2 is still being written
    # The process dies after orbax commits step 2 but before it is sealed.
    ckpt._manager.wait_until_finished()  # pylint: disable=protected-access
    assert ckpt.all_steps() == [1, 2] and ckpt.sealed_steps() == [1]
    # ... and step 2 turns out damaged: the run falls back to step 1, which was kept.
    open(_largest_file(os.path.join(d, "2")), "wb").write(b"\0")
    again = ckpt_lib.Checkpointer(d, max_to_keep=1)
    step, state, _ = again.restore_latest(ckpt_lib.abstract_like(_tree(0)), repair=True)
    assert step == 1 and leaves_equal(state, _tree(1))
    # Once a newer checkpoint is sealed, the older one goes.
    again.save(2, _tree(2), {"step": 2})
    again.wait()
    assert again.all_steps() == [2] == again.sealed_steps()
    again.close()
    ckpt._manager.close()  # pylint: disable=protected-access


def test_all_finite_reads_cpu_arrays_in_place_with_the_device_reductions_answer():
    """On CPU all_finite checks the shards with numpy; it gives `_finite`'s answer (the jitted
    reduction used on other platforms) for a non-finite value in any floating leaf and dtype,
    and ignores integer leaves."""
    tree = {"w": jnp.zeros((5, 3)), "h": jnp.ones((4,), jnp.bfloat16),
            "c": jnp.ones((2,), jnp.complex64), "n": jnp.asarray(7, jnp.int32)}
    assert ckpt_lib._on_host_cpu(jax.tree.leaves(tree))  # the numpy path is the one tested
    assert ckpt_lib.all_finite(tree) and bool(ckpt_lib._finite(tree))
    for name, index in (("w", (4, 2)), ("w", (0, 0)), ("h", (1,)), ("c", (0,))):
        for bad in (np.nan, np.inf, -np.inf):
            broken = dict(tree, **{name: tree[name].at[index].set(bad)})
            assert not ckpt_lib.all_finite(broken) and not bool(ckpt_lib._finite(broken))
    assert ckpt_lib.all_finite({"n": jnp.asarray(2**31 - 1, jnp.int32)})
    assert ckpt_lib.all_finite({})


def test_array_handler_gets_its_floor_without_a_warning_on_the_terminal(monkeypatch, caplog):
    # Orbax warns on every handler override; a run's first terminal line was that warning.
    import logging  # pylint: disable=g-import-not-at-top
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    monkeypatch.setattr(ckpt_lib, "_array_handler_set", False)
    with caplog.at_level(logging.WARNING):
        ckpt_lib._use_array_handler()  # pylint: disable=protected-access
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    assert (handler._min_slice_bytes_for_replica_parallel  # pylint: disable=protected-access
            == ckpt_lib.REPLICA_PARALLEL_MIN_BYTES)
    # Only the registration is quiet: orbax's other warnings still reach the logs.
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    with caplog.at_level(logging.WARNING):
        absl_logging.warning("Type handler registry overriding (a later message)")
    assert [r for r in caplog.records if "later message" in r.getMessage()]
