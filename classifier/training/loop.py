"""The fit loop: a small training core; progress, early stopping, checkpoints and cancel are callbacks.

    >>> from classifier.training import TrainConfig, fit
    >>> cfg = TrainConfig(data="demo", backbone="resnet18", weights="none", epochs=2)
    >>> result = fit(cfg, "runs/r1")  # doctest: +SKIP

`linear` mode without augmentation runs the frozen backbone once over every image and trains the head on
the stored features, which takes seconds on a CPU. Every output in the run dir is written atomically.

Every `checkpoint_every_steps` steps and at every epoch end the whole training state goes to
`last.safetensors` (see `classifier.training.resume`); `fit(..., resume=True)` continues from it and ends
with the same steps, learning rates and weights as an uninterrupted run (bit for bit on a CPU with
`num_workers=0`; with loader workers the batches are the same but augmentation draws may differ). An
out-of-memory error in a training step frees what the step held, halves the batch size and retries the
same samples; below `OOM_MIN_BATCH_SIZE` the run fails with a clear message.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from classifier.data.cache import CachedImages, cache_side, open_cache
from classifier.data.dataset import DatasetIndex, check_trainable
from classifier.data.loader import ImageListDataset, draft_size
from classifier.data.splits import assign_splits
from classifier.data.transforms import TensorPipeline, eval_transform, train_transform
from classifier.errors import RunError
from classifier.io import atomic_save_safetensors, atomic_write_json, atomic_write_text
from classifier.metrics import compute_metrics
from classifier.models import build_model, extract_features, freeze_bn_stats, set_trainable
from classifier.models.factory import model_from_run_config
from classifier.training.callbacks import (
    CancelCallback,
    CancelFit,
    EarlyStopping,
    FitState,
    HistoryWriter,
    NonFiniteLoss,
    OutOfMemoryFailure,
    StopFit,
    write_history,
)
from classifier.training.config import TrainConfig
from classifier.training.resume import (
    RESUME_FILE,
    EpochSampler,
    ResumeState,
    can_resume,
    epoch_seed,
    load_resume,
    restore_rng,
    save_resume,
)

CONFIG_FORMAT = 1
OOM_MIN_BATCH_SIZE = 1  # below this an out-of-memory error fails the run instead of halving the batch again
CHECKPOINT_INTERVAL_S = 120.0  # checkpoint_every_steps=None: a mid-epoch checkpoint after this much training
RUNTIME_FIELDS = ("device", "num_workers", "compile")  # settings a resumed run may change
AUTO_BATCH_MAX = 512  # the batch-size finder's ceiling (also at most a quarter of the training images)
log = logging.getLogger(__name__)


@dataclass
class FitResult:
    status: str  # completed | cancelled | failed
    run_dir: Path
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    error: str | None = None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    return torch.device(name)


def default_workers(device: torch.device) -> int:
    # On a small CPU host, decode workers steal the cores the model needs; with a GPU they keep it fed.
    cpus = os.cpu_count() or 1
    return min(8, cpus - 1) if device.type == "cuda" else (0 if cpus <= 2 else min(4, cpus // 2))


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_dataset(data: str, seed: int = 0) -> DatasetIndex:
    """Index `data`; the word "demo" means the built-in demo dataset (generated once into the workspace)."""
    from classifier.data.dataset import index_dataset

    if data == "demo":
        data = str(ensure_demo_dataset())
    return index_dataset(data)


def ensure_demo_dataset(seed: int = 0) -> Path:
    """The built-in demo dataset in the workspace (generated on first use), masks in `workspace/masks/`."""
    import shutil
    import tempfile

    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import datasets_dir, workspace_dir

    out = datasets_dir() / f"demo-seed{seed}"
    if out.is_dir():
        return out
    # Build beside the final place and rename: two sessions asking at once never see a half-written set.
    tmp = Path(tempfile.mkdtemp(dir=workspace_dir(), prefix=".demo-"))
    try:
        make_demo_dataset(tmp / "data", seed=seed, masks_out=tmp / "masks")
        (workspace_dir() / "masks").mkdir(exist_ok=True)
        masks = workspace_dir() / "masks" / out.name
        if not masks.exists():
            os.replace(tmp / "masks", masks)
        try:
            os.replace(tmp / "data", out)
        except OSError:
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(p for p in out_dir.iterdir() if not p.name.startswith(".")):
        raise RunError(f"run dir {out_dir} already exists and is not empty; choose a new --out (nothing was changed)")
    out_dir.mkdir(parents=True, exist_ok=True)


def fit(
    config: TrainConfig | None,
    out_dir: str | Path,
    callbacks: Sequence = (),
    *,
    index: DatasetIndex | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = False,
) -> FitResult:
    """Train `config` into the new run dir `out_dir`; returns how it ended and the validation metrics.

    `resume=True` continues the run in `out_dir` from its checkpoint (`last.safetensors`) with the same epoch,
    position in the epoch, step, optimizer, learning-rate schedule, RNG states, history and best score, and
    finishes exactly as an uninterrupted run would. `config` may then be None (it is read from the run's
    config.json); if given it must match (device and workers may differ). A run that stopped before its first
    checkpoint starts over in place.
    """
    out_dir = Path(out_dir)
    saved_config, ckpt = _open_resume(config, out_dir) if resume else (None, None)
    if config is None:
        if saved_config is None:
            raise RunError("fit needs a TrainConfig (or resume=True with an existing run dir)")
        config = TrainConfig.from_dict(saved_config["train"])
    cfg = config.resolved()
    if saved_config is not None:
        _check_same_config(cfg, saved_config, out_dir)
    if index is None:
        index = load_dataset(cfg.data, cfg.seed)
    check_trainable(index)
    if resume:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        _prepare_out_dir(out_dir)
    seed_everything(cfg.seed)
    splits = assign_splits(index, cfg.val_split, cfg.test_split, cfg.seed)
    device = pick_device(cfg.device)
    split_rows = ["path,label,split"] + [
        f"{_csv_field(s.path)},{_csv_field(index.classes[s.label])},{sp}" for s, sp in zip(index.samples, splits)
    ]
    split_text = "\n".join(split_rows) + "\n"
    if ckpt is None:
        built = build_model(
            cfg.backbone, len(index.classes), cfg.weights, drop_rate=cfg.drop_rate, img_size=cfg.img_size
        )
        model = built.model
        data_config = built.data_config
        run_config = {
            "format_version": CONFIG_FORMAT,
            "backbone": built.info.name,
            "timm_name": built.timm_name,
            "weights": built.weights,
            "num_classes": len(index.classes),
            "class_names": list(index.classes),
            "data_config": data_config,
            "grayscale": cfg.grayscale,
            "dataset": {"root": str(index.root), "source": index.source, "layout": index.layout},
            "train": cfg.to_dict(),
            "device": str(device),
            "versions": _versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(out_dir / "config.json", run_config)
        atomic_write_text(out_dir / "split.csv", split_text)
    else:
        # The weights come from the checkpoint: rebuild the architecture without downloading anything.
        run_config = saved_config
        split_path = out_dir / "split.csv"
        if not split_path.is_file() or split_path.read_text(encoding="utf-8") != split_text:
            raise RunError(
                f"the dataset {cfg.data} changed since run {out_dir} started (its train/val split differs from "
                "split.csv); cannot resume. Start a new run."
            )
        model = model_from_run_config(run_config, ckpt.model, source=str(out_dir / RESUME_FILE))
        data_config = run_config["data_config"]

    def items(split: str) -> list[tuple[Path, int]]:
        return [(index.root / s.path, s.label) for s, sp in zip(index.samples, splits) if sp == split]

    train_items, val_items, test_items = items("train"), items("val"), items("test")
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
    draft = draft_size(data_config)
    ev_t = eval_transform(data_config, cfg.grayscale)
    use_features = cfg.mode == "linear" and cfg.augment == "none" and not (cfg.mixup or cfg.cutmix)
    side = cache_side(data_config)
    cache_mode = cfg.cache if side is not None else "off"
    model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype else None
    runtime: dict[str, Any] = {"device": str(device), "amp": amp_name, "channels_last": channels_last,
                               "compile": bool(cfg.compile)}  # fmt: skip
    if cfg.auto_batch_size and device.type == "cuda" and not use_features:
        if ckpt is not None:
            cfg.batch_size = int(saved_config["train"]["batch_size"])  # the size found when the run started
        else:
            from classifier.training.batch_size import find_batch_size, probe_step

            shape = tuple(int(v) for v in data_config["input_size"])
            top = max(1, min(AUTO_BATCH_MAX, len(train_items) // 4))
            step = probe_step(model, shape, len(index.classes), device, autocast, channels_last)
            cfg.batch_size = find_batch_size(step, cfg.batch_size, max(top, 1), device=device)
            run_config["train"] = cfg.to_dict()
            atomic_write_json(out_dir / "config.json", run_config)
        runtime["batch_size_found"] = cfg.batch_size

    cbs = sorted(
        [*callbacks, HistoryWriter(), *([EarlyStopping(cfg.early_stopping)] if cfg.early_stopping else [])]
        + ([CancelCallback(should_cancel)] if should_cancel else []),
        key=lambda c: c.order,
    )
    n_train = len(train_items)
    # The learning-rate schedule counts steps of the configured batch size, also after an out-of-memory halving.
    bs0 = cfg.batch_size
    steps_per_epoch = math.ceil(n_train / bs0)
    sched_total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    state = FitState(cfg, out_dir, model, cfg.epochs, steps_per_epoch, n_train, len(val_items), batch_size=bs0)

    def emit(hook: str) -> None:
        for cb in cbs:
            getattr(cb, hook)(state)

    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    # Batches gathered from the decoded cache cost microseconds: worker processes would only add copies.
    cached_kw = dict(num_workers=0, pin_memory=device.type == "cuda")
    train_labels = [y for _, y in train_items]
    sampler = EpochSampler(train_labels, cfg.seed, balanced=cfg.imbalance == "sampler")
    loader_gen = torch.Generator()  # the loader's own seed source, so it never draws from the global RNG
    class_counts = np.bincount(train_labels, minlength=len(index.classes)).astype(float)
    class_weights = None
    if cfg.imbalance == "weights":
        w = class_counts.sum() / np.maximum(class_counts, 1) / len(class_counts)
        class_weights = torch.tensor(w, dtype=torch.float32, device=device)

    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    best_val: dict[str, Any] = {}
    pos = _fresh_position()  # where training stands inside the current epoch
    start_epoch, generation, seconds_before, val_seconds = 1, 0, 0.0, 0.0
    if ckpt is not None:
        m = ckpt.meta
        start_epoch, generation, seconds_before = int(m["epoch"]), int(m["generation"]), float(m["seconds"])
        pos = dict(m["position"])
        state.epoch, state.batch, state.step = min(start_epoch, cfg.epochs), int(m["batch"]), int(m["step"])
        state.history = list(m["history"])
        state.best_epoch = int(m["best_epoch"])
        state.best_score = tuple(m["best_score"]) if m["best_score"] else state.best_score
        state.batch_size = int(m["batch_size"])
        state.steps_per_epoch = math.ceil(n_train / state.batch_size)
        state.planned_steps = m["planned_steps"]
        state.oom_events = list(m["oom_events"])
        state.lr = float(m["lr"])
        state.resumed_from = {"epoch": start_epoch, "batch": state.batch, "step": state.step}
        if "best.val_probs" in ckpt.tensors:
            best_val = {**m["best_val"], "probs": ckpt.tensors["best.val_probs"].numpy()}
        sched = m["scheduler"]
        if (sched["kind"], sched["total_steps"], sched["warmup_steps"]) != (cfg.scheduler, sched_total, warmup):
            raise RunError(f"the checkpoint in {out_dir} was written for another schedule or dataset size")
    ckpt_path = out_dir / RESUME_FILE
    in_training = False
    t0 = time.time()
    last_checkpoint = [t0]  # when the last one was written (for the time-based default)

    def save_checkpoint(next_epoch: int, batch: int, position: dict[str, Any]) -> None:
        nonlocal generation
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            log.warning("not writing a checkpoint at step %d: the weights are no longer finite", state.step)
            return  # keep the last good one
        generation += 1
        meta = {
            "generation": generation,
            "epoch": next_epoch,  # the epoch to continue (cfg.epochs + 1: training is done)
            "batch": batch,  # batches done in it
            "step": state.step,  # optimizer steps done in total
            "position": position,
            "batch_size": state.batch_size,
            "planned_steps": state.planned_steps,
            "scheduler": {
                "kind": cfg.scheduler,
                "base_lr": cfg.lr,
                "warmup_steps": warmup,
                "total_steps": sched_total,
                "step_batch_size": bs0,
            },  # fmt: skip
            "lr": state.lr,
            "history": _json_safe(state.history),
            "best_epoch": state.best_epoch,
            "best_score": list(state.best_score) if all(map(math.isfinite, state.best_score)) else None,
            "best_val": {k: best_val[k] for k in ("loss", "acc")} if best_val else None,
            "oom_events": state.oom_events,
            "seconds": seconds_before + time.time() - t0,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "train": cfg.to_dict(),
        }
        extra = {"best.val_probs": torch.from_numpy(np.ascontiguousarray(best_val["probs"]))} if best_val else {}
        save_resume(ckpt_path, model, optimizer, meta, extra)
        last_checkpoint[0] = time.time()

    try:
        emit("on_fit_start")
        cache = None
        if cache_mode != "off":
            state.phase, state.phase_done, state.phase_total = "cache", 0, len(train_items) + len(val_items)

            def cache_progress(done: int, total: int) -> None:
                state.phase_done, state.phase_total = done, total
                emit("on_phase")

            cache = open_cache(
                [p for p, _ in train_items + val_items],
                key=str(index.root),
                side=side,
                interpolation=str(data_config.get("interpolation", "bilinear")),
                mode=cache_mode,
                num_workers=workers,
                progress=cache_progress,
            )
            runtime.update(cache.describe())
            runtime["num_workers"] = 0
        else:
            runtime.update(cache="off", num_workers=workers)
        if ckpt is None:
            run_config["runtime"] = runtime  # which data path and settings this run used
            atomic_write_json(out_dir / "config.json", run_config)
        val_labels = [y for _, y in val_items]
        if cache is not None:
            n_tr = len(train_items)
            train_src = CachedImages(cache, range(n_tr), train_labels)
            val_src = CachedImages(cache, range(n_tr, n_tr + len(val_items)), val_labels)
            train_prep = TensorPipeline(data_config, cfg.augment, cfg.grayscale, train=True)
            val_prep = TensorPipeline(data_config, "none", cfg.grayscale, train=False)
            data_kw = cached_kw
        else:
            train_src = ImageListDataset(train_items, train_transform(data_config, cfg.augment, cfg.grayscale), draft)
            val_src = ImageListDataset(val_items, ev_t, draft)
            train_prep = val_prep = None
            data_kw = loader_kw
        if use_features:
            head = model.get_classifier()
            dropout = nn.Dropout(cfg.drop_rate)
            set_trainable(model, False)
            # Features come from the evaluation view of the training images (no augmentation in this mode).
            feat_src = (
                CachedImages(cache, range(len(train_items)), train_labels)
                if cache is not None
                else ImageListDataset(train_items, ev_t, draft)
            )
            train_x = _features(model, feat_src, val_prep, data_kw, cfg.batch_size, device, autocast, state, emit)
            val_x = _features(model, val_src, val_prep, data_kw, cfg.batch_size, device, autocast, state, emit)
            train_ds = TensorDataset(train_x, torch.tensor(train_labels))
            val_ds = TensorDataset(val_x, torch.tensor(val_labels))
            train_prep = val_prep = None

            def make_loaders(bs: int) -> tuple[DataLoader, DataLoader]:
                return (
                    DataLoader(train_ds, batch_size=bs, sampler=sampler, generator=loader_gen),
                    DataLoader(val_ds, batch_size=bs * 4),
                )

            def forward(x: torch.Tensor) -> torch.Tensor:
                return head(dropout(x))

            def set_mode(train: bool) -> None:
                dropout.train(train)
                head.train(train)

            params = list(head.parameters())
        else:
            train_ds, val_ds = train_src, val_src
            compiled = torch.compile(model) if cfg.compile else model  # weights stay those of `model`

            def make_loaders(bs: int) -> tuple[DataLoader, DataLoader]:
                return (
                    DataLoader(train_ds, batch_size=bs, sampler=sampler, generator=loader_gen, **data_kw),
                    DataLoader(val_ds, batch_size=bs * 2, **data_kw),
                )

            def forward(x: torch.Tensor) -> torch.Tensor:
                return compiled(x)

            def set_mode(train: bool) -> None:
                model.train(train)
                if train:
                    freeze_bn_stats(model)

            params = [p for p in model.parameters()]
            set_trainable(model, cfg.mode == "finetune" and cfg.head_warmup_epochs == 0)

        optimizer = _optimizer(cfg, params)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt.optimizer_state())
            if ckpt.meta.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(ckpt.meta["scaler"])
        mixup = _mixup(cfg, len(index.classes))
        train_loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
        train_loader, val_loader = make_loaders(state.batch_size)
        if ckpt is not None:
            # Last, right before the first batch is drawn: everything above is deterministic without RNG.
            restore_rng(ckpt.meta["rng"], ckpt.tensors)
        in_training = True
        step0, epochs_validated = state.step, 0
        for epoch in range(start_epoch, cfg.epochs + 1):
            state.epoch, state.phase = epoch, "train"
            if epoch != start_epoch or ckpt is None:
                pos, state.batch = _fresh_position(), 0
            if not use_features and cfg.mode == "finetune" and cfg.head_warmup_epochs:
                set_trainable(model, epoch > cfg.head_warmup_epochs)
            emit("on_epoch_start")
            set_mode(True)
            ep_start = time.time()
            data_t0 = time.time()  # when the loop last asked the loader for a batch
            while True:  # once per batch size: an out-of-memory error halves it and continues this epoch
                sampler.set_epoch(epoch, start=pos["samples"])
                loader_gen.manual_seed(epoch_seed(cfg.seed, epoch))
                out_of_memory = False
                try:
                    for x, y in train_loader:
                        n_batch = int(y.shape[0])
                        bt = time.time()
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                        if train_prep is not None:
                            x = train_prep(x)
                        pos["data_seconds"] = pos.get("data_seconds", 0.0) + time.time() - data_t0
                        if channels_last and x.ndim == 4:
                            x = x.contiguous(memory_format=torch.channels_last)
                        lr = lr_at((epoch - 1) * steps_per_epoch + pos["samples"] // bs0, sched_total, cfg.lr,
                                   warmup, cfg.scheduler)  # fmt: skip
                        for g in optimizer.param_groups:
                            g["lr"] = lr
                        target = y
                        if mixup is not None:
                            if x.shape[0] % 2:  # timm's Mixup pairs samples, so it needs an even batch
                                x, y = x[:-1], y[:-1]
                            if x.shape[0] == 0:
                                pos["samples"] += n_batch
                                continue
                            x, target = mixup(x, y)
                        with autocast():
                            logits = forward(x)
                            loss = _soft_ce(logits, target) if mixup is not None else train_loss_fn(logits, target)
                        if not torch.isfinite(loss):
                            raise NonFiniteLoss(epoch, state.step + 1, float(loss.detach()))
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        if cfg.grad_clip:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        n = y.shape[0]
                        pos["samples"] += n_batch
                        pos["seen"] += n
                        pos["loss_sum"] += float(loss.detach()) * n
                        pos["correct"] += int((logits.argmax(1) == y).sum())
                        state.step += 1
                        state.batch += 1
                        state.loss, state.lr = float(loss.detach()), lr
                        ips = n / max(time.time() - bt, 1e-6)
                        state.images_per_sec = 0.8 * state.images_per_sec + 0.2 * ips if state.images_per_sec else ips
                        train_elapsed = time.time() - t0 - val_seconds
                        remaining = state.total_steps - state.step
                        state.eta_seconds = train_elapsed / (state.step - step0) * remaining + val_seconds / max(
                            1, epochs_validated
                        ) * (cfg.epochs - epoch + 1)
                        emit("on_batch_end")
                        every = cfg.checkpoint_every_steps
                        if every is None:
                            due = time.time() - last_checkpoint[0] >= CHECKPOINT_INTERVAL_S
                        else:
                            due = every > 0 and state.step % every == 0
                        if due and pos["samples"] < n_train:  # (the epoch-end checkpoint follows anyway)
                            elapsed = pos["seconds"] + time.time() - ep_start
                            save_checkpoint(epoch, state.batch, {**pos, "seconds": elapsed})
                        data_t0 = time.time()
                except RuntimeError as e:
                    if not _is_oom(e):
                        raise
                    out_of_memory = True
                if not out_of_memory:
                    break
                # Drop every reference to the failed batch before retrying it at half the size.
                x = y = target = logits = loss = train_loader = val_loader = None
                new_bs = _free_after_oom(optimizer, device, state.batch_size, epoch, state.step + 1)
                state.oom_events.append(dict(epoch=epoch, step=state.step + 1, to=new_bs, **{"from": state.batch_size}))
                log.warning(
                    "out of memory at batch size %d on %s (epoch %d step %d); continuing with batch size %d",
                    state.batch_size, device, epoch, state.step + 1, new_bs,
                )  # fmt: skip
                state.batch_size = new_bs
                state.steps_per_epoch = math.ceil(n_train / new_bs)
                left_in_epoch = math.ceil((n_train - pos["samples"]) / new_bs)
                state.planned_steps = state.step + left_in_epoch + (cfg.epochs - epoch) * state.steps_per_epoch
                train_loader, val_loader = make_loaders(new_bs)
            train_seconds = pos["seconds"] + time.time() - ep_start
            state.phase = "val"
            vt = time.time()
            val = _evaluate(forward, set_mode, val_loader, device, channels_last, autocast, val_prep)
            val_seconds += time.time() - vt
            epochs_validated += 1
            row = {
                "epoch": epoch,
                "step": state.step,
                "train_loss": pos["loss_sum"] / max(1, pos["seen"]),
                "train_acc": pos["correct"] / max(1, pos["seen"]),
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "lr": state.lr,
                "seconds": round(train_seconds + time.time() - vt, 3),
                "images_per_sec": pos["seen"] / max(train_seconds, 1e-6),
                "batch_size": state.batch_size,
                "data_share": round(pos.get("data_seconds", 0.0) / max(train_seconds, 1e-6), 4),
            }
            state.history.append(row)
            score = (val["acc"], -val["loss"])
            if math.isfinite(val["loss"]) and score > state.best_score:
                state.best_score, state.best_epoch = score, epoch
                best_val = val
                atomic_save_safetensors(
                    out_dir / "model.safetensors",
                    model.state_dict(),
                    metadata={"epoch": str(epoch), "format": "classifier-run"},
                )
            state.eta_seconds = (time.time() - t0) / epochs_validated * (cfg.epochs - epoch)
            emit("on_epoch_end")
            save_checkpoint(epoch + 1, 0, _fresh_position())
        state.status = "completed"
    except StopFit:
        state.status = "completed"
    except CancelFit:
        state.status = "cancelled"
        if in_training:  # a cancelled run can be resumed exactly where it stopped
            if len(state.history) >= state.epoch:
                save_checkpoint(state.epoch + 1, 0, _fresh_position())
            else:
                save_checkpoint(state.epoch, state.batch, pos)
    except (NonFiniteLoss, OutOfMemoryFailure) as e:
        state.status, state.error = "failed", str(e)  # the last good checkpoint stays as it is
    except Exception as e:  # noqa: BLE001 - the run must end with a recorded status, then re-raise
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        state.phase = "done"
        emit("on_fit_end")
        raise
    state.phase = "done"
    seconds = seconds_before + time.time() - t0
    metrics = None
    if best_val:
        probs = best_val["probs"]
        metrics = compute_metrics(np.array([y for _, y in val_items]), probs, index.classes)
        metrics.update(
            {
                "best_epoch": state.best_epoch,
                "epochs_run": len(state.history),
                "status": state.status,
                "train_seconds": round(seconds, 2),
                "backbone": run_config["backbone"],
                "mode": cfg.mode,
            }
        )
        _write_val_predictions(out_dir / "val_predictions.csv", index, val_items, probs)
        if test_items:
            metrics["test"] = _test_metrics(out_dir, run_config, test_items, ev_t, draft, loader_kw, cfg, device)
        atomic_write_json(out_dir / "metrics.json", metrics)
    write_history(out_dir / "history.csv", state.history)
    emit("on_fit_end")
    if state.status == "completed":
        ckpt_path.unlink(missing_ok=True)  # nothing left to resume; it is several times the model's size
    return FitResult(state.status, out_dir, metrics, state.history, state.best_epoch, seconds, state.error)


def _fresh_position() -> dict[str, Any]:
    """Progress inside an epoch: samples drawn, images trained on, their summed loss and hits, seconds spent
    (and of those, seconds spent waiting for batches and augmenting them)."""
    return {"samples": 0, "seen": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0, "data_seconds": 0.0}


def _open_resume(config: TrainConfig | None, out_dir: Path) -> tuple[dict[str, Any] | None, ResumeState | None]:
    """The run's saved config.json and checkpoint, either None when the run never got that far."""
    from classifier.predict import read_run_config

    if not (out_dir / "config.json").is_file():
        if config is None:
            raise RunError(f"nothing to resume in {out_dir}: it has no config.json (is it a run dir?)")
        return None, None  # stopped before writing anything: start over in place
    saved = read_run_config(out_dir)
    for tmp in out_dir.glob(".*.tmp"):  # temp files of writes a kill interrupted
        tmp.unlink(missing_ok=True)
    path = out_dir / RESUME_FILE
    if path.is_file():
        return saved, load_resume(path)
    if not can_resume(out_dir):
        raise RunError(
            f"run {out_dir} has no resume checkpoint ({RESUME_FILE}): it completed, or it ended before this "
            "version wrote checkpoints. Nothing was changed; start a new run."
        )
    return saved, None  # stopped before its first checkpoint: start over in place


