"""What the learner shares with its callbacks: the `FitState` it updates in place, the `Callback` hooks it fires,
and the exceptions a callback raises to steer it.

Hooks, in the order the learner fires them:

    on_fit_start      state set up (a resumed run's counters and history already restored)
    on_phase          progress of a setup phase: "cache" (decoding images), "features" (frozen backbone pass)
    on_train_start    model, optimizer and loaders ready; the first batch comes next
    on_epoch_start
      on_batch_start  state.x / state.y / state.target on the device; a callback may change them, set the lr
      on_batch_end    after the optimizer step: state.loss, state.step, state.position updated
      on_out_of_memory  a training step ran out of memory; a callback must lower state.batch_size (or raise)
    on_epoch_end      after validation: state.val and state.history[-1] hold the epoch's figures
    on_cancel         CancelFit was raised; the run ends as cancelled
    on_fit_end        always, also after a cancel or a failure

Callbacks run sorted by `order` (lower first). Raising `CancelFit` stops the run after the current batch (it ends
as cancelled), raising `StopFit` ends it early as completed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from classifier.training.config import TrainConfig

HOOKS = (
    "on_fit_start", "on_phase", "on_train_start", "on_epoch_start", "on_batch_start", "on_batch_end",
    "on_out_of_memory", "on_epoch_end", "on_cancel", "on_fit_end",
)  # fmt: skip


class CancelFit(Exception):
    """Raised (by CancelCallback) to stop training after the current batch; the run ends as cancelled."""


class StopFit(Exception):
    """Raised (by EarlyStopping, the LR finder) to end training early; the run ends as completed."""


class NonFiniteLoss(RuntimeError):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(
            f"non-finite loss at epoch {epoch} step {step} (value {value}); "
            "try a lower learning rate or gradient clipping. The last good checkpoint is kept."
        )
        self.epoch, self.step, self.value = epoch, step, value


class OutOfMemoryFailure(RuntimeError):
    """Out of memory even at the smallest batch size: the run fails with this message."""

    def __init__(self, batch_size: int, device: str, epoch: int, step: int):
        super().__init__(
            f"out of memory at batch size {batch_size} on {device} (epoch {epoch} step {step}); "
            "try a smaller image size or backbone"
        )
        self.batch_size, self.device = batch_size, device


def fresh_position() -> dict[str, Any]:
    """Progress inside an epoch: samples drawn, images trained on, their summed loss and hits, seconds spent
    (and of those, seconds spent waiting for batches and augmenting them)."""
    return {"samples": 0, "seen": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0, "data_seconds": 0.0}


@dataclass
class FitState:
    """What callbacks can read (and some may write): the learner updates it in place."""

    config: TrainConfig
    out_dir: Path | None
    model: nn.Module
    epochs: int
    steps_per_epoch: int
    n_train: int
    n_val: int
    phase: str = "setup"  # setup | cache (decoding images) | features | train | val | final (evaluation) | done
    phase_started_at: float = field(default_factory=time.time)
    phase_done: int = 0
    phase_total: int = 0
    epoch: int = 0  # 1-based, the epoch in progress or just finished
    batch: int = 0  # batches done in this epoch
    step: int = 0  # optimizer steps done in total
    loss: float = math.nan  # last batch loss
    lr: float = 0.0
    images_per_sec: float = 0.0
    eta_seconds: float | None = None
    started_at: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best_epoch: int = 0
    best_score: tuple[float, float] = (-math.inf, -math.inf)  # (val accuracy, -val loss)
    status: str = "running"  # running | completed | cancelled | failed
    error: str | None = None
    batch_size: int = 0  # the batch size in use (halved after an out-of-memory error)
    planned_steps: int | None = None  # total optimizer steps once the batch size changed; None = epochs x steps
    oom_events: list[dict[str, Any]] = field(default_factory=list)  # {"epoch", "step", "from", "to"}
    resumed_from: dict[str, Any] | None = None  # {"epoch", "batch", "step"} when this fit resumed a checkpoint
    plan: dict[str, Any] | None = None  # what a time budget chose and why (classifier.training.plan), else None
    # --- the learner's working state (read by callbacks; the ones noted may be written) ---
    schedule: dict[str, Any] = field(default_factory=dict)  # kind, base_lr, warmup/total steps, step_batch_size
    start_epoch: int = 1  # the first epoch this fit trains (a resumed run continues in it)
    continue_epoch: bool = False  # True: the start epoch continues at `position` (set when resuming)
    position: dict[str, Any] = field(default_factory=fresh_position)  # progress inside the current epoch
    seconds_before: float = 0.0  # training seconds of earlier processes of this run (resume)
    training_started: bool = False  # the first batch may have been drawn (a cancel then saves a checkpoint)
    crashed: bool = False  # ended by an unexpected exception (re-raised after on_fit_end)
    ranks: Any = None  # a DDP run's process group (classifier.training.distributed.Ranks); None: one process
    optimizer: torch.optim.Optimizer | None = None
    scaler: Any = None  # torch.amp.GradScaler
    x: Any = None  # the batch in progress (on_batch_start may replace x, y and target)
    y: Any = None
    target: Any = None
    logits: Any = None
    val: dict[str, Any] = field(default_factory=dict)  # last validation: loss, acc, probs
    best_val: dict[str, Any] = field(default_factory=dict)  # validation of the best epoch (SaveBest)

    @property
    def total_steps(self) -> int:
        return self.planned_steps if self.planned_steps is not None else self.epochs * self.steps_per_epoch

    @property
    def world(self) -> int:
        """Processes training together (1 without DDP): a step trains on batch_size x world images."""
        return self.ranks.world if self.ranks is not None else 1

    @property
    def fraction_done(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))

    def seconds(self) -> float:
        """Training seconds of this run so far, earlier processes included."""
        return self.seconds_before + time.time() - self.started_at


class Callback:
    """Override any hook; every hook gets the `FitState`. `order` sorts callbacks (lower runs first)."""

    order = 0

    def on_fit_start(self, state: FitState) -> None: ...
    def on_phase(self, state: FitState) -> None: ...
    def on_train_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_batch_start(self, state: FitState) -> None: ...
    def on_batch_end(self, state: FitState) -> None: ...
    def on_out_of_memory(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState) -> None: ...
    def on_cancel(self, state: FitState) -> None: ...
    def on_fit_end(self, state: FitState) -> None: ...
