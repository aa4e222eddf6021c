"""Parallelism for the trainer: the device mesh, shardings, pmap layout, multi-host set-up.

The mesh has three axes, ``("data", "fsdp", "tensor")``.  The global batch is split over "data"
and "fsdp" (those devices are data-parallel) and replicated over "tensor"; parameters, optimizer
state and EMA are replicated over "data".  How they are split over the other two:

- tensor = 1: when ``fsdp`` > 1, over "fsdp" (FSDP / ZeRO-3 style: each weight's largest
  divisible dimension is sharded and XLA gathers it where it is used; `fsdp_spec`).
- tensor > 1: by logical axes (tensor / model parallelism, as Megatron-LM, MaxText and
  MaxDiffusion): every parameter dimension has a logical name (a DiT's table in
  flowmatch/models/dit.py, the MLP's and U-Net's in flowmatch/models/axes.py) and `LOGICAL_RULES`
  maps names to mesh axes: embed -> fsdp, heads and mlp -> tensor (`logical_spec`).
  A dimension that its mesh axes do not divide stays replicated.

With ``num_slices`` > 1 (a multi-slice TPU run) the mesh comes from
`jax.experimental.mesh_utils.create_hybrid_device_mesh`: "fsdp" and "tensor" within a slice
(fast ICI links), "data" across slices (DCN; only the gradient all-reduce crosses it).
Two ways to run a train step on the mesh:

- "sharding" (default): one `jax.jit` program over global arrays with `NamedSharding`s; XLA
  partitions it (GSPMD) and inserts the gradient all-reduce.
- "pmap": `jax.pmap` over the same devices (fsdp and tensor must be 1); the state is stacked with
  a leading device axis and the step averages gradients with `lax.pmean`.

Global shard s (the s-th (data, fsdp) position of the mesh, row-major) holds rows
[s b, (s + 1) b) of the global batch, b = batch_size / num_shards, num_shards = data x fsdp.
Devices are ordered by process, so process p's devices hold one contiguous block of rows:
exactly the rows `data.BatchIterator(process_index=p)` loads.

Nothing here knows about losses or samplers; the trainer (`flowmatch.training`) uses these pieces.
Multi-process runs call `maybe_initialize_distributed` before any other JAX call.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MODES = ("sharding", "pmap")
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
TENSOR_AXIS = "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch dimension: split over data x fsdp

# (logical axis, mesh axis or axes) of parameter and activation dimensions, the one place where
# logical names meet the mesh.  A name not listed (e.g. "layers", the DiT's scanned block axis)
# and None are replicated.  Used when tensor > 1 (see the module docstring).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", FSDP_AXIS),
    ("heads", TENSOR_AXIS),
    ("mlp", TENSOR_AXIS),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class ParallelSettings:
    """config.parallel as a typed record (see configs/default.py)."""

    mode: str = "sharding"
    data_axis_size: int = -1
    fsdp_axis_size: int = 1
    fsdp_min_size: int = 2**14
    tensor_axis_size: int = 1
    num_slices: int = 1

    @classmethod
    def from_config(cls, section) -> "ParallelSettings":
        """From a config.parallel section (None or missing keys: the defaults)."""
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown parallel setting(s) {sorted(unknown)}; allowed: "
                f"{sorted(f.name for f in dataclasses.fields(cls))}")
        out = cls(**section)
        out.validate()
        return out

    def validate(self):
        if self.mode not in MODES:
            raise ValueError(
                f"unknown parallel.mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        for name in ("data_axis_size", "fsdp_axis_size", "fsdp_min_size", "tensor_axis_size",
                     "num_slices"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"parallel.{name} must be an integer, got {value!r}")
        if self.data_axis_size == 0 or self.data_axis_size < -1:
            raise ValueError(
                f"parallel.data_axis_size must be a positive integer or -1 (all devices not used "
                f"by fsdp), got {self.data_axis_size}")
        if self.fsdp_axis_size < 1:
            raise ValueError(
                f"parallel.fsdp_axis_size must be >= 1 (1 = parameters replicated), got "
                f"{self.fsdp_axis_size}")
        if self.fsdp_min_size < 0:
            raise ValueError(f"parallel.fsdp_min_size must be >= 0, got {self.fsdp_min_size}")
        if self.tensor_axis_size < 1:
            raise ValueError(
                f"parallel.tensor_axis_size must be >= 1 (1 = no tensor parallelism), got "
                f"{self.tensor_axis_size}")
        if self.num_slices < 1:
            raise ValueError(
                f"parallel.num_slices must be >= 1 (TPU slices joined over DCN; 1 = one slice "
                f"or not a TPU), got {self.num_slices}")
        for name in ("fsdp_axis_size", "tensor_axis_size"):
            if self.mode == "pmap" and getattr(self, name) != 1:
                raise ValueError(
                    f"parallel.{name}={getattr(self, name)} needs parallel.mode='sharding'; "
                    f"pmap replicates the parameters on every device (set {name}=1)")


def mesh_shape(settings: ParallelSettings, num_devices: int, process_count: int = 1):
    """(data, fsdp, tensor) axis sizes for `num_devices` devices; raises ValueError if they do
    not fit.

    A single process may use the first data * fsdp * tensor devices only; a multi-process or
    multi-slice run must use every device (each process feeds its own).  With num_slices > 1
    the data axis spans the slices, so it must divide by num_slices.
    """
    fsdp, tensor, slices = settings.fsdp_axis_size, settings.tensor_axis_size, settings.num_slices
    data = settings.data_axis_size
    inner = fsdp * tensor
    inner_text = (f"parallel.fsdp_axis_size={fsdp}" if tensor == 1 else
                  f"parallel.fsdp_axis_size x tensor_axis_size = {fsdp} x {tensor} = {inner}")
    if data == -1:
        if num_devices % inner:
            raise ValueError(f"{inner_text} does not divide the {num_devices} devices; "
                             "choose a divisor of the device count")
        data = num_devices // inner
    used = data * inner
    sizes = f"{data} x {fsdp}" + (f" x {tensor}" if tensor > 1 else "")
    names = "data_axis_size x fsdp_axis_size" + (" x tensor_axis_size" if tensor > 1 else "")
    if used > num_devices:
        raise ValueError(
            f"the mesh {names} = {sizes} = {used} devices does not fit the {num_devices} "
            f"available; set parallel.data_axis_size=-1 (all devices) or sizes whose product "
            f"is at most {num_devices}")
    if (process_count > 1 or slices > 1) and used != num_devices:
        what = f"{process_count} processes" if process_count > 1 else f"{slices} slices"
        raise ValueError(
            f"the mesh {sizes} uses {used} of {num_devices} devices, but a run over {what} "
            f"must use them all; set parallel.data_axis_size=-1")
    if data % slices:
        raise ValueError(
            f"parallel.num_slices={slices} does not divide the data axis ({data} = devices / "
            f"(fsdp x tensor)); the data axis spans the slices: choose fsdp x tensor within one "
            f"slice's {num_devices // slices} devices")
    return data, fsdp, tensor


def check_batch(batch_size: int, num_shards: int, grad_accum_steps: int = 1):
    """Raises ValueError unless the global batch splits over shards and micro-batches."""
    unit = num_shards * grad_accum_steps
    if batch_size % unit:
        what = f"{num_shards} data-parallel devices"
        if grad_accum_steps > 1:
            what += f" x grad_accum_steps={grad_accum_steps} micro-batches"
        raise ValueError(
            f"batch_size={batch_size} (the global batch) is not divisible by {what} = {unit}; "
            f"choose a multiple of it, e.g. {max(1, round(batch_size / unit)) * unit}")


def hybrid_shapes(data: int, fsdp: int, tensor: int, num_slices: int):
    """(ici_shape, dcn_shape) of a (data, fsdp, tensor) mesh over `num_slices` slices: within a
    slice (data / num_slices, fsdp, tensor); across slices (num_slices, 1, 1), so only the data
    axis, whose one collective per step is the gradient all-reduce, crosses the slow links."""
    if num_slices < 1 or data % num_slices:
        raise ValueError(f"num_slices={num_slices} must divide the data axis size {data}")
    return (data // num_slices, fsdp, tensor), (num_slices, 1, 1)


def device_array(data: int, fsdp: int = 1, tensor: int = 1,
                 devices: Sequence[Any] | None = None, num_slices: int = 1) -> np.ndarray:
    """The devices of a (data, fsdp, tensor) mesh as a [data, fsdp, tensor] array.

    One slice: the first data * fsdp * tensor devices in process-major order, which keeps each
    process's devices on one contiguous block of the batch and puts "tensor", then "fsdp" (the
    axes that communicate every layer) on neighbouring devices.  Several slices: JAX's
    `create_hybrid_device_mesh` over the devices' slice_index (`hybrid_shapes`).
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_slices > 1:
        ici, dcn = hybrid_shapes(data, fsdp, tensor, num_slices)
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    devices.sort(key=lambda d: (d.process_index, d.id))
    return np.array(devices[:data * fsdp * tensor]).reshape(data, fsdp, tensor)


