"""Training speed beside references measured in the same run: figures, never timed tests.

* `train_step_comparison`: the trainer's compiled step (`speed.make_trainer`: the run's own
  multi-step call, its named randomness, EMA, finiteness guard and metrics) beside a plain-JAX
  loop of the same network (`plain_jax_runner`: uniform t, one noise draw, Adam, lax.scan, the
  least a flow-matching step can do) and torchcfm's tutorial loop (`torchcfm_runner`, when
  torch and torchcfm import), timed interleaved so that a machine whose load changes slows all
  alike.
* `whole_process`: wall seconds of `scripts/train.py` on a config (start-up, compilation,
  training, evaluation), with a cold and a warm compilation cache and with evaluation off,
  beside torchcfm's tutorial loop run as its own process for the same steps.
* `startup`: wall seconds of a run of one compiled call (evaluation off), cold and warm cache.
* `evaluation_vs_sampling`: the trainer's periodic evaluation beside the sampling it contains.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from flowmatch import checks
from flowmatch import data as data_lib
from flowmatch import rng
from flowmatch import threefry
from flowmatch import training
from flowmatch.experiments import coupling_speed
from flowmatch.experiments import speed
from flowmatch.models import precision
from flowmatch.training import evaluation
from flowmatch.training import loop as loop_lib
from flowmatch.training import runs as runs_lib
from flowmatch.training import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHCFM_ROW = "torchcfm CFM"
PLAIN_ROW = "plain JAX"


def plain_jax_runner(config, steps_per_call: int) -> Callable[[], object]:
    """run(): steps_per_call steps of the plainest flow-matching loop over `config`'s network:
    per step t ~ U[0, 1) and x0 from the config's source, x_t = (1 - t) x0 + t x1, squared error
    to x1 - x0, Adam (lr 1e-3), under one jitted lax.scan with the state donated; the batches
    are the config's first steps_per_call batches, made once (as `speed.make_trainer`'s).
    Compiled with jax's own lowering of Threefry (a loop on CPU, whatever the process's
    `flowmatch.threefry` setting): the loop a researcher would write with jax as it comes.  The
    network's gradient is taken as the trainer takes it (`precision.gradient_products`: the
    same products when model.matmul_dtype is bfloat16)."""
    settings = training.read_settings(config)
    source = loop_lib.load_data(settings.data)
    comps = training.build(settings, runs_lib.spec_of_source(source, settings.data.name))
    model, tx = comps.model, optax.adam(1e-3)
    key = rng.seed_stream(settings.train.seed, "plain")
    params = model.init(key, jnp.zeros((1, *comps.spec.example_shape)), jnp.zeros((1,)))
    it = data_lib.BatchIterator(source, settings.train.batch_size, settings.train.seed)
    x1s = jnp.asarray(it.batches(0, steps_per_call)["x"])
    sample_source = comps.source.sample

    def step(carry, x1):
        params, opt_state, key = carry
        key, key_t, key_x0 = jax.random.split(key, 3)
        t = jax.random.uniform(key_t, (x1.shape[0],))
        x0 = sample_source(key_x0, x1.shape[0])
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss_fn = lambda p: jnp.mean(jnp.square(model.apply(p, x_t, t) - (x1 - x0)))  # noqa
        with precision.gradient_products():  # the network's own gradient, as the trainer's
            loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    holder = [(params, tx.init(params), key)]
    with threefry.unrolled(False):
        run_steps = jax.jit(lambda carry, xs: jax.lax.scan(step, carry, xs),
                            donate_argnums=0).lower(holder[0], x1s).compile()

    def run():
        holder[0], losses = run_steps(holder[0], x1s)
        return losses

    return run


def torchcfm_runner(batch_size: int, width: int, steps_per_call: int, seed: int = 0):
    """run(): steps_per_call steps of torchcfm's CFM tutorial loop (8gaussians -> moons,
    ConditionalFlowMatcher(sigma=0.1), models.MLP(dim=2, time_varying=True, w=width), Adam),
    on one thread, as torchcfm's figures in issue 13 were measured."""
    return coupling_speed.torchcfm_runner(batch_size=batch_size, width=width,
                                          steps_per_call=steps_per_call, seed=seed, ot=False)