def _check_same_config(cfg: TrainConfig, saved: dict[str, Any], out_dir: Path) -> None:
    theirs = TrainConfig.from_dict(saved["train"]).resolved().to_dict()
    ours = cfg.to_dict()
    skip = RUNTIME_FIELDS + (("batch_size",) if cfg.auto_batch_size else ())  # the finder's pick is saved
    diff = [k for k in ours if k not in skip and ours[k] != theirs.get(k)]
    if diff:
        raise RunError(
            f"run {out_dir} was trained with other settings ({', '.join(diff)}); resume it with its own settings "
            "(python -m classifier train --resume RUN_DIR) or start a new run"
        )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _is_oom(e: BaseException) -> bool:
    # MPS (and CUDA before torch 2.5) report it as a plain RuntimeError.
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and not isinstance(e, NonFiniteLoss) and "out of memory" in str(e).lower()
    )


def _free_after_oom(optimizer: torch.optim.Optimizer, device: torch.device, batch_size: int, epoch: int, step: int):
    """Release what the failed step held; the halved batch size, or `OutOfMemoryFailure` below the minimum."""
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    new = batch_size // 2
    if new < OOM_MIN_BATCH_SIZE:
        raise OutOfMemoryFailure(batch_size, str(device), epoch, step)
    return new


