"""Baselines: the reference images integrated gradients, occlusion and GradientSHAP compare the input with.

torch is imported inside `make_baseline`, not at the top: the method registry names `BASELINES`, and the CLI
builds its argument parser from the registry without paying seconds of torch imports for `--help`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BASELINES: tuple[str, ...] = ("black", "blur", "noise")


def make_baseline(kind: str, x: torch.Tensor, data_config: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """A baseline in the model's (normalised) input space, shaped like `x` (1, C, H, W).

    `black`: zero pixels, normalised like the input; `blur`: the input Gaussian-blurred with sigma = input size / 20;
    `noise`: uniform pixel noise drawn from `gen`, so the same seed gives the same baseline.
    """
    import torch

    mean = torch.tensor(data_config["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if kind == "black":
        return ((torch.zeros_like(x) - mean) / std).detach()
    if kind == "noise":
        u = torch.rand(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        return ((u - mean) / std).detach()
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = min(x.shape[-2:])
        sigma = max(size / 20.0, 0.5)
        k = min(2 * math.ceil(3 * sigma) + 1, size - 1 if size % 2 == 0 else size)  # reflect padding < size
        # blurring commutes with the per-channel affine normalisation (the kernel sums to 1)
        return gaussian_blur(x.detach(), [k, k], [sigma, sigma]).detach()
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
