"""Before a run starts: what is known to make it fail, and how long it will take on this machine.

`preflight(config)` returns the problems a run with these settings would hit, each tied to the setting
(`Problem.field`, a TrainConfig field) and worded in the settings' own terms, so the Train page can show it beside
the field and keep Start off, and `python -m classifier jobs submit` can refuse at once:

- the dataset cannot be read or trained on (fewer than two classes, a class with one image);
- the weight source cannot be used (hub weights not cached and the Hub unreachable, no bundled weights for the
  backbone, a weights file that is missing or not .safetensors); `fix` holds a weight source that works;
- the architecture cannot take the image size (a dry run on PyTorch's meta device: inception_v3 below 75 px, a
  ViT at another size than it was built for);
- the estimated memory is more than the device has free (`fix` holds a batch size that fits).

The memory estimate is parameters x 12 bytes (weights, gradients, AdamW's two moments) plus, per image, the float32
outputs of every leaf module (what backward keeps). Measured peak growth of a training step on this project's CPU
against that estimate: resnet18 224 px batch 16 650 vs 709 MB, batch 64 1773 vs 2434 MB; efficientnet_b0 batch 32
3041 vs 2960 MB; convnext_tiny 160 px batch 16 1388 vs 1932 MB. So it errs on the safe side by up to 40 % and a
run is refused only when the estimate is above the free memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.data.dataset import DatasetIndex, check_trainable, load_dataset
from classifier.device import available_memory, pick_device
from classifier.errors import ClassifierError
from classifier.models.factory import ArchitectureProbe, default_weights, probe_architecture
from classifier.models.registry import resolve_backbone
from classifier.training.config import TrainConfig
from classifier.training.setup import check_task_options, uses_features

PARAM_BYTES = 12  # float32 weights + gradients + AdamW's two moments, per parameter


@dataclass
class Problem:
    """Something that would make a run with these settings fail, tied to the setting it is about."""

    field: str  # a TrainConfig field (data, weights, img_size, batch_size, ...) or "config"
    message: str
    fix: dict[str, Any] = field(default_factory=dict)  # settings that avoid it, when there is a clear one


def preflight(config: TrainConfig, index: DatasetIndex | None = None, check_data: bool = True) -> list[Problem]:
    """The problems a run of `config` would hit before or as it starts; [] when none is known. `check_data=False`
    skips the dataset (the built-in demo, which is generated on first use and known to be trainable)."""
    try:
        cfg = config.resolved()
    except ValueError as e:
        return [Problem("config", str(e))]
    problems: list[Problem] = []
    if check_data:
        data_problem, index = _data_problem(cfg, index)
        problems += [data_problem] if data_problem else []
    weights_problem = check_weights(cfg.backbone, cfg.weights)
    problems += [weights_problem] if weights_problem else []
    n_classes = len(index.classes) if index is not None and len(index.classes) >= 2 else 2
    try:
        probe = probe_architecture(cfg.backbone, n_classes, _probe_weights(cfg), cfg.img_size)
    except ClassifierError as e:
        return [*problems, Problem("img_size", str(e))]
    memory = check_memory(cfg, probe)
    return problems + ([memory] if memory else [])


def _data_problem(cfg: TrainConfig, index: DatasetIndex | None) -> tuple[Problem | None, DatasetIndex | None]:
    try:
        index = index if index is not None else load_dataset(cfg.data, cfg.data_version)
        check_trainable(index)
    except ClassifierError as e:
        return Problem("data", str(e)), index
    try:
        check_task_options(cfg, index.task)  # e.g. a class-imbalance setting on multi-label data
    except ClassifierError as e:
        fix = {"imbalance": "none"} if cfg.imbalance != "none" else {"multilabel_loss": "bce", "pos_weight": "none",
                                                                    "tune_thresholds": False}  # fmt: skip
        return Problem("config", str(e), fix), index
    return None, index


def _probe_weights(cfg: TrainConfig) -> str:
    """The weight source that decides the architecture built (bundled weights use their own)."""
    w = cfg.weights or default_weights(cfg.backbone)
    return w if w in ("bundled", "hub", "none") else "none"


def check_weights(backbone: str, weights: str | None) -> Problem | None:
    """Whether `weights` can be loaded for `backbone` now, and a weight source that can when it cannot."""
    from classifier.models import weights as W

    try:
        info = resolve_backbone(backbone)
    except ClassifierError as e:
        return Problem("backbone", str(e))
    weights = weights or default_weights(info.name)
    fallback = {"weights": "bundled" if info.bundled_weights else "none"}
    if weights == "bundled" and not info.bundled_weights:
        shipped = ", ".join(W.BUNDLED_TIMM_ARCH)
        fix = {"weights": "hub" if usable_hub(info.name) else "none"}
        return Problem("weights", f"{info.name} has no bundled weights; they exist for {shipped}", fix)
    if weights == "hub":
        if not info.pretrained:
            return Problem("weights", f"{info.name} has no pretrained weights; it trains from scratch", fallback)
        if not usable_hub(info.name):
            return Problem("weights", W.offline_hint(info.name), fallback)
    if weights not in ("bundled", "hub", "none"):
        path = Path(weights)
        if path.suffix.lower() != ".safetensors":
            return Problem("weights", f"{weights}: a weights file must be .safetensors (pickled files are refused)")
        if not path.is_file():
            return Problem("weights", f"{weights}: no such file")
    return None


def usable_hub(timm_name: str) -> bool:
    """Hub weights load now: already in the local cache, or the Hub answers."""
    from classifier.models import weights as W

    return W.hub_cached(timm_name) or W.hub_reachable()


def working_weights(backbone: str) -> str:
    """The weight source to start with: bundled where shipped, the Hub where it can load, else none."""
    info = resolve_backbone(backbone)
    if info.bundled_weights:
        return "bundled"
    return "hub" if info.pretrained and usable_hub(info.name) else "none"


def estimate_memory(cfg: TrainConfig, probe: ArchitectureProbe, batch_size: int | None = None) -> int:
    """Bytes a training process needs at `batch_size` (default: the config's): see the module docstring."""
    bs = batch_size or cfg.batch_size
    if uses_features(cfg):
        # Features once (no gradients: one leaf output at a time), then only the head trains.
        return probe.params * 4 + bs * probe.largest_output_bytes * 2 + probe.trainable_head_params * PARAM_BYTES
    return probe.params * PARAM_BYTES + bs * probe.activation_bytes


def check_memory(cfg: TrainConfig, probe: ArchitectureProbe) -> Problem | None:
    device = pick_device(cfg.device)
    free = available_memory(device)
    need = estimate_memory(cfg, probe)
    if free is None or need <= free:
        return None
    fits = [b for b in (2**k for k in range(int(math.log2(max(1, cfg.batch_size))), -1, -1))
            if estimate_memory(cfg, probe, b) <= free]  # fmt: skip
    hint = f"; batch size {fits[0]} needs about {_gb(estimate_memory(cfg, probe, fits[0]))}" if fits else ""
    return Problem(
        "batch_size",
        f"training needs about {_gb(need)} at batch size {cfg.batch_size} and {probe.input_size[-1]} px; "
        f"{device.type.upper() if device.type != 'cpu' else 'this machine'} has {_gb(free)} free{hint}",
        {"batch_size": fits[0]} if fits else {},
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


@dataclass
class Speed:
    """Measured on this machine with random inputs (speed does not depend on the weights)."""

    train_images_per_s: float  # one optimizer step per batch, training mode
    eval_images_per_s: float  # no gradients: validation and the frozen-feature pass
    seconds: float  # what measuring took


def measure_speed(cfg: TrainConfig, num_classes: int, steps: int = 2) -> Speed:
    """Time `steps` training steps and `steps` inference batches of the config's model at its batch size and input
    size, after one warm-up each, on its device. A few seconds on a CPU for the curated backbones."""
    import torch

    from classifier.device import Precision
    from classifier.models import build_model

    t0 = time.perf_counter()
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    precision = Precision.for_device(device, cfg.amp)
    built = build_model(cfg.backbone, num_classes, "none", img_size=cfg.img_size)
    model = precision.prepare(built.model)
    bs = max(1, min(cfg.batch_size, 8))  # images/s hardly changes above 8 on a CPU; it keeps measuring short
    x = precision.layout(torch.randn(bs, *built.data_config["input_size"], device=device))
    y = torch.randint(0, num_classes, (bs,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step() -> None:
        with torch.no_grad(), precision.autocast():
            model(x)

    rates = [math.nan]
    for step, train in ([] if uses_features(cfg) else [(train_step, True)]) + [(eval_step, False)]:
        model.train(train)
        step()  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(bs * steps / max(time.perf_counter() - t, 1e-9))
    return Speed(rates[-2], rates[-1], time.perf_counter() - t0)


def estimate_seconds(cfg: TrainConfig, speed: Speed, n_train: int, n_val: int) -> float:
    """Seconds a run of `cfg` should take: a linear probe's feature pass and head epochs, or epochs of training
    plus validation, at the measured speed (decoding adds to the first epoch; the decode cache removes it after)."""
    cfg = cfg.resolved()
    if uses_features(cfg):  # the head's epochs on stored features take milliseconds each
        return (n_train + n_val) / speed.eval_images_per_s
    return cfg.epochs * (n_train / speed.train_images_per_s + n_val / speed.eval_images_per_s)


def estimate_from_runs(cfg: TrainConfig, n_train: int, n_val: int, runs: list[dict[str, Any]]) -> float | None:
    """Seconds a run of `cfg` should take, scaled from a finished run of the same backbone, mode, image size and
    augmentation on this machine (`runs`: {"train": TrainConfig dict, "metrics": summary, "runtime": dict}); None
    when there is none. A linear probe counts only runs that computed their features (a run that read them from
    the cache says nothing about the feature pass)."""
    cfg = cfg.resolved()
    same = ("backbone", "mode", "img_size", "augment", "mixup", "cutmix", "device")
    for run in runs:
        train, m, rt = run.get("train") or {}, run.get("metrics") or {}, run.get("runtime") or {}
        try:
            earlier = TrainConfig.from_dict(train).resolved()
        except (TypeError, ValueError):
            continue
        seconds, n_tr, n_va, epochs = (m.get(k) for k in ("train_seconds", "n_train", "n_val", "epochs_run"))
        if any(getattr(earlier, k) != getattr(cfg, k) for k in same) or not (seconds and n_tr and epochs):
            continue
        if uses_features(cfg):
            if (rt.get("features") or {}).get("reused"):
                continue
            return seconds / (n_tr + (n_va or 0)) * (n_train + n_val)
        return seconds / (epochs * (n_tr + (n_va or 0))) * cfg.epochs * (n_train + n_val)
    return None


def retry_fix(train: dict[str, Any], error: str | None) -> tuple[str, dict[str, Any]] | None:
    """For a run that failed with `error`: (what to retry with, the settings that change), when a known cause has a
    clear remedy: out of memory (half the batch size), a non-finite loss (a tenth of the learning rate), weights
    that cannot load (a weight source that works), an image size the backbone cannot take (its own size)."""
    text = (error or "").lower()
    try:
        cfg = TrainConfig.from_dict(train).resolved()
    except (TypeError, ValueError):
        return None
    if "out of memory" in text and cfg.batch_size > 1:
        return f"batch size {cfg.batch_size // 2}", {"batch_size": cfg.batch_size // 2}
    if "non-finite loss" in text:
        lr = float(f"{cfg.lr / 10:.2g}")
        return f"learning rate {lr:g}", {"lr": lr}
    if "hugging face hub" in text or "weights" in text and "cannot be reached" in text:
        w = working_weights(cfg.backbone)
        return (f"weights '{w}'", {"weights": w}) if w != cfg.weights else None
    if "cannot take" in text and cfg.img_size:
        return "the backbone's own image size", {"img_size": None}
    return None
