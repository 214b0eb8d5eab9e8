"""Callbacks of a training run: everything around the learner's fit / epoch / batch core, in run order.

- `HeadWarmup` (-40): fine-tune with only the head training for the first `head_warmup_epochs` epochs.
- `Schedule` (-30): each step's learning rate: warm-up, then cosine / one-cycle / constant.
- `RunFiles` (-30): config.json's `runtime` (the data path used); when the run ends, metrics.json (with the test
  split's metrics), val_predictions.csv and history.csv, before the store hears that the run ended.
- `MixupCutmix` (-25): mixes the batch and its labels (timm's `Mixup`).
- `Throughput` (-20): images/s over each batch's wall time (data included) and the ETA.
- `CancelCallback` (-10): raises `CancelFit` when `should_cancel()` turns true (per batch and setup phase).
- `SaveBest` (-5): keeps the best epoch's weights (model.safetensors) and validation probabilities.
- `OutOfMemoryBackoff` (0): halves the batch size after an out-of-memory step; the epoch continues.
- `HistoryWriter` (10): rewrites history.csv after every epoch.
- `EarlyStopping` (20): raises `StopFit` after `patience` epochs without improvement.
- `ProgressPrinter` (30): a terminal progress bar.

The resume checkpoint is `classifier.training.checkpoint.Checkpointer` (50, last); the LR finder is
`classifier.training.lr_find.LRFinder`; reporting to the run store is `classifier.jobs.StoreCallback` (15).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from classifier import rundir
from classifier.device import free_memory
from classifier.metrics import compute_metrics, tune_thresholds
from classifier.training.events import Callback, CancelFit, FitState, OutOfMemoryFailure, StopFit

OOM_MIN_BATCH_SIZE = 1  # below this an out-of-memory error fails the run instead of halving the batch again
log = logging.getLogger(__name__)


def lr_at(step: int, total: int, base: float, warmup: int, kind: str) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`: warm-up, then the schedule."""
    if kind == "onecycle":
        up = max(1, int(0.3 * total))
        if step < up:
            return base / 25 + (base - base / 25) * step / up
        t = (step - up) / max(1, total - up)
        return base * 1e-4 + (base - base * 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warmup:
        return base / 10 + (base - base / 10) * step / warmup
    if kind == "constant":
        return base
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.01 + (base - base * 0.01) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def schedule_spec(kind: str, base_lr: float, epochs: int, n_train: int, batch_size: int, warmup_epochs: float):
    """The schedule's constants. It counts steps of the configured batch size, also after an out-of-memory halving,
    so the learning rates per epoch do not change when the batch size does."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    return {"kind": kind, "base_lr": base_lr, "warmup_steps": int(round(warmup_epochs * steps_per_epoch)),
            "total_steps": epochs * steps_per_epoch, "step_batch_size": batch_size,
            "steps_per_epoch": steps_per_epoch}  # fmt: skip


class Schedule(Callback):
    """Sets every parameter group's learning rate before each step from `state.schedule`."""

    order = -30

    def on_batch_start(self, state: FitState) -> None:
        sch = state.schedule
        step = (state.epoch - 1) * sch["steps_per_epoch"] + state.position["samples"] // sch["step_batch_size"]
        state.lr = lr_at(step, sch["total_steps"], sch["base_lr"], sch["warmup_steps"], sch["kind"])
        for g in state.optimizer.param_groups:
            g["lr"] = state.lr


class MixupCutmix(Callback):
    """Mixup / CutMix of the batch and its (label-smoothed) targets; the loss then compares probabilities. With
    `multi_label`, the 0/1 target vectors are mixed as they are (timm's multi-label mixing; the multi-label loss
    smooths them itself)."""

    order = -25

    def __init__(
        self, mixup: float, cutmix: float, label_smoothing: float, num_classes: int, multi_label: bool = False
    ):
        from timm.data import Mixup

        smoothing = 0.0 if multi_label else label_smoothing
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes,
                         multi_label=multi_label)  # fmt: skip

    def on_batch_start(self, state: FitState) -> None:
        if state.x.shape[0] % 2:  # timm's Mixup pairs samples, so it needs an even batch
            state.x, state.y = state.x[:-1], state.y[:-1]
        if state.x.shape[0]:
            state.x, state.target = self.mix(state.x, state.y)


