"""Training: one loop for every objective, model and dataset.

    from flowmatch import training
    training.train_and_evaluate(config, workdir)      # train or resume a run
    run = training.restore(workdir)                   # a trained run, to sample (no data read)

Modules: settings (the trainer's config sections as checked records), components (a config read
into settings and built into model, objective, source, optimizer and samplers: all config
validation), state (TrainState), step (the train step factory and its compiled multi-step call),
loop (train_and_evaluate), evaluation (the periodic evaluation and metric floors), monitor
(non-finite steps, the log window), workdir (a workdir that holds another run), runs (config.json,
run.json, restoring a run).
"""

from flowmatch.checks import ConfigError
from flowmatch.training.components import RunSpec
from flowmatch.training.components import build
from flowmatch.training.components import read_settings
from flowmatch.training.loop import train_and_evaluate
from flowmatch.training.monitor import NonFiniteError
from flowmatch.training.runs import load_config
from flowmatch.training.runs import restore
from flowmatch.training.runs import save_config
from flowmatch.training.state import TrainState

__all__ = ["ConfigError", "NonFiniteError", "RunSpec", "TrainState", "build", "load_config",
           "read_settings", "restore", "save_config", "train_and_evaluate"]
