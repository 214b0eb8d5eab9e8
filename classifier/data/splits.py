"""Stratified, seeded train/val/test splits, respecting the splits a dataset already has.

Single-label data is stratified per class; multi-label data by iterative stratification (Sechidis et al., 2011, as
implemented by the `iterative-stratification` package), which keeps each label's share about the same in every
split, followed by a repair pass so that every label with at least two images is in both train and validation.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from classifier.data.dataset import DatasetIndex
from classifier.data.multilabel import label_matrix
from classifier.errors import DatasetError
from classifier.task import MULTI


def assign_splits(index: DatasetIndex, val_split: float = 0.2, test_split: float = 0.0, seed: int = 0) -> list[str]:
    """Return "train" / "val" / "test" for every sample of `index`, in order.

    Splits given by the source (train/ and val/ folders, a CSV `split` column) are kept. Otherwise each class
    is shuffled with `seed` and cut by the fractions; every class with two or more images gets at least one
    validation image and keeps at least one training image.

    >>> splits = assign_splits(index, val_split=0.2, seed=0)  # doctest: +SKIP
    """
    if not 0.0 < val_split < 1.0 or not 0.0 <= test_split < 1.0 or val_split + test_split >= 1.0:
        raise DatasetError(f"invalid split fractions: val {val_split}, test {test_split} (each in [0, 1), sum below 1)")
    if index.base is not None:
        # A dataset version: the split of the files as they are, so relabelling or excluding an image never moves
        # another one between train and validation, and runs before and after a fix are scored on the same images.
        base = dict(zip((s.path for s in index.base.samples), assign_splits(index.base, val_split, test_split, seed)))
        return [base[s.path] for s in index.samples]
    if index.has_splits:
        return [s.split or "train" for s in index.samples]
    if index.task == MULTI:
        return _multilabel_splits(index, val_split, test_split, seed)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(index.samples):
        # Samples from a train/ folder without a val/ folder still come here: val is drawn from them.
        if s.split in (None, "train"):
            by_class[s.label].append(i)
    out = [s.split or "train" for s in index.samples]
    for label in sorted(by_class):
        idx = np.array(by_class[label])
        rng.shuffle(idx)
        n = len(idx)
        if n < 2:
            continue
        n_test = int(round(n * test_split)) if n >= 3 and test_split > 0 else 0
        n_test = min(max(n_test, 1 if test_split > 0 and n >= 3 else 0), n - 2)
        n_val = min(max(1, int(round(n * val_split))), n - 1 - n_test)
        for j in idx[:n_val]:
            out[j] = "val"
        for j in idx[n_val : n_val + n_test]:
            out[j] = "test"
    return out


def _multilabel_splits(index: DatasetIndex, val_split: float, test_split: float, seed: int) -> list[str]:
    """Iterative stratification of the images without a given split: test first (when asked), then validation
    from the rest; seeded, without touching the global RNG. Then `_repair`."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    out = [s.split or "train" for s in index.samples]
    pool = np.array([i for i, s in enumerate(index.samples) if s.split in (None, "train")])
    if len(pool) < 2:
        return out
    y = label_matrix(index)
    for name, share, offset in (("test", test_split, 1), ("val", val_split / (1.0 - test_split), 0)):
        left = np.array([i for i in pool if out[i] == "train"])
        if share <= 0 or len(left) < 2:
            continue
        # One image at least, and one left to train on.
        n_out = min(max(1, int(round(share * len(left)))), len(left) - 1)
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_out, random_state=seed + offset)
        _, chosen = next(splitter.split(np.zeros((len(left), 1)), y[left]))
        for j in chosen:
            out[left[j]] = name
    _repair(out, y, pool, np.random.default_rng(seed))
    return out


def _repair(out: list[str], y: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> None:
    """Move single images so every label with two or more images in `pool` has one in train and one in validation.

    Iterative stratification keeps proportions but does not promise that a label with two or three images lands in
    both splits. A move picks, among the label's images in the split that has plenty, one whose other labels keep an
    image where they are (fewest labels first, seeded ties), rarest labels first; a few rounds settle any knock-on.
    """
    counts = y[pool].sum(axis=0)
    order = [c for c in np.argsort(counts, kind="stable") if counts[c] >= 2]
    for _ in range(3):
        moved = False
        for c in order:
            members = [i for i in pool if y[i, c]]
            where = {k: [i for i in members if out[i] == k] for k in ("train", "val", "test")}
            if not where["val"] and len(where["train"]) >= 2:
                out[_least_harm(where["train"], out, y, pool, rng)] = "val"
                moved = True
            elif not where["train"]:
                cands = where["test"] or (where["val"] if len(where["val"]) >= 2 else [])
                if cands:
                    out[_least_harm(cands, out, y, pool, rng)] = "train"
                    moved = True
        if not moved:
            return


def _least_harm(cands: list[int], out: list[str], y: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> int:
    """The candidate whose move leaves every other label of it still present in its current split, else the one
    with the fewest labels (seeded ties)."""

    def cost(i: int) -> tuple[int, int, float]:
        stranded = sum(1 for c in np.flatnonzero(y[i]) if sum(1 for j in pool if y[j, c] and out[j] == out[i]) < 2)
        return stranded, int(y[i].sum()), float(rng.random())

    return min(cands, key=cost)
