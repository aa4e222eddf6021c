"""A workdir that holds another run is refused (nothing touched), resumed with --resume or moved
aside with --overwrite; the train script says so in one line."""

import glob
import os
import subprocess
import sys

import pytest

from configs_util import ROOT, load_config, override
from flowmatch import training
from flowmatch.training import runs, workdir as workdir_lib


def moons(**overrides):
    config = load_config("moons")
    return override(config, overrides)


def test_a_workdir_with_a_different_config_is_refused_and_nothing_is_touched(tmp_path):
    wd = str(tmp_path)
    old = moons()
    runs.save_config(old, wd)
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    before = {p: open(os.path.join(wd, p)).read() for p in os.listdir(wd)}
    new = moons(**{"optimizer.learning_rate": 1e-3, "model.hidden_sizes": (64, 64)})
    with pytest.raises(training.ConfigError, match=r"different config \(model\.hidden_sizes: .*"
                                                r"optimizer\.learning_rate: 0\.002 -> 0\.001\).*"
                                                r"--resume.*--overwrite"):
        training.train_and_evaluate(new, wd)
    assert {p: open(os.path.join(wd, p)).read() for p in os.listdir(wd)} == before
    # Logging, evaluation and checkpoint settings do not make another run; training longer
    # (num_train_steps) is allowed with a warning.
    assert workdir_lib.check_workdir(moons(progress_bar=True, log_every_steps=4,
                                          **{"eval.num_tv_samples": 10}), wd) == "none"
    assert workdir_lib.check_workdir(moons(num_train_steps=40), wd) == "none"
    # The DiT's attention kernel is the same function (a GPU run resumes where cuDNN is absent).
    assert workdir_lib.config_differences({"model": {"attention": "cudnn", "width": 8}},
                                          {"model": {"attention": "xla", "width": 8}}) == []
    assert workdir_lib.config_differences({"model": {"width": 8}}, {"model": {"width": 16}})
    # --resume keeps the old config beside the new one; --overwrite moves the run aside.
    assert workdir_lib.check_workdir(new, wd, "resume") == "keep_old_config"
    assert workdir_lib.check_workdir(new, wd, "overwrite") == "move_aside"
    workdir_lib.apply_workdir_action(wd, "move_aside")
    (moved,) = glob.glob(os.path.join(wd, workdir_lib.PREVIOUS_RUNS, "*"))
    assert {p: open(os.path.join(moved, p)).read() for p in os.listdir(moved)} == before
    assert os.listdir(wd) == [workdir_lib.PREVIOUS_RUNS]


def test_train_script_refuses_another_run_in_one_line(tmp_path):
    runs.save_config(moons(), str(tmp_path))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    base = [sys.executable, "scripts/train.py", "--config=configs/moons.py:smoke",
            f"--workdir={tmp_path}"]
    proc = subprocess.run(base + ["--config.optimizer.learning_rate=0.01"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "optimizer.learning_rate: 0.002 -> 0.01" in last
    assert "--resume" in last and "--overwrite" in last
    # A config file that fails to load is one line too (ml_collections embeds a traceback).
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config=configs/moons.py:big",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: flag --config=configs/moons.py:big: unknown config variant 'big'; choose one of: "
        "(none), smoke  (e.g. --config=configs/moons.py:smoke)")


# -- damaged data files ------------------------------------------------------------------------
