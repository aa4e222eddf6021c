"""The training loop: one loop for every objective, model and dataset.

    train_and_evaluate(config, workdir)

reads the ConfigDict once (`components.read_settings` checks every section before any data is
loaded or anything compiled; the device plan is checked next) and from then on works with typed
settings and built components.  One compiled call runs `steps_per_call` train steps under
`lax.scan` with the state donated (`step.make_multi_step`); with a coupling, the next call's
batches are drawn and paired on the host while a call trains (`ahead.Feeder`).

Files written under `workdir` (by process 0 only): config.json and run.json (`runs`),
metrics.jsonl (one JSON object per logged step), samples_<step>.png, TensorBoard events if asked
for; checkpoints/<step>/ (orbax, written by all processes together).  Every process loads only its
own rows of each global batch; global batch i is a pure function of (seed, i), so the saved
position is all the data iterator needs to resume exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import data as data_lib
from flowmatch import metrics as metrics_lib
from flowmatch import models as models_lib
from flowmatch import parallel as parallel_lib
from flowmatch.models import axes as axes_lib
from flowmatch.checks import ConfigError
from flowmatch.training import ahead as ahead_lib
from flowmatch.training import components as components_lib
from flowmatch.training import evaluation
from flowmatch.training import monitor as monitor_lib
from flowmatch.training import runs
from flowmatch.training import settings as settings_lib
from flowmatch.training import state as state_lib
from flowmatch.training import step as step_lib
from flowmatch.training import workdir as workdir_lib


def make_plan(settings: components_lib.Settings) -> parallel_lib.Plan:
    """The device plan of config.parallel, checked against the devices and the batch; with
    parallel.tensor_axis_size > 1 the model's parameters split by their logical axes."""
    try:
        p = settings.parallel
        data, fsdp, tensor = parallel_lib.mesh_shape(p, jax.device_count(), jax.process_count())
        parallel_lib.check_batch(settings.train.batch_size, data * fsdp,
                                 settings.train.grad_accum_steps)
        mesh = parallel_lib.make_mesh(data, fsdp, tensor, num_slices=p.num_slices)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    model_name = settings.model.get("name", "mlp")
    return parallel_lib.Plan(mesh, p.mode, p.fsdp_min_size,
                             param_axes=lambda params: axes_lib.logical_axes(model_name, params))


def load_data(d) -> Any:
    """The training split of config.data (`settings.DataSettings`); unreadable or damaged data
    is a ConfigError naming what to do."""
    try:
        return data_lib.make_source(d.name, split=d.split if d.name == "arrayrecord" else "train",
                                    path=d.path or None, image_size=d.image_size or None,
                                    channels=d.channels, random_flip=d.random_flip,
                                    skip_bad=d.skip_bad)
    except (ValueError, OSError, ImportError) as e:  # ImportError: grain not installed
        raise ConfigError(f"data: {e}") from e


def make_iterator(source, d: settings_lib.DataSettings, train: settings_lib.TrainSettings):
    """This process's iterator over the global batches of `source`: grain over ArrayRecord
    shards for data.name 'arrayrecord', else the in-memory `data.BatchIterator`.  Both serve
    `next_batches(k)` and a JSON `state()` / `restore(state)` that the checkpoint carries."""
    common = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if getattr(source, "name", "") == "arrayrecord":
        from flowmatch.data import grain_pipeline  # pylint: disable=g-import-not-at-top
        return grain_pipeline.GrainIterator(
            source.path, global_batch_size=train.batch_size, seed=train.seed, split=d.split,
            worker_count=d.worker_count, prefetch=d.prefetch, random_flip=d.random_flip,
            skip_bad=d.skip_bad, verify_checksums=d.verify_checksums, **common)
    return data_lib.BatchIterator(source, train.batch_size, train.seed, **common)


def _barrier(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"flowmatch_train_{name}")


