"""The command line as a newcomer meets it: misspelt config keys at any depth are one line with a
suggestion and exit status 2, --help lists the script's own flags one line each, and a Ctrl-C
before training starts is one line too."""

import os
import subprocess
import sys

import pytest

from configs_util import ROOT

SCRIPTS = ["train", "sample", "compare_integrators", "benchmark_ddpm", "benchmark", "reflow",
           "reproduce_ot", "diagnose", "floors_2d", "prepare_data", "coupling_speed"]


def run(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300, **kw)


@pytest.mark.parametrize("override,suggestion", [
    ("--config.num_train_step=100", "did you mean --config.num_train_steps?"),
    ("--config.optimizer.learnig_rate=0.1", "did you mean --config.optimizer.learning_rate?"),
    ("--config.nosuchsection.x=3", "configs/default.py"),
])
def test_a_misspelt_config_key_is_one_line_with_the_suggestion(override, suggestion, tmp_path):
    proc = run(["scripts/train.py", "--config=configs/checkerboard.py:smoke",
                f"--workdir={tmp_path}", override])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key "), proc.stderr
    assert override.split("=")[0] in lines[0] and suggestion in lines[0]
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_scripts_own_flags_one_line_each(script):
    proc = run([f"scripts/{script}.py", "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert f"flags of {script}.py" in out and "orbax" not in out.lower()
    flag_lines = [line for line in out.splitlines() if line.startswith("  --")]
    assert flag_lines, out
    if script == "train":
        assert "--workdir" in out and "configs/default.py" in out
    assert run([f"scripts/{script}.py", "--helpshort"]).stdout == out


def test_the_scripts_compilation_cache_follows_the_environment():
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch.experiments import cli as cli_lib  # pylint: disable=g-import-not-at-top
    current = jax.config.jax_compilation_cache_dir
    assert cli_lib.use_compilation_cache({cli_lib.CACHE_ENV: "off"}) is None
    assert jax.config.jax_compilation_cache_dir == current  # off: left as it was
    # JAX's own setting wins over flowmatch's (conftest sets one for the session).
    assert cli_lib.use_compilation_cache({"JAX_COMPILATION_CACHE_DIR": current,
                                          cli_lib.CACHE_ENV: "/elsewhere"}) == current
    assert jax.config.jax_compilation_cache_dir == current


def test_a_script_freezes_its_imports_for_the_collector_and_loses_no_log_line(tmp_path):
    """cli.run freezes the imports' objects out of the garbage collector's walks (gc.freeze),
    and again at the end; a library log line written last still reaches its file at exit."""
    script, log = tmp_path / "tiny.py", tmp_path / "log" / "train.log"
    script.write_text(
        "import gc, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from flowmatch.experiments import cli\n"
        "def main(argv):\n"
        f"    cli.log_to_file({str(log)!r})\n"
        "    from absl import logging\n"
        "    print('frozen', gc.get_freeze_count(), flush=True)\n"
        "    logging.info('the last line')\n"
        "cli.run(main)\n")
    proc = run([str(script)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 10_000  # jax, flax, optax, orbax: ~230,000 objects
    assert log.read_text().rstrip().endswith("the last line")
