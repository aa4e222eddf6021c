"""Reflow (Liu et al. 2023, "Flow straight and fast: rectified flow") and one-step distillation.

Flow matching on independent pairs (x0 ~ N(0, I), x1 ~ data) gives the 1-rectified flow, whose
paths cross and curve.  Reflow straightens them: integrate the trained flow from fresh noise to
get the deterministic coupling (x0, x1 = Phi_1(x0)), train the next flow on those pairs (the
2-rectified flow, initialised from the previous one's parameters as Liu et al. do), and repeat.
Distillation fits one step on the pairs of the last flow, v(x0, 0) = x1 - x0 (objective time
sampling 'zero'), sampled with one Euler step.

  generate_pairs(workdir, out_dir, num_pairs=..., chunk_size=...)  pairs of a trained run, on disk
  run_reflow(config, workdir)                                       the chain below, resumable
  train_distilled(config, workdir, pairs_dir)                       a one-step model alone
  evaluate(workdir, ...)                                            tv / w2 / straightness table

A reflow workdir (`run_reflow`):
  flow1/        the 1-rectified flow (or config.reflow.base_workdir, an existing run)
  pairs1/       pairs of flow 1 (`flowmatch.data.pairs` layout)
  flow2/        the 2-rectified flow, trained on pairs1 ... up to flow{k+1}
  pairs{k+1}/   pairs of the last flow, and distill/, the one-step model on them (if asked for)
  reflow.json   the stages finished, with the config each ran with: a rerun skips them
  evaluation.json, evaluation.md   the table of `evaluate`

Randomness: chunk c of a pairs directory integrates x0 = exp.sample_source(fold_in(PRNGKey(seed),
c), chunk_size) (the run's source p0, config.source: by default normal(key, [chunk_size, ...])),
so it does not depend on which chunks were done before or on the devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import data as data_lib
from flowmatch import ema as ema_lib
from flowmatch import generate
from flowmatch import integrators
from flowmatch import metrics as metrics_lib
from flowmatch import parallel as parallel_lib
from flowmatch import sampling
from flowmatch import train as train_lib
from flowmatch.data import pairs as pairs_lib
from flowmatch.diagnostics import straightness as straightness_lib

ConfigError = train_lib.ConfigError
STATE_FILE = "reflow.json"
DEFAULT_EVAL_SAMPLERS = ("euler:1", "euler:4", "heun:50", "dopri5:1e-5")


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# -- pairs --------------------------------------------------------------------------------------


def _json_normal(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def generate_pairs(workdir: str, out_dir: str, *, num_pairs: int, chunk_size: int,
                   method: str | None = None, num_steps: int | None = None,
                   rtol: float | None = None, atol: float | None = None, seed: int = 0,
                   step: int | None = None, verbose: bool = True) -> dict:
    """Integrates `num_pairs` noise samples with the EMA parameters of the run in `workdir` and
    writes the pairs (x0, x1) to `out_dir` in chunks of `chunk_size` (`flowmatch.data.pairs`).

    The integrator is method / num_steps / rtol / atol, by default the run's config.sampling.
    Resumable: a rerun skips the chunks the manifest lists with an intact file and redoes the
    others (a chunk being written when the process was killed, a damaged file).  Chunk c is a
    pure function of (run, step, integrator, seed, chunk_size, c).  Conditional runs: row r of
    the pairs has label r % num_classes.  Multi-process: every process calls this with the same
    arguments (the solve is split over all devices); process 0 writes the files.

    Returns {"dir", "num_pairs", "generated": [chunk indices], "skipped": [...], "nfe",
    "seconds"}.  Raises ConfigError if `out_dir` holds pairs made differently (another run,
    step, integrator, seed or size), RuntimeError if an adaptive solve fails.
    """
    num_pairs = _count("num_pairs", num_pairs)
    chunk_size = _count("chunk_size", chunk_size)
    _count("seed", seed, 0)
    exp, state, step = generate.restore_run(workdir, step)
    try:
        settings = exp.sampler_settings(method, num_steps, rtol, atol)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    src = exp.source
    num_classes = exp.model.num_classes if exp.conditional() else 0
    spec = _json_normal(dict(
        num_pairs=num_pairs, chunk_size=chunk_size, example_shape=list(src.example_shape),
        kind=src.kind, data=getattr(src, "data_name", exp.config.data.name),
        num_classes=num_classes, source_workdir=os.path.abspath(workdir), source_step=int(step),
        source=dict(name=exp.source_dist.name, scale=exp.source_dist.scale), seed=int(seed),
        **settings))
    main = parallel_lib.is_main_process()
    os.makedirs(out_dir, exist_ok=True)
    manifest = pairs_lib.read_manifest(out_dir)
    if manifest is not None and manifest.get("spec") != spec:
        old = manifest.get("spec", {})
        diff = {k: (old.get(k), spec.get(k)) for k in sorted(set(old) | set(spec))
                if old.get(k) != spec.get(k)}
        raise ConfigError(
            f"{out_dir} holds pairs made differently ((was, now): {diff}); write to another "
            "directory, or delete this one to regenerate")
    if manifest is None:
        manifest = {"format": pairs_lib.FORMAT, "spec": spec, "chunks": {}}
    total = pairs_lib.num_chunks(num_pairs, chunk_size)
    finished = np.array([pairs_lib.chunk_is_finished(out_dir, i, manifest) for i in range(total)])
    if jax.process_count() > 1:  # every process must run the same (collective) solves
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        finished = np.asarray(multihost_utils.broadcast_one_to_all(finished))
    if main:
        pairs_lib.remove_temporary_files(out_dir)
        for i in np.flatnonzero(~finished):
            manifest["chunks"].pop(str(i), None)
        pairs_lib.write_json_atomic(os.path.join(out_dir, pairs_lib.MANIFEST), manifest)
    todo = [int(i) for i in np.flatnonzero(~finished)]
    sample = exp.make_sampler(**settings, return_source=True)
    base_key = jax.random.PRNGKey(seed)
    t_start, nfe = time.perf_counter(), 0
    for i in todo:
        rows = pairs_lib.chunk_rows(i, num_pairs, chunk_size)
        labels = (i * chunk_size + np.arange(chunk_size)) % max(num_classes, 1)
        cond = jnp.asarray(labels, jnp.int32) if num_classes else None
        t = time.perf_counter()
        x0, x1, n, ok = sample(state.ema_params, jax.random.fold_in(base_key, i), chunk_size, cond)
        if not bool(ok):
            raise RuntimeError(
                f"the ODE solve of pairs chunk {i} failed (max_steps reached or non-finite "
                f"values) with {settings}; loosen rtol/atol or use a fixed-step method")
        nfe = max(nfe, int(n))
        if main:
            entry = pairs_lib.write_chunk(out_dir, i, np.asarray(x0)[:rows], np.asarray(x1)[:rows],
                                          labels[:rows])
            manifest["chunks"][str(i)] = entry
            pairs_lib.write_json_atomic(os.path.join(out_dir, pairs_lib.MANIFEST), manifest)
            if verbose:
                print(f"pairs: chunk {i + 1}/{total} ({rows} pairs, NFE {int(n)}, "
                      f"{time.perf_counter() - t:.1f} s) -> {out_dir}", flush=True)
    skipped = [i for i in range(total) if finished[i]]
    if verbose and main and skipped:
        print(f"pairs: {len(skipped)} of {total} chunks already in {out_dir}, kept", flush=True)
    return {"dir": out_dir, "num_pairs": num_pairs, "generated": todo, "skipped": skipped,
            "nfe": nfe, "seconds": time.perf_counter() - t_start}


# -- settings and stage configs -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReflowSettings:
    """config.reflow, validated.  Zero / '' / None means "as the base config" where noted."""

    num_reflows: int = 1               # k: flows 2 .. k + 1 are trained on pairs
    base_workdir: str = ""             # an existing flow-1 run ('' = train it from the config)
    num_pairs: int = 100_000           # pairs generated from each flow
    chunk_size: int = 10_000           # pairs per chunk file
    pair_seed: int = 0
    pair_method: str = ""              # integrator of the pairs ('' = the run's config.sampling)
    pair_num_steps: int | None = None
    pair_rtol: float | None = None
    pair_atol: float | None = None
    init_from_previous: bool = True    # flow i + 1 (and the distilled model) start from flow i
    num_train_steps: int = 0           # steps of each reflow stage (0 = config.num_train_steps)
    learning_rate: float = 0.0         # of each reflow stage (0 = config.optimizer's)
    distill: bool = False              # train the one-step model on the last flow's pairs
    distill_num_train_steps: int = 0   # (0 = num_train_steps of the reflow stages)
    distill_learning_rate: float = 0.0
    evaluate: bool = True              # write evaluation.json / .md at the end (2-D data)
    eval_samplers: tuple = DEFAULT_EVAL_SAMPLERS
    eval_num_samples: int = 0          # samples for tv (0 = config.eval.num_tv_samples)
    straightness_steps: int = 100
    straightness_samples: int = 10_000

    @classmethod
    def from_config(cls, section) -> "ReflowSettings":
        if section is None:
            raise ConfigError("the config has no 'reflow' section; start from a reflow config, "
                              "e.g. --config=configs/reflow_moons.py")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = dict(section)
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown reflow setting(s) {unknown}; allowed: {sorted(fields)}")
        if "eval_samplers" in values:
            values["eval_samplers"] = tuple(values["eval_samplers"])
        s = cls(**values)
        _count("reflow.num_reflows", s.num_reflows, 0)
        _count("reflow.num_pairs", s.num_pairs)
        _count("reflow.chunk_size", s.chunk_size)
        _count("reflow.pair_seed", s.pair_seed, 0)
        for name in ("num_train_steps", "distill_num_train_steps", "eval_num_samples"):
            _count(f"reflow.{name}", getattr(s, name), 0)
        _count("reflow.straightness_steps", s.straightness_steps)
        _count("reflow.straightness_samples", s.straightness_samples)
        if s.num_reflows == 0 and not s.distill and not s.base_workdir:
            raise ConfigError("reflow.num_reflows=0 and reflow.distill=False is plain training: "
                              "use scripts/train.py, or ask for reflows or distillation")
        for spec in s.eval_samplers:
            parse_sampler(spec)
        return s

    def pair_settings(self) -> dict:
        return dict(method=self.pair_method or None, num_steps=self.pair_num_steps,
                    rtol=self.pair_rtol, atol=self.pair_atol)


def parse_sampler(spec: str) -> dict:
    """'euler:1', 'heun:50' (fixed grid: steps) or 'dopri5:1e-5' (adaptive: rtol = atol)."""
    method, _, arg = str(spec).partition(":")
    try:
        if method in integrators.ADAPTIVE_METHODS:
            tol = float(arg)
            settings = dict(method=method, num_steps=None, rtol=tol, atol=tol)
        else:
            settings = dict(method=method, num_steps=int(arg), rtol=None, atol=None)
        integrators.check_arguments(method, num_steps=settings["num_steps"], time_grid=None,
                                    rtol=settings["rtol"], atol=settings["atol"])
    except ValueError as e:
        raise ConfigError(
            f"bad sampler {spec!r} in reflow.eval_samplers ({e}); write METHOD:STEPS for a "
            f"fixed grid ('euler:1', 'heun:50') or METHOD:TOL for "
            f"{', '.join(integrators.ADAPTIVE_METHODS)} ('dopri5:1e-5')") from None
    return settings


def _copy(config) -> ml_collections.ConfigDict:
    """An unlocked copy of a training config, without the reflow section (a stage's config)."""
    d = config.copy_and_resolve_references().to_dict()
    d.pop("reflow", None)
    return ml_collections.ConfigDict(d)


def pairs_config(config, pairs_dir: str, num_pairs: int, *, num_train_steps: int = 0,
                 learning_rate: float = 0.0) -> ml_collections.ConfigDict:
    """`config` trained on the pairs in `pairs_dir` instead of its data set (a reflow stage).

    Evaluation sample counts are capped at num_pairs (the reference samples are the pairs' x1);
    a coupling (e.g. minibatch OT for flow 1) is turned off: the pairs are trained as written.
    """
    c = _copy(config)
    c.data.name = "pairs"
    c.data.path = os.path.abspath(pairs_dir)
    if "coupling" in c:
        c.coupling.name = "independent"
    if num_train_steps:
        c.num_train_steps = num_train_steps
    if learning_rate:
        c.optimizer.learning_rate = learning_rate
    c.eval.num_tv_samples = min(c.eval.num_tv_samples, num_pairs)
    c.eval.num_w2_samples = min(c.eval.num_w2_samples, num_pairs)
    return c


def distill_config(config, pairs_dir: str, num_pairs: int, *, num_train_steps: int = 0,
                   learning_rate: float = 0.0) -> ml_collections.ConfigDict:
    """A one-step model on the pairs: t = 0 only (time sampling 'zero'), one Euler step to sample.

    Needs flow matching on the cond-OT path with sigma_min = 0 and a velocity or x1 prediction,
    where one Euler step from x0 is x0 + v(x0, 0) = the predicted x1.
    """
    c = pairs_config(config, pairs_dir, num_pairs, num_train_steps=num_train_steps,
                     learning_rate=learning_rate)
    if (c.objective.name != "flow_matching" or c.path.schedule != "cond_ot"
            or c.path.sigma_min != 0.0 or c.objective.prediction not in ("velocity", "x1")):
        raise ConfigError(
            "one-step distillation needs objective.name='flow_matching', path.schedule='cond_ot', "
            "path.sigma_min=0 and objective.prediction 'velocity' or 'x1' (one Euler step from x0 "
            f"then lands on x1); got {c.objective.name!r}, {c.path.schedule!r}, "
            f"sigma_min={c.path.sigma_min}, prediction {c.objective.prediction!r}")
    c.objective.time_sampling = "zero"
    c.objective.t_min = 0.0
    c.sampling.method = "euler"
    c.sampling.num_steps = 1
    c.sampling.rtol = None
    c.sampling.atol = None
    return c


# -- stages -------------------------------------------------------------------------------------


def init_from(previous_workdir: str, config, workdir: str) -> bool:
    """Starts the run `config` in `workdir` from the EMA parameters of `previous_workdir`.

    Writes them as the step-0 checkpoint of `workdir` (fresh optimizer state, EMA = parameters),
    which `train_and_evaluate` then resumes from.  Does nothing (returns False) when `workdir`
    already has a checkpoint.  The two runs need the same model.
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    ckpt = checkpoint_lib.Checkpointer(ckpt_dir, max_to_keep=config.checkpoint.max_to_keep)
    try:
        if ckpt.all_steps():
            return False
        _, previous, _ = generate.restore_run(previous_workdir)
        exp = train_lib.Experiment.from_config(config)
        shardings = exp.state_shardings()

        def start(params):
            return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                        opt_state=exp.tx.init(params),
                                        ema_params=ema_lib.init(params))

        try:
            params = jax.device_put(previous.ema_params, shardings.params)
            state = jax.jit(start, out_shardings=shardings)(params)
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"cannot start {workdir} from the parameters of {previous_workdir}: {e}; both "
                "runs need the same config.model") from e
        ckpt.save(0, state, {"data": {"index": 0}, "step": 0}, force=True)
    finally:
        ckpt.close()
    return True


def train_distilled(config, workdir: str, pairs_dir: str, *, init_workdir: str | None = None,
                    num_train_steps: int = 0, learning_rate: float = 0.0):
    """Trains the one-step model of `distill_config` on `pairs_dir` into `workdir` (resumable).

    init_workdir: a run with the same model to start from (Liu et al. start from the flow that
    generated the pairs); None starts from the config's random initialisation.
    """
    source = data_lib.load_pairs(pairs_dir)
    c = distill_config(config, pairs_dir, source.num_examples, num_train_steps=num_train_steps,
                       learning_rate=learning_rate)
    if init_workdir:
        init_from(init_workdir, c, workdir)
    return train_lib.train_and_evaluate(c, workdir)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the chain: train a flow ('train'), or generate pairs from one ('pairs')."""

    name: str
    kind: str
    workdir: str
    config: Any = None          # 'train': the run's config
    source: str = ""            # 'pairs': the run they come from; 'train': the run to start from
    fingerprint: str = ""       # what a finished stage is compared with on a rerun


def plan_stages(config, workdir: str) -> list[Stage]:
    """The stages of `run_reflow`, in order (see the module docstring)."""
    s = ReflowSettings.from_config(config.get("reflow"))
    config = _copy(config)
    workdir = os.path.abspath(workdir)
    stages = []
    steps = s.num_train_steps or config.num_train_steps
    pair_args = dict(num_pairs=s.num_pairs, chunk_size=s.chunk_size, seed=s.pair_seed,
                     **s.pair_settings())

    def add(name, kind, config=None, source="", extra=None):
        d = os.path.join(workdir, name)
        what = {"kind": kind, "source": source, **(extra or {})}
        if config is not None:
            what["config"] = json.loads(config.to_json_best_effort(sort_keys=True))
        stages.append(Stage(name, kind, d, config, source, json.dumps(what, sort_keys=True)))
        return d

    if s.base_workdir:
        flow = os.path.abspath(s.base_workdir)
        train_lib.load_config(flow)  # fails early, with a clear message, if it is no run
    else:
        flow = add("flow1", "train", config)
    for i in range(1, s.num_reflows + 1):
        pairs = add(f"pairs{i}", "pairs", source=flow, extra=pair_args)
        c = pairs_config(config, pairs, s.num_pairs, num_train_steps=steps,
                         learning_rate=s.learning_rate)
        flow = add(f"flow{i + 1}", "train", c, source=flow if s.init_from_previous else "")
    if s.distill:
        k = s.num_reflows + 1
        pairs = add(f"pairs{k}", "pairs", source=flow, extra=pair_args)
        c = distill_config(config, pairs, s.num_pairs,
                           num_train_steps=s.distill_num_train_steps or steps,
                           learning_rate=s.distill_learning_rate or s.learning_rate)
        add("distill", "train", c, source=flow if s.init_from_previous else "")
    return stages


def _flat(tree: Any, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def changed_settings(recorded: str, now: str) -> list[str]:
    """The settings of a recorded stage fingerprint that `now` changes or drops.

    Settings only `now` has (added to flowmatch after the stage ran) are not compared.
    """
    old, new = _flat(json.loads(recorded)), _flat(json.loads(now))
    return sorted(k for k in old if k not in new or new[k] != old[k])


def _read_state(workdir: str) -> dict:
    path = os.path.join(workdir, STATE_FILE)
    if not os.path.exists(path):
        return {"stages": {}}
    with open(path) as f:
        return json.load(f)


def run_reflow(config, workdir: str) -> dict:
    """Runs (or resumes) the reflow chain of `config` (with a `reflow` section) in `workdir`.

    Stage by stage: flow 1 (unless reflow.base_workdir) -> pairs1 -> flow 2 -> ... ->
    flow k+1 [-> pairs{k+1} -> distill]; then, for 2-D data, `evaluate`.  A stage recorded as
    finished in reflow.json is skipped if none of its recorded settings changed (else
    ConfigError: use a new workdir); an unfinished one resumes (training from its checkpoint,
    pairs chunk by chunk).
    Multi-process: every process calls this with the same arguments and one shared workdir.
    Returns {"stages": {name: result}, "evaluation": table or None}.
    """
    settings = ReflowSettings.from_config(config.get("reflow"))
    stages = plan_stages(config, workdir)
    main = parallel_lib.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    state = _read_state(workdir)  # read once by every process, before anything is written
    for stage in stages:
        done = state["stages"].get(stage.name)
        if done is not None:
            changed = changed_settings(done["fingerprint"], stage.fingerprint)
            if changed:
                raise ConfigError(
                    f"stage {stage.name} in {workdir} was run with other settings than the config "
                    f"now asks for ({', '.join(changed[:6])}); use a new --workdir (or delete "
                    f"{stage.workdir} and its entry in {os.path.join(workdir, STATE_FILE)})")
            if main:
                print(f"reflow: stage {stage.name} already done, skipped", flush=True)
            continue
        if main:
            print(f"reflow: stage {stage.name} -> {stage.workdir}", flush=True)
        t = time.perf_counter()
        if stage.kind == "pairs":
            result = generate_pairs(stage.source, stage.workdir, num_pairs=settings.num_pairs,
                                    chunk_size=settings.chunk_size, seed=settings.pair_seed,
                                    **settings.pair_settings())
            result = {k: result[k] for k in ("num_pairs", "nfe")}
        else:
            if stage.source:
                init_from(stage.source, stage.config, stage.workdir)
            final = train_lib.train_and_evaluate(stage.config, stage.workdir)
            result = {"step": int(final.step)}
        result["seconds"] = time.perf_counter() - t
        state["stages"][stage.name] = {"fingerprint": stage.fingerprint, "result": result}
        if main:
            pairs_lib.write_json_atomic(os.path.join(workdir, STATE_FILE), state)
    table = None
    flows = [s.workdir for s in stages if s.kind == "train"]
    if settings.base_workdir:
        flows.insert(0, os.path.abspath(settings.base_workdir))
    if settings.evaluate and config.data.name in data_lib.TOY_DATASETS:
        table = evaluate(flows, os.path.join(workdir, "evaluation"),
                         samplers=settings.eval_samplers,
                         num_samples=settings.eval_num_samples or None,
                         straightness_steps=settings.straightness_steps,
                         straightness_samples=settings.straightness_samples)
    return {"stages": {k: v["result"] for k, v in state["stages"].items()}, "evaluation": table}


# -- evaluation ---------------------------------------------------------------------------------


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def evaluate(flow_workdirs: Sequence[str], output: str, *, samplers=DEFAULT_EVAL_SAMPLERS,
             num_samples: int | None = None, seed: int = 0, straightness_steps: int = 100,
             straightness_samples: int = 10_000) -> dict:
    """tv / w2 of each run in `flow_workdirs` against its 2-D data set, per sampler, and the
    straightness of each flow; writes `output`.json and `output`.md (a table).

    Straightness: Liu et al.'s S = E int_0^1 ||(x1 - x0) - v(x_t, t)||^2 dt along Euler solves
    with `straightness_steps` steps from `straightness_samples` source samples
    (`flowmatch.diagnostics.straightness`); 0 for straight paths.
    samplers: specs of `parse_sampler`.  A one-step (distilled) run, recognised by its time
    sampling 'zero', is evaluated with one Euler step only: its field is trained at t = 0 alone.
    The data set is the one the runs' pairs imitate (for a run on pairs) or trained on; the
    reference points are fresh samples of it (not the pairs), the same for every run.
    """
    specs = [(s, parse_sampler(s)) for s in samplers]
    one_step_spec = ("euler:1", parse_sampler("euler:1"))
    columns = list(samplers) + ([] if "euler:1" in samplers else ["euler:1"])
    rows = []
    for wd in flow_workdirs:
        exp, state, step = generate.restore_run(wd)
        src, cfg = exp.source, exp.config
        data_name = getattr(src, "data_name", cfg.data.name)
        if src.kind != "toy2d":
            raise ConfigError(f"evaluate needs 2-D data; {wd} trains on {data_name!r}")
        ref_source = data_lib.make_source(data_name)
        n = num_samples or cfg.eval.num_tv_samples
        key = jax.random.PRNGKey(seed)
        ref = np.asarray(ref_source.sample_reference(jax.random.fold_in(key, 1), n))
        ref_w2 = np.asarray(ref_source.sample_reference(jax.random.fold_in(key, 2),
                                                        cfg.eval.num_w2_samples))
        one_step = cfg.objective.get("time_sampling") == "zero"
        row = {"run": os.path.basename(os.path.normpath(wd)), "workdir": wd, "step": int(step),
               "data": data_name, "one_step": one_step, "samplers": {}}
        for name, settings in [one_step_spec] if one_step else specs:
            sample = exp.make_sampler(**settings)
            x, nfe, ok = sampling.sample_in_chunks(sample, state.ema_params,
                                                   jax.random.fold_in(key, 0), n,
                                                   cfg.eval.chunk_size)
            m = metrics_lib.metrics_2d(x, ref_w2, ref, ref_source.box, bins=cfg.eval.tv_bins,
                                       n_w2=cfg.eval.num_w2_samples)
            row["samplers"][name] = dict(m, nfe=nfe, success=ok)
        row["straightness"] = None
        if not one_step:
            v = sampling.velocity_fn(lambda p, x, t, c: exp.apply(p, x, t, c), state.ema_params,
                                     exp.objective)
            x0 = exp.sample_source(jax.random.fold_in(key, 3), straightness_samples)
            sol = jax.jit(lambda x0: straightness_lib.solve_with_energy(
                v, x0, method="euler", num_steps=straightness_steps))(x0)
            x1, energy = sol.x
            row["straightness"] = straightness_lib.path_metrics(x0, x1, energy)["straightness"]
        rows.append(row)
        print(f"evaluate: {row['run']}: " + ", ".join(
            f"{k} tv={r['tv']:.4f} w2={r['w2']:.4f} nfe={r['nfe']}"
            for k, r in row["samplers"].items())
            + f", straightness={_fmt(row['straightness'], 4)}", flush=True)
    table = {"samplers": columns, "num_samples": num_samples,
             "straightness_steps": straightness_steps, "rows": rows}
    if parallel_lib.is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
        with open(output + ".json", "w") as f:
            json.dump(table, f, indent=2)
        with open(output + ".md", "w") as f:
            f.write(markdown_table(table))
    return table


def markdown_table(table: dict) -> str:
    """The evaluation as a Markdown table: tv / w2 (NFE) per sampler, and straightness."""
    names = table["samplers"]
    lines = ["| run | " + " | ".join(f"{s}: tv / w2 (NFE)" for s in names) + " | straightness |",
             "|---" * (len(names) + 2) + "|"]
    for row in table["rows"]:
        cells = []
        for s in names:
            r = row["samplers"].get(s)
            cells.append("-" if r is None else f"{r['tv']:.3f} / {r['w2']:.3f} ({r['nfe']})")
        lines.append(f"| {row['run']} | " + " | ".join(cells)
                     + f" | {_fmt(row['straightness'], 4)} |")
    return "\n".join(lines) + "\n"
