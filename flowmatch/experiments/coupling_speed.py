"""Coupled training speed side by side, in one process: flowmatch's train step uncoupled, with
the Sinkhorn coupling and with the exact coupling, against torchcfm's OT-CFM tutorial loop.

  python scripts/coupling_speed.py [--rounds=30] [--repeats=3]

(run in a Python where torch, torchcfm and POT import to get the torchcfm row; without them it
is left out).  The coupled rows solve each call's couplings a call ahead on the host, as the
trainer does by default (config.coupling.ahead_threads), and again inside the train step; the
exact coupling also with its auction's lax loops instead of the native CPU kernel.  The setting
is torchcfm's 2-D OT-CFM example: batch 256, data moons, source 8gaussians, an MLP with three
hidden layers of 64 SELU units and t appended to its input (model.time_embedding="concat"),
Adam.  flowmatch's rows are the trainer's own compiled
multi-step call (`experiments.speed.make_trainer`: `steps_per_call` steps per jitted call)
of configs/moons.py with those overrides; torchcfm's row is its tutorial training loop
(`ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)`, whose pairing is POT's exact `ot.emd`
plan on the host, and `torchcfm.models.models.MLP`), on one thread
(`torch.set_num_threads(1)`), drawing its batches in the loop as the tutorial does.  Every runner
is warmed up first; then `rounds` rounds time one call of each in turn, so that a machine whose
load changes slows all alike, and each figure is steps per call / the median call time (with the
interquartile range).  Ratios count only within one run.  For figures on one core (what
docs/couplings.md reports), pin the process and keep XLA to one thread:

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 1 python scripts/coupling_speed.py --repeats=2
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from typing import Callable

import jax
import numpy as np

from flowmatch import checks
from flowmatch.checks import ConfigError
from flowmatch.experiments import speed

# On an accelerator a step's own auction runs its lax loops either way, so this row repeats
# "exact, in the step" there (at 1.5 s a call on an H200) and the default rows leave it out.
LAX_IN_STEP_ROW = "exact, lax auction, in the step"
# label -> coupling settings (config.coupling fields) of the flowmatch rows; the other fields
# are configs/default.py's (the couplings' defaults).
FLOWMATCH_ROWS = {
    "uncoupled": dict(name="independent"),
    "sinkhorn": dict(name="sinkhorn"),
    "exact": dict(name="exact"),
    # The couplings solved inside the train step instead of a call ahead on the host's other
    # threads (`flowmatch.training.ahead`): what that costs.
    "sinkhorn, in the step": dict(name="sinkhorn", ahead_threads=0),
    "exact, in the step": dict(name="exact", ahead_threads=0),
    # The auction's rounds in its lax loops instead of the native CPU kernel (`flowmatch.native`;
    # the same pairs): what the kernel saves, ahead and inside the step.
    "exact, lax auction": dict(name="exact", auction_kernel="lax"),
    LAX_IN_STEP_ROW: dict(name="exact", auction_kernel="lax", ahead_threads=0),
}
TORCHCFM_ROW = "torchcfm OT-CFM"
# Steps per compiled call (and per call of torchcfm's loop): configs/ot_8gaussians_moons.py's.
# A call timed right after another runner's is slower for a while (after a call of torchcfm's
# loop, the next 10-step call of the Sinkhorn-coupled step took 5.2 ms, the later ones 3.8-4.6;
# docs/couplings.md), so short calls would mostly time that.
STEPS_PER_CALL = 50
REFERENCE_ROW = "uncoupled"


def torchcfm_available() -> bool:
    """Whether torch, torchcfm and POT (torchcfm's exact plan) import."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchcfm", "ot"))


def flowmatch_config(config, coupling: dict, *, batch_size: int, hidden_sizes, steps_per_call):
    """`config` (e.g. configs/moons.py) at torchcfm's OT-CFM setting with `coupling`'s fields."""
    c = config.copy_and_resolve_references()
    c.unlock()
    c.batch_size = batch_size
    c.model.hidden_sizes = tuple(hidden_sizes)
    c.model.activation = "selu"
    c.model.time_embedding = "concat"  # torchcfm's MLP: t appended to the input
    c.data.name, c.source.name = "moons", "8gaussians"
    c.steps_per_call = steps_per_call
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = steps_per_call
    c.parallel.data_axis_size = 1
    for key, value in coupling.items():
        c.coupling[key] = value
    return c


def flowmatch_runner(config) -> tuple[Callable[[], object], list]:
    """(run, pair_costs): run() makes one compiled call of config.steps_per_call train steps
    (`speed.make_trainer`: state donated, the same pre-made batches every call) and returns its
    losses; pair_costs collects each call's mean |x1 - x0|^2 of the pairs."""
    trainer = speed.make_trainer(config, steps_per_call=config.steps_per_call)
    pair_costs = []

    def run():
        metrics = trainer.call()
        pair_costs.append(metrics.get("pair_cost"))
        return metrics["loss"]

    return run, pair_costs


def _torch_samplers(torch):
    """(sample_8gaussians, sample_moons) of torchcfm.utils when it imports (it needs torchdyn),
    else the same distributions in vectorised torch: x0 = 5 c_k + 0.1 ** 0.25 z over the 8
    compass directions c_k; moons = torchdyn's generate_moons(n, noise=0.2) * 3 - 1 (two arcs,
    each point shifted by u * 0.2 * (1, 1), u ~ U[0, 1)).  The fallback 8gaussians sampler is
    faster than torchcfm's per-point loop, which only flatters the torchcfm row."""
    try:
        from torchcfm import utils  # pylint: disable=g-import-not-at-top
        return utils.sample_8gaussians, utils.sample_moons
    except ImportError:
        pass
    r = 1.0 / math.sqrt(2.0)
    centres = 5.0 * torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r),
                                  (-r, -r)], dtype=torch.float32)

    def eight_gaussians(n):
        k = torch.multinomial(torch.ones(8), n, replacement=True)
        return centres[k] + 0.1 ** 0.25 * torch.randn(n, 2)

    def moons(n):
        n_out = n // 2
        a = torch.linspace(0, math.pi, n_out)
        b = torch.linspace(0, math.pi, n - n_out)
        x = torch.cat([torch.stack([torch.cos(a), torch.sin(a)], 1),
                       torch.stack([1 - torch.cos(b), 1 - torch.sin(b) - 0.5], 1)])
        x = x + 0.2 * torch.rand(n, 1)
        return (x * 3 - 1)[torch.randperm(n)]

    return eight_gaussians, moons


