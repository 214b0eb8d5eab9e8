"""Transforms derived from the backbone's own data config (timm), plus augmentation presets.

Evaluation always uses timm's eval transform for the run's stored data config (resize, centre crop,
normalise), so prediction and attribution rebuild exactly what validation saw.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import create_transform
from torchvision import transforms as T

AUGMENT_PRESETS = {
    "none": "no augmentation: the evaluation transform",
    "light": "random resized crop and horizontal flip",
    "standard": "light + rotation up to 15 degrees and colour jitter",
    "strong": "random resized crop, flip, RandAugment and random erasing",
}

_INTERP = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def eval_transform(data_config: dict[str, Any], grayscale: bool = False) -> T.Compose:
    """timm's evaluation transform (resize to size/crop_pct, centre crop, normalise) for `data_config`."""
    cfg = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
    t = create_transform(**cfg, is_training=False)
    return T.Compose([T.Grayscale(num_output_channels=3), *t.transforms]) if grayscale else t


def train_transform(data_config: dict[str, Any], augment: str = "light", grayscale: bool = False) -> T.Compose:
    """Training transform for an augmentation preset (see AUGMENT_PRESETS)."""
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose from {', '.join(AUGMENT_PRESETS)}")
    if augment == "none":
        return eval_transform(data_config, grayscale)
    size = int(data_config["input_size"][-1])
    interp = _INTERP.get(data_config.get("interpolation", "bilinear"), T.InterpolationMode.BILINEAR)
    scale = {"light": (0.5, 1.0), "standard": (0.35, 1.0), "strong": (0.25, 1.0)}[augment]
    ops: list = [T.Grayscale(num_output_channels=3)] if grayscale else []
    ops += [T.RandomResizedCrop(size, scale=scale, interpolation=interp), T.RandomHorizontalFlip()]
    if augment == "standard":
        ops += [
            T.RandomRotation(15, interpolation=T.InterpolationMode.BILINEAR),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
        ]
    if augment == "strong":
        ops += [T.RandAugment(num_ops=2, magnitude=9)]
    ops += [T.ToTensor(), T.Normalize(data_config["mean"], data_config["std"])]
    if augment == "strong":
        ops += [T.RandomErasing(p=0.25, value="random")]
    return T.Compose(ops)


def denormalize(x: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    """Undo Normalize for display: (C, H, W) or (N, C, H, W) tensor back to [0, 1]."""
    mean = torch.tensor(data_config["mean"], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)
