"""The fit loop: a small training core; progress, early stopping, checkpoints and cancel are callbacks.

    >>> from classifier.training import TrainConfig, fit
    >>> cfg = TrainConfig(data="demo", backbone="resnet18", weights="none", epochs=2)
    >>> result = fit(cfg, "runs/r1")  # doctest: +SKIP

`linear` mode without augmentation runs the frozen backbone once over every image and trains the head on
the stored features, which takes seconds on a CPU. Every output in the run dir is written atomically.
"""

from __future__ import annotations

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
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from classifier.data.dataset import DatasetIndex, check_trainable
from classifier.data.loader import ImageListDataset, draft_size
from classifier.data.splits import assign_splits
from classifier.data.transforms import eval_transform, train_transform
from classifier.errors import RunError
from classifier.io import atomic_save_safetensors, atomic_write_json, atomic_write_text
from classifier.metrics import compute_metrics
from classifier.models import build_model, extract_features, freeze_bn_stats, set_trainable
from classifier.training.callbacks import (
    CancelCallback,
    CancelFit,
    EarlyStopping,
    FitState,
    HistoryWriter,
    NonFiniteLoss,
    StopFit,
    write_history,
)
from classifier.training.config import TrainConfig

CONFIG_FORMAT = 1


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
    config: TrainConfig,
    out_dir: str | Path,
    callbacks: Sequence = (),
    *,
    index: DatasetIndex | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FitResult:
    """Train `config` into the new run dir `out_dir`; returns how it ended and the validation metrics."""
    cfg = config.resolved()
    out_dir = Path(out_dir)
    if index is None:
        index = load_dataset(cfg.data, cfg.seed)
    check_trainable(index)
    _prepare_out_dir(out_dir)
    seed_everything(cfg.seed)
    splits = assign_splits(index, cfg.val_split, cfg.test_split, cfg.seed)
    device = pick_device(cfg.device)
    built = build_model(cfg.backbone, len(index.classes), cfg.weights, drop_rate=cfg.drop_rate, img_size=cfg.img_size)
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
    split_rows = ["path,label,split"] + [
        f"{_csv_field(s.path)},{_csv_field(index.classes[s.label])},{sp}" for s, sp in zip(index.samples, splits)
    ]
    atomic_write_text(out_dir / "split.csv", "\n".join(split_rows) + "\n")

    def items(split: str) -> list[tuple[Path, int]]:
        return [(index.root / s.path, s.label) for s, sp in zip(index.samples, splits) if sp == split]

    train_items, val_items, test_items = items("train"), items("val"), items("test")
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
    draft = draft_size(data_config)
    ev_t = eval_transform(data_config, cfg.grayscale)
    use_features = cfg.mode == "linear" and cfg.augment == "none" and not (cfg.mixup or cfg.cutmix)

    cbs = sorted(
        [*callbacks, HistoryWriter(), *([EarlyStopping(cfg.early_stopping)] if cfg.early_stopping else [])]
        + ([CancelCallback(should_cancel)] if should_cancel else []),
        key=lambda c: c.order,
    )
    steps_per_epoch = math.ceil(len(train_items) / cfg.batch_size)
    state = FitState(cfg, out_dir, model, cfg.epochs, steps_per_epoch, len(train_items), len(val_items))

    def emit(hook: str) -> None:
        for cb in cbs:
            getattr(cb, hook)(state)

    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    gen = torch.Generator().manual_seed(cfg.seed)
    class_counts = np.bincount([y for _, y in train_items], minlength=len(index.classes)).astype(float)
    class_weights = None
    if cfg.imbalance == "weights":
        w = class_counts.sum() / np.maximum(class_counts, 1) / len(class_counts)
        class_weights = torch.tensor(w, dtype=torch.float32, device=device)

    model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    best_val: dict[str, Any] = {}
    t0 = time.time()
    try:
        emit("on_fit_start")
        if use_features:
            head = model.get_classifier()
            dropout = nn.Dropout(cfg.drop_rate)
            set_trainable(model, False)
            train_x = _features(
                model, train_items, ev_t, draft, loader_kw, cfg.batch_size, device, autocast, state, emit
            )
            val_x = _features(model, val_items, ev_t, draft, loader_kw, cfg.batch_size, device, autocast, state, emit)
            train_y = torch.tensor([y for _, y in train_items])
            train_loader = DataLoader(
                TensorDataset(train_x, train_y),
                batch_size=cfg.batch_size,
                sampler=_sampler(cfg, train_y.tolist(), class_counts, gen),
                shuffle=cfg.imbalance != "sampler",
                generator=gen,
            )
            val_loader = DataLoader(
                TensorDataset(val_x, torch.tensor([y for _, y in val_items])), batch_size=cfg.batch_size * 4
            )

            def forward(x: torch.Tensor) -> torch.Tensor:
                return head(dropout(x))

            def set_mode(train: bool) -> None:
                dropout.train(train)
                head.train(train)

            params = list(head.parameters())
        else:
            tr_t = train_transform(data_config, cfg.augment, cfg.grayscale)
            train_loader = DataLoader(
                ImageListDataset(train_items, tr_t, draft),
                batch_size=cfg.batch_size,
                sampler=_sampler(cfg, [y for _, y in train_items], class_counts, gen),
                shuffle=cfg.imbalance != "sampler",
                generator=gen,
                drop_last=False,
                **loader_kw,
            )
            val_loader = DataLoader(
                ImageListDataset(val_items, ev_t, draft), batch_size=cfg.batch_size * 2, **loader_kw
            )

            def forward(x: torch.Tensor) -> torch.Tensor:
                return model(x)

            def set_mode(train: bool) -> None:
                model.train(train)
                if train:
                    freeze_bn_stats(model)

            params = [p for p in model.parameters()]
            set_trainable(model, cfg.mode == "finetune" and cfg.head_warmup_epochs == 0)

        optimizer = _optimizer(cfg, params)
        mixup = _mixup(cfg, len(index.classes))
        train_loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        val_seconds = 0.0
        for epoch in range(1, cfg.epochs + 1):
            state.epoch, state.batch, state.phase = epoch, 0, "train"
            if not use_features and cfg.mode == "finetune" and cfg.head_warmup_epochs:
                set_trainable(model, epoch > cfg.head_warmup_epochs)
            emit("on_epoch_start")
            set_mode(True)
            ep_start, seen, loss_sum, correct = time.time(), 0, 0.0, 0
            for x, y in train_loader:
                bt = time.time()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = lr_at(state.step, state.total_steps, cfg.lr, warmup, cfg.scheduler)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                target = y
                if mixup is not None:
                    if x.shape[0] % 2:  # timm's Mixup pairs samples, so it needs an even batch
                        x, y = x[:-1], y[:-1]
                    if x.shape[0] == 0:
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
                seen += n
                loss_sum += float(loss.detach()) * n
                correct += int((logits.argmax(1) == y).sum())
                state.step += 1
                state.batch += 1
                state.loss, state.lr = float(loss.detach()), lr
                dt = max(time.time() - bt, 1e-6)
                ips = n / dt
                state.images_per_sec = ips if state.images_per_sec == 0 else 0.8 * state.images_per_sec + 0.2 * ips
                train_elapsed = time.time() - t0 - val_seconds
                remaining = state.total_steps - state.step
                state.eta_seconds = (
                    train_elapsed / state.step * remaining + val_seconds / max(1, epoch - 1) * (cfg.epochs - epoch + 1)
                    if state.step
                    else None
                )
                emit("on_batch_end")
            train_seconds = time.time() - ep_start
            state.phase = "val"
            vt = time.time()
            val = _evaluate(forward, set_mode, val_loader, device, channels_last, autocast)
            val_seconds += time.time() - vt
            row = {
                "epoch": epoch,
                "step": state.step,
                "train_loss": loss_sum / max(1, seen),
                "train_acc": correct / max(1, seen),
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "lr": state.lr,
                "seconds": round(time.time() - ep_start, 3),
                "images_per_sec": seen / max(train_seconds, 1e-6),
            }
            state.history.append(row)
            score = (val["acc"], -val["loss"])
            if score > state.best_score:
                state.best_score, state.best_epoch = score, epoch
                best_val = val
                atomic_save_safetensors(
                    out_dir / "model.safetensors",
                    model.state_dict(),
                    metadata={"epoch": str(epoch), "format": "classifier-run"},
                )
            state.eta_seconds = (time.time() - t0) / epoch * (cfg.epochs - epoch)
            emit("on_epoch_end")
        state.status = "completed"
    except StopFit:
        state.status = "completed"
    except CancelFit:
        state.status = "cancelled"
    except NonFiniteLoss as e:
        state.status, state.error = "failed", str(e)
    except Exception as e:  # noqa: BLE001 - the run must end with a recorded status, then re-raise
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        state.phase = "done"
        emit("on_fit_end")
        raise
    state.phase = "done"
    seconds = time.time() - t0
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
                "backbone": built.info.name,
                "mode": cfg.mode,
            }
        )
        _write_val_predictions(out_dir / "val_predictions.csv", index, val_items, probs)
        if test_items:
            metrics["test"] = _test_metrics(out_dir, run_config, test_items, ev_t, draft, loader_kw, cfg, device)
        atomic_write_json(out_dir / "metrics.json", metrics)
    write_history(out_dir / "history.csv", state.history)
    emit("on_fit_end")
    return FitResult(state.status, out_dir, metrics, state.history, state.best_epoch, seconds, state.error)


def _csv_field(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


def _sampler(cfg: TrainConfig, labels: list[int], counts: np.ndarray, gen: torch.Generator):
    if cfg.imbalance != "sampler":
        return None
    w = [1.0 / counts[y] for y in labels]
    return WeightedRandomSampler(w, num_samples=len(labels), replacement=True, generator=gen)


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
def _evaluate(forward, set_mode, loader, device, channels_last, autocast) -> dict[str, Any]:
    set_mode(False)
    probs, ys, loss_sum = [], [], 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
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
def _features(model, items, transform, draft, loader_kw, batch_size, device, autocast, state, emit) -> torch.Tensor:
    """Run the frozen backbone once over `items`; returns pre-logit features on the CPU."""
    model.eval()
    loader = DataLoader(ImageListDataset(items, transform, draft), batch_size=batch_size, **loader_kw)
    state.phase, state.phase_done, state.phase_total = "features", 0, len(items)
    out = []
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
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