def torchcfm_runner(*, batch_size: int, width: int, steps_per_call: int, seed: int = 0,
                    ot: bool = True):
    """run(): steps_per_call steps of torchcfm's tutorial loop, OT-CFM (ot=True: its
    ExactOptimalTransportConditionalFlowMatcher) or CFM (its ConditionalFlowMatcher), sigma 0.1,
    on one thread; returns the last loss."""
    import torch  # pylint: disable=g-import-not-at-top
    from torchcfm import conditional_flow_matching as cfm  # pylint: disable=g-import-not-at-top
    from torchcfm.models.models import MLP  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm's plan sampler draws with np.random
    model = MLP(dim=2, time_varying=True, w=width)
    optimizer = torch.optim.Adam(model.parameters())
    matcher = (cfm.ExactOptimalTransportConditionalFlowMatcher if ot
               else cfm.ConditionalFlowMatcher)(sigma=0.1)
    sample_x0, sample_x1 = _torch_samplers(torch)

    def run():
        for _ in range(steps_per_call):
            optimizer.zero_grad()
            x0, x1 = sample_x0(batch_size), sample_x1(batch_size)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            vt = model(torch.cat([xt, t[:, None]], dim=-1))
            loss = torch.mean((vt - ut) ** 2)
            loss.backward()
            optimizer.step()
        return loss.item()

    return run


def interleaved_seconds(runners: dict, *, rounds: int, warmup: int = 2) -> dict:
    """{label: [seconds of each call]}: every runner warmed up `warmup` calls, then `rounds`
    rounds each calling every runner once, in turn, blocked until its result is ready."""
    for run in runners.values():
        for _ in range(warmup):
            jax.block_until_ready(run())
    times = {label: [] for label in runners}
    for _ in range(rounds):
        for label, run in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[label].append(time.perf_counter() - start)
    return times