def train_and_evaluate(config, workdir: str, *, workdir_mode: str = "auto",
                       on_workdir_ready: Callable[[str], None] | None = None):
    """Trains (or resumes) the run described by `config` in `workdir`; returns the final state.

    workdir_mode: what to do when `workdir` already holds a run (`workdir.check_workdir`): 'auto'
    resumes it if its config.json matches `config` (up to logging, evaluation and checkpoint
    settings) and raises ConfigError otherwise; 'resume' continues it anyway; 'overwrite' moves
    it into workdir/previous_runs/ and starts afresh.  on_workdir_ready(workdir) is called once
    the workdir is checked and prepared (the command line points its log file there).

    Exits: returns the state after num_train_steps; on SIGTERM saves a checkpoint at the next step
    boundary, waits for it and raises checkpoint.Preempted; monitor.NonFiniteError by
    config.nonfinite.  Every exit waits for pending checkpoint saves.  Multi-process: every
    process calls this with the same arguments (after `parallel.maybe_initialize_distributed`);
    `workdir` must be one shared directory.
    """
    settings = components_lib.read_settings(config)
    plan = make_plan(settings)
    source = load_data(settings.data)
    comps = components_lib.build(settings, runs.spec_of_source(source, settings.data.name))
    main = parallel_lib.is_main_process()
    action = workdir_lib.check_workdir(config, workdir, workdir_mode)  # reads only
    _barrier("workdir_checked")
    os.makedirs(workdir, exist_ok=True)
    if main:
        done = workdir_lib.apply_workdir_action(workdir, action)
        if done:
            print(f"flowmatch: {done}", flush=True)
        runs.save_config(config, workdir)
        runs.write_spec(comps.spec, workdir)
    _barrier("workdir_ready")
    if on_workdir_ready is not None:
        on_workdir_ready(workdir)
    # From here on SIGTERM is caught: the run stops at the next step boundary with a checkpoint.
    with checkpoint_lib.PreemptionWatcher() as preemption:
        return _Trainer(comps, plan, source, workdir, preemption).run()


@dataclasses.dataclass
class _Window:
    """The per-step metrics since the last logged step, and when that window started."""

    values: dict
    start: int
    t0: float = dataclasses.field(default_factory=time.perf_counter)


