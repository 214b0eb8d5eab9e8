"""Attribution maps for many image files at once (the CLI's `explain`): a .npy map and a .png overlay each."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from classifier.data.images import load_image
from classifier.errors import ImageError
from classifier.explain.core import attribute, resolve_target
from classifier.explain.methods import get_method
from classifier.explain.render import overlay
from classifier.io import atomic_write_via


def _safe_stem(path: str, used: set[str]) -> str:
    """A file-system-safe output stem for `path`, made unique among `used` (images from different folders
    often share a name)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(path).stem) or "image"
    out, i = stem, 1
    while out in used:
        out, i = f"{stem}-{i}", i + 1
    used.add(out)
    return out


def explain_paths(
    run: Any,
    paths: Iterable[str | Path],
    method: str,
    target: int | str | None = None,
    *,
    out_dir: str | Path,
    cmap: str = "jet",
    alpha: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Explain every image in `paths` (files, or folders searched recursively) with `method`.

    Writes `out_dir/<stem>.npy` (the raw float32 map at the image's own upright height and width) and
    `out_dir/<stem>.png` (the overlay), atomically; a stem seen twice gets `-1`, `-2`, ... appended. Returns one
    dict per image in input order: `{path, npy, png, method, target, target_name, seconds}` (plus `delta` where
    the method has one), or `{path, error}` for an image that cannot be read, and carries on with the others.
    Options (`baseline`, `n_steps`, ...) go to `attribute`. `progress(done, total)` counts images.
    """
    from classifier.predict import expand_inputs

    get_method(method)  # an unknown method fails before any file is read
    names = run.class_names if hasattr(run, "class_names") else options.get("class_names")
    if target is not None:
        n = len(names) if names is not None else int(run.config["num_classes"])
        target = resolve_target(target, names, n, 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = expand_inputs([str(p) for p in paths])
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    for i, path in enumerate(items):
        entry: dict[str, Any] = {"path": path}
        try:
            if not Path(path).is_file():
                raise ImageError(path, "file not found")
            img = load_image(path)
            a = attribute(run, img, method, target, **options)
            stem = _safe_stem(path, used)
            npy, png = out / f"{stem}.npy", out / f"{stem}.png"

            def write_npy(tmp: str, arr: np.ndarray = a.map) -> None:
                with open(tmp, "wb") as f:
                    np.save(f, arr)

            atomic_write_via(npy, write_npy)
            picture = overlay(img, a.map, cmap=cmap, alpha=alpha)
            atomic_write_via(png, lambda tmp, pic=picture: pic.save(tmp, format="PNG"))
            entry.update(
                npy=str(npy),
                png=str(png),
                method=method,
                target=a.target,
                target_name=a.target_name,
                seconds=round(a.seconds, 4),
            )
            if a.delta is not None:
                entry["delta"] = a.delta
        except ImageError as e:
            entry["error"] = str(e)
        results.append(entry)
        if progress is not None:
            progress(i + 1, len(items))
    return results
