"""The two tasks a dataset (and so a run) can be: one class per image, or any number of labels per image.

A dataset index records its task (`classifier.data.dataset.DatasetIndex.task`) and a run records it in config.json
(`task`); a run without one is single-label (every run written before multi-label existed). Every reader asks
`task_of` once and branches there.

The label-text helpers are shared by the dataset CSV reader and the run files (split.csv and val_predictions.csv
of a multi-label run are themselves valid multi-label dataset CSVs): labels in one cell are separated by spaces,
or by `;` or `|` when a label has a space in it.

    >>> sep = label_separator(["red car", "bus"])
    >>> join_labels(["red car", "bus"], sep), split_labels("red car;bus", sep)
    ('red car;bus', ['red car', 'bus'])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SINGLE = "single-label"
MULTI = "multilabel"
TASKS = (SINGLE, MULTI)
DEFAULT_THRESHOLD = 0.5  # a label is predicted when its sigmoid probability reaches this (unless tuned per label)
SEPARATORS = (" ", ";", "|")  # in this order of preference: the first that no label name contains


def task_of(info: Mapping[str, Any] | None) -> str:
    """The task of a run's config.json, an ensemble's ensemble.json or a metrics.json (single-label when unset)."""
    task = (info or {}).get("task") or SINGLE
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def is_multilabel(info: Mapping[str, Any] | None) -> bool:
    return task_of(info) == MULTI


def label_separator(names: Iterable[str]) -> str:
    """The separator for a cell of these label names: a space, else `;`, else `|` (the first no name contains).
    ValueError when every one of them appears in some name: such a set cannot be written one cell per image."""
    names = list(names)
    for sep in SEPARATORS:
        if not any(sep in n for n in names):
            return sep
    raise ValueError("label names contain spaces, ';' and '|': no separator is left to list them in one cell")


def detect_separator(cells: Iterable[str]) -> str:
    """The separator a dataset CSV's labels column uses: `|` when any cell holds one, else `;` when any cell holds
    one, else spaces. Decided for the whole file, so a lone label with a space ("red car;") is not split apart."""
    cells = list(cells)
    for sep in ("|", ";"):
        if any(sep in c for c in cells):
            return sep
    return " "


def split_labels(text: str, sep: str) -> list[str]:
    """The label names in one cell (empty parts dropped: a trailing separator or an empty cell is no label)."""
    parts = text.split() if sep == " " else text.split(sep)
    return [p.strip() for p in parts if p.strip()]


def join_labels(names: Sequence[str], sep: str) -> str:
    return sep.join(names)


def multi_hot(label_sets: Iterable[Iterable[int]], n_classes: int) -> np.ndarray:
    """(n, C) 0/1 int matrix from label index sets."""
    sets = list(label_sets)
    out = np.zeros((len(sets), n_classes), dtype=np.int64)
    for i, s in enumerate(sets):
        out[i, list(s)] = 1
    return out


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """float64 probabilities from logits (n, C): softmax over the classes (single-label) or a sigmoid per label."""
    z = np.asarray(logits, dtype=np.float64)
    if task == MULTI:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