def make_mesh(data: int, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None,
              num_slices: int = 1) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh (`device_array`)."""
    return Mesh(device_array(data, fsdp, tensor, devices, num_slices), MESH_AXES)


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int) -> P:
    """Where a state leaf of `shape` is split over "fsdp": its largest dimension divisible by
    fsdp (the last such on ties), if it has at least `min_size` elements; else replicated."""
    if fsdp == 1 or not shape or math.prod(shape) < min_size:
        return P()
    candidates = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], i))
    return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], mesh_sizes: dict[str, int],
                 rules=LOGICAL_RULES, min_size: int = 0) -> P:
    """The PartitionSpec of an array with logical `axes` (one name or None per dimension).

    Each name goes to its mesh axes by `rules`; a dimension stays replicated (None) when its
    name has no rule, its mesh axes have size 1, their product does not divide the dimension,
    or an earlier dimension already took one of them; the whole array stays replicated when it
    has fewer than `min_size` elements.  E.g. a DiT MLP kernel [768, 3072] with axes
    (embed, mlp) on fsdp = 2, tensor = 4: P("fsdp", "tensor").
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match the shape {tuple(shape)}")
    table = dict(rules)
    if math.prod(shape) < min_size:
        return P()
    spec, taken = [], set()
    for name, size in zip(axes, shape):
        mesh_axes = table.get(name) if name is not None else None
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh_sizes.get(a, 1) > 1)
        split = math.prod(mesh_sizes[a] for a in mesh_axes)
        if not mesh_axes or size % split or taken & set(mesh_axes):
            spec.append(None)
            continue
        taken |= set(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def leaf_name(path) -> str:
    """"a/b/c" from the dict keys of a pytree path: the same name for a parameter and for its
    copies in the optimizer state and EMA (whose paths add attribute and index keys)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


class Plan:
    """A mesh and a mode: where every array of the trainer lives.

    The trainer's canonical state is a pytree of global arrays with `state_shardings`; in pmap
    mode it is converted to the stacked [num_shards, ...] layout for the step (`stack`) and back
    (`unstack`) at checkpoints and evaluations.
    """

    def __init__(self, mesh: Mesh, mode: str = "sharding", fsdp_min_size: int = 2**14,
                 param_axes=None, rules=LOGICAL_RULES):
        """param_axes: params -> a pytree of logical axes like params (e.g.
        flowmatch.models.axes.logical_axes); used, with `rules`, when the mesh's tensor axis
        is > 1 (without it the tensor axis only replicates)."""
        if mode not in MODES:
            raise ValueError(f"unknown parallel mode {mode!r}; choose one of: {', '.join(MODES)}")
        self.mesh, self.mode, self.fsdp_min_size = mesh, mode, fsdp_min_size
        self.param_axes, self.rules = param_axes, tuple(rules)
        self.devices = tuple(mesh.devices.flat)
        self.fsdp = mesh.shape[FSDP_AXIS]
        self.tensor = dict(mesh.shape).get(TENSOR_AXIS, 1)
        self.num_shards = mesh.size // self.tensor  # batch shards: data x fsdp
        self.replicated = NamedSharding(mesh, P())
        # pmap maps over the same devices in the same order, as one axis.
        self.pmap_mesh = Mesh(np.array(self.devices), (DATA_AXIS,))

    @classmethod
    def from_settings(cls, settings: ParallelSettings, param_axes=None) -> "Plan":
        data, fsdp, tensor = mesh_shape(settings, jax.device_count(), jax.process_count())
        mesh = make_mesh(data, fsdp, tensor, num_slices=settings.num_slices)
        return cls(mesh, settings.mode, settings.fsdp_min_size, param_axes)

    @classmethod
    def all_devices(cls) -> "Plan":
        """Data parallel over every device, state replicated (the default settings)."""
        return cls.from_settings(ParallelSettings())

    def __repr__(self):
        return (f"Plan(mode={self.mode!r}, mesh={dict(self.mesh.shape)}, "
                f"processes={jax.process_count()})")

    # -- shardings ------------------------------------------------------------------------------

    def batch_sharding(self, leading: int = 0) -> NamedSharding:
        """Rows split over every device, after `leading` unsplit dimensions (e.g. steps)."""
        return NamedSharding(self.mesh, P(*([None] * leading), BATCH_AXES))

    def state_shardings(self, abstract_state):
        """A sharding per leaf.  tensor = 1: replicated or split over "fsdp" (`fsdp_spec`).
        tensor > 1: by the logical axes of `param_axes(abstract_state.params)` and the rules
        (`logical_spec`), for the parameters and their copies in the optimizer state and EMA
        (matched by `leaf_name` and shape); other leaves (step, counts) replicated."""
        if self.tensor == 1 or self.param_axes is None:
            return jax.tree.map(
                lambda x: NamedSharding(self.mesh, fsdp_spec(x.shape, self.fsdp,
                                                             self.fsdp_min_size)),
                abstract_state)
        sizes = dict(self.mesh.shape)
        params = abstract_state.params
        axes = jax.tree_util.tree_leaves_with_path(
            self.param_axes(params), is_leaf=lambda a: isinstance(a, tuple))
        by_name = {leaf_name(path): (leaf.shape, a) for (path, a), leaf in
                   zip(axes, jax.tree.leaves(params))}

        def one(path, x):
            shape, a = by_name.get(leaf_name(path), (None, None))
            spec = (logical_spec(a, x.shape, sizes, self.rules, self.fsdp_min_size)
                    if a is not None and tuple(shape) == tuple(x.shape) else P())
            return NamedSharding(self.mesh, spec)

        return jax.tree_util.tree_map_with_path(one, abstract_state)

    def process_rows(self, batch_size: int) -> tuple[int, int]:
        """[lo, hi): the rows of a global batch that this process's devices hold."""
        index_map = self.batch_sharding().addressable_devices_indices_map((batch_size,))
        bounds = sorted((s[0].start or 0, s[0].stop or batch_size) for s in index_map.values())
        lo, hi = bounds[0][0], bounds[-1][1]
        covered = sorted(set(bounds))
        if any(a[1] != b[0] for a, b in zip(covered, covered[1:])):
            raise ValueError("this process's devices do not hold one contiguous block of the batch")
        return lo, hi

    # -- host data -> device arrays -------------------------------------------------------------

    def replicate(self, tree):
        """Host values that are the same on every process -> global replicated arrays."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

    def put_batches(self, local, leading: int = 1):
        """This process's rows of stacked global batches -> device arrays for the step.

        local: {name: [k, local_batch, ...]}.  "sharding": global arrays [k, batch, ...] split over
        the mesh.  "pmap": [num_shards, k, batch / num_shards, ...], shard s on device s.
        """
        if self.mode == "sharding":
            sharding = self.batch_sharding(leading)

            def put(x):
                # A batch already on this process's devices (a toy set drawn under jit) moves
                # device to device, asynchronously: through the host (np.asarray) it would wait
                # for the train step queued before it and stall the pipeline.
                if isinstance(x, jax.Array) and jax.process_count() == 1:
                    return jax.device_put(x, sharding)
                return jax.make_array_from_process_local_data(sharding, np.asarray(x))

            return jax.tree.map(put, local)
        n_local = self.num_shards // jax.process_count()

        def stack(x):
            x = np.asarray(x)
            lead, rows = x.shape[:leading], x.shape[leading]
            x = x.reshape(*lead, n_local, rows // n_local, *x.shape[leading + 1:])
            x = np.moveaxis(x, leading, 0)
            return jax.make_array_from_process_local_data(
                NamedSharding(self.pmap_mesh, P(DATA_AXIS)), x)

        return jax.tree.map(stack, local)

    def shard_offsets(self, rows_per_shard: int):
        """pmap: the global index of each shard's first row, [num_shards] int32 (one per device)."""
        sharding = NamedSharding(self.pmap_mesh, P(DATA_AXIS))
        offsets = np.arange(self.num_shards, dtype=np.int32) * rows_per_shard
        return jax.make_array_from_callback(offsets.shape, sharding, lambda idx: offsets[idx])

    # -- functions of a batch's rows ------------------------------------------------------------

    def over_global_batch(self, fn):
        """fn(*rows) over the whole global batch, returning this shard's rows of its output.

        Inside the train step, where each argument is [b, ...] (all rows under jit, one device's
        under pmap, where `fn` sees the all_gather of the "data" axis and its output is sliced
        back to the device's rows).  Under jit with several devices every device computes fn on
        the whole batch (shard_map with replicated specs): XLA's partitioner would otherwise be
        free to split fn's arrays over the mesh and put collectives inside its loops (the exact
        coupling's thousands of sequential auction rounds).  fn must be deterministic.
        """
        if self.mode == "pmap":
            def per_device(*rows):
                full = fn(*(jax.lax.all_gather(v, DATA_AXIS, tiled=True) for v in rows))
                start = jax.lax.axis_index(DATA_AXIS) * rows[0].shape[0]
                return jax.lax.dynamic_slice_in_dim(full, start, rows[0].shape[0])
            return per_device
        def gathered(*rows):
            whole = fn
            if self.mesh.size > 1:
                # check_vma off: fn's loops start from constants, which the check would ask to
                # mark as varying over the mesh; every value is per device anyway.
                whole = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(),) * len(rows),
                                      out_specs=P(), check_vma=False)
            rows = jax.lax.with_sharding_constraint(rows, self.replicated)
            return jax.lax.with_sharding_constraint(whole(*rows), self.batch_sharding())

        return gathered

    def over_local_rows(self, fn):
        """fn(*rows) on each device's rows alone (pmap: as it is; jit: shard_map over the
        batch)."""
        if self.mode == "pmap" or self.num_shards == 1:
            return fn
        spec = P(BATCH_AXES)
        return lambda *rows: jax.shard_map(fn, mesh=self.mesh, in_specs=(spec,) * len(rows),
                                           out_specs=spec, check_vma=False)(*rows)

    def constrain_rows(self, x):
        """Inside jit: x [n, ...] split over the devices when n divides by their number (so a
        sampler's work is spread), else left to XLA."""
        if self.mode == "pmap" or x.shape[0] % self.num_shards:
            return x
        return jax.lax.with_sharding_constraint(x, self.batch_sharding())

    # -- pmap layout ----------------------------------------------------------------------------

    def stack(self, tree):
        """Replicated global arrays -> [num_shards, ...] copies, one per device (pmap layout)."""
        sharding = NamedSharding(self.pmap_mesh, P(DATA_AXIS))

        def one(x):
            shards = [s.data[None] for s in x.addressable_shards]
            return jax.make_array_from_single_device_arrays(
                (self.num_shards, *x.shape), sharding, shards)

        return jax.tree.map(one, tree)

    def unstack(self, tree):
        """pmap layout (global, or host-local as pmap returns it on many processes) -> the
        replicated global arrays; every device keeps its own copy (no communication)."""

        def one(x):
            shards = [s.data.reshape(s.data.shape[1:]) for s in x.addressable_shards]
            return jax.make_array_from_single_device_arrays(x.shape[1:], self.replicated, shards)

        return jax.tree.map(one, tree)


