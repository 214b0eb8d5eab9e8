"""Training: the config, the learner and its callbacks, a run (`fit`), the LR finder.

config.py      TrainConfig: every hyperparameter, its default, choices, unit and help
setup.py       what a learner trains: split data, model on its device, data path, features, optimizer, loss
learner.py     the fit / epoch / batch core, firing the events of events.py
callbacks.py   schedule, mixup, head warm-up, out-of-memory back-off, save-best, ETA, early stopping, files
checkpoint.py  the resume checkpoint as a callback (resume.py: its file format and the replayable order)
run.py         fit(config, run_dir): a run with the standard callbacks
lr_find.py     the learning-rate range test: a callback on the same learner
batch_size.py  the CUDA batch-size finder
"""

from classifier.training.callbacks import (
    CancelCallback,
    EarlyStopping,
    ProgressPrinter,
    lr_at,
)
from classifier.training.config import TrainConfig
from classifier.training.events import Callback, CancelFit, FitState, NonFiniteLoss, StopFit
from classifier.training.run import FitResult, fit

__all__ = [
    "Callback",
    "CancelCallback",
    "CancelFit",
    "EarlyStopping",
    "FitResult",
    "FitState",
    "NonFiniteLoss",
    "ProgressPrinter",
    "StopFit",
    "TrainConfig",
    "fit",
    "lr_at",
]