class HeadWarmup(Callback):
    """Fine-tune with `epochs` head-only epochs first: the backbone trains from epoch `epochs + 1`."""

    order = -40

    def __init__(self, epochs: int, set_trainable: Callable[[bool], Any]):
        self.epochs, self.set_trainable = epochs, set_trainable

    def on_epoch_start(self, state: FitState) -> None:
        self.set_trainable(state.epoch > self.epochs)


class OutOfMemoryBackoff(Callback):
    """After an out-of-memory step: free what it held, halve the batch size and let the epoch continue at the same
    sample; below `OOM_MIN_BATCH_SIZE` the run fails with `OutOfMemoryFailure`."""

    def on_out_of_memory(self, state: FitState) -> None:
        state.optimizer.zero_grad(set_to_none=True)
        device = next(state.model.parameters()).device
        free_memory(device)
        old, new = state.batch_size, state.batch_size // 2
        if new < OOM_MIN_BATCH_SIZE:
            raise OutOfMemoryFailure(old, str(device), state.epoch, state.step + 1)
        state.oom_events.append({"epoch": state.epoch, "step": state.step + 1, "from": old, "to": new})
        log.warning("out of memory at batch size %d on %s (epoch %d step %d); continuing with batch size %d",
                    old, device, state.epoch, state.step + 1, new)  # fmt: skip
        state.batch_size = new
        state.steps_per_epoch = math.ceil(state.n_train / new)
        left = math.ceil((state.n_train - state.position["samples"]) / new)
        state.planned_steps = state.step + left + (state.epochs - state.epoch) * state.steps_per_epoch


class Throughput(Callback):
    """Images per second (smoothed over each batch's wall time, loading and augmentation included) and the ETA:
    measured seconds per step times the steps left, plus measured validation time per epoch left. With
    `images=False` (a head trained on stored features) images/s is left at 0: tens of thousands of feature rows
    per second say nothing about images."""

    order = -20

    def __init__(self, images: bool = True):
        self.images = images

    def on_train_start(self, state: FitState) -> None:
        self.t0, self.step0 = time.time(), state.step
        self.val_seconds, self.validated = 0.0, 0

    def on_epoch_start(self, state: FitState) -> None:
        self.last = time.time()

    def on_batch_end(self, state: FitState) -> None:
        now = time.time()
        ips = int(state.y.shape[0]) * state.world / max(now - self.last, 1e-6)
        self.last = now
        if self.images:
            state.images_per_sec = 0.8 * state.images_per_sec + 0.2 * ips if state.images_per_sec else ips
        train_elapsed = now - self.t0 - self.val_seconds
        per_val = self.val_seconds / max(1, self.validated)
        steps_left = state.total_steps - state.step
        state.eta_seconds = (train_elapsed / max(1, state.step - self.step0) * steps_left
                             + per_val * (state.epochs - state.epoch + 1))  # fmt: skip

    def on_epoch_end(self, state: FitState) -> None:
        self.val_seconds += time.time() - self.last
        self.validated += 1
        state.eta_seconds = (time.time() - self.t0) / self.validated * (state.epochs - state.epoch)


def val_score(val: dict[str, Any]) -> tuple[float, float]:
    """How epochs rank: validation accuracy (multi-label: mean average precision), ties to the lower loss."""
    return val.get("score", val["acc"]), -val["loss"]


