"""Built-in demo dataset: coloured shapes on cluttered backgrounds, generated deterministically (no download).

Each image holds one object whose *shape* is the label; its colour, size, position, rotation and the
background are all random, so a model has to look at geometry rather than colour to score well. A binary
mask of the object can be written alongside for segmentation-style checks (e.g. explanation overlap).

The multi-label variant (`make_multilabel_demo`) draws one to three distinct shapes per scene, one per quarter of
the image, and lists the shapes present as the image's labels, with one mask per shape.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from classifier.io import atomic_write_text, csv_text

DEMO_CLASSES = ("circle", "square", "triangle", "star", "cross")

_SUPERSAMPLE = 4  # object edges are drawn at 4x and box-averaged, giving anti-aliasing and an exact-geometry mask
_MIN_CONTRAST = 90.0  # RGB distance between object colour and the background it sits on


def _outline(cls: str, rng: np.random.Generator) -> np.ndarray:
    """Polygon of one shape centred on the origin with circumradius ~1, already rotated; shape (n, 2)."""
    if cls == "circle":
        # small aspect jitter so circles are not pixel-perfect templates
        aspect = rng.uniform(0.9, 1.1)
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([np.cos(t) * aspect, np.sin(t) / aspect], axis=1)
    elif cls == "square":
        s = rng.uniform(0.85, 1.15)
        pts = np.array([[-s, -1 / s], [s, -1 / s], [s, 1 / s], [-s, 1 / s]]) / math.sqrt(2)
    elif cls == "triangle":
        t = np.deg2rad(np.arange(3) * 120.0 + rng.uniform(-8, 8, 3))
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * rng.uniform(0.9, 1.1, (3, 1))
    elif cls == "star":
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)
    elif cls == "cross":
        w = rng.uniform(0.28, 0.36)  # arm half-width relative to arm length
        q = np.array([[1, -w], [1, w], [w, w]])  # one arm's outline; the other three are rotations of it
        pts = np.concatenate([q @ _rot(k * np.pi / 2).T for k in range(4)])
        pts = pts / math.hypot(1, w)
    else:
        raise ValueError(f"unknown demo class {cls!r}; expected one of {DEMO_CLASSES}")
    return pts @ _rot(rng.uniform(0, 2 * np.pi)).T


def _rot(theta: float) -> np.ndarray:
    """2x2 rotation matrix."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue, reasonably saturated and bright; float RGB in 0..255."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0))
    return np.array(rgb) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-frequency colour field with distractor lines and dots; float (size, size, 3)."""
    k = int(rng.integers(2, 6))
    grid = rng.uniform(0, 255, (k, k, 3))
    # pull the grid towards its mean so the background varies but rarely swamps the object
    grid = grid.mean((0, 1)) + (grid - grid.mean((0, 1))) * rng.uniform(0.3, 0.8)
    field = Image.fromarray(grid.clip(0, 255).astype(np.uint8), "RGB").resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    scale = size / 128
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(0, size, 2)
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.4) * size
        end = (x0 + length * math.cos(ang), y0 + length * math.sin(ang))
        width = max(1, round(rng.uniform(1, 3) * scale))
        draw.line([(x0, y0), end], fill=tuple(_random_colour(rng).astype(int)), width=width)
    for _ in range(int(rng.integers(3, 11))):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(1, 3) * scale
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(_random_colour(rng).astype(int)))
    return np.asarray(field, dtype=np.float32)


def demo_image(cls: str, rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """Render one sample of class `cls`: (RGB image, mode-"L" mask with object = 255, background = 0)."""
    pts, radius, centre = _place(cls, rng, (0, 0, size, size))
    coverage = _coverage(pts, size)
    bg = _background(rng, size)
    img = _paint(bg, pts, radius, centre, coverage, rng)
    rgb = _finish(img, rng)
    # threshold at half coverage: the mask is the object's own geometry, not its anti-aliased fringe
    mask = Image.fromarray(np.where(coverage >= 128, 255, 0).astype(np.uint8), "L")
    return rgb, mask


def _place(cls: str, rng: np.random.Generator, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float, np.ndarray]:
    """The object's outline in image coordinates inside `box` (x0, y0, x1, y1), its radius and centre."""
    x0, y0, x1, y1 = box
    pts = _outline(cls, rng)
    # scale halfway between equal extent and equal area, so neither span nor pixel count gives the class away
    area = 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))))
    radius = rng.uniform(0.13, 0.24) * (x1 - x0) * (math.pi / area) ** 0.25
    pts = pts * radius
    lo, hi = pts.min(0), pts.max(0)
    start, stop = (x0, y0), (x1, y1)
    centre = np.array([rng.uniform(start[i] + 1 - lo[i], stop[i] - 1 - hi[i]) for i in range(2)])
    return pts + centre, radius, centre


