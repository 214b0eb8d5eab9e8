"""Learning-rate range test: train a copy of the run's model for a few dozen steps while the learning rate rises
exponentially, and suggest a peak learning rate from the loss curve.

    >>> from classifier.lr_find import lr_find
    >>> from classifier.training import TrainConfig
    >>> cfg = TrainConfig(data="demo", backbone="resnet18", weights="none", img_size=64)
    >>> result = lr_find(cfg, start_lr=1e-6, end_lr=1.0)  # doctest: +SKIP
    >>> result.suggestion  # doctest: +SKIP

The test uses what `fit` would use for the same `TrainConfig`: the same model (built fresh, or a deep copy of
a model you pass, which stays untouched), optimizer and weight decay groups, loss (label smoothing, class
weights, mixup), frozen/trainable parts, gradient clipping, sample order and augmentation. A linear probe
without augmentation trains the head on cached backbone features, as `fit` does. Nothing is written to disk.

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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from classifier.errors import ClassifierError
from classifier.training.config import TrainConfig

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
    from classifier.data.dataset import check_trainable
    from classifier.data.loader import ImageListDataset, draft_size
    from classifier.data.splits import assign_splits
    from classifier.data.transforms import eval_transform, train_transform
    from classifier.models import build_model, set_trainable
    from classifier.models.factory import freeze_bn_stats
    from classifier.training.loop import (
        _features,
        _mixup,
        _optimizer,
        _soft_ce,
        default_workers,
        load_dataset,
        pick_device,
        seed_everything,
    )
    from classifier.training.resume import EpochSampler, epoch_seed

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
        index = load_dataset(cfg.data, cfg.seed)
    check_trainable(index)
    device = pick_device(cfg.device)
    # Our own RNG stream: a range test in the app's process must not shift anyone else's random numbers.
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(cfg.seed)
        splits = assign_splits(index, cfg.val_split, cfg.test_split, cfg.seed)
        train_items = [(index.root / s.path, s.label) for s, sp in zip(index.samples, splits) if sp == "train"]
        if model is None:
            built = build_model(
                cfg.backbone, len(index.classes), cfg.weights, drop_rate=cfg.drop_rate, img_size=cfg.img_size
            )
            model, data_config = built.model, built.data_config
        else:
            from classifier.models.factory import default_weights, resolve_data_config

            model = copy.deepcopy(model)
            bundled = (cfg.weights or default_weights(cfg.backbone)) == "bundled"
            data_config = resolve_data_config(model, img_size=cfg.img_size, bundled=bundled)
        model.to(device)
        amp_dtype = None
        if cfg.amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

        def autocast():
            return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

        workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
        loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda")
        labels = [y for _, y in train_items]
        n_batches = math.ceil(len(train_items) / cfg.batch_size)
        steps = steps if steps is not None else default_steps(n_batches)
        sampler = EpochSampler(labels, cfg.seed, balanced=cfg.imbalance == "sampler")
        loader_gen = torch.Generator()
        draft = draft_size(data_config)
        use_features = cfg.mode == "linear" and cfg.augment == "none" and not (cfg.mixup or cfg.cutmix)
        if use_features:
            state = SimpleNamespace(phase="", phase_done=0, phase_total=0)

            def emit(_hook: str) -> None:
                if progress is not None:
                    progress("features", state.phase_done, state.phase_total)

            set_trainable(model, False)
            ev_t = eval_transform(data_config, cfg.grayscale)
            source = ImageListDataset(train_items, ev_t, draft)
            feats = _features(model, source, None, loader_kw, cfg.batch_size, device, autocast, state, emit)
            head, dropout = model.get_classifier(), nn.Dropout(cfg.drop_rate)
            dataset = TensorDataset(feats, torch.tensor(labels))
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, generator=loader_gen)
            params = list(head.parameters())

            def forward(x: torch.Tensor) -> torch.Tensor:
                return head(dropout(x))

            dropout.train()
            head.train()
        else:
            dataset = ImageListDataset(train_items, train_transform(data_config, cfg.augment, cfg.grayscale), draft)
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, generator=loader_gen, **loader_kw)
            params = list(model.parameters())
            set_trainable(model, cfg.mode == "finetune" and cfg.head_warmup_epochs == 0)
            model.train()
            freeze_bn_stats(model)
            forward = model

        class_weights = None
        if cfg.imbalance == "weights":
            counts = np.bincount(labels, minlength=len(index.classes)).astype(float)
            w = counts.sum() / np.maximum(counts, 1) / len(counts)
            class_weights = torch.tensor(w, dtype=torch.float32, device=device)
        loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
        mixup = _mixup(cfg, len(index.classes))
        optimizer = _optimizer(cfg, params)
        schedule = lr_schedule(start_lr, end_lr, steps)

        def batches():
            epoch = 0
            while True:  # cycle: small datasets have fewer batches than steps
                epoch += 1
                sampler.set_epoch(epoch)
                loader_gen.manual_seed(epoch_seed(cfg.seed, epoch))
                yield from loader

        lrs: list[float] = []
        smooth: list[float] = []
        raw: list[float] = []
        avg, best = 0.0, math.inf
        reason = None
        stream = batches()
        for i, lr in enumerate(schedule):
            if should_cancel is not None and should_cancel():
                reason = "cancelled"
                break
            x, y = next(stream)
            x, y = x.to(device), y.to(device)
            if mixup is not None and x.shape[0] % 2:
                x, y = x[:-1], y[:-1]
            if x.shape[0] == 0:
                continue
            for g in optimizer.param_groups:
                g["lr"] = lr
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with autocast():
                logits = forward(x)
                loss = _soft_ce(logits, target) if mixup is not None else loss_fn(logits.float(), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                reason = f"the loss became {value} at lr {lr:.3g} (step {i + 1})"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
            optimizer.step()
            avg = SMOOTHING * avg + (1 - SMOOTHING) * value
            smoothed = avg / (1 - SMOOTHING ** (len(raw) + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if progress is not None:
                progress("steps", i + 1, steps)
            if smoothed > DIVERGE_FACTOR * best:
                reason = (
                    f"diverged at lr {lr:.3g} (step {i + 1}): smoothed loss {smoothed:.3g} > "
                    f"{DIVERGE_FACTOR:g} x best {best:.3g}"
                )
                break
    random.setstate(py_state)
    np.random.set_state(np_state)
    return LRFindResult(
        lrs=lrs,
        losses=smooth,
        raw_losses=raw,
        suggestion=suggest_lr(lrs, smooth, start_lr, end_lr),
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        stopped_early=reason is not None,
        reason=reason,
        seconds=round(time.time() - t0, 2),
        config=cfg.to_dict(),
    )


def lr_find_figure(result: LRFindResult):
    """Smoothed loss against learning rate (log x) with the suggestion marked."""
    import plotly.graph_objects as go

    from classifier.figures import _style

    fig = go.Figure(go.Scatter(x=result.lrs, y=result.losses, mode="lines+markers", name="smoothed loss"))
    if result.lrs:
        y_at = float(np.interp(np.log10(result.suggestion), np.log10(result.lrs), result.losses))
        fig.add_trace(
            go.Scatter(
                x=[result.suggestion], y=[y_at], mode="markers", name=f"suggested {result.suggestion:.2g}",
                marker={"size": 14, "symbol": "star", "color": "#d62728"},
            )
        )  # fmt: skip
    fig.add_vline(x=result.suggestion, line_dash="dash", line_color="#d62728")
    fig.update_xaxes(type="log")
    title = "Learning-rate finder" + (f" (stopped early: {result.reason})" if result.stopped_early else "")
    return _style(fig, title, "learning rate (log scale)", "smoothed training loss")
