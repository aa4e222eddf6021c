"""Parallelism on simulated CPU devices: 1 vs 2 vs 4 vs 8 devices, jit-with-shardings vs pmap,
FSDP, tensor parallelism (data x fsdp x tensor meshes), two processes through jax.distributed,
gradient accumulation, bfloat16, multi-slice mesh shapes and errors.

The device count of a process is fixed when JAX starts
(XLA_FLAGS=--xla_force_host_platform_device_count=N), so multi-device runs happen in
subprocesses running this file as a script (`worker`); the pytest process keeps its one device.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from configs_util import (  # noqa: E402  (tests/ on sys.path)
    load_config, override, simulated_devices_env)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def small_config(overrides=None):
    """Checkerboard smoke with a small MLP: 20 steps of batch 32, every step logged, evaluated
    and saved at the end (a run of STEPS // 2 steps leaves the checkpoint the resumed runs start
    from)."""
    config = load_config("checkerboard")
    config.num_train_steps = STEPS
    config.steps_per_call = 1
    config.log_every_steps = 1
    config.eval_every_steps = STEPS
    config.checkpoint_every_steps = STEPS
    config.batch_size = 32
    config.model.hidden_sizes = (64, 64)
    config.eval.w2_in_training = True  # the runs' w2 is compared across layouts
    return override(config, overrides)


DIT_STEPS = 6


def dit_config(overrides=None):
    """The digits DiT smoke (width 64, 4 blocks, 4 heads, batch 16): DIT_STEPS steps at the
    full learning rate, every step logged, no evaluation."""
    config = load_config("digits_dit")
    config.num_train_steps = DIT_STEPS
    config.steps_per_call = 1
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = DIT_STEPS
    config.optimizer.warmup_steps = 0  # full-size steps from the first
    return override(config, overrides)


# -- the subprocess side ---------------------------------------------------------------------------


def worker(spec):
    """Runs spec["runs"] ([name, overrides, steps]) one after another in this process and writes
    <out>/<name>.<process>.npz (losses, parameters) and .json (eval metrics, parameter specs)."""
    import jax  # pylint: disable=g-import-not-at-top
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    if spec.get("coordinator"):
        parallel.maybe_initialize_distributed(spec["coordinator"], spec["num_processes"],
                                              spec["process_id"])
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from flowmatch import metrics, training  # pylint: disable=g-import-not-at-top
    out = spec["out"]
    for name, overrides, steps in spec["runs"]:
        config = (dit_config if name.startswith("dit_") else small_config)(overrides)
        config.num_train_steps = steps
        workdir = os.path.join(out, "work", name)
        state = training.train_and_evaluate(config, workdir)
        rows = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
        tag = f"{name}.{jax.process_index()}"
        leaves = jax.tree.leaves(state.params)
        np.savez(os.path.join(out, f"{tag}.npz"), losses=[r["loss"] for r in rows],
                 steps=[r["step"] for r in rows], *[np.asarray(x) for x in leaves])
        with open(os.path.join(out, f"{tag}.json"), "w") as f:
            json.dump({"eval": {k: rows[-1][k] for k in ("tv", "w2") if k in rows[-1]},
                       "specs": [str(x.sharding.spec) for x in leaves],
                       "names": [parallel.leaf_name(p) for p, _ in
                                 jax.tree_util.tree_leaves_with_path(state.params)],
                       "devices": jax.device_count(), "processes": jax.process_count()}, f)
    for name, overrides in spec.get("errors", []):
        try:
            training.loop.make_plan(training.read_settings(small_config(overrides)))
            message = None
        except training.ConfigError as e:
            message = str(e)
        with open(os.path.join(out, f"error_{name}.json"), "w") as f:
            json.dump({"message": message}, f)


def spawn(spec, num_devices):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                            cwd=ROOT, env=simulated_devices_env(num_devices),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(*procs, timeout=600):
    """Waits for every process; if one fails or hangs, stops the others and reports its log."""
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, out[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def result(out, name, process=0):
    with np.load(os.path.join(out, f"{name}.{process}.npz")) as f:
        params = [f[f"arr_{i}"] for i in range(len(f.files) - 2)]
        losses, steps = f["losses"], f["steps"]
    with open(os.path.join(out, f"{name}.{process}.json")) as f:
        info = json.load(f)
    return losses, steps, params, info


# -- one 8-device process: every layout of the same run ----------------------------------------

RUNS = {
    "1dev": {"parallel.data_axis_size": 1},
    "2dev": {"parallel.data_axis_size": 2},
    "4dev": {"parallel.data_axis_size": 4},
    "8dev": {},
    "pmap2": {"parallel.mode": "pmap", "parallel.data_axis_size": 2},
    "pmap8_accum2": {"parallel.mode": "pmap", "grad_accum_steps": 2},
    "fsdp4x2": {"parallel.data_axis_size": 4, "parallel.fsdp_axis_size": 2,
                "parallel.fsdp_min_size": 0},
    "tensor2x2x2": {"parallel.data_axis_size": 2, "parallel.fsdp_axis_size": 2,
                    "parallel.tensor_axis_size": 2, "parallel.fsdp_min_size": 0},
    "tensor1x1x8": {"parallel.data_axis_size": 1, "parallel.tensor_axis_size": 8,
                    "parallel.fsdp_min_size": 0},
}
# bfloat16 products (model.matmul_dtype): their own reference run on one device, compared with
# the 2 x 2 x 2 mesh's (rows split over data, kernels over fsdp and tensor).
BF16 = {"model.matmul_dtype": "bfloat16"}
BF16_RUNS = {"bf16_1dev": {**BF16, **RUNS["1dev"]},
             "bf16_tensor2x2x2": {**BF16, **RUNS["tensor2x2x2"]}}
# The DiT (attention heads and MLP over the tensor axis), in float32 and with bfloat16 products.
DIT_RUNS = {f"dit_{precision}_{layout}": {**extra, **RUNS[layout]}
            for precision, extra in (("f32", {}), ("bf16", BF16))
            for layout in ("1dev", "tensor2x2x2")}
# Where the tensor runs put the MLP's kernels (hidden_0 [2, 64], hidden_1 [64, 64], out [64, 2]):
# hidden_i alternate (embed, mlp) / (mlp, embed), embed -> fsdp, mlp -> tensor; a dimension its
# mesh axis does not divide stays replicated.
TENSOR_SPECS = {
    "tensor2x2x2": {"hidden_0/kernel": ("fsdp", "tensor"), "hidden_1/kernel": ("tensor", "fsdp"),
                    "hidden_1/bias": ("fsdp",), "out/kernel": ("fsdp", "tensor")},
    "tensor1x1x8": {"hidden_0/kernel": (None, "tensor"), "hidden_1/kernel": ("tensor",),
                    "out/kernel": ()},
}
# The runs whose evaluation (samples, tv, w2) is compared with 1dev's: rows split over the data
# axis (4dev, also the two-process runs' reference) and parameters split over fsdp and tensor
# axes.  The others train without evaluation (about 3.5 s of each run: the sampler's compilation,
# the w2 assignment, the picture); their losses and parameters are still compared.
EVALUATED = ("1dev", "4dev", "tensor2x2x2")
NO_EVAL = {"eval_every_steps": 0}
ERRORS = {
    "batch": {"batch_size": 12},
    "fsdp": {"parallel.fsdp_axis_size": 3},
    "mesh": {"parallel.data_axis_size": 4, "parallel.fsdp_axis_size": 4},
    "tensor": {"parallel.fsdp_axis_size": 2, "parallel.tensor_axis_size": 3},
    "tensor_batch": {"batch_size": 18, "parallel.tensor_axis_size": 2},
}


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eight"))
    # "resumed": half the run on 8 devices, the rest resumed from its checkpoint on 2.
    resumed = [["resumed", NO_EVAL, STEPS // 2],
               ["resumed", {"parallel.data_axis_size": 2, **NO_EVAL}, STEPS]]
    runs = [[n, o if n in EVALUATED else {**o, **NO_EVAL}, STEPS] for n, o in RUNS.items()]
    runs += [[n, {**o, **NO_EVAL}, STEPS] for n, o in BF16_RUNS.items()]
    runs += [[n, o, DIT_STEPS] for n, o in DIT_RUNS.items()]
    spec = {"out": out, "runs": runs + resumed,
            "errors": [[n, o] for n, o in ERRORS.items()]}
    finish(spawn(spec, 8))
    return out


def assert_same_run(a, b, what):
    (loss_a, steps_a, params_a, info_a), (loss_b, steps_b, params_b, info_b) = a, b
    assert list(steps_a) == list(steps_b) == list(range(1, STEPS + 1)), what
    # Same maths, different reduction order: float32 round-off only.
    np.testing.assert_allclose(loss_a, loss_b, rtol=2e-6, atol=0, err_msg=what)
    for x, y in zip(params_a, params_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6, err_msg=what)
    if "w2" in info_b["eval"]:  # the run was evaluated: the same samples' w2
        np.testing.assert_allclose(info_a["eval"]["w2"], info_b["eval"]["w2"], rtol=1e-5,
                                   err_msg=what)


@pytest.mark.parametrize("name", [n for n in RUNS if n != "1dev"] + ["resumed"])
def test_every_layout_trains_like_one_device(eight_devices, name):
    reference = result(eight_devices, "1dev")
    run = result(eight_devices, name)
    assert "w2" in reference[3]["eval"] and ("w2" in run[3]["eval"]) == (name in EVALUATED)
    assert_same_run(reference, run, name)
    assert run[3]["devices"] == 8
    if name.startswith("fsdp"):
        assert any("fsdp" in s for s in run[3]["specs"]), run[3]["specs"]
    specs = dict(zip(run[3]["names"], run[3]["specs"]))
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    for leaf, spec in TENSOR_SPECS.get(name, {}).items():
        assert specs[leaf] == str(parallel.P(*spec)), (leaf, specs)
    if not name.startswith("tensor"):
        assert not any("tensor" in s for s in run[3]["specs"]), run[3]["specs"]


def test_bfloat16_products_train_alike_on_every_layout(eight_devices):
    """The custom gradient of bfloat16 products (flowmatch.models.precision) under a sharded
    mesh: the same run as on one device, up to the bfloat16 rounding of values whose float32
    round-off differs between layouts; and not the float32 run."""
    (loss_a, _, params_a, _), (loss_b, _, params_b, info_b) = (
        result(eight_devices, "bf16_1dev"), result(eight_devices, "bf16_tensor2x2x2"))
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-3)
    for x, y in zip(params_a, params_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-3)
    assert any("tensor" in s for s in info_b["specs"]), info_b["specs"]
    loss_f32 = result(eight_devices, "1dev")[0]
    assert not np.allclose(loss_a, loss_f32, rtol=1e-6, atol=0)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_the_dit_trains_alike_on_a_tensor_mesh(eight_devices, precision):
    """The DiT with its heads and MLP split over the tensor axis (and rows over data, kernels
    over fsdp) trains as on one device: float32 to round-off; bfloat16 products up to the
    bfloat16 rounding of values whose float32 round-off differs between layouts."""
    (loss_a, steps_a, params_a, _), (loss_b, steps_b, params_b, info_b) = (
        result(eight_devices, f"dit_{precision}_1dev"),
        result(eight_devices, f"dit_{precision}_tensor2x2x2"))
    assert list(steps_a) == list(steps_b) == list(range(1, DIT_STEPS + 1))
    # float32: 1.3e-6 of the loss and 3e-8 in the parameters measured (a deeper network than
    # the MLP's, so more round-off than assert_same_run allows).
    loss_tol, param_tol = (1e-5, 1e-6) if precision == "f32" else (1e-3, 1e-3)
    np.testing.assert_allclose(loss_a, loss_b, rtol=loss_tol)
    for x, y in zip(params_a, params_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=param_tol)
    assert sum("tensor" in s for s in info_b["specs"]) >= 4, info_b["specs"]
    assert loss_a[-1] < loss_a[0]
    if precision == "bf16":  # ... and not as float32 does
        assert not np.allclose(loss_a, result(eight_devices, "dit_f32_1dev")[0], rtol=1e-6, atol=0)


def test_loss_curve_is_not_trivially_equal(eight_devices):
    losses = result(eight_devices, "1dev")[0]
    assert np.all(np.isfinite(losses)) and len(set(np.round(losses, 4))) > STEPS // 2


@pytest.mark.parametrize("name,match", [
    ("batch", "batch_size=12 .*not divisible by 8 data-parallel devices"),
    ("fsdp", "fsdp_axis_size=3 does not divide the 8 devices"),
    ("mesh", "4 x 4 = 16 devices does not fit the 8 available"),
    ("tensor", "fsdp_axis_size x tensor_axis_size = 2 x 3 = 6 does not divide the 8 devices"),
    # 8 devices over tensor 2: 4 data-parallel shards.
    ("tensor_batch", "batch_size=18 .*not divisible by 4 data-parallel devices"),
])
def test_bad_layouts_are_refused_with_the_numbers(eight_devices, name, match):
    import re  # pylint: disable=g-import-not-at-top
    with open(os.path.join(eight_devices, f"error_{name}.json")) as f:
        message = json.load(f)["message"]
    assert message is not None and re.search(match, message), message


# -- two processes x two devices through jax.distributed -----------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_four_devices(eight_devices, tmp_path):
    out = str(tmp_path)
    coordinator = f"127.0.0.1:{free_port()}"
    # Sharding mode in two launches (the second resumes from the first's step-10 checkpoint and
    # evaluates), then pmap mode and a 2 (data, one per process) x 2 (tensor) mesh from scratch.
    runs = [["sharding", NO_EVAL, STEPS // 2], ["sharding", {}, STEPS],
            ["pmap", {"parallel.mode": "pmap", **NO_EVAL}, STEPS],
            ["tensor", {"parallel.tensor_axis_size": 2, "parallel.fsdp_min_size": 0, **NO_EVAL},
             STEPS]]
    procs = [spawn({"out": out, "runs": runs, "coordinator": coordinator, "num_processes": 2,
                    "process_id": i}, 2) for i in range(2)]
    finish(*procs)
    reference = result(eight_devices, "4dev")
    for name in ("sharding", "pmap", "tensor"):
        first, second = result(out, name, 0), result(out, name, 1)
        assert first[3]["processes"] == 2 and first[3]["devices"] == 4
        assert ("w2" in first[3]["eval"]) == (name == "sharding")
        for x, y in zip(first[2], second[2]):
            np.testing.assert_array_equal(x, y)  # every process holds the same parameters
        assert_same_run(reference, first, name)
        # One set of files, written by process 0.
        workdir = os.path.join(out, "work", name)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            assert [json.loads(line)["step"] for line in f] == list(range(1, STEPS + 1))
        assert os.path.exists(os.path.join(workdir, f"samples_{STEPS}.png")) == (
            name == "sharding")
        assert str(STEPS) in os.listdir(os.path.join(workdir, "checkpoints"))


# -- in this process (one device) ----------------------------------------------------------------


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    from flowmatch import metrics, training  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    states, losses = [], []
    for k in (1, 4):
        config = small_config({"grad_accum_steps": k, "num_train_steps": 6,
                               "checkpoint_every_steps": 6, "eval_every_steps": 0})
        states.append(training.train_and_evaluate(config, str(tmp_path / str(k))))
        losses.append([r["loss"] for r in metrics.read_metrics(str(tmp_path / str(k) /
                                                                   "metrics.jsonl"))])
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-6)
    for x, y in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6)


def test_bfloat16_compute_keeps_float32_state_and_loss():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flowmatch import training  # pylint: disable=g-import-not-at-top
    from flowmatch.training import state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
    config = load_config("digits")
    config.model.dtype = "bfloat16"
    # one level, no attention: every convolution kind is still there, at a fraction of the
    # compile time of bfloat16 convolutions on XLA:CPU
    config.model.update(base_channels=8, channel_mult=(1,), num_res_blocks=1,
                        attn_resolutions=(), num_groups=4)
    config.batch_size = 4
    settings = training.read_settings(config)
    comps = training.build(settings, training.RunSpec("digits", "image", (8, 8, 1), 10))
    plan = training.loop.make_plan(settings)
    state = state_lib.create_state(comps.model, comps.tx, (8, 8, 1), False,
                                   jax.random.PRNGKey(0), plan)
    batch = {"x": jnp.zeros((1, 4, 8, 8, 1)), "label": jnp.zeros((1, 4), jnp.int32)}
    key = plan.replicate(jax.random.PRNGKey(1))
    multi_step = step_lib.make_multi_step(comps, plan, jax.tree.map(lambda a: a.sharding, state))
    jaxpr = str(jax.make_jaxpr(multi_step)(state, batch, key))
    assert "bf16[" in jaxpr and " = conv_general_dilated" in jaxpr
    for line in jaxpr.splitlines():
        if " = conv_general_dilated" in line:  # every convolution runs in bfloat16
            assert "bf16[" in line.split("=")[0], line
    state, metrics = multi_step(state, plan.put_batches(batch), key)
    for leaf in jax.tree.leaves((state.params, state.opt_state, state.ema_params)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"]).all()


@pytest.mark.parametrize("overrides,match", [
    ({"parallel.data_axis_size": 2}, "does not fit the 1 available"),
    ({"parallel.mode": "spmd"}, "unknown parallel.mode 'spmd'; choose one of: sharding, pmap"),
    ({"parallel.mode": "pmap", "parallel.fsdp_axis_size": 2}, "needs parallel.mode='sharding'"),
    ({"parallel.mode": "pmap", "parallel.tensor_axis_size": 2},
     "tensor_axis_size=2 needs parallel.mode='sharding'"),
    ({"parallel.tensor_axis_size": 0}, "tensor_axis_size must be >= 1"),
    ({"parallel.num_slices": 2}, "num_slices=2 does not divide the data axis"),
    ({"grad_accum_steps": 3}, "batch_size=32 .*grad_accum_steps=3"),
    ({"grad_accum_steps": 0}, "grad_accum_steps must be a positive integer"),
    ({"parallel.data_axis_size": 0}, "data_axis_size must be a positive integer or -1"),
])
def test_bad_parallel_settings_fail_before_compiling(overrides, match, tmp_path):
    from flowmatch import training  # pylint: disable=g-import-not-at-top
    with pytest.raises(training.ConfigError, match=match):
        training.train_and_evaluate(small_config(overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_distributed_flags_are_checked_and_single_process_runs_skip_it(monkeypatch):
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "MEGASCALE_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.maybe_initialize_distributed() is False
    assert parallel.maybe_initialize_distributed(mode="off") is False
    with pytest.raises(ValueError, match="come together"):
        parallel.maybe_initialize_distributed("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parallel.maybe_initialize_distributed("localhost", 2, 0)
    with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
        parallel.maybe_initialize_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="auto, on, off"):
        parallel.maybe_initialize_distributed(mode="yes")


def test_fsdp_splits_the_largest_divisible_dimension_of_large_leaves():
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    P = parallel.P
    assert parallel.fsdp_spec((3, 3, 64, 128), 4, 1000) == P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((256, 6), 4, 1000) == P("fsdp", None)
    assert parallel.fsdp_spec((128,), 4, 1000) == P()  # too small: replicated
    assert parallel.fsdp_spec((7, 999), 4, 0) == P()  # nothing divides
    assert parallel.fsdp_spec((), 4, 0) == P()
    assert parallel.fsdp_spec((64, 64), 1, 0) == P()


def test_logical_axes_map_to_the_mesh_and_fall_back_to_replicated():
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    P, spec = parallel.P, parallel.logical_spec
    sizes = {"data": 2, "fsdp": 2, "tensor": 4}
    assert spec(("embed", "mlp"), (768, 3072), sizes) == P("fsdp", "tensor")
    assert spec(("embed", None, "heads", None), (768, 3, 12, 64), sizes) == P("fsdp", None,
                                                                               "tensor")
    assert spec(("layers", "mlp", "embed"), (12, 3072, 768), sizes) == P(None, "tensor", "fsdp")
    assert spec((None, "embed"), (1001, 6), sizes) == P(None, "fsdp")
    assert spec(("heads", None, "embed"), (6, 64, 7), sizes) == P()  # 4 / 6, 2 / 7: replicated
    assert spec(("mlp", "mlp"), (8, 8), sizes) == P("tensor")  # a mesh axis is used once
    assert spec(("batch",), (16,), sizes) == P(("data", "fsdp"))
    assert spec(("embed", "mlp"), (64, 64), sizes, min_size=10_000) == P()
    assert spec(("embed", "mlp"), (64, 64), {"data": 8, "fsdp": 1, "tensor": 1}) == P()


def test_multislice_meshes_put_the_data_axis_across_slices():
    """create_hybrid_device_mesh on fake devices of 2 slices x 4 (CPU devices have no
    slice_index): every (fsdp, tensor) group lies within one slice, "data" spans both."""
    import dataclasses  # pylint: disable=g-import-not-at-top
    import types  # pylint: disable=g-import-not-at-top
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    assert parallel.hybrid_shapes(4, 1, 2, 2) == ((2, 1, 2), (2, 1, 1))
    devices = [types.SimpleNamespace(id=i, process_index=i // 2, slice_index=i // 4,
                                     platform="cpu", device_kind="fake") for i in range(8)]
    grid = parallel.device_array(4, 1, 2, devices[::-1], num_slices=2)
    assert grid.shape == (4, 1, 2)
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    np.testing.assert_array_equal(slices[:, 0, :], [[0, 0], [0, 0], [1, 1], [1, 1]])
    with pytest.raises(ValueError, match="must divide the data axis size 3"):
        parallel.hybrid_shapes(3, 1, 1, 2)
    settings = parallel.ParallelSettings(fsdp_axis_size=2, tensor_axis_size=2, num_slices=2)
    assert parallel.mesh_shape(settings, 64) == (16, 2, 2)
    with pytest.raises(ValueError, match="num_slices=4 does not divide the data axis"):
        parallel.mesh_shape(dataclasses.replace(settings, fsdp_axis_size=16, num_slices=4), 64)


def test_microbatches_take_an_equal_slice_of_every_shard():
    from flowmatch import parallel  # pylint: disable=g-import-not-at-top
    x = np.arange(16)
    micro = np.asarray(parallel.split_microbatches(x, 2, 4))
    # 4 shards of 4 rows; micro-batch m holds rows 2m, 2m+1 of each shard.
    np.testing.assert_array_equal(micro, [[0, 1, 4, 5, 8, 9, 12, 13],
                                          [2, 3, 6, 7, 10, 11, 14, 15]])
    assert sorted(micro.reshape(-1)) == list(range(16))


def test_train_script_reports_a_bad_parallel_setting_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config=configs/checkerboard.py:smoke",
         f"--workdir={tmp_path}", "--config.parallel.mode=mpi"],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown parallel.mode 'mpi'")


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