def _coverage(pts: np.ndarray, size: int) -> np.ndarray:
    """The polygon's coverage of each pixel, 0-255, drawn at `_SUPERSAMPLE`x and box-averaged."""
    ss = _SUPERSAMPLE
    hi_mask = Image.new("L", (size * ss, size * ss), 0)
    ImageDraw.Draw(hi_mask).polygon([tuple(p) for p in (pts * ss)], fill=255)
    return np.asarray(hi_mask.resize((size, size), Image.BOX))


def _paint(
    bg: np.ndarray, pts: np.ndarray, radius: float, centre: np.ndarray, coverage: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """`bg` with the object painted in: a colour that stands out from what is behind it, mildly shaded."""
    size = bg.shape[0]
    alpha = coverage.astype(np.float32)[..., None] / 255.0
    x0, y0 = np.floor(np.maximum(pts.min(0), 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(pts.max(0), size)).astype(int)
    local = bg[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    # resample until the object stands out from what is behind it; keep the best try if none is enough
    best, best_d = None, -1.0
    for _ in range(30):
        colour = _random_colour(rng)
        d = float(np.linalg.norm(colour - local))
        if d > best_d:
            best, best_d = colour, d
        if d >= _MIN_CONTRAST:
            break

    # mild linear shading on the object so it is not a perfectly flat fill
    grid = (np.arange(size, dtype=np.float32) + 0.5) / radius
    dx, dy = _rot(rng.uniform(0, 2 * np.pi))[0] * rng.uniform(-0.15, 0.15)
    shade = 1.0 + dx * (grid[None, :] - centre[0] / radius) + dy * (grid[:, None] - centre[1] / radius)
    obj = best.astype(np.float32) * shade[..., None]
    return bg + (obj - bg) * alpha


def _finish(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Sometimes a slight blur, always sensor-like noise."""
    size = img.shape[0]
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    if rng.uniform() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    sigma = np.float32(rng.uniform(8, 15))
    noisy = np.asarray(pil, dtype=np.float32) + rng.standard_normal((size, size, 3), dtype=np.float32) * sigma
    return Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8), "RGB")


def demo_scene(
    classes: Sequence[str], rng: np.random.Generator, size: int
) -> tuple[Image.Image, dict[str, Image.Image]]:
    """One multi-label scene: each shape of `classes` (distinct) in its own quarter of the image, on one cluttered
    background. (RGB image, {shape: mode-"L" mask}). Quarters keep shapes apart, so every mask is one object and a
    map's peak can be scored against each label on its own."""
    half = size // 2
    cells = [(x, y, x + half, y + half) for y in (0, half) for x in (0, half)]
    boxes = [cells[int(i)] for i in rng.permutation(4)[: len(classes)]]
    placed = [_place(cls, rng, box) for cls, box in zip(classes, boxes)]
    img = _background(rng, size)
    masks = {}
    for cls, (pts, radius, centre) in zip(classes, placed):
        coverage = _coverage(pts, size)
        img = _paint(img, pts, radius, centre, coverage, rng)
        masks[cls] = Image.fromarray(np.where(coverage >= 128, 255, 0).astype(np.uint8), "L")
    return _finish(img, rng), masks


def make_demo_dataset(
    out: str | Path,
    *,
    n_per_class: int = 60,
    size: int = 128,
    seed: int = 0,
    masks_out: str | Path | None = None,
    classes: Sequence[str] = DEMO_CLASSES,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `out/<class>/<class>_<NNNN>.png` (and masks at the same relative paths under `masks_out`).

    Each image's randomness comes from (seed, class, index) alone, so changing `n_per_class` or `classes`
    leaves the other images byte-identical.
    """
    unknown = [c for c in classes if c not in DEMO_CLASSES]
    if unknown:
        raise ValueError(f"unknown demo classes {unknown}; expected a subset of {DEMO_CLASSES}")
    if n_per_class < 1 or size < 16 or seed < 0:
        raise ValueError("need n_per_class >= 1, size >= 16 and a non-negative seed")
    out = Path(out)
    masks_root = Path(masks_out) if masks_out is not None else None
    total, done = n_per_class * len(classes), 0
    for cls in classes:
        ci = DEMO_CLASSES.index(cls)
        (out / cls).mkdir(parents=True, exist_ok=True)
        if masks_root is not None:
            (masks_root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = np.random.default_rng(np.random.SeedSequence([seed, ci, i]))
            rgb, mask = demo_image(cls, rng, size)
            name = f"{cls}/{cls}_{i:04d}.png"
            rgb.save(out / name, format="PNG")
            if masks_root is not None:
                mask.save(masks_root / name, format="PNG")
            done += 1
            if progress is not None:
                progress(done, total)
    return out


MULTILABEL_CSV = "labels.csv"


def make_multilabel_demo(
    out: str | Path,
    *,
    n_images: int = 400,
    size: int = 192,
    seed: int = 0,
    masks_out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a multi-label demo set: `out/scene_NNNN.png` with one to three distinct demo shapes each, and
    `out/labels.csv` (`path,labels`, the shapes present separated by spaces); with `masks_out`, one mask per shape
    present at `masks_out/<shape>/scene_NNNN.png`, so attribution maps can be scored per label.

    Each scene's randomness comes from (seed, index) alone; 192 px by default, so a model at its usual 192-224 px
    input sees the shapes at about their own scale."""
    if n_images < 1 or size < 32 or seed < 0:
        raise ValueError("need n_images >= 1, size >= 32 and a non-negative seed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, len(DEMO_CLASSES), i]))
        k = int(rng.integers(1, 4))
        shapes = [DEMO_CLASSES[int(j)] for j in sorted(rng.permutation(len(DEMO_CLASSES))[:k])]
        rgb, masks = demo_scene(shapes, rng, size)
        name = f"scene_{i:04d}.png"
        rgb.save(out / name, format="PNG")
        rows.append((name, " ".join(shapes)))
        for shape, mask in masks.items() if masks_out is not None else ():
            (Path(masks_out) / shape).mkdir(parents=True, exist_ok=True)
            mask.save(Path(masks_out) / shape / name, format="PNG")
        if progress is not None:
            progress(i + 1, n_images)
    atomic_write_text(out / MULTILABEL_CSV, csv_text(("path", "labels"), rows))
    return out


def demo_dataset_path(seed: int = 0, multilabel: bool = False) -> Path:
    """Where the built-in demo dataset (or its multi-label variant) lives in the workspace (it may not exist yet)."""
    from classifier.workspace import datasets_dir

    return datasets_dir() / f"demo{'-multilabel' if multilabel else ''}-seed{seed}"


def ensure_demo_dataset(seed: int = 0, multilabel: bool = False) -> Path:
    """The built-in demo dataset in the workspace (generated on first use), masks in `workspace/masks/`; with
    `multilabel`, the scenes of `make_multilabel_demo` (a folder with labels.csv) and their per-shape masks."""
    import os
    import shutil
    import tempfile

    from classifier.workspace import workspace_dir

    out = demo_dataset_path(seed, multilabel)
    if out.is_dir():
        return out
    # Build beside the final place and rename: two sessions asking at once never see a half-written set.
    tmp = Path(tempfile.mkdtemp(dir=workspace_dir(), prefix=".demo-"))
    try:
        if multilabel:
            make_multilabel_demo(tmp / "data", seed=seed, masks_out=tmp / "masks")
        else:
            make_demo_dataset(tmp / "data", seed=seed, masks_out=tmp / "masks")
        (workspace_dir() / "masks").mkdir(exist_ok=True)
        masks = workspace_dir() / "masks" / out.name
        if not masks.exists():
            os.replace(tmp / "masks", masks)
        try:
            os.replace(tmp / "data", out)
        except OSError:
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def means_demo(data: str) -> bool:
    """Whether `data` names the built-in demo dataset: the word "demo", unless a file or folder called "demo" is in
    the working directory (then `--data demo` is that, as any other path would be)."""
    return data == "demo" and not Path("demo").exists()


def resolve_data(data: str, seed: int = 0) -> str:
    """`data` as a path: the built-in demo dataset's folder when `data` means it (`means_demo`), else `data`."""
    return str(ensure_demo_dataset(seed)) if means_demo(data) else data
