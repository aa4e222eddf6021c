"""Couplings solved a call ahead: the next call's batches drawn and paired on the host.

A coupling depends on a step's batch and key alone, not on the parameters, so the pairs of the
next call can be solved while the current call trains.  `Feeder` does that for the trainer and
the benchmarks' trainer:

    feeder = run_feeder(comps, plan, train_key)      # Feeder(plan, threads, prepare=..., ...)
    pending = feeder.start(batches, first_step)     # returns at once
    ready = feeder.result(pending)                  # the device batches of the train call
    multi_step = step.make_multi_step(comps, plan, shardings, prepared=feeder.ahead)

With threads = n > 0 the call's k steps are split into min(n, k) chunks of consecutive steps,
each prepared (`step.prepare_steps`: drawn, then paired step by step) by its own background
thread on the host's CPU device; XLA:CPU runs programs from different threads at the same time,
so the auction's or Sinkhorn's loops run beside the train call instead of inside it.  Every step
is drawn and paired by the same function of its rows and key as inside the train step, so the
pairs and the losses are the same (tests/training/test_ahead.py).  On an accelerator the
solvers' sequential rounds move to the host's cores, where the auction runs as a native kernel
(`flowmatch.native`): an auction of 256 points took about 0.6 ms on one core of the project's
2-core Xeon (2.2-2.8 ms in its lax loops) and 31.6 ms on an H200 (2,621 rounds of a few kernel
launches each; docs/couplings.md).

With threads = 0 the batches go to the devices as they are and the train call draws and pairs
them itself (`Feeder.ahead` False).  `ahead_threads` resolves config.coupling.ahead_threads.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import couplings as couplings_lib
from flowmatch import objectives as objectives_lib
from flowmatch.checks import ConfigError
from flowmatch.training import step as step_lib


# Where a container's CPU limit is written (cgroup v2: "QUOTA PERIOD" or "max PERIOD"; v1: the
# quota and the period in two files, quota -1 for none).
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_CPU_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                       "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_limit() -> float | None:
    """CPUs a container's cgroup allows this process (quota / period), None when unlimited or
    unknown: on a cluster node the affinity mask can show every core of the machine while the
    container may use a few."""
    v2 = _read(CGROUP_V2_CPU_MAX)
    if v2 is not None:
        parts = v2.split()
        quota, period = (parts + ["", ""])[:2]
    else:
        quota, period = (_read(p) or "" for p in CGROUP_V1_CPU_QUOTA)
    try:
        quota, period = float(quota), float(period)
    except ValueError:  # "max", missing files
        return None
    return quota / period if quota > 0 and period > 0 else None


def host_cores() -> int:
    """The CPU cores this process may use: its affinity mask, capped by a container's CPU
    limit (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cpu_limit()
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


def ahead_threads(settings, process_count: int = 1) -> int:
    """The background threads that solve a run's couplings (0: the train step solves them).

    settings: the run's `components.Settings`.  Couplings only (flow matching with coupling.name
    other than 'independent').  coupling.ahead_threads -1 (automatic): 1 for Sinkhorn (its
    solve takes about as long as the step it pairs for, on the benchmark's 64 x 3 network), one
    per CPU core for the exact auction (about twice the step with its native kernel, 6-10 times
    with its lax loops); 0 with the global scope over
    several processes, where no host holds the global batch (an explicit n > 0 there is a
    ConfigError).  Never more than steps_per_call (a thread prepares at least one step).
    """
    coupling = settings.coupling
    if (not isinstance(settings.objective, objectives_lib.FlowMatching)
            or coupling.name == "independent"):
        return 0
    n = coupling.ahead_threads
    spread = process_count > 1 and coupling.scope == "global"
    if n == couplings_lib.AUTO_THREADS:
        if spread:
            return 0
        n = 1 if coupling.name == "sinkhorn" else host_cores()
    elif n and spread:
        raise ConfigError(
            f"coupling.ahead_threads={n} solves the couplings on each host, but scope 'global' "
            f"over {process_count} processes needs the rows of all of them: set "
            "coupling.scope='local' or coupling.ahead_threads=0")
    return min(n, settings.train.steps_per_call)


def run_feeder(comps, plan, train_key) -> "Feeder":
    """The `Feeder` of a run (`components.Components` comps on `plan`): `ahead_threads` of its
    settings over this job's processes, with `step.make_prepare`'s program when it works ahead."""
    n = ahead_threads(comps.settings, jax.process_count())
    return Feeder(plan, n, prepare=step_lib.make_prepare(comps, plan) if n else None,
                  train_key=train_key)


class Feeder:
    """A run's batches on their way to the train call: drawn and paired a call ahead by
    `threads` host threads, or (threads 0) put on the devices as they are.

    plan: the run's `parallel.Plan` (`put_batches`); prepare: `step.make_prepare`'s program
    (needed when threads > 0); train_key: the run's train key.
    """

    def __init__(self, plan, threads: int, *, prepare=None, train_key=None):
        if threads and (prepare is None or train_key is None):
            raise ValueError("a Feeder with threads needs prepare and train_key")
        self.plan = plan
        self.threads = int(threads)
        self._prepare = prepare
        self._pool = None
        if self.threads:
            self._host = jax.local_devices(backend="cpu")[0]
            self._key = jax.device_put(train_key, self._host)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="flowmatch-couplings")
            self._compiled = set()  # chunk sizes whose program is compiled
            self._compiling = threading.Lock()

    @property
    def ahead(self) -> bool:
        """Whether the batches come drawn and paired (`step.make_multi_step(prepared=...)`)."""
        return bool(self.threads)

    def start(self, batches: dict, first_step: int) -> Any:
        """Starts readying a call's batches ({name: [k, local batch, ...]}, host or device
        arrays) whose first step is first_step; `result` gives them."""
        if not self.ahead:
            return self.plan.put_batches(batches)
        k = int(jax.tree.leaves(batches)[0].shape[0])
        cuts = np.linspace(0, k, min(self.threads, k) + 1).round().astype(int)
        return [self._pool.submit(self._chunk, jax.tree.map(lambda v, a=a, b=b: v[a:b], batches),
                                  first_step + int(a))
                for a, b in zip(cuts[:-1], cuts[1:])]

    def result(self, pending) -> dict:
        """The started call's batches on the devices, drawn and paired when `ahead` (waits for
        its threads; an error in one is raised here)."""
        if not self.ahead:
            return pending
        parts = [future.result() for future in pending]
        ready = parts[0] if len(parts) == 1 else jax.tree.map(
            lambda *chunks: jnp.concatenate(chunks), *parts)
        return self.plan.put_batches(ready)

    def _chunk(self, batches, first_step: int):
        batches = jax.device_put(batches, self._host)
        args = (batches, np.int32(first_step), self._key)
        size = int(jax.tree.leaves(batches)[0].shape[0])
        if size not in self._compiled:  # one thread compiles, the others wait and reuse it
            with self._compiling:
                if size not in self._compiled:
                    out = jax.block_until_ready(self._prepare(*args))
                    self._compiled.add(size)
                    return out
        return jax.block_until_ready(self._prepare(*args))

    def close(self):
        """Stops the threads: steps not started are dropped, those running finish first."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
