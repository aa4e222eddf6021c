"""Reflow's pairs: a trained run's flow from fresh source samples, written to disk in chunks.

    generate_pairs(workdir, out_dir, num_pairs=..., chunk_size=...)

The pairs (x0, x1 = the run's sample from x0) are what the next rectified flow trains on
(`flowmatch.experiments.reflow`); the files are `flowmatch.data.pairs`'s layout.  Chunk c is a
`sampling.Chunked` draw of one chunk with key fold_in(rng.seed_stream(seed, "pairs"), c): its x0
are the run's source samples (config.source, by default normal) of that key's "source" stream,
so a chunk does not depend on which chunks were done before or on the devices, and a rerun
redoes only the chunks that are missing or damaged.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from flowmatch import checks
from flowmatch import parallel as parallel_lib
from flowmatch import rng
from flowmatch import sampling
from flowmatch import training
from flowmatch.checks import ConfigError
from flowmatch.data import pairs as pairs_lib
from flowmatch.experiments.progress import progress

# Recorded in each pairs manifest: pairs drawn with another key layout are "made differently".
PAIR_KEYS = "seed_stream(seed, 'pairs'), chunk c: fold_in(., c), sampling.Chunked"


def _json_normal(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def _sampler_settings(comps, method, num_steps, rtol, atol) -> dict:
    """The run's sampler settings (config.sampling) overridden by the given ones; ConfigError."""
    defaults = ml_collections.ConfigDict(dict(comps.settings.sampling))
    try:
        return sampling.resolve(defaults, method, num_steps, rtol, atol)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _pairs_spec(run, settings, *, num_pairs, chunk_size, seed) -> dict:
    """What a pairs directory holds and how it was made (its manifest's spec)."""
    comps = run.components
    return _json_normal(dict(
        num_pairs=num_pairs, chunk_size=chunk_size, example_shape=list(comps.spec.example_shape),
        kind=comps.spec.kind, data=comps.spec.data,
        num_classes=comps.model.num_classes if comps.conditional else 0,
        source_workdir=os.path.abspath(run.workdir), source_step=int(run.step),
        source=dict(name=comps.source.name, scale=comps.source.scale), seed=int(seed),
        keys=PAIR_KEYS, **settings))


def _open_pairs_dir(out_dir: str, spec: dict) -> tuple[dict, np.ndarray]:
    """(manifest, finished [num_chunks] bool) of `out_dir`, which must hold pairs of `spec` or
    none; unfinished chunks are dropped from the manifest (process 0 rewrites it)."""
    os.makedirs(out_dir, exist_ok=True)
    manifest = checks.as_config_error("pairs", pairs_lib.read_manifest, out_dir)
    if manifest is not None and manifest.get("spec") != spec:
        old = manifest.get("spec", {})
        diff = {k: (old.get(k), spec.get(k)) for k in sorted(set(old) | set(spec))
                if old.get(k) != spec.get(k)}
        raise ConfigError(
            f"{out_dir} holds pairs made differently ((was, now): {diff}); write to another "
            "directory, or delete this one to regenerate")
    if manifest is None:
        manifest = {"format": pairs_lib.FORMAT, "spec": spec, "chunks": {}}
    total = pairs_lib.num_chunks(spec["num_pairs"], spec["chunk_size"])
    finished = np.array([pairs_lib.chunk_is_finished(out_dir, i, manifest) for i in range(total)])
    if jax.process_count() > 1:  # every process must run the same (collective) solves
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        finished = np.asarray(multihost_utils.broadcast_one_to_all(finished))
    if parallel_lib.is_main_process():
        pairs_lib.remove_temporary_files(out_dir)
        for i in np.flatnonzero(~finished):
            manifest["chunks"].pop(str(i), None)
        pairs_lib.write_json_atomic(os.path.join(out_dir, pairs_lib.MANIFEST), manifest)
    return manifest, finished


