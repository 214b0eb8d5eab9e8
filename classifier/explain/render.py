"""Drawing an attribution map: robust normalisation and a colour-mapped overlay on the image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _normalise(amap: np.ndarray, signed: bool) -> np.ndarray:
    """Map to [0, 1] (unsigned: positive part / p99) or [-1, 1] (signed: value / p99 of |map|)."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.percentile(np.abs(a), 99)) if a.size else 0.0
    if scale <= 0:
        scale = float(np.abs(a).max()) if a.size else 0.0
    if scale <= 0:
        return np.zeros_like(a)
    return np.clip(a / scale, -1.0, 1.0) if signed else np.clip(a / scale, 0.0, 1.0)


def overlay(
    image: Image.Image, amap: np.ndarray, cmap: str = "jet", alpha: float = 0.5, signed: bool = False
) -> Image.Image:
    """Colourise `amap` with a matplotlib colormap and blend it over `image` (RGB, same size as the map).

    The map is scaled robustly by the 99th percentile of |map| (the max when that is 0), so a few extreme
    pixels do not wash out the rest. Unsigned (default): the positive part in [0, 1] (negative values show as
    0). `signed=True`: [-1, 1] is mapped onto the whole colormap with 0 in the middle (use a diverging one,
    e.g. "bwr" or "RdBu_r"). A map of another size is resized (bilinear) to the image first.
    """
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; any matplotlib colormap name works (jet, viridis, ...)") from None
    rgb = image.convert("RGB")
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"attribution map must be 2-D, got shape {a.shape}")
    if a.shape != (rgb.height, rgb.width):
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        a = F.interpolate(t, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)[0, 0].numpy()
    v = _normalise(a, signed)
    if signed:
        v = (v + 1.0) / 2.0
    colour = colormap(v)[..., :3]
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    out = (1.0 - alpha) * base + alpha * colour
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), "RGB")


def colour_scale(cmap: str = "jet", width: int = 256, height: int = 12) -> Image.Image:
    """The overlay's legend: `cmap` as a horizontal strip, left = no attribution (0), right = the map's 99th
    percentile and above (how `overlay` scales an unsigned map)."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; any matplotlib colormap name works (jet, viridis, ...)") from None
    row = colormap(np.linspace(0.0, 1.0, max(2, int(width))))[:, :3]
    strip = np.repeat(row[None], max(1, int(height)), axis=0)
    return Image.fromarray(np.clip(np.rint(strip * 255.0), 0, 255).astype(np.uint8), "RGB")