class SaveBest(Callback):
    """The best epoch by validation accuracy (multi-label: mean average precision; ties: lower loss) goes to
    model.safetensors; its validation
    probabilities are kept for metrics.json and val_predictions.csv. `write=False` (DDP ranks other than 0) keeps
    track of the best epoch without writing the file."""

    order = -5

    def __init__(self, write: bool = True):
        self.write = write

    def on_epoch_end(self, state: FitState) -> None:
        val = state.val
        score = val_score(val)
        if math.isfinite(val["loss"]) and score > state.best_score:
            state.best_score, state.best_epoch, state.best_val = score, state.epoch, val
            if self.write:
                rundir.save_weights(state.out_dir, state.model.state_dict(), state.epoch)


class CancelCallback(Callback):
    """Checks `should_cancel()` after every batch (and during the setup phases)."""

    order = -10

    def __init__(self, should_cancel: Callable[[], bool]):
        self.should_cancel = should_cancel

    def _check(self, state: FitState) -> None:
        if state.phase not in ("final", "done") and self.should_cancel():  # training is over: nothing to stop
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

    def on_epoch_end(self, state: FitState) -> None:
        rundir.write_history(state.out_dir, state.history)


class RunFiles(Callback):
    """When the run ends: metrics.json (with the test split's metrics when there is one) and val_predictions.csv
    from the best epoch, and history.csv. Runs before the store hears the run ended, so it can read them."""

    order = -30

    def __init__(self, data, run_config: dict[str, Any], runtime: dict[str, Any] | None = None):
        self.data, self.run_config, self.runtime = data, run_config, runtime
        self.metrics: dict[str, Any] | None = None

    def on_train_start(self, state: FitState) -> None:
        if self.runtime is not None:  # a new run: record which data path and settings it uses
            self.run_config["runtime"] = self.runtime
            rundir.write_config(state.out_dir, self.run_config)

    def on_fit_end(self, state: FitState) -> None:
        if state.crashed:
            return
        if state.best_val:
            self._write_metrics(state)
        rundir.write_history(state.out_dir, state.history)

    def _write_metrics(self, state: FitState) -> None:
        probs = state.best_val["probs"]
        classes = self.data.classes
        y_val = np.array([y for _, y in self.data.val])
        thresholds = tune_thresholds(y_val, probs) if state.config.tune_thresholds and len(y_val) else None
        metrics = compute_metrics(y_val, probs, classes, thresholds=thresholds, tuned=thresholds is not None)
        metrics.update({"best_epoch": state.best_epoch, "epochs_run": len(state.history), "status": state.status,
                        "n_train": len(self.data.train),
                        "train_seconds": round(state.seconds(), 2), "backbone": self.run_config["backbone"],
                        "mode": state.config.mode})  # fmt: skip
        root = self.data.index.root
        paths = [p.relative_to(root).as_posix() for p, _ in self.data.val]
        rundir.write_val_predictions(state.out_dir, paths, y_val, probs, classes, metrics.get("thresholds"))
        if self.data.test:
            metrics["test"] = self._test_metrics(state, metrics.get("thresholds"))
        rundir.write_metrics(state.out_dir, metrics)
        self.metrics = metrics

    def _test_metrics(self, state: FitState, thresholds: list[float] | None) -> dict[str, Any]:
        """The test split's metrics (a multi-label run's at the thresholds chosen on validation)."""
        from classifier.predict import load_run, predict_items

        device = next(state.model.parameters()).device
        run = load_run(state.out_dir, device=str(device))
        probs = predict_items(run, [p for p, _ in self.data.test])
        return compute_metrics(np.array([y for _, y in self.data.test]), probs, self.data.classes,
                               thresholds=thresholds)  # fmt: skip


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

    def on_fit_start(self, state: FitState) -> None:
        if state.plan and state.resumed_from is None:
            from tqdm.auto import tqdm

            lines = [state.plan["summary"], *(f"  - {r}" for r in state.plan["reasons"])]
            tqdm.write("\n".join(lines), file=self.stream)

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
        eta = fmt_eta(state.eta_seconds)
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
            f"ETA {fmt_eta(state.eta_seconds)}",
            file=self.stream,
        )

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()


def fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
