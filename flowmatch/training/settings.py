"""The trainer's own config sections as typed records, each checking its own values.

    settings = TrainSettings(**top-level keys)      # seed, batch_size, num_train_steps, ...
    EvalSettings, OptimizerSettings, CheckpointSettings, NonfiniteSettings, DataSettings

`flowmatch.training.checks.validate` reads every section into its record (`checks.from_section`:
unknown keys are errors) and composes them with the components' records (schedule, objective,
coupling, source, sampler, model, device plan).  Below the config boundary the trainer only sees
these records, never the ConfigDict.
"""

from __future__ import annotations

import dataclasses

from flowmatch import checks

MAX_SEED = 2**31 - 1
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw",)
LR_SCHEDULES = ("cosine", "constant")
NONFINITE_POLICIES = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The top-level keys of a training config (see configs/default.py)."""

    seed: int = 0
    batch_size: int = 1024
    num_train_steps: int = 16_000
    steps_per_call: int = 10
    log_every_steps: int = 100
    eval_every_steps: int = 8_000
    checkpoint_every_steps: int = 2_000
    ema_decay: float = 0.999
    ema_warmup: bool = True
    progress_bar: bool = True
    tensorboard: bool = False
    wandb_project: str = ""
    wandb_entity: str = ""
    grad_accum_steps: int = 1

    def __post_init__(self):
        for key in ("batch_size", "num_train_steps", "steps_per_call", "log_every_steps",
                    "checkpoint_every_steps", "grad_accum_steps"):
            checks.positive_int(key, getattr(self, key))
        checks.non_negative_int("eval_every_steps", self.eval_every_steps)
        from flowmatch import metrics  # pylint: disable=g-import-not-at-top
        for name, key, wanted in (("tensorboard", "tensorboard", self.tensorboard),
                                  ("wandb", "wandb_project", bool(self.wandb_project))):
            if wanted:
                try:
                    metrics.require_writer(name)
                except ImportError as e:
                    raise ValueError(f"{key}={getattr(self, key)!r}: {e}; or leave {key} "
                                     "unset") from None
        if not checks.is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**31 - 1], got {self.seed!r}")
        checks.real("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        k = self.steps_per_call
        for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
            if getattr(self, key) % k:
                raise ValueError(
                    f"{key}={getattr(self, key)} is not a multiple of steps_per_call={k}; logs, "
                    "evaluations and checkpoints happen between jitted calls, so make it a "
                    "multiple (or set steps_per_call=1)")
        if self.eval_every_steps % self.log_every_steps:
            raise ValueError(
                f"eval_every_steps={self.eval_every_steps} must be a multiple of "
                f"log_every_steps={self.log_every_steps} (evaluation results go into that step's "
                "metrics row), or 0 (no evaluation)")

    @property
    def evaluates(self) -> bool:
        """False with eval_every_steps = 0: no evaluation at all, the final one included."""
        return self.eval_every_steps > 0


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """config.eval: 2-D metrics (tv over tv_bins^2 histogram cells of num_tv_samples points, w2
    of num_w2_samples), image grids (num_image_samples), chunking and picture sizes.
    w2_in_training: the training evaluation also scores w2 (an exact assignment of
    num_w2_samples points on the host: 1.2-1.5 s at 2,000 for a trained 2-D model on 2 CPU
    cores, 4.4 s for an untrained one; off by default so that evaluation costs little more than
    its sampling; scripts/sample.py always scores it, with its floor).  chunk_rows: the
    samplers' network runs in row chunks of this many (`sampling.chunks`: the same samples, less
    memory traffic for a wide network); 0: the whole batch at once."""

    num_tv_samples: int = 100_000
    num_w2_samples: int = 2_000
    tv_bins: int = 64
    chunk_size: int = 100_000
    num_plot_samples: int = 5_000
    num_image_samples: int = 64
    w2_in_training: bool = False
    chunk_rows: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name == "chunk_rows":
                checks.non_negative_int(f.name, self.chunk_rows)
            elif f.type != "bool":
                checks.positive_int(f.name, getattr(self, f.name))


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """config.optimizer: AdamW with linear warmup, cosine or constant decay, global-norm clipping
    (grad_clip_norm 0 = off)."""

    name: str = "adamw"
    learning_rate: float = 2e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 200
    schedule: str = "cosine"
    end_lr_factor: float = 0.0
    grad_clip_norm: float = 1.0

    def __post_init__(self):
        checks.choice("name", self.name, OPTIMIZERS, "optimizer")
        checks.choice("schedule", self.schedule, LR_SCHEDULES, "learning-rate schedule")
        checks.real("learning_rate", self.learning_rate, 0.0, lo_open=True)
        for key in ("b1", "b2"):
            checks.real(key, getattr(self, key), 0.0, 1.0, hi_open=True)
        checks.real("eps", self.eps, 0.0, lo_open=True)
        for key in ("weight_decay", "end_lr_factor", "grad_clip_norm"):
            checks.real(key, getattr(self, key), 0.0)
        checks.non_negative_int("warmup_steps", self.warmup_steps)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """config.checkpoint: the newest sealed checkpoints kept (see flowmatch/checkpoint.py)."""

    max_to_keep: int = 3

    def __post_init__(self):
        checks.positive_int("max_to_keep", self.max_to_keep)


@dataclasses.dataclass(frozen=True)
class NonfiniteSettings:
    """config.nonfinite: 'skip' steps with a non-finite loss or gradients (more than
    max_consecutive_skips in a row stop the run) or 'stop' at the first."""

    policy: str = "skip"
    max_consecutive_skips: int = 10

    def __post_init__(self):
        checks.choice("policy", self.policy, NONFINITE_POLICIES, "policy")
        checks.positive_int("max_consecutive_skips", self.max_consecutive_skips)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """config.data: name, path ('' = unset), image_size (0 = the data's own), channels,
    random_flip, skip_bad; for name 'arrayrecord' (shards written by scripts/prepare_data.py,
    streamed through grain): split, worker_count (decoding processes, 0 = this one), prefetch
    (batches read ahead), verify_checksums (CRC-32 of every shard at the start)."""

    name: str = "checkerboard"
    path: str = ""
    image_size: int = 0
    channels: int = 3
    random_flip: bool = False
    skip_bad: bool = False
    split: str = "train"
    worker_count: int = 0
    prefetch: int = 2
    verify_checksums: bool = False

    def __post_init__(self):
        from flowmatch import data as data_lib  # pylint: disable=g-import-not-at-top
        checks.choice("name", self.name, tuple(data_lib.DATASETS) + ("pairs", "arrayrecord"),
                      "dataset")
        checks.non_negative_int("worker_count", self.worker_count)
        checks.non_negative_int("prefetch", self.prefetch)
        if self.name in ("cifar10", "image_folder", "pairs", "arrayrecord") and not self.path:
            raise ValueError(f"dataset {self.name!r} needs a path: set --config.data.path=..."
                             + (" (the CIFAR-10 python release, cifar-10-python.tar.gz)"
                                if self.name == "cifar10" else "")
                             + (" (a directory written by scripts/prepare_data.py)"
                                if self.name == "arrayrecord" else ""))
        checks.non_negative_int("image_size", self.image_size)
        if self.name == "image_folder" and self.image_size < 1:
            raise ValueError("image_size must be a positive integer for image folders (every "
                             "image is resized to it); set --config.data.image_size=N")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
