"""Explain page helpers: attribution maps cached per session, computed with a progress bar, and overlays.

The maths is `classifier.explain`; this module only decides when to recompute (a map depends on the run's
weights, the image, the method, the target and the method's options, never on colour map or opacity) and
shows progress while Captum works on the script thread.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from typing import Any

import streamlit as st
from PIL import Image

from classifier.device import heavy_work
from classifier.explain import METHODS, Attribution, attribute, methods_using, overlay
from ui import state
from ui.widgets import server_busy_notice

MAX_CACHED = 48  # maps kept per session (each is one float32 map at the image's size)
DISPLAY_SIDE = 768  # overlays are drawn (and downloaded) at most this many pixels on the longer side


def _cache() -> OrderedDict:
    ss = st.session_state
    if not isinstance(ss.get(state.EXPLAIN_CACHE), OrderedDict):
        ss[state.EXPLAIN_CACHE] = OrderedDict()
    return ss[state.EXPLAIN_CACHE]


def cached_attribution(
    key: tuple, run: Any, image: Image.Image, method: str, target: int, options: dict
) -> Attribution:
    """The attribution for `key` from this session's cache, or computed now under a progress bar with ETA."""
    cache = _cache()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    label = METHODS[method].label
    bar = st.progress(0.0, text=f"{label}: starting…")
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        frac = min(done / max(total, 1), 1.0)
        elapsed = time.perf_counter() - t0
        eta = f" · ETA {elapsed / frac - elapsed:.0f} s" if 0 < frac < 1 and elapsed > 0.5 else ""
        bar.progress(frac, text=f"{label}: {done}/{total} forward passes{eta}")

    try:
        with heavy_work("the attribution map", waiting=server_busy_notice):  # one model job in the server at a time
            result = attribute(run, image, method, target, progress=progress, **options)
    finally:
        bar.empty()
    cache[key] = result
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return result


def display_image(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """The image as shown: cropped to `box` (what the model sees) when given, then at most DISPLAY_SIDE px."""
    shown = image.crop(box) if box is not None else image
    if max(shown.size) > DISPLAY_SIDE:
        shown = shown.copy()
        shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return shown


def clip_box(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` limited to an image of `size` (width, height): with border-mode crops it can extend past it."""
    left, top, right, bottom = box
    return max(left, 0), max(top, 0), min(right, size[0]), min(bottom, size[1])


def overlay_for_display(
    image: Image.Image, result: Attribution, cmap: str, alpha: float, crop: bool, signed: bool = False
) -> Image.Image:
    """`result.map` over the original image, optionally cropped to the model's view, at display size."""
    box = clip_box(tuple(result.extra["crop_box"]), image.size) if crop else None
    amap = result.map
    if box is not None:
        amap = amap[box[1] : box[3], box[0] : box[2]]
    shown = display_image(image, box)
    return overlay(shown, amap, cmap=cmap, alpha=alpha, signed=signed)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def caption(result: Attribution) -> str:
    """One line under an overlay: method, seconds, and IG's convergence delta where there is one."""
    text = f"**{METHODS[result.method].label}** · {result.seconds:.2f} s"
    if result.delta is not None:
        text += f" · convergence δ {result.delta:.3g}"
    if "layer" in result.extra:
        text += f" · layer `{result.extra['layer']}`"
    return text


def method_help() -> str:
    """Every registered method's label and help text, one per line (the methods picker's tooltip)."""
    return "  \n".join(f"**{m.label}**: {m.help}" for m in METHODS.values())


def used_by(option: str) -> str:
    """The labels of the methods whose map `option` changes, e.g. "SmoothGrad / GradientSHAP" (widget help)."""
    return " / ".join(m.label for m in methods_using(option))


def baseline_help() -> str:
    """Which methods take a baseline, the choices, and what "auto" picks for each (the methods' defaults)."""
    takers = methods_using("baseline")
    by_default: dict[str, list[str]] = {}
    for m in takers:
        by_default.setdefault(str(m.default_baseline), []).append(m.label)
    auto = ", ".join(f"{kind} for {' and '.join(labels)}" for kind, labels in by_default.items())
    names = ", ".join(m.label for m in takers)
    return f"Reference image for {names}: black, a blurred copy, or uniform noise. Auto: {auto}."