class _Trainer:
    """The body of `train_and_evaluate` once the workdir is ready: restore, loop, save."""

    def __init__(self, comps, plan, source, workdir, preemption):
        self.comps, self.plan, self.source, self.workdir = comps, plan, source, workdir
        self.s = comps.settings.train
        self.preemption = preemption
        self.main = parallel_lib.is_main_process()
        self.nonfinite = monitor_lib.NonfiniteMonitor.from_settings(comps.settings.nonfinite)
        root = jax.random.PRNGKey(self.s.seed)
        self.init_key, self.train_key, self.eval_key = (jax.random.fold_in(root, i)
                                                       for i in range(3))
        self.unread = collections.deque()  # (first step, device metrics) of calls not yet read
        self.last_saved = None
        self.last_row = None

    # -- setting up -----------------------------------------------------------------------------

    def _announce(self, num_params: int):
        spec, plan = self.comps.spec, self.plan
        logging.info("model %s: %s parameters; %s", self.comps.settings.model.get("name"),
                     f"{num_params:,}", plan)
        if not self.main:
            return
        print(f"flowmatch: {self.comps.settings.model.get('name')} with {num_params:,} parameters;"
              f" data {self.comps.settings.data.name} {tuple(spec.example_shape)}; "
              f"{len(plan.devices)} device(s), {jax.process_count()} process(es), mode {plan.mode}; "
              f"workdir {self.workdir}", flush=True)
        skipped_files = getattr(getattr(self.source, "data", None), "num_skipped", 0)
        if skipped_files:
            print(f"flowmatch: skipped {skipped_files} unreadable data file(s) "
                  "(data.skip_bad=True; see the log for which)", flush=True)

    def _restore(self, ckpt):
        """(state, meta) from the newest clean checkpoint, or a fresh state; metrics.jsonl is cut
        back to the restored step (rows past it come again)."""
        c = self.comps
        state = state_lib.create_state(c.model, c.tx, c.spec.example_shape, c.conditional,
                                       self.init_key, self.plan)
        self._announce(models_lib.count_params(state.params))
        restored = ckpt.restore_latest(checkpoint_lib.abstract_like(state), repair=True)
        metrics_path = os.path.join(self.workdir, metrics_lib.METRICS_FILENAME)
        if restored is None:
            if self.main and os.path.exists(metrics_path):
                metrics_lib.truncate_metrics(metrics_path, 0)  # a fresh start: no old rows
            return state, {}
        step0, state, meta = restored
        self.last_saved = step0
        logging.info("resumed from checkpoint at step %d", step0)
        if self.main:
            print(f"flowmatch: resuming from step {step0}", flush=True)
            if os.path.exists(metrics_path):
                metrics_lib.truncate_metrics(metrics_path, step0)
        return state, meta

    def _iterator(self, meta):
        it = make_iterator(self.source, self.comps.settings.data, self.s)
        if meta:
            it.restore(meta["data"])
        rows = (it.process_index * it.local_batch_size,
                (it.process_index + 1) * it.local_batch_size)
        if self.plan.process_rows(self.s.batch_size) != rows:
            raise ConfigError(
                f"process {jax.process_index()} loads rows {rows} of each global batch but its "
                f"devices hold rows {self.plan.process_rows(self.s.batch_size)}; every process "
                "needs the same number of devices")
        return it

    def run(self):
        ckpt = checkpoint_lib.Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            max_to_keep=self.comps.settings.checkpoint.max_to_keep)
        # Evaluation is collective (the samples are split over every device), so every process
        # runs it; only process 0's pictures land in workdir.
        scratch = None if self.main else tempfile.TemporaryDirectory(prefix="flowmatch_eval_")
        writer = progress = iterator = evaluator = None
        try:
            state, meta = self._restore(ckpt)
            self.nonfinite.restore(meta.get("nonfinite"))
            iterator = self._iterator(meta)
            skipped = getattr(iterator, "num_skipped", 0)
            if skipped and self.main:
                print(f"flowmatch: left out {skipped} damaged record(s) of {iterator!r} "
                      "(data.skip_bad=True; see train.log for which)", flush=True)
            writer = metrics_lib.MetricWriter(
                self.workdir, tensorboard=self.s.tensorboard, is_main_process=self.main,
                wandb_project=self.s.wandb_project, wandb_entity=self.s.wandb_entity,
                run_config=(runs.load_config(self.workdir).to_dict()
                            if self.s.wandb_project and self.main else None))
            if self.s.evaluates:
                evaluator = evaluation.Evaluator(
                    self.comps, self.plan, self.source, self.workdir if self.main else scratch.name,
                    self.eval_key, self.comps.settings.data.name)
            progress = self._progress(int(state.step))
            start = int(state.step)
            final = self._loop(state, meta, iterator, ckpt, writer, evaluator, progress)
            if evaluator is not None:
                evaluator.finish_pictures()  # the last picture is on disk; a failed one raises
        finally:
            if evaluator is not None:  # its background threads, before the process may exit
                evaluator.close()
            if progress is not None:
                progress.close()
            if writer is not None:
                writer.close()
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()
            ckpt.close()
            if scratch is not None:
                scratch.cleanup()
        if self.main:
            print(self._summary(start), flush=True)
        return final

    def _summary(self, start: int) -> str:
        """One line for the end of a run: where it stands, its last metrics and its files."""
        total, wd = self.s.num_train_steps, self.workdir
        if self.last_row is None:
            return (f"flowmatch: the run in {wd} is already at step {start} of num_train_steps="
                    f"{total}: nothing to do (raise --config.num_train_steps to train longer)")
        row = self.last_row
        shown = [f"{k} {row[k]:.4g}" for k in ("loss", "tv", "w2", "fd") if k in row]
        if "eval_nfe" in row:
            shown.append(f"eval NFE {row['eval_nfe']}")
        files = [f for f in ("metrics.jsonl", f"samples_{row['step']}.png", "checkpoints",
                             "train.log") if os.path.exists(os.path.join(wd, f))]
        return (f"flowmatch: done at step {row['step']}: {', '.join(shown)}; in {wd}: "
                f"{', '.join(files)}")

    def _progress(self, initial: int):
        if not (self.s.progress_bar and self.main):
            return None
        import tqdm  # pylint: disable=g-import-not-at-top
        # Redirected to a file (no terminal), redraw once a minute instead of ~10 times a second.
        return tqdm.tqdm(total=self.s.num_train_steps, initial=initial, unit="step",
                         dynamic_ncols=True, smoothing=0.1,
                         mininterval=0.1 if sys.stderr.isatty() else 60.0)

    # -- the loop -------------------------------------------------------------------------------

    def _read(self, window: _Window, lag: int):
        """Reads the metrics of all but the `lag` newest calls, applying config.nonfinite."""
        while len(self.unread) > lag:
            first, m = self.unread.popleft()
            host = jax.device_get(m)
            if self.plan.mode == "pmap":  # [devices, k]: the same values on every device
                host = {name: v[0] for name, v in host.items()}
            self.nonfinite.observe(first, host["skipped"], self.last_saved)
            for name, v in host.items():
                window.values.setdefault(name, []).extend(float(x) for x in np.asarray(v))

    def _save(self, ckpt, step: int, snapshot, data_state: dict, window: _Window):
        if not checkpoint_lib.all_finite(snapshot):
            kept = (f"the newest checkpoint, step {self.last_saved}, is kept"
                    if self.last_saved is not None else "no checkpoint exists yet")
            raise monitor_lib.NonFiniteError(
                f"the train state at step {step} has non-finite values; it is not saved ({kept})")
        # Asynchronous: the save proceeds while training goes on.
        ckpt.save(step, snapshot, {"data": data_state, "step": step,
                                   "nonfinite": self.nonfinite.state(),
                                   "window": monitor_lib.window_to_json(window.values)})
        self.last_saved = step

    def _log(self, step, window, snapshot, evaluate, evaluator, writer, progress) -> _Window:
        row = monitor_lib.log_row(window.values)
        row["steps_per_sec"] = (step - window.start) / max(time.perf_counter() - window.t0, 1e-9)
        if evaluate:
            t_eval = time.perf_counter()
            row.update(evaluator(step, snapshot.ema_params))
            row["eval_seconds"] = time.perf_counter() - t_eval
        # Written before the checkpoint of this step exists: a resumed run never lacks a row up
        # to its restored step.
        writer.write(step, row)
        self.last_row = dict(row, step=step)
        if progress is not None:
            progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        return _Window(values={}, start=step)

    def _fetch(self, feeder, iterator, step: int):
        """(pending batches, steps, data position after them or None) of the call at `step`:
        started on their way (`ahead.Feeder`).  The position is kept when the feeder works
        ahead, where the iterator is a call further on by the time a checkpoint is saved."""
        n = min(self.s.steps_per_call, self.s.num_train_steps - step)
        pending = feeder.start(iterator.next_batches(n), step)
        return pending, n, iterator.state() if feeder.ahead else None

    def _loop(self, state, meta, iterator, ckpt, writer, evaluator, progress):
        feeder = ahead_lib.run_feeder(self.comps, self.plan, self.train_key)
        try:
            return self._calls(state, meta, iterator, ckpt, writer, evaluator, progress, feeder)
        finally:
            feeder.close()

    def _calls(self, state, meta, iterator, ckpt, writer, evaluator, progress, feeder):
        s, plan = self.s, self.plan
        multi_step = step_lib.make_multi_step(self.comps, plan,
                                              jax.tree.map(lambda a: a.sharding, state),
                                              prepared=feeder.ahead)
        in_pmap = plan.mode == "pmap"
        device_key = plan.replicate(self.train_key)
        run_state = plan.stack(state) if in_pmap else state
        canonical = lambda st: plan.unstack(st) if in_pmap else st  # noqa: E731
        step = int(state.step)
        window = _Window(values=monitor_lib.window_from_json(meta.get("window")), start=step)
        upcoming = None  # `_fetch` of the next call, when the feeder works ahead
        while step < s.num_train_steps:
            pending, n, position = upcoming or self._fetch(feeder, iterator, step)
            batches = feeder.result(pending)
            # The next call's batches are drawn and paired while this one trains.
            upcoming = (self._fetch(feeder, iterator, step + n)
                        if feeder.ahead and step + n < s.num_train_steps else None)
            run_state, step_metrics = multi_step(run_state, batches, device_key)
            if evaluator is not None and not evaluator.started:  # after the first call
                evaluator.start(canonical(run_state).ema_params)  # shapes only
            self.unread.append((step + 1, step_metrics))
            step += n
            if progress is not None:
                progress.update(n)
            is_last = step == s.num_train_steps
            log = step % s.log_every_steps == 0 or is_last
            save = step % s.checkpoint_every_steps == 0 or is_last
            evaluate = evaluator is not None and (step % s.eval_every_steps == 0 or is_last)
            # Reading the previous call's metrics overlaps with the call just dispatched.
            self._read(window, 0 if log or save else 1)
            snapshot = canonical(run_state) if save or evaluate else None
            if log:
                window = self._log(step, window, snapshot, evaluate, evaluator, writer, progress)
            preempted = self.preemption.reached(step - n + 1, step) and not is_last
            if preempted:
                self._read(window, 0)
            if save or preempted:
                self._save(ckpt, step, snapshot if snapshot is not None else canonical(run_state),
                           position if position is not None else iterator.state(), window)
            if preempted:
                ckpt.wait()
                raise checkpoint_lib.Preempted(step, ckpt.directory, self.preemption.reason)
        return canonical(run_state)
