"""Training: the config, the learner and its callbacks, a run (`fit`), the LR finder.

config.py      TrainConfig: every hyperparameter, its default and its metadata (help, choices, unit, group, ...)
setup.py       what a learner trains: split data, model on its device, data path, features, optimizer, loss
learner.py     the fit / epoch / batch core, firing the events of events.py
callbacks.py   schedule, mixup, head warm-up, out-of-memory back-off, save-best, ETA, early stopping, files
checkpoint.py  the resume checkpoint as a callback (resume.py: its file format and the replayable order)
run.py         fit(config, run_dir): a run with the standard callbacks
lr_find.py     the learning-rate range test: a callback on the same learner
batch_size.py  the CUDA batch-size finder

The public names below are loaded from their module on first use: the CLI builds its flags from `config.py`,
which imports no torch, and importing this package must not import torch for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from classifier.lazy import lazy_exports

if TYPE_CHECKING:  # the same names, statically: for type checkers and for the import graph
    from classifier.training.callbacks import CancelCallback, EarlyStopping, ProgressPrinter, lr_at
    from classifier.training.config import TrainConfig
    from classifier.training.events import Callback, CancelFit, FitState, NonFiniteLoss, StopFit
    from classifier.training.run import FitResult, fit

_OWNER = {  # public name -> the module that owns it
    "CancelCallback": "callbacks",
    "EarlyStopping": "callbacks",
    "ProgressPrinter": "callbacks",
    "lr_at": "callbacks",
    "TrainConfig": "config",
    "Callback": "events",
    "CancelFit": "events",
    "FitState": "events",
    "NonFiniteLoss": "events",
    "StopFit": "events",
    "FitResult": "run",
    "fit": "run",
}
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

__getattr__, __dir__ = lazy_exports(__name__, _OWNER)
