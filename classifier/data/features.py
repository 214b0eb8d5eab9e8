"""Compute once: frozen-backbone features of a dataset's images, kept per (images, backbone weights, preprocessing).

A linear probe, the LR finder on a linear probe, every search trial over head settings and the data-quality scan
all need the same pre-logit features of the same images; on the hymenoptera photos that pass took about 45 s of
each run's time. They are stored in `workspace/cache/features/<key>.npy` (float32, one row per image) beside
`<key>.json` (each image's row, file size and modification time), where the key hashes everything the features
depend on:

- the backbone's weights themselves (a digest of every tensor except the classification head, which the
  features do not pass through), so bundled, hub, file and even seeded random weights are told apart exactly;
- the model class, the data config (input size, interpolation, mean, std, crop), grayscale, the autocast dtype,
  and whether the pixels came through the decoded-image cache or from the files (they may differ in the last bit).

Images that are new or changed since (size or mtime) are computed; the rest are read. A rewrite keeps valid rows
of images not asked for, so a subset (the train split, then the validation split) shares one file.

    >>> result = cached_features(paths, identity, compute)  # doctest: +SKIP
    >>> result.features.shape, result.computed, result.reused  # doctest: +SKIP
    (torch.Size([244, 1280]), 0, 244)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.io import atomic_write_json, atomic_write_via
from classifier.workspace import cache_dir

FORMAT = 1


@dataclass
class FeatureResult:
    features: torch.Tensor  # (n, d) float32 on the CPU, in the order the paths were given
    computed: int  # images whose features were computed now
    reused: int  # images read from the cache


def weights_digest(model: nn.Module) -> str:
    """A digest of the model's tensors except its classification head: what the pre-logit features depend on.

    About 0.1 s for ResNet-50's 100 MB on this project's CPU, small next to the feature pass it can save."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    h = hashlib.sha1()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in head_ids:
            continue
        data = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def feature_identity(model: nn.Module, data_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What features of this model depend on; `extra` adds grayscale, autocast dtype, pixel source."""
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return {
        "model": type(model).__name__,
        "weights": weights_digest(model),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items() if k in keys},
        **extra,
    }


def cached_features(
    paths: Sequence[str | Path],
    identity: dict[str, Any],
    compute: Callable[[list[int]], torch.Tensor],
) -> FeatureResult:
    """Features of `paths`: read where cached and unchanged, else `compute(indices)` (rows for those indices of
    `paths`, in that order) and store them."""
    key = hashlib.sha1(json.dumps({"format": FORMAT, **identity}, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_dir() / "features"
    data_file, index_file = folder / f"{key}.npy", folder / f"{key}.json"
    names = [os.path.abspath(p) for p in paths]
    stamps = [_stat(Path(n)) for n in names]
    entries, old = _read(index_file, data_file)
    rows = [_row(entries.get(n), s) for n, s in zip(names, stamps)]
    missing = [i for i, r in enumerate(rows) if r is None]
    new = compute(missing).float().cpu() if missing else None
    if old is None and new is None:
        return FeatureResult(torch.empty(0), 0, 0)
    dim = int(new.shape[1]) if new is not None else int(old.shape[1])
    out = np.empty((len(paths), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = old[r]
    for j, i in enumerate(missing):
        out[i] = new[j].numpy()
    if missing:
        _write(data_file, index_file, identity, names, stamps, out, entries, old)
    return FeatureResult(torch.from_numpy(out), len(missing), len(paths) - len(missing))


def _stat(p: Path) -> list[int] | None:
    try:
        st = p.stat()
    except OSError:
        return None  # the loader names the missing file when it is computed
    return [int(st.st_size), int(st.st_mtime_ns)]


def _row(entry: list[int] | None, stamp: list[int] | None) -> int | None:
    return int(entry[0]) if entry is not None and stamp is not None and list(entry[1:]) == stamp else None


def _read(index_file: Path, data_file: Path) -> tuple[dict[str, list[int]], np.ndarray | None]:
    """The index and the stored rows; ({}, None) when missing or when the pair does not match (a concurrent
    writer replaced one file and not yet the other)."""
    try:
        meta = json.loads(index_file.read_text(encoding="utf-8"))
        old = np.load(data_file, mmap_mode="r")
        if meta.get("format") != FORMAT or old.ndim != 2 or old.shape[0] != meta["rows"]:
            return {}, None
        return meta["entries"], old
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None


def _write(data_file, index_file, identity, names, stamps, out, entries, old) -> None:
    """The rows asked for now plus still-valid rows of other images; the data first, then its index."""
    asked = set(names)
    keep = [
        (n, e) for n, e in entries.items() if n not in asked and old is not None and _row(e, _stat(Path(n))) is not None
    ]
    rows = np.concatenate([out, np.stack([old[int(e[0])] for _, e in keep])]) if keep else out
    index = {n: [i, *s] for i, (n, s) in enumerate(zip(names, stamps)) if s is not None}
    index.update({n: [len(names) + j, *e[1:]] for j, (n, e) in enumerate(keep)})
    data_file.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, rows)

    atomic_write_via(data_file, save)
    atomic_write_json(index_file, {"format": FORMAT, "rows": int(rows.shape[0]), "identity": identity,
                                   "entries": index})  # fmt: skip
