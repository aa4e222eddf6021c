"""Reflow (Liu et al. 2023, "Flow straight and fast: rectified flow") and one-step distillation.

Flow matching on independent pairs (x0 ~ N(0, I), x1 ~ data) gives the 1-rectified flow, whose
paths cross and curve.  Reflow straightens them: integrate the trained flow from fresh noise to
get the deterministic coupling (x0, x1 = Phi_1(x0)), train the next flow on those pairs (the
2-rectified flow, initialised from the previous one's parameters as Liu et al. do), and repeat.
Distillation fits one step on the pairs of the last flow, v(x0, 0) = x1 - x0 (objective time
sampling 'zero'), sampled with one Euler step.

  generate_pairs(workdir, out_dir, num_pairs=..., chunk_size=...)  pairs of a trained run, on disk
                                                                    (`reflow_pairs`)
  run_reflow(config, workdir)                                       the chain below, resumable
  train_distilled(config, workdir, pairs_dir)                       a one-step model alone
  evaluate(workdirs, output, ...)                                   tv / w2 / straightness table

A reflow workdir (`run_reflow`):
  flow1/        the 1-rectified flow (or config.reflow.base_workdir, an existing run)
  pairs1/       pairs of flow 1 (`flowmatch.data.pairs` layout)
  flow2/        the 2-rectified flow, trained on pairs1 ... up to flow{k+1}
  pairs{k+1}/   pairs of the last flow, and distill/, the one-step model on them (if asked for)
  reflow.json   the stages finished, with the config each ran with: a rerun skips them
  evaluation.json, evaluation.md   the table of `evaluate`

Randomness: the pairs as `reflow_pairs` says (chunk c from fold_in(rng.seed_stream(seed,
"pairs"), c)).  The evaluation draws its samples as scripts/sample.py does
(`experiments.sample.draw`, seed `seed`) and its reference points and straightness noise from
rng.seed_stream(seed, "reference" | "reference_w2" | "straightness").
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
from flowmatch import checks
from flowmatch import data as data_lib
from flowmatch import ema as ema_lib
from flowmatch import fileio
from flowmatch import metrics as metrics_lib
from flowmatch import parallel as parallel_lib
from flowmatch import rng
from flowmatch import sampling
from flowmatch import training
from flowmatch.checks import ConfigError
from flowmatch.diagnostics import straightness as straightness_lib
from flowmatch.experiments import sample as sample_lib
from flowmatch.experiments.reflow_pairs import generate_pairs
from flowmatch.training import loop as loop_lib
from flowmatch.training import state as state_lib

STATE_FILE = "reflow.json"
DEFAULT_EVAL_SAMPLERS = ("euler:1", "euler:4", "heun:50", "dopri5:1e-5")


# -- settings and stage configs -----------------------------------------------------------------


def parse_sampler(spec: str) -> dict:
    """'euler:1', 'heun:50' (fixed steps) or 'dopri5:1e-5' (adaptive: rtol = atol) -> sampler
    settings (method, num_steps, rtol, atol)."""
    from flowmatch import integrators  # pylint: disable=g-import-not-at-top
    method, _, arg = str(spec).partition(":")
    try:
        if method in integrators.ADAPTIVE_METHODS:
            tol = float(arg)
            settings = dict(method=method, num_steps=None, rtol=tol, atol=tol)
        else:
            settings = dict(method=method, num_steps=int(arg), rtol=None, atol=None)
        sampling.check(**settings)
    except ValueError as e:
        raise ConfigError(
            f"bad sampler {spec!r} in reflow.eval_samplers ({e}); write METHOD:STEPS for fixed "
            f"steps ('euler:1', 'heun:50') or METHOD:TOL for "
            f"{', '.join(integrators.ADAPTIVE_METHODS)} ('dopri5:1e-5')") from None
    return settings


@dataclasses.dataclass(frozen=True)
class ReflowSettings:
    """config.reflow, validated.  Zero / '' / None means "as the base config" where noted."""

    num_reflows: int = 1               # k: flows 2 .. k + 1 are trained on pairs
    base_workdir: str = ""             # an existing flow-1 run ('' = train it from the config)
    num_pairs: int = 100_000           # pairs generated from each flow
    chunk_size: int = 10_000           # pairs per chunk file
    pair_seed: int = 0
    pair_method: str = ""              # sampler of the pairs ('' = the run's config.sampling)
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

    def __post_init__(self):
        for name in ("num_reflows", "pair_seed", "num_train_steps", "distill_num_train_steps",
                     "eval_num_samples"):
            checks.non_negative_int(f"reflow.{name}", getattr(self, name))
        for name in ("num_pairs", "chunk_size", "straightness_steps", "straightness_samples"):
            checks.positive_int(f"reflow.{name}", getattr(self, name))
        if self.num_reflows == 0 and not self.distill and not self.base_workdir:
            raise ValueError("reflow.num_reflows=0 and reflow.distill=False is plain training: "
                             "use scripts/train.py, or ask for reflows or distillation")
        for spec in self.eval_samplers:
            parse_sampler(spec)

    @classmethod
    def from_config(cls, section) -> "ReflowSettings":
        if section is None:
            raise ConfigError("the config has no 'reflow' section; start from a reflow config, "
                              "e.g. --config=configs/reflow_moons.py")
        return checks.from_section(cls, section, "reflow")

    def pair_settings(self) -> dict:
        return dict(method=self.pair_method or None, num_steps=self.pair_num_steps,
                    rtol=self.pair_rtol, atol=self.pair_atol)


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
    settings = training.read_settings(config)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=settings.checkpoint.max_to_keep)
    try:
        if ckpt.all_steps():
            return False
        previous = training.restore(previous_workdir)
        plan = loop_lib.make_plan(settings)
        comps = training.build(settings, previous.components.spec)
        shardings = jax.tree.map(lambda a: a.sharding, state_lib.abstract_state(
            comps.model, comps.tx, comps.spec.example_shape, comps.conditional, plan))

        def start(params):
            return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                        opt_state=comps.tx.init(params),
                                        ema_params=ema_lib.init(params))

        try:
            params = jax.device_put(previous.state.ema_params, shardings.params)
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
    try:
        num_pairs = data_lib.load_pairs(pairs_dir).num_examples
    except ValueError as e:  # a missing, incomplete or damaged pairs directory
        raise ConfigError(str(e)) from e
    c = distill_config(config, pairs_dir, num_pairs, num_train_steps=num_train_steps,
                       learning_rate=learning_rate)
    if init_workdir:
        init_from(init_workdir, c, workdir)
    return training.train_and_evaluate(c, workdir)


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
        training.load_config(flow)  # fails early, with a clear message, if it is no run
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


def run_stage(stage: Stage, settings: ReflowSettings) -> dict:
    """Runs (or resumes) one stage; returns what reflow.json records of it."""
    t = time.perf_counter()
    if stage.kind == "pairs":
        result = generate_pairs(stage.source, stage.workdir, num_pairs=settings.num_pairs,
                                chunk_size=settings.chunk_size, seed=settings.pair_seed,
                                **settings.pair_settings())
        result = {k: result[k] for k in ("num_pairs", "nfe")}
    else:
        if stage.source:
            init_from(stage.source, stage.config, stage.workdir)
        result = {"step": int(training.train_and_evaluate(stage.config, stage.workdir).step)}
    result["seconds"] = time.perf_counter() - t
    return result


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
        result = run_stage(stage, settings)
        state["stages"][stage.name] = {"fingerprint": stage.fingerprint, "result": result}
        if main:
            fileio.write_json(os.path.join(workdir, STATE_FILE), state, indent=2, sort_keys=True)
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


def straightness(run, num_samples: int, num_steps: int, key) -> float:
    """Liu et al.'s S = E int_0^1 ||(x1 - x0) - v(x_t, t)||^2 dt of the run's flow along Euler
    solves with num_steps steps from num_samples source samples drawn with `key`
    (`flowmatch.diagnostics.straightness`); 0 for straight paths."""
    comps = run.components
    model = comps.model_fn()
    x0 = comps.source.sample(key, num_samples)
    sol = jax.jit(lambda p, x: straightness_lib.solve_with_energy(
        model.velocity_fn(p), x, method="euler", num_steps=num_steps))(run.state.ema_params, x0)
    x1, energy = sol.x
    return straightness_lib.path_metrics(x0, x1, energy)["straightness"]


def evaluate_run(workdir: str, specs, *, num_samples: int | None, seed: int,
                 straightness_steps: int, straightness_samples: int) -> dict:
    """The row of one run: tv / w2 per sampler of `specs` [(name, settings)] against fresh data of
    the 2-D set the run imitates, and its straightness (None for a one-step run)."""
    run = training.restore(workdir)
    comps, cfg = run.components, run.components.settings.eval
    if comps.spec.kind != "toy2d":
        raise ConfigError(f"evaluate needs 2-D data; {workdir} trains on {comps.spec.data!r}")
    ref_source = data_lib.make_source(comps.spec.data)
    n = num_samples or cfg.num_tv_samples
    ref = np.asarray(ref_source.sample_reference(rng.seed_stream(seed, "reference"), n))
    ref_w2 = np.asarray(ref_source.sample_reference(rng.seed_stream(seed, "reference_w2"),
                                                    cfg.num_w2_samples))
    one_step = getattr(comps.objective, "time_sampling", None) == "zero"
    row = {"run": os.path.basename(os.path.normpath(workdir)), "workdir": workdir,
           "step": run.step, "data": comps.spec.data, "one_step": one_step, "samplers": {}}
    for name, settings in [("euler:1", parse_sampler("euler:1"))] if one_step else specs:
        out = sample_lib.draw(run, n, seed=seed, **settings)
        m = metrics_lib.metrics_2d(out.x, ref_w2, ref, ref_source.box, bins=cfg.tv_bins,
                                   n_w2=cfg.num_w2_samples)
        row["samplers"][name] = dict(m, nfe=out.nfe, success=out.success)
    row["straightness"] = None if one_step else straightness(
        run, straightness_samples, straightness_steps, rng.seed_stream(seed, "straightness"))
    return row


def evaluate(flow_workdirs: Sequence[str], output: str, *, samplers=DEFAULT_EVAL_SAMPLERS,
             num_samples: int | None = None, seed: int = 0, straightness_steps: int = 100,
             straightness_samples: int = 10_000) -> dict:
    """tv / w2 of each run in `flow_workdirs` against its 2-D data set, per sampler, and the
    straightness of each flow; writes `output`.json and `output`.md (a table).

    Samples: `experiments.sample.draw` (scripts/sample.py's samples for seed `seed`), num_samples
    of them (default the run's eval.num_tv_samples).  samplers: specs of `parse_sampler`.  A
    one-step (distilled) run, recognised by its time sampling 'zero', is evaluated with one
    Euler step only: its field is trained at t = 0 alone.  The data set is the one the runs'
    pairs imitate (for a run on pairs) or trained on; the reference points are fresh samples of
    it (not the pairs), the same for every run.
    """
    specs = [(s, parse_sampler(s)) for s in samplers]
    columns = list(samplers) + ([] if "euler:1" in samplers else ["euler:1"])
    rows = []
    for wd in flow_workdirs:
        row = evaluate_run(wd, specs, num_samples=num_samples, seed=seed,
                           straightness_steps=straightness_steps,
                           straightness_samples=straightness_samples)
        rows.append(row)
        print(f"evaluate: {row['run']}: " + ", ".join(
            f"{k} tv={r['tv']:.4f} w2={r['w2']:.4f} nfe={r['nfe']}"
            for k, r in row["samplers"].items())
            + f", straightness={_fmt(row['straightness'], 4)}", flush=True)
    table = {"samplers": columns, "num_samples": num_samples,
             "straightness_steps": straightness_steps, "rows": rows}
    if parallel_lib.is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
        fileio.write_json(output + ".json", table, indent=2)
        fileio.write_text(output + ".md", markdown_table(table))
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
