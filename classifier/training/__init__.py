"""Training: the config, the fit loop and its callbacks."""

from classifier.training.callbacks import (
    Callback,
    CancelCallback,
    CancelFit,
    EarlyStopping,
    FitState,
    NonFiniteLoss,
    ProgressPrinter,
    StopFit,
)
from classifier.training.config import TrainConfig
from classifier.training.loop import FitResult, ensure_demo_dataset, fit, load_dataset, lr_at, pick_device

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
    "ensure_demo_dataset",
    "fit",
    "load_dataset",
    "lr_at",
    "pick_device",
]