def train_step_comparison(config, *, steps_per_call: int = 100, rounds: int = 20,
                          torchcfm: bool | None = None, matmul_dtypes=()) -> list[dict]:
    """Steps/s of the trainer's step, the plain-JAX loop of the same network and (torchcfm:
    None = when importable) torchcfm's loop (width config.model.hidden_sizes[0], batch
    config.batch_size), interleaved; for each of `matmul_dtypes` also the trainer and the
    plain loop with the network's model.matmul_dtype set to it.  Rows: label, steps_per_sec
    (median call), best (fastest call), vs_plain (median / the plain loop's median, the
    config's own network)."""
    runners = {"flowmatch": _trainer_runner(config, steps_per_call),
               PLAIN_ROW: plain_jax_runner(config, steps_per_call)}
    for dtype in matmul_dtypes:
        c = config.copy_and_resolve_references()
        c.model.matmul_dtype = dtype
        runners[f"flowmatch, {dtype} products"] = _trainer_runner(c, steps_per_call)
        runners[f"{PLAIN_ROW}, {dtype} products"] = plain_jax_runner(c, steps_per_call)
    if torchcfm is None:
        torchcfm = coupling_speed.torchcfm_available()
    if torchcfm:
        runners[TORCHCFM_ROW] = torchcfm_runner(config.batch_size, config.model.hidden_sizes[0],
                                                steps_per_call)
    times = coupling_speed.interleaved_seconds(runners, rounds=rounds)
    rate = {label: steps_per_call / statistics.median(t) for label, t in times.items()}
    return [dict(label=label, steps_per_sec=rate[label], best=steps_per_call / min(t),
                 vs_plain=rate[label] / rate[PLAIN_ROW]) for label, t in times.items()]


def _trainer_runner(config, steps_per_call: int):
    trainer = speed.make_trainer(config, steps_per_call=steps_per_call)
    return lambda: trainer.call()["loss"]


# -- whole processes ----------------------------------------------------------------------------


def process_seconds(argv: list[str], env: dict | None = None) -> float:
    """Wall seconds of a subprocess (from the repository root); RuntimeError when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def train_command(config_path: str, workdir: str, overrides: dict) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--config={config_path}",
            f"--workdir={workdir}", "--config.progress_bar=False",
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def whole_process(config_path: str = "configs/torchcfm_moons.py", *, overrides=None,
                  torchcfm: bool | None = None, torchcfm_steps: int | None = None,
                  rounds: int = 1) -> dict:
    """Wall seconds of scripts/train.py on `config_path` (+ overrides): once with a cold
    compilation cache (a fresh one), then `rounds` rounds of: the same warm, warm with evaluation
    off (eval_every_steps=0), and (torchcfm: None = when importable) torchcfm's tutorial loop
    for torchcfm_steps (default the config's num_train_steps) as its own Python process; each
    run in a fresh workdir.  A whole process varies by several tenths of a second from run to
    run on 2 cores, so the rounds alternate the three and each figure is the median of its
    runs ("... runs": every run's seconds, in order)."""
    from flowmatch.experiments import cli  # pylint: disable=g-import-not-at-top
    rounds = checks.positive_int("rounds", rounds)
    config = cli.load_config_file(config_path)
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    out = {"config": config_path, "overrides": dict(overrides or {}),
           "steps": config.num_train_steps, "rounds": rounds}
    if torchcfm is None:
        torchcfm = coupling_speed.torchcfm_available()
    steps = torchcfm_steps or config.num_train_steps
    torchcfm_argv = [sys.executable, "-m", __name__, "torchcfm", str(config.batch_size),
                     str(config.model.hidden_sizes[0]), str(steps)]
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "xla")}

        def flowmatch(label, extra, r):
            argv = train_command(config_path, os.path.join(tmp, f"{label}_{r}".replace(", ", "_")),
                                 dict(overrides or {}, **extra))
            runs.setdefault(f"flowmatch {label}", []).append(process_seconds(argv, cache))

        flowmatch("cold", {}, 0)
        for r in range(rounds):
            flowmatch("warm", {}, r)
            flowmatch("warm, no evaluation", {"eval_every_steps": 0}, r)
            if torchcfm:
                runs.setdefault("torchcfm", []).append(process_seconds(torchcfm_argv))
    for label, seconds in runs.items():
        out[label] = statistics.median(seconds)
        out[f"{label} runs"] = seconds
    return out