def _csv_field(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-D tensors): decaying them only hurts.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _mixup(cfg: TrainConfig, num_classes: int):
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
    )


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


@torch.no_grad()
def _evaluate(forward, set_mode, loader, device, channels_last, autocast, prep=None) -> dict[str, Any]:
    set_mode(False)
    probs, ys, loss_sum = [], [], 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if prep is not None:
            x = prep(x)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = forward(x).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        probs.append(torch.softmax(logits, 1).cpu())
        ys.append(y.cpu())
    p = torch.cat(probs).numpy().astype(np.float64)
    yy = torch.cat(ys).numpy()
    n = max(1, len(yy))
    return {"loss": loss_sum / n, "acc": float((p.argmax(1) == yy).mean()) if len(yy) else 0.0, "probs": p}


@torch.no_grad()
def _features(model, dataset, prep, loader_kw, batch_size, device, autocast, state, emit) -> torch.Tensor:
    """Run the frozen backbone once over `dataset` (then `prep` on each batch); pre-logit features on the CPU."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, **loader_kw)
    state.phase, state.phase_done, state.phase_total = "features", 0, len(dataset)
    out = []
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        if prep is not None:
            x = prep(x)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out.append(extract_features(model, x).float().cpu())
        state.phase_done += x.shape[0]
        emit("on_phase")
    return torch.cat(out) if out else torch.empty(0)


def _write_val_predictions(path: Path, index: DatasetIndex, items, probs: np.ndarray) -> None:
    root = index.root
    header = "path,label,pred,prob," + ",".join(_csv_field(f"p_{c}") for c in index.classes)
    lines = [header]
    for (p, y), row in zip(items, probs):
        k = int(row.argmax())
        rel = Path(p).relative_to(root).as_posix()
        lines.append(
            ",".join(
                [
                    _csv_field(rel),
                    _csv_field(index.classes[y]),
                    _csv_field(index.classes[k]),
                    f"{row[k]:.6f}",
                    *(f"{v:.6f}" for v in row),
                ]
            )
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


def _test_metrics(out_dir, run_config, test_items, ev_t, draft, loader_kw, cfg, device) -> dict[str, Any]:
    from classifier.predict import load_run, predict_items

    run = load_run(out_dir, device=str(device))
    probs = predict_items(run, [p for p, _ in test_items])
    return compute_metrics(np.array([y for _, y in test_items]), probs, run_config["class_names"])
