"""Explain page helpers: attribution maps cached per session, computed with a progress bar, and overlays.

The maths is `classifier.explain`; this module only decides when to recompute (a map depends on the run's
weights, the image, the method, the target and the method's options, never on colour map or opacity) and
shows progress while Captum works on the script thread. `maps_grid` lays out one slot per map in the order the
user chose, then fills the slots fastest first (maps already cached, then by `cost_order`), each as soon as it is
done, so Grad-CAM and saliency show while integrated gradients or occlusion still compute.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from typing import Any

import streamlit as st
from PIL import Image

from classifier.device import heavy_work
from classifier.errors import ClassifierError
from classifier.explain import METHODS, Attribution, attribute, colour_scale, cost_order, methods_using, overlay
from ui import state
from ui.widgets import server_busy_notice, user_errors

MAX_CACHED = 48  # maps kept per session (each is one float32 map at the image's size)
DISPLAY_SIDE = 768  # overlays are drawn (and downloaded) at most this many pixels on the longer side


def _cache() -> OrderedDict:
    ss = st.session_state
    if not isinstance(ss.get(state.EXPLAIN_CACHE), OrderedDict):
        ss[state.EXPLAIN_CACHE] = OrderedDict()
    return ss[state.EXPLAIN_CACHE]


def cached_attribution(
    key: tuple, run: Any, image: Image.Image, method: str, target: int, options: dict, where: Any = None
) -> Attribution:
    """The attribution for `key` from this session's cache, or computed now under a progress bar with ETA (drawn
    in `where`, a container, or where the page is)."""
    cache = _cache()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    label = METHODS[method].label
    bar = (where or st).progress(0.0, text=f"{label}: starting…")
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


def is_cached(key: tuple) -> bool:
    return key in _cache()


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


def colour_legend(cmap: str) -> None:
    """What the overlay colours mean: the colour map from no attribution to the strongest (each map is scaled to
    its own 99th percentile, so colours compare regions within a map, not between maps)."""
    low, bar, high = st.columns([2, 5, 2], vertical_alignment="center")
    low.caption("no attribution (0)")
    bar.image(colour_scale(cmap, width=512, height=14), width="stretch")
    high.caption("strongest (≥ 99th percentile)")
    st.caption("Each map is scaled on its own: colours compare regions within a map, not between maps.")


def _tile(image: Image.Image, result: Attribution, look: dict[str, Any], stem: str) -> None:
    """One overlay with its caption and PNG download, in the current container."""
    name = result.method
    try:
        shown = overlay_for_display(image, result, look["cmap"], look["alpha"], look["crop"])
    except (ValueError, ClassifierError) as e:
        st.error(f"{METHODS[name].label}: {e}")
        return
    st.image(shown, width="stretch")
    st.caption(caption(result))
    st.download_button("PNG", png_bytes(shown), file_name=f"{stem}-{name}.png", mime="image/png", on_click="ignore",
                       icon=":material/download:", key=f"b_dl_{name}")  # fmt: skip


def maps_grid(
    run: Any, image: Image.Image, keys: dict[str, tuple], job: dict[str, Any], look: dict[str, Any], stem: str
) -> None:
    """The original and one map per method (`keys`: method -> cache key, in the user's order), four per row.

    Every slot is laid out first (a pending one says it is waiting); then the maps are computed fastest first,
    cached ones before any, and each slot is filled the moment its map is done. `job`: target, options (each
    method takes its used part from `keys`' last item) and input side; `look`: cmap, alpha, crop, box.
    """
    tiles = ["Original", *keys]
    slots: dict[str, Any] = {}
    for start in range(0, len(tiles), 4):
        for col, name in zip(st.columns(4), tiles[start : start + 4]):
            slots[name] = col.empty()
    with slots["Original"].container():
        st.image(display_image(image, clip_box(look["box"], image.size) if look["box"] else None), width="stretch")
        st.caption(f"**Original** · {image.width}×{image.height} px")
    order = cost_order(list(keys), (job["side"], job["side"]), **job["options"])
    order.sort(key=lambda m: not is_cached(keys[m]))  # stable: cached first, the rest by cost
    for method in order:
        if not is_cached(keys[method]):
            slots[method].caption(f"⏳ **{METHODS[method].label}**: after the faster maps")
    for method in order:
        with slots[method].container():
            with user_errors(METHODS[method].label):
                place = st.container()
                result = cached_attribution(keys[method], run, image, method, job["target"], dict(keys[method][-1]),
                                            where=place)  # fmt: skip
                _tile(image, result, look, stem)