def startup(config_path: str = "configs/torchcfm_moons.py") -> dict:
    """Wall seconds of scripts/train.py for one compiled call of steps (num_train_steps =
    steps_per_call), evaluation off: imports, config, compilation, that call, one checkpoint;
    with a cold compilation cache and then warm."""
    from flowmatch.experiments import cli  # pylint: disable=g-import-not-at-top
    k = cli.load_config_file(config_path).steps_per_call
    overrides = dict(num_train_steps=k, log_every_steps=k, checkpoint_every_steps=k,
                     eval_every_steps=0)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "xla")}
        for label in ("cold", "warm"):
            out[label] = process_seconds(
                train_command(config_path, os.path.join(tmp, label), overrides), cache)
    return out


# -- evaluation ---------------------------------------------------------------------------------


def initial_evaluator(config, workdir: str, key):
    """(the trainer's `training.evaluation.Evaluator` of `config` writing to workdir, with eval
    key `key`; the config's initial parameters, drawn from seed 0's "init" stream)."""
    settings = training.read_settings(config)
    plan = loop_lib.make_plan(settings)
    source = loop_lib.load_data(settings.data)
    comps = training.build(settings, runs_lib.spec_of_source(source, settings.data.name))
    params = state_lib.create_state(comps.model, comps.tx, comps.spec.example_shape,
                                    comps.conditional, rng.seed_stream(0, "init"), plan).params
    return evaluation.Evaluator(comps, plan, source, workdir, key, settings.data.name), params


def evaluation_vs_sampling(config, repeats: int = 3) -> dict:
    """Seconds of the trainer's evaluation (`training.evaluation.Evaluator`: sampling with the
    config's sampler, tv, w2 when eval.w2_in_training; the picture is drawn in the background,
    as in training, and not timed) and of its sampling alone,
    on the config's initial network (the work does not depend on the weights, except w2's),
    each the median of `repeats` after a compiling call."""
    key = rng.seed_stream(0, "eval")
    with tempfile.TemporaryDirectory() as tmp:
        evaluator, params = initial_evaluator(config, tmp, key)
        sample = lambda: evaluator.draw(params, rng.stream(key, "samples"), None)  # noqa
        whole = lambda: evaluator(0, params)  # noqa: E731
        seconds = {}
        for label, fn in (("sampling", sample), ("evaluation", whole)):
            fn()
            times = []
            for _ in range(repeats):
                evaluator.finish_pictures()  # the last call's picture is not timed in this one
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            seconds[label] = statistics.median(times)
        evaluator.close()  # before the directory goes
    return dict(seconds, ratio=seconds["evaluation"] / seconds["sampling"],
                num_samples=evaluator.num_samples,
                sampler=dict(training.read_settings(config).sampling))


def _torchcfm_main(batch_size: int, width: int, steps: int) -> None:
    """The torchcfm process of `whole_process`: its tutorial loop for `steps` steps."""
    run = torchcfm_runner(batch_size, width, steps)
    print(run())


if __name__ == "__main__" and sys.argv[1:2] == ["torchcfm"]:
    _torchcfm_main(*(int(v) for v in sys.argv[2:5]))
