"""Multi-label datasets: reading their CSV, the checks that make one trainable, and the label statistics the
summary and the Data page show.

Two CSV layouts are multi-label (`classifier.data.dataset` hands any CSV without a `label` column here):

- `path,labels[,split]`: the labels of an image in one cell, separated by spaces, or by `;` or `|` when a label
  has a space in it (the separator is decided for the whole file: `classifier.task.detect_separator`);
- one-hot: `path[,split]` plus one column per label holding 0 or 1.

An image with no label (an empty cell, all zeros) is allowed: it is a negative for every label. A path listed twice
is merged when its labels agree and an error naming both lines when they do not; a one-hot cell that is not 0 or 1
is an error naming its line and column; a `labels` column that is empty in every row is an error (without any
label there is nothing to learn). `check_labels` (called by `check_trainable`) refuses a label with fewer than two
images and, when the CSV gives the split, a label with no training image, naming the rows.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from classifier.errors import DatasetError
from classifier.task import detect_separator, split_labels


class DatasetIndex(Protocol):
    """What these functions read of a `classifier.data.dataset.DatasetIndex` (which imports this module)."""

    root: Path
    source: str
    classes: list[str]
    samples: list[Any]  # Sample: .path, .split, .labels
    csv_lines: dict[str, int]

    @property
    def has_splits(self) -> bool: ...


RESERVED = ("path", "split")
ONE_HOT_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
MAX_NAMED_ROWS = 5  # rows an error message lists before "and N more"


@dataclass
class CsvLabels:
    """A multi-label CSV read and checked: (path, label names, split) per row, and the line of each path."""

    rows: list[tuple[str, tuple[str, ...], str | None]]
    notes: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    layout: str = "labels"  # labels | one-hot


def read_rows(csv_path: Path, reader: csv.DictReader, max_rows: int, split_names: dict[str, str]) -> CsvLabels:
    """Read a multi-label CSV through `reader` (header already read): the `labels` column or the one-hot columns."""
    header = [(c or "").strip() for c in (reader.fieldnames or [])]
    lowered = [c.lower() for c in header]
    one_hot = [c for c in header if c.lower() not in RESERVED]
    if "path" not in lowered or ("labels" not in lowered and not one_hot):
        raise DatasetError(_columns_needed(csv_path, header))
    raw = []
    for i, row in enumerate(reader, start=2):
        if i - 1 > max_rows:
            raise DatasetError(f"{csv_path}: more than {max_rows} rows; split the dataset or raise the limit")
        raw.append((i, {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}))
    if "labels" in lowered:
        col = header[lowered.index("labels")]
        sep = detect_separator(r[col] for _, r in raw)
        if raw and not any(r[col] for _, r in raw):
            raise DatasetError(
                f"{csv_path}: the labels column is empty in every row; list each image's labels (separated by "
                "spaces, or ';' / '|' when a label has a space in it)"
            )
        parsed = [(i, r, tuple(sorted(set(split_labels(r[col], sep))))) for i, r in raw]
        layout = "labels"
    else:
        if any(all(r.get(c, "") not in ONE_HOT_VALUES for _, r in raw) for c in one_hot):
            raise DatasetError(_columns_needed(csv_path, header))  # a column that is never 0/1: not one-hot at all
        parsed = [(i, r, _one_hot_labels(csv_path, i, r, one_hot)) for i, r in raw]
        layout = "one-hot"
    return _merge(csv_path, parsed, header, split_names, layout)


def _columns_needed(csv_path: Path, header: list[str]) -> str:
    return (
        f"{csv_path}: a dataset CSV needs the columns path,label (one class per image), path,labels (several labels "
        f"per image) or path plus one 0/1 column per label (found: {', '.join(header) or 'none'})"
    )


def _one_hot_labels(csv_path: Path, line: int, row: dict[str, str], columns: list[str]) -> tuple[str, ...]:
    out = []
    for c in columns:
        value = ONE_HOT_VALUES.get(row.get(c, ""))
        if value is None:
            raise DatasetError(
                f"{csv_path}, line {line}, column {c!r}: {row.get(c, '')!r} is not 0 or 1 (a one-hot CSV has one "
                "0/1 column per label)"
            )
        if value:
            out.append(c)
    return tuple(sorted(out))


def _merge(csv_path: Path, parsed: list, header: list[str], split_names: dict[str, str], layout: str) -> CsvLabels:
    """Paths checked (inside the CSV's folder), repeats merged when their labels agree, an error naming both lines
    when they do not."""
    path_col = header[[c.lower() for c in header].index("path")]
    split_col = next((c for c in header if c.lower() == "split"), None)
    out = CsvLabels([], layout=layout)
    index: dict[str, int] = {}
    repeated = 0
    for line, row, labels in parsed:
        if not row.get(path_col):
            raise DatasetError(f"{csv_path}, line {line}: empty path")
        rel = Path(row[path_col])
        if rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(f"{csv_path}, line {line}: path {row[path_col]!r} points outside the CSV's folder")
        key = rel.as_posix()
        given = (row.get(split_col) or "").lower() if split_col else ""
        split = split_names.get(given) if given else None
        if key in index:
            before = out.rows[index[key]][1]
            if before != labels:
                raise DatasetError(
                    f"{csv_path}, lines {out.lines[key]} and {line}: {key!r} is listed with labels "
                    f"{_show(before)} and with {_show(labels)}; list each image once with all its labels"
                )
            repeated += 1
            continue
        index[key] = len(out.rows)
        out.rows.append((key, labels, split))
        out.lines[key] = line
    if repeated:
        out.notes.append(f"{csv_path.name}: {repeated} rows repeated a path listed before with the same labels; merged")
    return out


def _show(labels: Sequence[str]) -> str:
    return "{" + ", ".join(labels) + "}" if labels else "{} (none)"


def named_rows(index: DatasetIndex, paths: Sequence[str]) -> str:
    """'line 7 (a.jpg)', 'lines 3, 9 (a.jpg, b.jpg)', ... for an error message (at most MAX_NAMED_ROWS)."""
    shown = list(paths)[:MAX_NAMED_ROWS]
    lines = [str(index.csv_lines[p]) for p in shown if p in index.csv_lines]
    more = f" and {len(paths) - len(shown)} more" if len(paths) > len(shown) else ""
    where = f"line{'s' if len(lines) > 1 else ''} {', '.join(lines)} " if len(lines) == len(shown) else ""
    return f"{where}({', '.join(shown)}{more})"


def check_labels(index: DatasetIndex) -> None:
    """DatasetError naming the rows: a label with fewer than two images; with splits given by the CSV, a label that
    has images in validation (or test) but none in training."""
    where = index.source or str(index.root)
    if len(index.classes) < 2:
        raise DatasetError(
            f"{where}: only {len(index.classes)} label ({', '.join(index.classes) or 'none'}) is used; a multi-label "
            "dataset needs at least two labels"
        )
    by_label: dict[int, list[str]] = {c: [] for c in range(len(index.classes))}
    for s in index.samples:
        for c in s.labels or ():
            by_label[c].append(s.path)
    rare = [c for c, paths in by_label.items() if len(paths) < 2]
    if rare:
        parts = [f"{index.classes[c]!r} {named_rows(index, by_label[c])}" for c in rare]
        raise DatasetError(
            f"{where}: label{'s' if len(rare) > 1 else ''} with fewer than two images: {'; '.join(parts)}. Every "
            "label needs one image to train on and one to validate; add images or remove the label."
        )
    if not index.has_splits:
        return
    split_of = {s.path: s.split or "train" for s in index.samples}
    for c, paths in by_label.items():
        if not any(split_of[p] == "train" for p in paths):
            raise DatasetError(
                f"{where}: label {index.classes[c]!r} has no training image: it is only in "
                f"{'/'.join(sorted({split_of[p] for p in paths}))} {named_rows(index, paths)}. Move one of them to "
                "train or give the label training images."
            )


def label_matrix(index: DatasetIndex) -> np.ndarray:
    """(images, labels) 0/1 matrix of a multi-label index, in sample order."""
    y = np.zeros((len(index.samples), len(index.classes)), dtype=np.int64)
    for i, s in enumerate(index.samples):
        y[i, list(s.labels or ())] = 1
    return y


def label_stats(index: DatasetIndex, splits: Sequence[str] | None = None) -> dict[str, Any]:
    """What the summary shows of a multi-label dataset: images per label (per split), how many labels the images
    have (`labels_per_image[k]` = images with k labels), which labels share images (`cooccurrence[a][b]` = images
    with both; the diagonal is the label's count) and the images with no label."""
    y = label_matrix(index)
    sp = list(splits) if splits is not None else [s.split or "all" for s in index.samples]
    per_split: dict[str, dict[str, int]] = {}
    for name in dict.fromkeys(sp):
        rows = np.array([x == name for x in sp])
        per_split[name] = {c: int(y[rows, j].sum()) for j, c in enumerate(index.classes)}
    k = y.sum(axis=1)
    hist = Counter(int(v) for v in k)
    return {
        "images_per_label": {c: int(y[:, j].sum()) for j, c in enumerate(index.classes)},
        "per_split": per_split,
        "labels_per_image": [hist.get(i, 0) for i in range(int(k.max(initial=0)) + 1)],
        "cooccurrence": (y.T @ y).astype(int).tolist(),
        "no_label": int((k == 0).sum()),
        "mean_labels": float(k.mean()) if len(k) else 0.0,
    }
