"""Samples from a trained run: restore the EMA parameters, integrate, write .npz and .png."""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np

from flowmatch import checkpoint as checkpoint_lib
from flowmatch import ddpm as ddpm_lib
from flowmatch import metrics as metrics_lib
from flowmatch import parallel as parallel_lib
from flowmatch import plotting
from flowmatch import sampling
from flowmatch import train as train_lib


def restore_run(workdir: str, step: int | None = None):
    """(experiment, state, step) of the run in `workdir`: its saved config and a checkpoint."""
    config = train_lib.load_config(workdir)
    # Sampling uses every local device, whatever the run was trained on; orbax restores the
    # checkpoint onto this layout.
    exp = train_lib.Experiment.from_config(config, plan=parallel_lib.Plan.all_devices())
    abstract = exp.abstract_state()
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.checkpoint.max_to_keep)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first with "
                f"scripts/train.py --workdir={workdir}")
        if step is None:
            restored = ckpt.restore_latest(abstract)
            if restored is None:
                raise FileNotFoundError(f"no checkpoint in {workdir} could be restored; see the log")
            step, state, _ = restored
        else:
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint at step {step} in {workdir}; available: {steps}")
            state, _ = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return exp, state, step


DDPM_SAMPLERS = ("ancestral", "ddim")


def make_ddpm_sampler(exp, method: str, num_steps=None):
    """A jitted `sample(params, key, n, cond=None) -> (x, nfe, success)` for a DDPM run.

    method 'ancestral' (all T steps, or num_steps respaced ones) or 'ddim' (eta = 0, num_steps,
    default 50).  ODE methods are served by `Experiment.make_sampler` (the probability-flow ODE).
    """
    objective = exp.objective
    if not isinstance(objective, ddpm_lib.DDPM):
        raise train_lib.ConfigError(
            f"--method={method} samples DDPM models, but this run trained "
            f"objective.name={exp.config.objective.name!r}; use an ODE method instead")
    if num_steps is not None and not 1 <= num_steps <= objective.num_timesteps:
        raise train_lib.ConfigError(
            f"--steps must be in [1, {objective.num_timesteps}] for {method}, got {num_steps}")
    shape = tuple(exp.source.example_shape)

    @functools.partial(jax.jit, static_argnums=(2,))
    def sample(params, key, n, cond=None):
        key_x, key_s = jax.random.split(key)
        x_T = jax.random.normal(key_x, (n, *shape))
        predict = lambda x, t: exp.apply(params, x, t, cond)
        if method == "ancestral":
            out = ddpm_lib.ancestral_sample(predict, objective.schedule, key_s, x_T,
                                            prediction=objective.prediction, num_steps=num_steps)
        else:
            out = ddpm_lib.ddim_sample(predict, objective.schedule, key_s, x_T,
                                       num_steps=num_steps or 50,
                                       prediction=objective.prediction)
        return out.x, out.nfe, out.success

    return sample


def sample_to_file(workdir: str, output: str, *, num_samples=None, method=None, num_steps=None,
                   rtol=None, atol=None, seed: int = 0, step=None) -> dict:
    """Writes `output` (.npz with `samples` float32 [N, ...] in data space and `nfe`) and a PNG.

    Defaults come from the run's config.sampling (the run's default sampler) and config.eval.
    Returns a dict of what was written and measured (for 2-D data also tv and w2).
    """
    if not output.endswith(".npz"):
        raise train_lib.ConfigError(f"--output must end in .npz, got {output!r}")
    exp, state, step = restore_run(workdir, step)
    config = exp.config
    n = num_samples or (config.eval.num_tv_samples if exp.source.kind == "toy2d"
                        else config.eval.num_image_samples)
    if n < 1:
        raise train_lib.ConfigError(f"--num_samples must be >= 1, got {n}")
    try:
        if method in DDPM_SAMPLERS:
            sample = make_ddpm_sampler(exp, method, num_steps)
        else:
            sample = exp.make_sampler(method, num_steps, rtol, atol)
    except train_lib.ConfigError:
        raise
    except ValueError as e:
        raise train_lib.ConfigError(str(e)) from e
    labels = np.arange(n) % exp.model.num_classes if exp.conditional() else None
    t = time.perf_counter()
    samples, nfe, ok = sampling.sample_in_chunks(sample, state.ema_params, jax.random.PRNGKey(seed),
                                                 n, config.eval.chunk_size, labels=labels)
    seconds = time.perf_counter() - t
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    extra = {} if labels is None else {"labels": labels.astype(np.int32)}
    np.savez(output, samples=samples.astype(np.float32), nfe=np.int64(nfe), **extra)
    png = output[:-4] + ".png"
    result = {"output": output, "png": png, "num_samples": n, "nfe": nfe, "step": step,
              "seconds": seconds, "success": ok}
    name = config.data.name
    if exp.source.kind == "toy2d":
        ref = np.asarray(exp.source.sample_reference(jax.random.PRNGKey(seed + 1),
                                                     max(n, config.eval.num_tv_samples)))
        m = metrics_lib.metrics_2d(samples, ref[:config.eval.num_w2_samples], ref, exp.source.box,
                                   bins=config.eval.tv_bins, n_w2=config.eval.num_w2_samples)
        result.update(m)
        plotting.plot_2d(samples[:config.eval.num_plot_samples], png, reference=ref,
                         box=exp.source.box, title=f"{name}: {n} samples, NFE {nfe}, tv={m['tv']:.3f}")
    else:
        plotting.image_grid(samples[:config.eval.num_plot_samples], png,
                            title=f"{name}: NFE {nfe}, step {step}")
    if not ok:
        print("warning: an adaptive solve hit max_steps; samples may be inaccurate")
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items()), flush=True)
    return result
