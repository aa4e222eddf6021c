"""A/B: randomness of a call's steps drawn before the scan (vmapped) vs inside each step."""
import os, sys, time, statistics
sys.path.insert(0, ".")
import numpy as np
import jax, jax.numpy as jnp
from flowmatch.experiments import cli, speed, speed_process
from flowmatch.training import step as step_lib
from flowmatch import threefry
threefry.unroll_hot_programs()
cfg = sys.argv[1] if len(sys.argv) > 1 else "configs/torchcfm_moons.py"
k = int(sys.argv[2]) if len(sys.argv) > 2 else 100
c = cli.load_config_file(cfg)

orig_make_draw = step_lib.make_draw
orig_steps = step_lib.steps
HOIST = {}
def make_draw_h(*a, **kw):
    d = orig_make_draw(*a, **kw)
    HOIST["draw"] = d
    return lambda batch, fi, key: batch   # batch comes drawn
def steps_h(step, state, batches):
    # keys as the step computes them: fold_in(train_key, state.step + i)
    train_key = HOIST["train_key"]
    idx = state.step + jnp.arange(jax.tree.leaves(batches)[0].shape[0], dtype=state.step.dtype)
    keys = jax.vmap(lambda i: jax.random.fold_in(train_key, i))(idx)
    drawn = jax.vmap(lambda b, k_: HOIST["draw"](b, 0, k_))(batches, keys)
    return orig_steps(step, state, drawn)
orig_mms = step_lib.make_multi_step
def make_multi_step_h(comps, plan, shardings):
    step_lib.make_draw, step_lib.steps = make_draw_h, steps_h
    try:
        f = orig_mms(comps, plan, shardings)
    finally:
        step_lib.make_draw, step_lib.steps = orig_make_draw, orig_steps
    def g(state, batches, train_key):
        return f(state, batches, train_key)
    return f
# the train_key enters multi_step as an argument; capture it by wrapping steps at trace time:
import functools
def patched_multi(comps, plan, shardings):
    s = comps.settings.train
    train_step = None
    step_lib.make_draw = make_draw_h
    try:
        # rebuild like make_multi_step (sharding mode, 1 device)
        ts = step_lib.make_train_step(
            apply=comps.apply, objective=comps.objective, conditional=comps.conditional, tx=comps.tx,
            lr_schedule=comps.lr_schedule, ema_decay=s.ema_decay, ema_warmup=s.ema_warmup,
            draw=make_draw_h(comps.objective, comps.source, comps.settings.coupling, s.batch_size, plan,
                             null_label=comps.model.num_classes if comps.conditional else None),
            pair_cost=step_lib.reports_pair_cost(comps), per_row=comps.stochastic)
    finally:
        step_lib.make_draw = orig_make_draw
    def multi_step(state, batches, train_key):
        HOIST["train_key"] = train_key
        return steps_h(lambda st, b: ts(st, b, train_key), state, batches)
    return threefry.hot_program(jax.jit(multi_step, donate_argnums=(0,)))

runs = {}
tr = speed.make_trainer(c, steps_per_call=k); runs["old"] = lambda: tr.call()["loss"]
speed.step_lib.make_multi_step = patched_multi
tr2 = speed.make_trainer(c, steps_per_call=k); runs["hoist"] = lambda: tr2.call()["loss"]
speed.step_lib.make_multi_step = orig_mms
runs["plain"] = speed_process.plain_jax_runner(c, k)
la = np.asarray(runs["old"]()); lb = np.asarray(runs["hoist"]())
print("losses equal bitwise:", np.array_equal(la, lb), "max diff", np.abs(la - lb).max())
for f in runs.values():
    for _ in range(3): jax.block_until_ready(f())
ts_ = {n: [] for n in runs}
for r in range(int(os.environ.get("ROUNDS", 30))):
    for n, f in runs.items():
        t = time.perf_counter(); jax.block_until_ready(f()); ts_[n].append(time.perf_counter() - t)
for n, t in ts_.items():
    print(f"{n:8s} {k/statistics.median(t):9.1f} steps/s  (best {k/min(t):9.1f})")