def coupled_training_speed(config, *, batch_size: int = 256, hidden_sizes=(64, 64, 64),
                           steps_per_call: int = STEPS_PER_CALL, rounds: int = 30, rows=None,
                           torchcfm: bool | None = None) -> list[dict]:
    """Steps/s of each flowmatch row and of torchcfm's OT-CFM loop, measured interleaved.

    config: a 2-D flowmatch config (configs/moons.py), set to the torchcfm setting by
    `flowmatch_config`.  rows: {label: config.coupling fields}, default FLOWMATCH_ROWS (its
    "uncoupled" row is the reference of the ratios; on an accelerator without LAX_IN_STEP_ROW).
    torchcfm: include its row (None: when torch, torchcfm and POT import).  Returns one dict
    per row: label, steps_per_sec (median), steps_per_sec_iqr (25th and 75th percentile),
    slowdown (uncoupled steps/s / this row's),
    vs_torchcfm (this row's steps/s / torchcfm's, NaN without that row), pair_cost (mean
    |x1 - x0|^2 of the flowmatch rows' pairs, NaN for torchcfm).
    """
    if rows is None:
        rows = dict(FLOWMATCH_ROWS)
        if jax.default_backend() != "cpu":
            del rows[LAX_IN_STEP_ROW]
    rows = dict(rows)
    try:
        for name, value in (("batch_size", batch_size), ("steps_per_call", steps_per_call),
                            ("rounds", rounds)):
            checks.positive_int(name, value)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if REFERENCE_ROW not in rows:
        raise ConfigError(f"rows must include the reference row {REFERENCE_ROW!r} (the uncoupled "
                          f"step), got {sorted(rows)}")
    if torchcfm is None:
        torchcfm = torchcfm_available()
    elif torchcfm and not torchcfm_available():
        raise ConfigError("torchcfm=True needs torch, torchcfm and POT; install them or pass "
                          "torchcfm=None to leave that row out")
    runners, costs = {}, {}
    for label, coupling in rows.items():
        c = flowmatch_config(config, coupling, batch_size=batch_size, hidden_sizes=hidden_sizes,
                             steps_per_call=steps_per_call)
        runners[label], costs[label] = flowmatch_runner(c)
    if torchcfm:
        runners[TORCHCFM_ROW] = torchcfm_runner(batch_size=batch_size, width=hidden_sizes[0],
                                                steps_per_call=steps_per_call)
    times = interleaved_seconds(runners, rounds=rounds)
    return summarise(times, costs, steps_per_call)


def summarise(times: dict, pair_costs: dict, steps_per_call: int) -> list[dict]:
    """The rows of `coupled_training_speed` from {label: [seconds per call]} and {label: [each
    call's pair costs or None]}: rate = steps_per_call / median seconds; slowdown = rate of
    REFERENCE_ROW / rate; vs_torchcfm = rate / rate of TORCHCFM_ROW (NaN without that row)."""
    rate = {label: steps_per_call / statistics.median(t) for label, t in times.items()}
    out = []
    for label, t in times.items():
        q1, _, q3 = statistics.quantiles(t, n=4) if len(t) > 1 else (t[0],) * 3
        pairs = [float(np.mean(v)) for v in pair_costs.get(label, []) if v is not None]
        out.append(dict(
            label=label, steps_per_sec=rate[label],
            steps_per_sec_iqr=(steps_per_call / q3, steps_per_call / q1),
            slowdown=rate[REFERENCE_ROW] / rate[label],
            vs_torchcfm=(rate[label] / rate[TORCHCFM_ROW] if TORCHCFM_ROW in rate
                         else float("nan")),
            pair_cost=float(np.mean(pairs)) if pairs else float("nan")))
    return out


def format_table(results: list[dict]) -> str:
    """The rows of `coupled_training_speed` as a Markdown table."""
    lines = ["| row | steps/s (IQR) | slowdown vs uncoupled | x torchcfm OT-CFM | pair cost |",
             "|---|---|---|---|---|"]

    def shown(value, spec, unit=""):  # NaN: no torchcfm row measured, or a row without pairs
        return "-" if math.isnan(value) else format(value, spec) + unit

    for r in results:
        lo, hi = r["steps_per_sec_iqr"]
        lines.append(f"| {r['label']} | {r['steps_per_sec']:,.0f} ({lo:,.0f}-{hi:,.0f}) | "
                     f"{r['slowdown']:.2f}x | {shown(r['vs_torchcfm'], '.1f', 'x')} | "
                     f"{shown(r['pair_cost'], '.3f')} |")
    return "\n".join(lines)


def report(config, *, rounds: int = 30, repeats: int = 1,
           steps_per_call: int = STEPS_PER_CALL) -> list:
    """Prints `repeats` whole measurements (`coupled_training_speed`) in a row as Markdown
    tables; returns their rows, one list per measurement."""
    out = []
    for i in range(repeats):
        results = coupled_training_speed(config, rounds=rounds, steps_per_call=steps_per_call)
        print(f"\nrun {i + 1} of {repeats} ({jax.devices()[0]}, {rounds} rounds, "
              f"{steps_per_call} steps per call):")
        print(format_table(results), flush=True)
        out.append(results)
    return out