def pair_drawer(comps, chunk_size: int, settings: dict, plan=None) -> sampling.Chunked:
    """One chunk of pairs per call: `sampling.Chunked` with with_source=True over the plan's
    devices (default: all local devices), called as draw(params, key, labels [chunk])."""
    plan = plan or parallel_lib.Plan.all_devices()
    wrap = lambda f: jax.jit(f, out_shardings=plan.replicated)  # noqa: E731
    return sampling.Chunked(comps.make_sampler(**settings), comps.source.sample, chunk_size,
                            chunk_size, with_source=True, constrain=plan.constrain_rows,
                            wrap=wrap, place=plan.replicate)


def generate_pairs(workdir: str, out_dir: str, *, num_pairs: int, chunk_size: int,
                   method: str | None = None, num_steps: int | None = None,
                   rtol: float | None = None, atol: float | None = None, seed: int = 0,
                   step: int | None = None, verbose: bool = True) -> dict:
    """Integrates `num_pairs` source samples with the EMA parameters of the run in `workdir` and
    writes the pairs (x0, x1) to `out_dir` in chunks of `chunk_size` (`flowmatch.data.pairs`).

    The sampler is method / num_steps / rtol / atol, by default the run's config.sampling.
    Resumable: a rerun skips the chunks the manifest lists with an intact file and redoes the
    others (a chunk being written when the process was killed, a damaged file).  Chunk c is a
    pure function of (run, step, sampler, seed, chunk_size, c) (module docstring).  Conditional
    runs: row r of the pairs has label r % num_classes.  Multi-process: every process calls this
    with the same arguments (the solve is split over all devices); process 0 writes the files.

    Returns {"dir", "num_pairs", "generated": [chunk indices], "skipped": [...], "nfe",
    "seconds"}.  Raises ConfigError if `out_dir` holds pairs made differently (another run,
    step, sampler, seed or size), RuntimeError if an adaptive solve fails.
    """
    try:
        num_pairs = checks.positive_int("num_pairs", num_pairs)
        chunk_size = checks.positive_int("chunk_size", chunk_size)
        seed = checks.non_negative_int("seed", seed)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    run = training.restore(workdir, step)
    settings = _sampler_settings(run.components, method, num_steps, rtol, atol)
    spec = _pairs_spec(run, settings, num_pairs=num_pairs, chunk_size=chunk_size, seed=seed)
    manifest, finished = _open_pairs_dir(out_dir, spec)
    draw = pair_drawer(run.components, chunk_size, settings)
    num_classes, main = spec["num_classes"], parallel_lib.is_main_process()
    key, total = rng.seed_stream(seed, "pairs"), len(finished)
    todo = [int(i) for i in np.flatnonzero(~finished)]
    t_start, nfe = time.perf_counter(), 0
    # The bar on the process that writes (and prints), over the chunks this call draws.
    chunks = progress(todo, f"pairs: chunks of {chunk_size} pairs", unit="chunk") if (
        verbose and main) else todo
    for i in chunks:
        rows = pairs_lib.chunk_rows(i, num_pairs, chunk_size)
        labels = (i * chunk_size + np.arange(chunk_size)) % max(num_classes, 1)
        t = time.perf_counter()
        out = draw(run.state.ema_params, jax.random.fold_in(key, i),
                   labels if num_classes else None)
        if not out.success:
            raise RuntimeError(
                f"the ODE solve of pairs chunk {i} failed (max_steps reached or non-finite "
                f"values) with {settings}; loosen rtol/atol or use a fixed-step method")
        nfe = max(nfe, out.nfe)
        if main:
            manifest["chunks"][str(i)] = pairs_lib.write_chunk(
                out_dir, i, out.x0[:rows], out.x[:rows], labels[:rows])
            pairs_lib.write_json_atomic(os.path.join(out_dir, pairs_lib.MANIFEST), manifest)
            if verbose:
                print(f"pairs: chunk {i + 1}/{total} ({rows} pairs, NFE {out.nfe}, "
                      f"{time.perf_counter() - t:.1f} s) -> {out_dir}", flush=True)
    skipped = [i for i in range(total) if finished[i]]
    if verbose and main and skipped:
        print(f"pairs: {len(skipped)} of {total} chunks already in {out_dir}, kept", flush=True)
    return {"dir": out_dir, "num_pairs": num_pairs, "generated": todo, "skipped": skipped,
            "nfe": nfe, "seconds": time.perf_counter() - t_start}
