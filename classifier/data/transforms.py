"""Transforms derived from the backbone's own data config (timm), plus the augmentation presets (named in presets.py).

Evaluation always uses timm's eval transform for the run's stored data config (resize, centre crop,
normalise), so prediction and attribution rebuild exactly what validation saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

from classifier.data.presets import AUGMENT_PRESETS

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


def crop_scale(augment: str, multilabel: bool = False) -> tuple[float, float]:
    """The share of the image a preset's random resized crop keeps (area, lowest and highest).

    A multi-label image's labels name everything in it, so its crops keep most of the image whatever the preset: a
    crop that cuts a labelled object out teaches the model to find that label where it is not. On the multi-label
    demo scenes (bench/multilabel.py) keeping 85 % or more instead of 50 % raised mAP from 0.979 to 0.991 and
    subset accuracy from 0.744 to 0.833.
    """
    if multilabel:
        return (0.85, 1.0)
    return {"light": (0.5, 1.0), "standard": (0.35, 1.0), "strong": (0.25, 1.0)}[augment]


def train_transform(
    data_config: dict[str, Any], augment: str = "light", grayscale: bool = False, multilabel: bool = False
) -> T.Compose:
    """Training transform for an augmentation preset (see AUGMENT_PRESETS); `multilabel`: see `crop_scale`."""
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose from {', '.join(AUGMENT_PRESETS)}")
    if augment == "none":
        return eval_transform(data_config, grayscale)
    size = int(data_config["input_size"][-1])
    interp = _INTERP.get(data_config.get("interpolation", "bilinear"), T.InterpolationMode.BILINEAR)
    ops: list = [T.Grayscale(num_output_channels=3)] if grayscale else []
    scale = crop_scale(augment, multilabel)
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


class TensorPipeline:
    """A preset's augmentation (or the eval centre crop) on batches of cached uint8 images, on any device.

    Input `(n, 3, side, side)` uint8 squares from `classifier.data.cache` (side = the eval resize size); output
    normalised float32 `(n, 3, size, size)`. Geometric and colour operations run per image on uint8 tensors
    (torchvision.transforms.v2, so every image draws its own parameters); conversion to float and
    normalisation run once on the whole batch. Evaluation (and preset `none`) is a centre crop of the cached
    square: the same pixels timm's eval transform gives, since the cache stored its resize.
    """

    def __init__(
        self,
        data_config: dict[str, Any],
        augment: str = "none",
        grayscale: bool = False,
        train: bool = True,
        multilabel: bool = False,
    ):
        from torchvision.transforms import v2

        if augment not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation preset {augment!r}; choose from {', '.join(AUGMENT_PRESETS)}")
        self.size = int(data_config["input_size"][-1])
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.grayscale = grayscale
        self.augment = augment if train else "none"
        interp = _INTERP.get(data_config.get("interpolation", "bilinear"), T.InterpolationMode.BILINEAR)
        ops: list = []
        if self.augment != "none":
            scale = crop_scale(self.augment, multilabel)
            ops += [v2.RandomResizedCrop(self.size, scale=scale, interpolation=interp, antialias=True)]
            ops += [v2.RandomHorizontalFlip()]
            if self.augment == "standard":
                ops += [
                    v2.RandomRotation(15, interpolation=T.InterpolationMode.BILINEAR),
                    v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
                ]
            if self.augment == "strong":
                ops += [v2.RandAugment(num_ops=2, magnitude=9)]
        self.per_image = v2.Compose(ops) if ops else None
        self.erase = T.RandomErasing(p=0.25, value="random") if self.augment == "strong" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"TensorPipeline takes (n, 3, h, w) uint8 batches, got {tuple(x.shape)} {x.dtype}")
        if x.device.type != "cpu":
            return self._apply(x)
        # Per-image operations on small tensors: splitting each across intra-op threads costs more than it saves
        # (measured on 2 busy cores: 41 ms per image with 2 threads, 1.2 ms with one).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._apply(x)
        finally:
            torch.set_num_threads(threads)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.grayscale:
            from torchvision.transforms.v2 import functional as F2

            x = F2.rgb_to_grayscale(x, num_output_channels=3)
        if self.per_image is None:
            h, w = x.shape[-2:]
            top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
            x = x[..., top : top + self.size, left : left + self.size]
        else:
            x = torch.stack([self.per_image(xi) for xi in x])
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        x = x.float().div_(255).sub_(mean).div_(std)
        if self.erase is not None:
            x = torch.stack([self.erase(xi) for xi in x])
        return x


PREVIEW_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def augment_preview(
    image: Image.Image, preset: str, n: int = 8, size: int = 224, seed: int = 0, multilabel: bool = False
) -> list[np.ndarray]:
    """`n` draws of the augmentation `preset` on `image` (of a multi-label dataset: its milder crops), as HxWx3
    float arrays in [0, 1] for display."""
    cfg = {**PREVIEW_DATA_CONFIG, "input_size": (3, size, size)}
    transform = train_transform(cfg, preset, multilabel=multilabel)
    with torch.random.fork_rng(devices=[]):  # torchvision draws from torch's global RNG; leave it as it was
        torch.manual_seed(seed)  # same settings, same pictures: the preview only changes when a setting does
        return [denormalize(transform(image), cfg).permute(1, 2, 0).numpy() for _ in range(n)]
