"""Where the model's input sits on the original image: the eval transform's crop box in original pixels, and an
input-resolution map placed back onto the original image (zeros outside what the model saw)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def crop_box(image_size: tuple[int, int], data_config: dict[str, Any]) -> tuple[int, int, int, int]:
    """The centre crop of the evaluation transform as `(left, top, right, bottom)` in original-image pixels.

    `image_size` is `(width, height)` like `PIL.Image.size`. Follows timm's eval transform exactly: "center"
    resizes the shorter side to `floor(size / crop_pct)` (torchvision truncates the longer side) and centre-crops;
    "squash" resizes both sides to that; "border" fits the longer side and pads. Edges are rounded to whole
    pixels (at most half a pixel off). With "border" (or a crop larger than the resized image) the box extends
    past the image: that part of the model's input was padding.

    >>> crop_box((300, 200), {"input_size": (3, 64, 64), "crop_pct": 0.875, "crop_mode": "center"})
    (61, 11, 237, 186)
    """
    left, top, right, bottom = _crop_box_exact(image_size, data_config)
    return round(left), round(top), round(right), round(bottom)


def _crop_box_exact(image_size: tuple[int, int], data_config: dict[str, Any]) -> tuple[float, float, float, float]:
    w, h = (int(v) for v in image_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    th, tw = (int(v) for v in tuple(data_config["input_size"])[-2:])
    crop_pct = float(data_config.get("crop_pct") or 0.875)  # timm's default when unset
    mode = str(data_config.get("crop_mode") or "center")
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    if mode == "squash":
        nh, nw = sh, sw
    elif mode == "border":
        ratio = max(h / sh, w / sw)  # timm ResizeKeepRatio(longest=1): the longer side fits
        nh, nw = round(h / ratio), round(w / ratio)
    elif sh == sw:
        # torchvision Resize(int): shorter side -> sh, longer side truncated
        if w <= h:
            nw, nh = sh, int(sh * h / w)
        else:
            nh, nw = sh, int(sh * w / h)
    else:
        ratio = min(h / sh, w / sw)  # timm ResizeKeepRatio(longest=0): the shorter side fits
        nh, nw = round(h / ratio), round(w / ratio)
    # torchvision / timm centre crop: pad (left/top gets the floor half) when too small, then crop at round()
    pad_l = (tw - nw) // 2 if tw > nw else 0
    pad_t = (th - nh) // 2 if th > nh else 0
    pw, ph = max(nw, tw), max(nh, th)
    left = round((pw - tw) / 2.0) - pad_l
    top = round((ph - th) / 2.0) - pad_t
    sx, sy = w / nw, h / nh
    return left * sx, top * sy, (left + tw) * sx, (top + th) * sy


def place_map(input_map: torch.Tensor, box: tuple[int, int, int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Resize an input-resolution map onto `box` of a (width, height) image; zeros elsewhere."""
    w, h = image_size
    left, top, right, bottom = box
    bw, bh = max(1, right - left), max(1, bottom - top)
    m = input_map.detach().float().cpu()[None, None]
    shrink = bh < m.shape[-2] or bw < m.shape[-1]
    up = F.interpolate(m, size=(bh, bw), mode="bilinear", align_corners=False, antialias=shrink)[0, 0].numpy()
    out = np.zeros((h, w), dtype=np.float32)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + bw, w), min(top + bh, h)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = up[y0 - top : y1 - top, x0 - left : x1 - left]
    return out
