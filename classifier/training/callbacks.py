"""Callbacks: everything around the fit loop (progress, early stopping, checkpoints, cancel) hooks in here.

Hook points, in order: `on_fit_start`, `on_phase` (feature extraction progress), `on_epoch_start`,
`on_batch_end` (after every optimizer step), `on_epoch_end` (after validation), `on_fit_end` (always, also
after cancel or failure). Callbacks run sorted by `order`; raising `CancelFit` stops the run after the
current batch and keeps the best checkpoint, raising `StopFit` ends it early as completed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier.io import atomic_write_text

if TYPE_CHECKING:
    from torch import nn

    from classifier.training.config import TrainConfig


class CancelFit(Exception):
    """Raised (by CancelCallback) to stop training after the current batch; the run ends as cancelled."""


class StopFit(Exception):
    """Raised (by EarlyStopping) to end training early; the run ends as completed."""


class NonFiniteLoss(RuntimeError):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(
            f"non-finite loss at epoch {epoch} step {step} (value {value}); "
            "try a lower learning rate or gradient clipping. The last good checkpoint is kept."
        )
        self.epoch, self.step = epoch, step


class OutOfMemoryFailure(RuntimeError):
    """Out of memory even at the smallest batch size: the run fails with this message."""

    def __init__(self, batch_size: int, device: str, epoch: int, step: int):
        super().__init__(
            f"out of memory at batch size {batch_size} on {device} (epoch {epoch} step {step}); "
            "try a smaller image size or backbone"
        )
        self.batch_size, self.device = batch_size, device


@dataclass
class FitState:
    """What callbacks can read: the loop updates it in place."""

    config: TrainConfig
    out_dir: Path
    model: nn.Module
    epochs: int
    steps_per_epoch: int
    n_train: int
    n_val: int
    phase: str = "setup"  # setup | cache (decoding images into the cache) | features | train | val | done
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

    @property
    def total_steps(self) -> int:
        return self.planned_steps if self.planned_steps is not None else self.epochs * self.steps_per_epoch

    @property
    def fraction_done(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


class Callback:
    order = 0

    def on_fit_start(self, state: FitState) -> None: ...
    def on_phase(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_batch_end(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState) -> None: ...
    def on_fit_end(self, state: FitState) -> None: ...


class CancelCallback(Callback):
    """Checks `should_cancel()` after every batch (and during feature extraction)."""

    order = -10

    def __init__(self, should_cancel: Callable[[], bool]):
        self.should_cancel = should_cancel

    def _check(self, state: FitState) -> None:
        if self.should_cancel():
            raise CancelFit()

    on_batch_end = on_phase = on_epoch_start = _check


class EarlyStopping(Callback):
    """Stop when validation has not improved for `patience` epochs."""

    order = 20

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, state: FitState) -> None:
        if self.patience and state.epoch - state.best_epoch >= self.patience and state.epoch < state.epochs:
            raise StopFit(f"no validation improvement for {self.patience} epochs")


class HistoryWriter(Callback):
    """Rewrites `history.csv` after every epoch, so a reader polling the run dir sees curves grow."""

    order = 10
    columns = [
        "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec",
        "batch_size",
    ]  # fmt: skip

    def on_epoch_end(self, state: FitState) -> None:
        write_history(state.out_dir / "history.csv", state.history)


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HistoryWriter.columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


class ProgressPrinter(Callback):
    """A terminal progress bar (tqdm) with loss, accuracy, images/s and ETA, one line per epoch."""

    order = 30

    def __init__(self, stream=None):
        self.stream = stream
        self.bar = None

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, dynamic_ncols=True)
        return self.bar

    def on_phase(self, state: FitState) -> None:
        if state.phase_done <= 1 or self.bar is None or self.bar.total != state.phase_total:
            self._bar(state.phase_total, f"{state.phase}")
        self.bar.n = state.phase_done
        self.bar.refresh()

    def on_epoch_start(self, state: FitState) -> None:
        self._bar(state.steps_per_epoch, f"epoch {state.epoch}/{state.epochs}")

    def on_batch_end(self, state: FitState) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        eta = _fmt_eta(state.eta_seconds)
        self.bar.set_postfix_str(f"loss {state.loss:.3f} | {state.images_per_sec:.0f} img/s | ETA {eta}", refresh=False)

    def on_epoch_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        r = state.history[-1]
        from tqdm.auto import tqdm

        tqdm.write(
            f"epoch {r['epoch']}/{state.epochs}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.3f}  "
            f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.3f}  {r['images_per_sec']:.0f} img/s  "
            f"ETA {_fmt_eta(state.eta_seconds)}",
            file=self.stream,
        )

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