def split_microbatches(x, num_micro: int, num_shards: int):
    """[b, ...] -> [num_micro, b / num_micro, ...] where every micro-batch takes an equal slice of
    each of the `num_shards` contiguous shards of the rows (no data crosses devices)."""
    b = x.shape[0]
    per = b // (num_shards * num_micro)
    x = x.reshape(num_shards, num_micro, per, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(num_micro, num_shards * per, *x.shape[3:])


# -- multi-host ----------------------------------------------------------------------------------

DISTRIBUTED_MODES = ("auto", "on", "off")


def _cluster_detected() -> str | None:
    """The name of a multi-process launcher found in the environment, or None."""
    env = os.environ
    if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "TPU multislice"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "TPU pod slice"
    return None


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None, *,
                                 mode: str = "auto") -> bool:
    """Starts `jax.distributed` when the run spans several processes; returns whether it did.

    Must run before any other JAX call.  With `coordinator_address` ("HOST:PORT" of process 0)
    the three arguments are passed on; otherwise mode "auto" initialises (arguments detected by
    JAX) under a multi-task SLURM job or a multi-host TPU environment, "on" always, "off" never.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(
            f"unknown distributed mode {mode!r}; choose one of: {', '.join(DISTRIBUTED_MODES)}")
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if mode == "off":
            raise ValueError("--coordinator_address/--num_processes/--process_id were given with "
                             "--distributed=off; drop one or the other")
        if None in explicit:
            raise ValueError(
                "multi-process flags come together: --coordinator_address=HOST:PORT "
                "--num_processes=N --process_id=I (got coordinator_address="
                f"{coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r})")
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"coordinator_address must be HOST:PORT of process 0, got {coordinator_address!r}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                f"num_processes={num_processes}, process_id={process_id}")
    elif mode == "off" or (mode == "auto" and _cluster_detected() is None):
        return False
    if jax.distributed.is_initialized():
        return True
    logging.info("jax.distributed.initialize(%s)", "auto-detected" if coordinator_address is None
                 else f"{coordinator_address}, {num_processes}, {process_id}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def is_main_process() -> bool:
    """True on the process that writes logs, metrics and pictures (process 0)."""
    return jax.process_index() == 0
