"""The resume checkpoint as a callback: restore a run where it stopped, and write `last.safetensors` as it trains.

Written at every epoch end, every `checkpoint_every_steps` optimizer steps (None: after every
`CHECKPOINT_INTERVAL_S` of training; 0: epoch ends only) and on cancel; never with non-finite weights (the last good
one stays); deleted when the run completes. The file format and the replayable batch order are
`classifier.training.resume`.

`Resume` restores a checkpoint in two steps on purpose: counters, history and the best score at `on_fit_start`
(the run store then sees the checkpoint's history), the optimizer, grad scaler and RNG states at `on_train_start`,
the RNG last, right before the first batch is drawn, because everything before it is deterministic without it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from classifier import rundir
from classifier.errors import RunError
from classifier.io import json_safe
from classifier.training.events import Callback, FitState, fresh_position
from classifier.training.resume import ResumeState, restore_rng, save_resume

CHECKPOINT_INTERVAL_S = 120.0  # checkpoint_every_steps=None: a mid-epoch checkpoint after this much training
log = logging.getLogger(__name__)


class Resume(Callback):
    """Restores a run from its checkpoint: counters, history and best score at `on_fit_start` (first of all
    callbacks, so the run store sees the checkpoint's history), optimizer, grad scaler and RNG at `on_train_start`
    (no callback may draw random numbers there after it)."""

    order = -100

    def __init__(self, ckpt: ResumeState):
        self.ckpt: ResumeState | None = ckpt

    def on_fit_start(self, state: FitState) -> None:
        m = self.ckpt.meta
        sched, ours = m["scheduler"], state.schedule
        if (sched["kind"], sched["total_steps"], sched["warmup_steps"]) != (
            ours["kind"], ours["total_steps"], ours["warmup_steps"]
        ):  # fmt: skip
            raise RunError(f"the checkpoint in {state.out_dir} was written for another schedule or dataset size")
        state.start_epoch, state.seconds_before = int(m["epoch"]), float(m["seconds"])
        state.position, state.continue_epoch = dict(m["position"]), True
        state.epoch, state.batch, state.step = min(state.start_epoch, state.epochs), int(m["batch"]), int(m["step"])
        state.history = list(m["history"])
        state.best_epoch = int(m["best_epoch"])
        state.best_score = tuple(m["best_score"]) if m["best_score"] else state.best_score
        state.batch_size = int(m["batch_size"])
        state.steps_per_epoch = math.ceil(state.n_train / state.batch_size)
        state.planned_steps = m["planned_steps"]
        state.oom_events = list(m["oom_events"])
        state.lr = float(m["lr"])
        state.resumed_from = {"epoch": state.start_epoch, "batch": state.batch, "step": state.step}
        if "best.val_probs" in self.ckpt.tensors:
            state.best_val = {**m["best_val"], "probs": self.ckpt.tensors["best.val_probs"].numpy()}

    def on_train_start(self, state: FitState) -> None:
        state.optimizer.load_state_dict(self.ckpt.optimizer_state())
        if self.ckpt.meta.get("scaler") and state.scaler.is_enabled():
            state.scaler.load_state_dict(self.ckpt.meta["scaler"])
        restore_rng(self.ckpt.meta["rng"], self.ckpt.tensors)  # last: right before the first batch
        self.ckpt = None  # the tensors are in the model and optimizer now


class Checkpointer(Callback):
    """Writes the resume checkpoint of `state.out_dir`, numbering on from `resumed`'s generation."""

    order = 50  # after every other callback: a checkpoint holds what they did to the state

    def __init__(self, resumed: ResumeState | None = None):
        self.generation = int(resumed.meta["generation"]) if resumed is not None else 0
        self.last_write = time.time()

    def on_train_start(self, state: FitState) -> None:
        self.last_write = time.time()

    # --- write ---

    def on_batch_end(self, state: FitState) -> None:
        every = state.config.checkpoint_every_steps
        due = time.time() - self.last_write >= CHECKPOINT_INTERVAL_S if every is None else every > 0 and (
            state.step % every == 0
        )  # fmt: skip
        if due and state.position["samples"] < state.n_train:  # (the epoch-end checkpoint follows anyway)
            self.save(state, state.epoch, state.batch, state.position)

    def on_epoch_end(self, state: FitState) -> None:
        self.save(state, state.epoch + 1, 0, fresh_position())

    def on_cancel(self, state: FitState) -> None:
        if not state.training_started:
            return
        if len(state.history) >= state.epoch:  # cancelled between epochs: continue with the next one
            self.save(state, state.epoch + 1, 0, fresh_position())
        else:  # a cancelled run can be resumed exactly where it stopped
            self.save(state, state.epoch, state.batch, state.position)

    def on_fit_end(self, state: FitState) -> None:
        if state.status == "completed":
            rundir.resume_path(state.out_dir).unlink(missing_ok=True)  # several times the model's size

    def save(self, state: FitState, next_epoch: int, batch: int, position: dict[str, Any]) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in state.model.parameters()):
            log.warning("not writing a checkpoint at step %d: the weights are no longer finite", state.step)
            return  # keep the last good one
        self.generation += 1
        best = state.best_val
        meta = {
            "generation": self.generation,
            "epoch": next_epoch,  # the epoch to continue (epochs + 1: training is done)
            "batch": batch,  # batches done in it
            "step": state.step,  # optimizer steps done in total
            "position": position,
            "batch_size": state.batch_size,
            "planned_steps": state.planned_steps,
            "scheduler": {
                k: state.schedule[k] for k in ("kind", "base_lr", "warmup_steps", "total_steps", "step_batch_size")
            },  # fmt: skip
            "lr": state.lr,
            "history": json_safe(state.history),
            "best_epoch": state.best_epoch,
            "best_score": list(state.best_score) if all(map(math.isfinite, state.best_score)) else None,
            "best_val": {k: best[k] for k in ("loss", "acc")} if best else None,
            "oom_events": state.oom_events,
            "seconds": state.seconds(),
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
            "train": state.config.to_dict(),
        }
        extra = {"best.val_probs": torch.from_numpy(np.ascontiguousarray(best["probs"]))} if best else {}
        save_resume(rundir.resume_path(state.out_dir), state.model, state.optimizer, meta, extra)
        self.last_write = time.time()
