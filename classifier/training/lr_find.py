"""Learning-rate range test: train a copy of the run's model for a few dozen steps while the learning rate rises
exponentially, and suggest a peak learning rate from the loss curve.

    >>> from classifier.training.lr_find import lr_find
    >>> from classifier.training import TrainConfig
    >>> cfg = TrainConfig(data="demo", backbone="resnet18", weights="none", img_size=64)
    >>> result = lr_find(cfg, start_lr=1e-6, end_lr=1.0)  # doctest: +SKIP
    >>> result.suggestion  # doctest: +SKIP

The test is the `LRFinder` callback on the same learner and setup (`classifier.training.setup`) that `fit` uses for
the same `TrainConfig`: the same model (built fresh, or a deep copy of a model you pass, which stays untouched),
data path, optimizer and weight decay groups, loss (label smoothing, class weights, mixup), frozen/trainable parts,
gradient clipping, sample order and augmentation. A linear probe without augmentation trains the head on backbone
features computed once, as `fit` does. Nothing is written to the run folders (the decoded-image cache may be).

Rules, kept simple so they can be checked:

- step i of N uses lr_i = start_lr * (end_lr / start_lr) ** (i / (N - 1)); the train loader is cycled if
  the data has fewer than N batches;
- the recorded loss is an exponential moving average of the batch loss (beta 0.9, bias-corrected);
- the test stops early when the batch loss is not finite or the smoothed loss exceeds 4x the best smoothed
  loss so far (divergence);
- the suggestion is the learning rate where the smoothed loss falls fastest (most negative slope against
  log10 lr), looked for between the first point and the minimum of the curve; with fewer than 3 points before
  the minimum it is the learning rate at the minimum divided by 10. It is always clamped into
  [start_lr, end_lr].
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.data.dataset import check_trainable, load_dataset
from classifier.device import seed_everything
from classifier.errors import ClassifierError
from classifier.models import build_model
from classifier.models.factory import default_weights, resolve_data_config
from classifier.training.config import TrainConfig
from classifier.training.events import Callback, FitState, StopFit
from classifier.training.learner import Learner
from classifier.training.run import shared_callbacks
from classifier.training.setup import TrainingSetup, split_data

DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 10.0
MAX_STEPS = 60  # default number of steps on a dataset with many batches
MIN_STEPS = 30  # default on a small dataset (fewer than MAX_STEPS / 5 batches per epoch)
SMOOTHING = 0.9  # beta of the exponential moving average of the loss
DIVERGE_FACTOR = 4.0  # stop when the smoothed loss exceeds this multiple of the best one
RULE = "steepest descent of the smoothed loss before its minimum (else lr at the minimum / 10), clamped to the range"

Progress = Callable[[str, int, int], None]  # (phase "features" | "steps", done, total)


@dataclass
class LRFindResult:
    lrs: list[float]  # learning rate of each recorded step
    losses: list[float]  # smoothed loss after each recorded step
    raw_losses: list[float]  # batch loss of each recorded step
    suggestion: float  # suggested peak learning rate, inside [start_lr, end_lr]
    start_lr: float
    end_lr: float
    steps: int  # steps planned
    stopped_early: bool
    reason: str | None  # why it stopped early (divergence, non-finite loss, cancelled)
    seconds: float
    rule: str = RULE
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["raw_losses"] = [v if math.isfinite(v) else None for v in self.raw_losses]
        return d


def default_steps(n_batches: int) -> int:
    """A few dozen steps: `MAX_STEPS`, or `MIN_STEPS` when an epoch has fewer than `MAX_STEPS / 5` batches."""
    return MAX_STEPS if n_batches * 5 >= MAX_STEPS else MIN_STEPS


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """The exponentially rising learning rates, first `start_lr`, last `end_lr`."""
    if steps == 1:
        return [start_lr]
    return [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]


def suggest_lr(lrs: list[float], losses: list[float], start_lr: float, end_lr: float) -> float:
    """The suggested learning rate for a smoothed loss curve (see the module docstring for the rule)."""
    lo, hi = min(start_lr, end_lr), max(start_lr, end_lr)
    pts = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if not pts:
        return lo
    x = np.log10([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    k = int(np.argmin(y))
    if k >= 2:
        slope = np.gradient(y[: k + 1], x[: k + 1])
        value = float(10 ** x[int(np.argmin(slope))])
    else:
        value = float(10 ** x[k]) / 10
    return min(hi, max(lo, value))


class LRFinder(Callback):
    """Sets step i's learning rate from an exponential range, records the smoothed loss, and ends the fit
    (`StopFit`) when the range is walked, the loss diverges, or `should_cancel()` turns true."""

    order = -30  # where `Schedule` would be: it replaces it

    def __init__(self, lrs: list[float], progress: Progress | None, should_cancel: Callable[[], bool] | None):
        self.schedule, self.progress, self.should_cancel = lrs, progress, should_cancel
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw: list[float] = []
        self.avg, self.best = 0.0, math.inf
        self.reason: str | None = None

    def on_phase(self, state: FitState) -> None:
        if self.progress is not None:
            self.progress(state.phase, state.phase_done, state.phase_total)

    def on_batch_start(self, state: FitState) -> None:
        if self.should_cancel is not None and self.should_cancel():
            self.reason = "cancelled"
            raise StopFit(self.reason)
        state.lr = self.schedule[len(self.lrs)]
        for g in state.optimizer.param_groups:
            g["lr"] = state.lr

    def on_batch_end(self, state: FitState) -> None:
        value, lr, i = state.loss, state.lr, len(self.lrs)
        self.avg = SMOOTHING * self.avg + (1 - SMOOTHING) * value
        smoothed = self.avg / (1 - SMOOTHING ** (i + 1))
        self.lrs.append(lr)
        self.raw.append(value)
        self.losses.append(smoothed)
        self.best = min(self.best, smoothed)
        if self.progress is not None:
            self.progress("steps", i + 1, len(self.schedule))
        if smoothed > DIVERGE_FACTOR * self.best:
            self.reason = (
                f"diverged at lr {lr:.3g} (step {i + 1}): smoothed loss {smoothed:.3g} > "
                f"{DIVERGE_FACTOR:g} x best {self.best:.3g}"
            )
            raise StopFit(self.reason)
        if i + 1 == len(self.schedule):
            raise StopFit("range walked")

    def on_fit_end(self, state: FitState) -> None:
        if state.status == "failed" and not math.isfinite(state.loss):
            self.reason = f"the loss became {state.loss} at lr {state.lr:.3g} (step {len(self.lrs) + 1})"


def lr_find(
    config: TrainConfig,
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int | None = None,
    model: nn.Module | None = None,
    index: Any = None,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> LRFindResult:
    """Run the range test for `config`; returns the curve and the suggestion. `model`, if given, is copied."""
    if not (start_lr > 0 and end_lr > start_lr and math.isfinite(end_lr)):
        raise ClassifierError(f"the learning-rate range must satisfy 0 < start ({start_lr}) < end ({end_lr})")
    if steps is not None and steps < 2:
        raise ClassifierError(f"the range test needs at least 2 steps, got {steps}")
    try:
        cfg = config.resolved()
    except ValueError as e:
        raise ClassifierError(str(e)) from e
    t0 = time.time()
    if index is None:
        index = load_dataset(cfg.data, cfg.data_version)
    check_trainable(index)
    # Our own RNG stream: a range test in the app's process must not shift anyone else's random numbers.
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(cfg.seed)
        data = split_data(index, cfg)
        setup = TrainingSetup(cfg, data, *_model(cfg, len(data.classes), model))
        n_batches = math.ceil(len(data.train) / cfg.batch_size)
        steps = steps if steps is not None else default_steps(n_batches)
        finder = LRFinder(lr_schedule(start_lr, end_lr, steps), progress, should_cancel)
        # Enough epochs to walk the range even when an epoch has fewer batches than steps (the order is cycled).
        state = FitState(cfg, None, setup.model, steps, n_batches, len(data.train), 0, batch_size=cfg.batch_size)
        Learner(setup, state, [finder, *shared_callbacks(cfg, setup)], validate=False).fit()
    random.setstate(py_state)
    np.random.set_state(np_state)
    if state.status == "cancelled":
        finder.reason = "cancelled"
    return LRFindResult(
        lrs=finder.lrs,
        losses=finder.losses,
        raw_losses=finder.raw,
        suggestion=suggest_lr(finder.lrs, finder.losses, start_lr, end_lr),
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        stopped_early=finder.reason is not None,
        reason=finder.reason,
        seconds=round(time.time() - t0, 2),
        config=cfg.to_dict(),
    )


def _model(cfg: TrainConfig, num_classes: int, model: nn.Module | None) -> tuple[nn.Module, dict[str, Any]]:
    """A new model for `cfg`, or a deep copy of `model` (which stays untouched) with its data config."""
    if model is None:
        built = build_model(cfg.backbone, num_classes, cfg.weights, drop_rate=cfg.drop_rate, img_size=cfg.img_size)
        return built.model, built.data_config
    bundled = (cfg.weights or default_weights(cfg.backbone)) == "bundled"
    copied = copy.deepcopy(model)
    return copied, resolve_data_config(copied, img_size=cfg.img_size, bundled=bundled)
