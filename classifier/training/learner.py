"""The learner: fit / epoch / batch, firing the named events of `classifier.training.events`. Everything else
(learning-rate schedule, mixup, checkpoints and resume, saving the best epoch, out-of-memory back-off, progress and
ETA, early stopping, cancel, the run's files) is a callback in `classifier.training.callbacks` or
`classifier.training.checkpoint`; `classifier.training.fit` assembles them for a run, the LR finder for a range
test.

    >>> learner = Learner(setup, state, [Schedule(), SaveBest()])  # doctest: +SKIP
    >>> learner.fit()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.device import is_oom
from classifier.training.events import (
    HOOKS,
    Callback,
    CancelFit,
    FitState,
    NonFiniteLoss,
    OutOfMemoryFailure,
    StopFit,
    fresh_position,
)
from classifier.training.resume import epoch_seed
from classifier.training.setup import TrainingSetup

log = logging.getLogger(__name__)


class Learner:
    """Trains `setup` for `state.epochs` epochs (validating after each when `validate`), reporting to `callbacks`."""

    def __init__(self, setup: TrainingSetup, state: FitState, callbacks: Sequence[Callback], validate: bool = True):
        self.setup, self.state, self.validate = setup, state, validate
        self.callbacks = sorted(callbacks, key=lambda c: c.order)

    def emit(self, hook: str) -> None:
        assert hook in HOOKS, hook
        for cb in self.callbacks:
            getattr(cb, hook)(self.state)

    def _phase(self, phase: str, done: int = 0, total: int = 0) -> None:
        """Enter or advance a phase; its start time gives every phase its own ETA."""
        s = self.state
        if phase != s.phase:
            s.phase_started_at = time.time()
        s.phase, s.phase_done, s.phase_total = phase, done, total

    def _report_phase(self, phase: str, done: int = 0, total: int = 0) -> None:
        self._phase(phase, done, total)
        self.emit("on_phase")

    def fit(self) -> FitState:
        """Run to the end (or a cancel, an early stop, a failure); `state.status` says which. Unexpected exceptions
        are re-raised after `on_fit_end`."""
        s = self.state
        try:
            self.emit("on_fit_start")
            self.setup.prepare(self._report_phase, validate=self.validate)
            s.optimizer, s.scaler = self.setup.optimizer, self.setup.precision.grad_scaler()
            self.train_loader, self.val_loader = self.setup.loaders(s.batch_size)
            self.emit("on_train_start")
            s.training_started = True
            for epoch in range(s.start_epoch, s.epochs + 1):
                self._epoch(epoch)
            s.status = "completed"
        except StopFit:
            s.status = "completed"
        except CancelFit:
            s.status = "cancelled"
            self.emit("on_cancel")
        except (NonFiniteLoss, OutOfMemoryFailure) as e:
            s.status, s.error = "failed", str(e)  # the last good checkpoint stays as it is
        except Exception as e:  # noqa: BLE001 - the run must end with a recorded status, then re-raise
            s.status, s.error, s.crashed = "failed", f"{type(e).__name__}: {e}", True
            s.phase = "done"
            self.emit("on_fit_end")
            raise
        if s.best_val or s.history:
            self._report_phase("final")  # metrics and predictions of the best epoch are written now
        s.phase = "done"
        self.emit("on_fit_end")
        return s

    def _epoch(self, epoch: int) -> None:
        s = self.state
        s.epoch = epoch
        self._phase("train")
        if not s.continue_epoch:
            s.position, s.batch = fresh_position(), 0
        s.continue_epoch = False
        self.emit("on_epoch_start")
        self.setup.set_mode(True)
        while not self._train_pass(epoch):  # False: out of memory; the batch size is lower now, go on
            self.train_loader, self.val_loader = self.setup.loaders(s.batch_size)
        train_seconds = s.position["seconds"]
        if not self.validate:
            return
        self._phase("val")
        vt = time.time()
        s.val = self.setup.gather_val(self.evaluate(self.val_loader))  # the whole validation set, also in DDP
        pos = s.position
        s.history.append({
            "epoch": epoch,
            "step": s.step,
            "train_loss": pos["loss_sum"] / max(1, pos["seen"]),
            "train_acc": pos["correct"] / max(1, pos["seen"]),
            "val_loss": s.val["loss"],
            "val_acc": s.val["acc"],
            **({"val_map": s.val["map"]} if "map" in s.val else {}),  # a multi-label run's score
            "lr": s.lr,
            "seconds": round(train_seconds + time.time() - vt, 3),
            "images_per_sec": pos["seen"] / max(train_seconds, 1e-6),
            "batch_size": s.batch_size,
            "data_share": round(pos["data_seconds"] / max(train_seconds, 1e-6), 4),
        })  # fmt: skip
        self.emit("on_epoch_end")

    def _train_pass(self, epoch: int) -> bool:
        """Train the rest of the epoch from `state.position`; False when a step ran out of memory (after
        `on_out_of_memory`, which lowered the batch size or raised)."""
        s = self.state
        self.setup.sampler.set_epoch(epoch, start=s.position["samples"])
        self.setup.loader_gen.manual_seed(epoch_seed(s.config.seed, epoch))
        self._pass_started = time.time() - s.position["seconds"]  # seconds of this epoch count on
        try:
            data_t0 = time.time()  # when the loop last asked the loader for a batch
            for x, y in self.train_loader:
                s.x, s.y = self.setup.prep_train(x), y.to(self.setup.device, non_blocking=True)
                s.position["data_seconds"] += time.time() - data_t0
                self._batch(int(y.shape[0]))
                data_t0 = time.time()
            s.position["seconds"] = time.time() - self._pass_started
            return True
        except RuntimeError as e:
            if not is_oom(e) or isinstance(e, NonFiniteLoss):
                raise
        s.x = s.y = s.target = s.logits = None  # drop every reference to the failed batch before retrying
        s.position["seconds"] = time.time() - self._pass_started
        before = s.batch_size
        self.emit("on_out_of_memory")
        if s.batch_size >= before:
            raise OutOfMemoryFailure(before, str(self.setup.device), epoch, s.step + 1)
        return False

    def _batch(self, drawn: int) -> None:
        """One optimizer step on state.x / state.y (`drawn` samples taken from the epoch's order)."""
        s, setup = self.state, self.setup
        s.target = s.y
        self.emit("on_batch_start")
        if s.x.shape[0] == 0:  # a callback (mixup on an odd batch of one) left nothing to train on
            s.position["samples"] += drawn
            return
        with setup.precision.autocast():
            s.logits = setup.forward(s.x)
            loss = setup.loss(s.logits, s.target)
        if not torch.isfinite(loss):
            s.loss = float(loss.detach())
            raise NonFiniteLoss(s.epoch, s.step + 1, float(loss.detach()))
        self._step(loss)
        n, pos = int(s.y.shape[0]), s.position
        s.loss = float(loss.detach())
        pos["samples"] += drawn
        pos["seen"] += n
        pos["loss_sum"] += s.loss * n
        pos["correct"] += setup.hits(s.logits, s.y)
        pos["seconds"] = time.time() - self._pass_started
        s.step += 1
        s.batch += 1
        self.emit("on_batch_end")

    def _step(self, loss: torch.Tensor) -> None:
        s = self.state
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        if s.config.grad_clip:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_([p for p in self.setup.params if p.grad is not None], s.config.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, Any]:
        """Mean validation loss, accuracy, the best-epoch score and the probabilities (float64, n x C) over `loader`
        (the task's loss and figures: `TrainingSetup.val_batch` / `val_result`)."""
        self.setup.set_mode(False)
        probs, ys, loss_sum = [], [], 0.0
        for x, y in loader:
            x, y = self.setup.prep_val(x), y.to(self.setup.device, non_blocking=True)
            with self.setup.precision.autocast(training=False):
                logits = self.setup.forward(x).float()
            loss, p = self.setup.val_batch(logits, y)
            loss_sum += loss
            probs.append(p.cpu())
            ys.append(y.cpu())
        p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros((0, 0))
        yy = torch.cat(ys).numpy() if ys else np.zeros(0, dtype=np.int64)
        return self.setup.val_result(loss_sum, p, yy)
