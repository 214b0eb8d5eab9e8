"""Evaluate a trained run on its validation/test split, or on another dataset with the same class names."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import DatasetError, RunError
from classifier.metrics import compute_metrics
from classifier.predict import LoadedRun, load_run, predict_items


def read_split(run_dir: str | Path) -> list[dict[str, str]]:
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise RunError(f"{run_dir} has no split.csv; pass --data to evaluate on a dataset")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def evaluation_items(run: LoadedRun, data: str | Path | None = None, split: str = "val") -> list[tuple[Path, int]]:
    """(image path, class index) pairs to evaluate: the run's own split, or the images of another dataset."""
    if split not in ("val", "test", "all"):
        raise RunError(f"split must be val, test or all, not {split!r}")
    names = {c: i for i, c in enumerate(run.class_names)}
    rows = read_split(run.run_dir) if (run.run_dir / "split.csv").is_file() else []
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
            return [(index.root / s.path, names[index.classes[s.label]]) for s in samples]
    chosen = [r for r in rows if split == "all" or r["split"] == split]
    if not chosen:
        raise RunError(f"{run.run_dir}: the {split} split is empty (train with --test-split for a test set)")
    missing = [r["path"] for r in chosen if not (root / r["path"]).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} images of the run's {split} split are missing under {root} "
            f"(e.g. {missing[0]}); pass --data with the dataset's current location"
        )
    return [(root / r["path"], names[r["label"]]) for r in chosen]


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """A run's `config.json`, or an ensemble's `ensemble.json` (both hold `class_names` and `dataset.root`)."""
    run_dir = Path(run_dir)
    for name in ("config.json", "ensemble.json"):
        path = run_dir / name
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise RunError(f"{path} is not valid JSON: {e}") from e
    raise RunError(f"{run_dir} is not a run or ensemble dir: it has no config.json or ensemble.json")


@dataclass
class ValPredictions:
    """A run's stored validation predictions (`val_predictions.csv`), what the Evaluate page computes from."""

    table: pd.DataFrame
    y_true: np.ndarray  # class indices; -1 for a label that is not among the class names
    probs: np.ndarray  # (n, C) float64
    class_names: list[str]
    root: str  # the dataset root the table's paths are relative to


def read_val_predictions(run_dir: str | Path) -> ValPredictions:
    """Read `val_predictions.csv` of a run (or ensemble) dir; RunError when the run has none yet."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    path = run_dir / "val_predictions.csv"
    if not path.is_file():
        raise RunError(f"{run_dir} has no val_predictions.csv yet: the run has not finished its evaluation")
    names = [str(c) for c in info["class_names"]]
    df = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "pred": str, "path": str})
    missing = [f"p_{c}" for c in names if f"p_{c}" not in df.columns]
    if missing:
        raise RunError(f"{path} lacks the probability columns {', '.join(missing)}")
    probs = df[[f"p_{c}" for c in names]].to_numpy(dtype=np.float64)
    y_true = df["label"].map({c: i for i, c in enumerate(names)}).fillna(-1).to_numpy(dtype=np.int64)
    return ValPredictions(df, y_true, probs, names, str(info["dataset"]["root"]))


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, split: str = "val", device: str = "cpu"
) -> dict[str, Any]:
    """All metrics (see classifier.metrics.compute_metrics) for `run_dir` on `split` of its data or of `data`."""
    run = load_run(run_dir, device=device)
    items = evaluation_items(run, data, split)
    probs = predict_items(run, [p for p, _ in items])
    metrics = compute_metrics(np.array([y for _, y in items]), probs, run.class_names)
    metrics["split"] = split
    return metrics
