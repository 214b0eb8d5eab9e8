"""Stratified, seeded train/val/test splits, respecting the splits a dataset already has."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from classifier.data.dataset import DatasetIndex
from classifier.errors import DatasetError


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
