"""The data-quality scan of a dataset version: frozen features once, K-fold out-of-sample probabilities of a linear
probe on them, then cleanlab (`find.py`); the result per image and the ranked issues (`issues.csv`).

    >>> result = scan_dataset(TrainConfig(data="data/flowers", backbone=SCAN_BACKBONE))  # doctest: +SKIP
    >>> result.write_csv("issues.csv")  # path,issue,given_label,suggested_label,score  # doctest: +SKIP

`classifier.quality.SCAN_BACKBONE` is the backbone the CLI and the Data page scan with unless told otherwise.
Nearly all the time is the one feature pass over the images (`classifier.training.setup.frozen_features`, through
the decoded-image and feature caches, so a linear-probe run of the same backbone and the scan share features both
ways). A result is kept in `workspace/cache/quality/<key>.json`, the key hashing the images (path, content hash,
label after the version's edits), the backbone's weights and preprocessing (`feature_identity`), the folds and the
seed: the same version scanned with the same model is read back at once. After edits (a new version) the features
are all read from the cache, and only the probe and cleanlab run again, about a second for hundreds of images.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.io import atomic_write_json, atomic_write_text, csv_text
from classifier.quality.find import ISSUE_TYPES, find_issues
from classifier.quality.probe import C_GRID, REPEATS, out_of_sample_probs
from classifier.task import MULTI
from classifier.training.config import TrainConfig
from classifier.workspace import cache_dir

FORMAT = 1
CSV_COLUMNS = ("path", "issue", "given_label", "suggested_label", "score")
Progress = Callable[[str, int, int], None]  # (phase, done, total); phases: cache, features, probe, issues


@dataclass
class ScanResult:
    """Per image (`images`: path, split, given, suggested, label/duplicate/outlier scores and flags, duplicate_of as
    paths, cross_split), overlapping class pairs (`overlap`) and what was scanned how (`meta`)."""

    images: pd.DataFrame
    overlap: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def issues(self, skip: Iterable[str] = ()) -> pd.DataFrame:
        """The flagged images as issues.csv's rows: per issue type (label, duplicate, outlier, overlap) most
        likely problems first; paths in `skip` (marked reviewed) left out. Overlap rows name a pair of classes
        (given_label, suggested_label) and have no path."""
        img = self.images[~self.images["path"].isin(set(skip))]
        parts = []
        for issue, flag, score in (("label", "is_label", "label_score"), ("duplicate", "is_duplicate",
                                   "duplicate_score"), ("outlier", "is_outlier", "outlier_score")):  # fmt: skip
            rows = img[img[flag]].sort_values(score, ascending=False, kind="stable")
            suggested = rows["suggested"] if issue == "label" else ""
            parts.append(pd.DataFrame({"path": rows["path"], "issue": issue, "given_label": rows["given"],
                                       "suggested_label": suggested, "score": rows[score]}))  # fmt: skip
        ov = self.overlap
        parts.append(pd.DataFrame({"path": "", "issue": "overlap", "given_label": ov["class_a"],
                                   "suggested_label": ov["class_b"], "score": ov["score"]}))  # fmt: skip
        parts = [p for p in parts if len(p)]
        if not parts:
            return pd.DataFrame(columns=list(CSV_COLUMNS))
        return pd.concat(parts, ignore_index=True)[list(CSV_COLUMNS)]

    def counts(self, skip: Iterable[str] = ()) -> dict[str, int]:
        table = self.issues(skip)
        return {t: int((table["issue"] == t).sum()) for t in ISSUE_TYPES}

    def write_csv(self, path: str | Path, skip: Iterable[str] = ()) -> Path:
        table = self.issues(skip)
        rows = ([r.path, r.issue, r.given_label, r.suggested_label, f"{r.score:.6f}"] for r in table.itertuples())
        return atomic_write_text(path, csv_text(CSV_COLUMNS, rows))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "meta": self.meta, "images": self.images.to_dict(orient="list"),
                "overlap": self.overlap.to_dict(orient="list")}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanResult:
        return cls(pd.DataFrame(d["images"]), pd.DataFrame(d["overlap"], columns=["class_a", "class_b", "images",
                                                                                  "score"]), d["meta"])  # fmt: skip


def scan_dataset(
    config: TrainConfig, folds: int = 5, progress: Progress | None = None, refresh: bool = False
) -> ScanResult:
    """Scan `config.data` at dataset version `config.data_version` (None: the latest) with the frozen backbone
    `config.backbone` / `config.weights` / `config.img_size`; splits as a run with `config` would draw them (for
    duplicates across train and validation). A result cached for the same images, model, folds and seed is read
    back unless `refresh`."""
    import torch

    from classifier.data.dataset import check_trainable, load_dataset
    from classifier.data.features import feature_identity
    from classifier.data.multilabel import label_matrix
    from classifier.data.splits import assign_splits
    from classifier.models import build_model
    from classifier.training.setup import frozen_features

    emit = progress or (lambda phase, done, total: None)
    t0 = time.time()
    cfg = config.resolved()
    index = load_dataset(cfg.data, cfg.data_version)
    check_trainable(index)
    splits = assign_splits(index, cfg.val_split, cfg.test_split, cfg.seed)
    with torch.random.fork_rng(devices=[]):  # seeded random weights (weights none), without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        built = build_model(cfg.backbone, len(index.classes), cfg.weights, img_size=cfg.img_size)
    names = [";".join(index.classes[c] for c in index.label_indices(s)) for s in index.samples]  # multi: a;b
    samples = [(s.path, s.sha1, n, sp) for s, n, sp in zip(index.samples, names, splits)]
    identity = feature_identity(built.model, built.data_config, grayscale=cfg.grayscale)
    key = _key(
        {"identity": identity, "samples": samples, "folds": folds, "seed": cfg.seed, "c": C_GRID, "repeats": REPEATS}
    )
    cached = None if refresh else _read(key)
    if cached is not None:
        # The same images with the same labels (a version that only marked images reviewed, say): read back.
        cached.meta.update(cached=True, version=index.version, seconds_total=round(time.time() - t0, 2))
        return cached
    t1 = time.time()
    features, runtime = frozen_features(cfg, index, built.model, built.data_config, emit)
    t2 = time.time()
    # Multi-label: the 0/1 matrix, which the probe (one-vs-rest heads) and cleanlab (task "multilabel") take as is.
    labels = label_matrix(index) if index.task == MULTI else np.array([s.label for s in index.samples])
    probe = out_of_sample_probs(features.numpy(), labels, len(index.classes), folds, cfg.seed,
                                lambda d, t: emit("probe", d, t))  # fmt: skip
    t3 = time.time()
    emit("issues", 0, 1)
    found = find_issues(features.numpy(), probe.probs, labels, index.classes)
    emit("issues", 1, 1)
    images = _with_paths(found.images, [s[0] for s in samples], splits)
    seconds = {"setup": t1 - t0, "features": t2 - t1, "probe": t3 - t2, "issues": time.time() - t3}
    meta = {
        "data": cfg.data, "version": index.version, "root": str(index.root), "backbone": cfg.backbone,
        "weights": built.weights, "img_size": cfg.img_size, "classes": list(index.classes), "n_images": len(samples),
        "folds": probe.folds, "seed": cfg.seed, "probe_c": probe.c, "probe_accuracy": round(probe.accuracy, 4),
        "features": runtime.get("features", {}), "device": runtime.get("device"),
        "seconds": {k: round(v, 2) for k, v in seconds.items()}, "seconds_total": round(time.time() - t0, 2),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cached": False, "key": key,
    }  # fmt: skip
    result = ScanResult(images, found.overlap, meta)
    atomic_write_json(cache_dir() / "quality" / f"{key}.json", result.to_dict())
    return result


def _with_paths(images: pd.DataFrame, paths: list[str], splits: list[str]) -> pd.DataFrame:
    """Row numbers of near-duplicate partners as paths; whether a partner sits in another split (leakage)."""
    out = images.copy()
    out.insert(0, "path", paths)
    out.insert(1, "split", splits)
    out["cross_split"] = [any(splits[j] != splits[i] for j in d) for i, d in enumerate(images["duplicate_of"])]
    out["duplicate_of"] = [[paths[j] for j in d] for d in images["duplicate_of"]]
    return out


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()[:20]


def _read(key: str) -> ScanResult | None:
    try:
        data = json.loads((cache_dir() / "quality" / f"{key}.json").read_text(encoding="utf-8"))
        return ScanResult.from_dict(data) if data.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
