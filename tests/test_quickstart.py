"""The README quickstart and the command-line scripts, run as a user runs them."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    """The shell commands of the README's Quickstart section, in order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def run(cmd, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, **kw)


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    install_train, install_test = cmds[0], cmds[1]
    assert install_train.startswith("pip install -e . && python scripts/train.py")
    assert "--config=configs/checkerboard.py" in install_train
    assert install_test == "pip install -e '.[test]' && python -m pytest"
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert install_test in ci.splitlines()


def train_smoke(workdir, *extra):
    return run([sys.executable, "scripts/train.py", "--config=configs/checkerboard.py:smoke",
                f"--workdir={workdir}", *extra])


def test_train_and_sample_scripts(tmp_path):
    workdir = tmp_path / "run"
    proc = train_smoke(workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parameters" in proc.stdout
    out = tmp_path / "s" / "samples.npz"
    proc = run([sys.executable, "scripts/sample.py", f"--workdir={workdir}", f"--output={out}",
                "--num_samples=300", "--method=rk4", "--steps=3", "--seed=7"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as f:
        assert f["samples"].shape == (300, 2) and f["samples"].dtype == np.float32
        assert int(f["nfe"]) == 12
    assert (tmp_path / "s" / "samples.png").stat().st_size > 1000
    # The same seed gives the same samples.
    out2 = tmp_path / "s" / "again.npz"
    run([sys.executable, "scripts/sample.py", f"--workdir={workdir}", f"--output={out2}",
         "--num_samples=300", "--method=rk4", "--steps=3", "--seed=7"])
    np.testing.assert_array_equal(np.load(out)["samples"], np.load(out2)["samples"])


@pytest.mark.parametrize("args,message", [
    (["--config.data.name=checkers"], "unknown dataset 'checkers'"),
    (["--config.sampling.method=rk5"], "rk5"),
    (["--config.batch_size=0"], "batch_size must be a positive integer"),
])
def test_train_script_reports_bad_config_in_one_line(tmp_path, args, message):
    proc = train_smoke(tmp_path / "bad", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_sample_script_errors(tmp_path):
    proc = run([sys.executable, "scripts/sample.py", f"--workdir={tmp_path / 'none'}",
                f"--output={tmp_path / 'x.npz'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config.json" in proc.stderr


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path):
    """The README's first command, as written but for the workdir: trains to the tv target."""
    cmd = readme_commands()[0].replace("runs/checkerboard", str(tmp_path / "cb"))
    proc = run(["bash", "-c", cmd], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "cb" / "metrics.jsonl")]
    last = rows[-1]
    assert last["step"] == 16_000
    assert last["tv"] <= 0.10, last
    assert os.path.exists(tmp_path / "cb" / "samples_16000.png")
    # Running the same command again finds the run finished and changes nothing.
    proc = run(["bash", "-c", cmd], timeout=600)
    assert proc.returncode == 0
    assert [json.loads(line) for line in open(tmp_path / "cb" / "metrics.jsonl")] == rows
