"""Evaluate a trained run on its validation/test split, or on another dataset with the same class names.

An item's target is a class index, or for a multi-label run a tuple of 0/1 per label (hashable, so ensembles can
compare their members' items as sets); metrics of a multi-label run use its thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from classifier import rundir
from classifier.errors import DatasetError, RunError
from classifier.metrics import compute_metrics
from classifier.predict import LoadedRun, load_run, predict_items
from classifier.task import MULTI


def _target(run: LoadedRun, labels: list[str]) -> int | tuple[int, ...]:
    """A class index, or (multi-label run) the 0/1 tuple over the run's labels; DatasetError for an unknown name."""
    names = run.class_names
    unknown = [n for n in labels if n not in names]
    if unknown:
        raise DatasetError(f"labels {', '.join(unknown)} are not among the run's classes ({', '.join(names)})")
    if run.task == MULTI:
        return tuple(int(c in labels) for c in names)
    return names.index(labels[0])


def evaluation_items(run: LoadedRun, data: str | Path | None = None, split: str = "val") -> list[tuple[Path, Any]]:
    """(image path, target) pairs to evaluate: the run's own split, or the images of another dataset."""
    if split not in ("val", "test", "all"):
        raise RunError(f"split must be val, test or all, not {split!r}")
    names = {c: i for i, c in enumerate(run.class_names)}
    rows = rundir.read_split(run.run_dir)
    root = Path(run.config["dataset"]["root"])
    if data is not None:
        from classifier.data.dataset import index_dataset

        index = index_dataset(data)
        if rows and all((index.root / r["path"]).is_file() for r in rows):
            root = index.root  # the same dataset, moved: keep the run's split
        else:
            unknown = sorted(set(index.classes) - set(names))
            if unknown:
                raise DatasetError(
                    f"{data}: classes {', '.join(unknown)} are not among the run's classes "
                    f"({', '.join(run.class_names)})"
                )
            want = {"val": ("val",), "test": ("test",), "all": ("train", "val", "test", None)}[split]
            samples = (
                index.samples
                if not index.has_splits or split == "all"
                else [s for s in index.samples if s.split in want]
            )
            return [(index.root / s.path, _target(run, [index.classes[c] for c in index.label_indices(s)]))
                    for s in samples]  # fmt: skip
    chosen = [r for r in rows if split == "all" or r["split"] == split]
    if not chosen:
        raise RunError(f"{run.run_dir}: the {split} split is empty (train with --test-split for a test set)")
    missing = [r["path"] for r in chosen if not (root / r["path"]).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} images of the run's {split} split are missing under {root} "
            f"(e.g. {missing[0]}); pass --data with the dataset's current location"
        )
    return [(root / r["path"], _target(run, r["labels"] if "labels" in r else [r["label"]])) for r in chosen]


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, split: str = "val", device: str = "cpu"
) -> dict[str, Any]:
    """All metrics (see classifier.metrics.compute_metrics) for `run_dir` on `split` of its data or of `data`."""
    run = load_run(run_dir, device=device)
    items = evaluation_items(run, data, split)
    probs = predict_items(run, [p for p, _ in items])
    metrics = compute_metrics(np.array([y for _, y in items]), probs, run.class_names, thresholds=run.thresholds)
    metrics["split"] = split
    return metrics
