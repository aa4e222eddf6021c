"""Preemption and kills: SIGTERM saves a sealed checkpoint at the next boundary (in process), and
a training script killed with SIGKILL, left with a half-written save, stopped by Ctrl-C and by
SIGTERM ends, after the same command is rerun, bit for bit like an uninterrupted run.

The kills happen at chosen points (after a given checkpoint and a given logged step), not after
random sleeps; a save cut short by a kill is reproduced exactly as it leaves the disk (orbax's
temporary folder), so nothing races orbax's writer.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs_util import ROOT, load_config
from flowmatch import checkpoint as ckpt_lib
from flowmatch import data as data_lib
from flowmatch import metrics, training
from flowmatch.training import runs, state as state_lib

TIMING_KEYS = ("steps_per_sec", "eval_seconds")


def leaves_equal(a, b):
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def rows_without_timing(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_rows(a, b):
    ra, rb = rows_without_timing(a), rows_without_timing(b)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == y[k] or (np.isnan(x[k]) and np.isnan(y[k])), (x["step"], k)


def test_sigterm_saves_a_sealed_checkpoint_at_the_next_boundary(tmp_path, monkeypatch):
    config = load_config("moons")
    config.update(num_train_steps=12, log_every_steps=4, eval_every_steps=12,
                  checkpoint_every_steps=8)
    original = data_lib.BatchIterator.batches

    def batches(self, i, k):  # signalled while loading batches 4-5: stop after step 6
        if i <= 4 < i + k:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, i, k)

    monkeypatch.setattr(data_lib.BatchIterator, "batches", batches)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ckpt_lib.Preempted) as info:
        training.train_and_evaluate(config, str(tmp_path))
    assert info.value.step == 6
    assert signal.getsignal(signal.SIGTERM) is handler  # the handler is put back
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.sealed_steps() == [6]  # saved, waited for and sealed before raising
    comps = training.build(training.read_settings(config), runs.read_spec(str(tmp_path)))
    abstract = state_lib.abstract_state(comps.model, comps.tx, (2,), False)
    _, _, meta = ckpt.restore_latest(ckpt_lib.abstract_like(abstract))
    ckpt.close()
    # Step 6 is inside the log window 5..8: its per-step metrics travel in the checkpoint, so
    # the resumed run logs the same row at step 8.
    assert meta["data"] == {"index": 6} and len(meta["window"]["loss"]) == 2
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))] == [4]


CHAIN_STEPS = 1600
CHAIN_FLAGS = [f"--config.num_train_steps={CHAIN_STEPS}", "--config.log_every_steps=100",
               f"--config.eval_every_steps={CHAIN_STEPS}", "--config.checkpoint_every_steps=200"]


def _start(workdir, log, cache):
    # One persistent compilation cache for the runs of this test: every run executes the same
    # compiled programs (and starts in seconds instead of recompiling).
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "scripts/train.py", "--config=configs/moons.py:smoke",
         f"--workdir={workdir}", *CHAIN_FLAGS], cwd=ROOT, env=env, stdout=out,
        stderr=subprocess.STDOUT), out


def _wait_for(pred, proc, what, timeout=600.0):
    t = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}")
        if time.monotonic() - t > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _steps_in(ckpt_dir):
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(
        ckpt_dir) else []


def _last_logged_step(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    rows = open(path).read().splitlines() if os.path.exists(path) else []
    return json.loads(rows[-1])["step"] if rows and rows[-1].endswith("}") else 0


@pytest.mark.slow
def test_kill_9_a_cut_save_ctrl_c_and_sigterm_then_resume_give_the_same_run_bit_for_bit(
        tmp_path):
    cache = tmp_path / "jax_cache"
    ref = str(tmp_path / "ref")
    proc, out = _start(ref, tmp_path / "ref.log", cache)  # uninterrupted
    assert proc.wait(timeout=900) == 0, open(tmp_path / "ref.log").read()[-3000:]
    out.close()
    wd = str(tmp_path / "run")
    ckpts = os.path.join(wd, "checkpoints")
    log = lambda i: open(tmp_path / f"{i}.log").read()  # noqa: E731

    # 1. SIGKILL once training has passed its second checkpoint and logged step 500.
    proc, out = _start(wd, tmp_path / "1.log", cache)
    _wait_for(lambda: len(_steps_in(ckpts)) >= 2 and _last_logged_step(wd) >= 500, proc,
              "checkpoint 400 and step 500")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out.close()

    # 2. A save cut short by a kill: orbax's temporary folder of the next step, as such a kill
    # leaves it (the newest checkpoint's files under the temporary name).
    newest = _steps_in(ckpts)[-1]
    cut = os.path.join(ckpts, f"{newest + 200}{ckpt_lib.TMP_MARKER}")
    shutil.copytree(os.path.join(ckpts, str(newest)), cut)

    # 3. Ctrl-C (SIGINT) once the rerun has resumed and logged two more rows: one line, a
    # checkpoint at that step, exit status 0.
    proc, out = _start(wd, tmp_path / "3.log", cache)
    _wait_for(lambda: "resuming from step" in log(3), proc, "the resume")
    restored = int(log(3).split("resuming from step ")[1].split()[0])
    assert restored == newest and "half-written checkpoint" in log(3) and not os.path.exists(cut)
    _wait_for(lambda: _last_logged_step(wd) >= restored + 200, proc, "training after the resume")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 0, log(3)[-3000:]
    out.close()
    assert "Traceback" not in log(3) and "KeyboardInterrupt" not in log(3)
    assert "Ctrl-C: saving a checkpoint at the next step boundary" in log(3)
    step = int(log(3).split("interrupted: saved a checkpoint at step ")[1].split()[0])
    assert step in _steps_in(ckpts) and step < CHAIN_STEPS
    assert ckpt_lib.check_manifest(os.path.join(ckpts, str(step))) is None

    # 4. SIGTERM (a scheduler's preemption notice) on the next rerun, the same way.
    proc, out = _start(wd, tmp_path / "4.log", cache)
    _wait_for(lambda: _last_logged_step(wd) >= step + 200, proc, "training after the resume")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, log(4)[-3000:]
    out.close()
    assert f"resuming from step {step}" in log(4) and "Traceback" not in log(4)
    step = int(log(4).split("preemption notice: saved a checkpoint at step ")[1].split()[0])

    # 5. The same command again runs to the end.
    proc, out = _start(wd, tmp_path / "5.log", cache)
    assert proc.wait(timeout=900) == 0, log(5)[-3000:]
    out.close()
    assert f"resuming from step {step}" in log(5)

    a, b = training.restore(ref), training.restore(wd)
    assert a.step == b.step == CHAIN_STEPS
    assert leaves_equal(a.state.params, b.state.params)
    assert leaves_equal(a.state.ema_params, b.state.ema_params)
    assert leaves_equal(a.state.opt_state, b.state.opt_state)
    assert_same_rows(ref, wd)  # no step missing or twice, every logged number equal
