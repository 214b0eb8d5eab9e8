"""A torch Dataset over indexed images: decode safely (EXIF-upright RGB), then transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from classifier.data.images import load_image


class ImageListDataset(Dataset):
    """`(path, label)` pairs → `(tensor, label)`. `draft` lets JPEG decode at reduced scale for speed."""

    def __init__(self, items: Sequence[tuple[str | Path, int]], transform: Callable, draft: int | None = None):
        self.items = list(items)
        self.transform = transform
        self.draft = (draft, draft) if draft else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.transform(load_image(path, draft_size=self.draft)), label


def draft_size(data_config: dict) -> int:
    """Smallest side the eval resize needs, so JPEG draft decoding never goes below it."""
    return int(data_config["input_size"][-1] / float(data_config.get("crop_pct", 1.0))) + 1
