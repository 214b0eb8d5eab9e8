"""cleanlab on features and out-of-sample probabilities: per image, how likely its label is wrong (and the label the
probe suggests), whether it nearly duplicates other images, how much of an outlier it is; per pair of classes, how
much they overlap.

Datalab finds the label issues (cleanlab's confident learning on the probabilities), the near duplicates and the
outliers (both from nearest neighbours of the features); `cleanlab.dataset.find_overlapping_classes` estimates how
often one class's images carry the other's label. cleanlab scores are qualities (near 0: surely a problem); here
every score is a severity, `1 - quality`, so within an issue type higher means more likely a problem.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

ISSUE_TYPES = ("label", "duplicate", "outlier", "overlap")  # the `issue` values of issues.csv, in this order


@dataclass
class Found:
    """Per image (rows in the order given): label, duplicate and outlier columns; per class pair: overlap."""

    images: pd.DataFrame
    overlap: pd.DataFrame


def find_issues(features: np.ndarray, probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Found:
    """Label issues, near duplicates and outliers per image, and overlapping class pairs.

    `labels`: class indices (n,), or a 0/1 matrix (n, classes) for multi-label data (then `suggested` is the set of
    classes with probability at least 0.5, and labels are lists of names joined by ';').

    Columns of `images`: given, suggested, label_score, is_label, duplicate_score, is_duplicate, duplicate_of (row
    numbers of the other images in its near-duplicate set), outlier_score, is_outlier."""
    from cleanlab import Datalab

    multi = labels.ndim == 2
    given = [np.flatnonzero(r).tolist() for r in labels] if multi else labels.tolist()
    lab = Datalab(data={"label": given}, label_name="label", task="multilabel" if multi else "classification",
                  verbosity=0)  # fmt: skip
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # notes about small datasets; the scores are what we report
        lab.find_issues(features=np.asarray(features, dtype=np.float32), pred_probs=probs,
                        issue_types={"label": {}, "near_duplicate": {}, "outlier": {}})  # fmt: skip
    label = lab.get_issues("label")
    dup = lab.get_issues("near_duplicate")
    out = lab.get_issues("outlier")
    if multi:
        suggested = [";".join(class_names[j] for j in np.flatnonzero(p >= 0.5)) for p in probs]
        given_names = [";".join(class_names[j] for j in g) for g in given]
    else:
        suggested = [class_names[j] for j in probs.argmax(axis=1)]
        given_names = [class_names[j] for j in given]
    images = pd.DataFrame(
        {
            "given": given_names,
            "suggested": suggested,
            "label_score": 1.0 - label["label_score"].to_numpy(dtype=float),
            "is_label": label["is_label_issue"].to_numpy(dtype=bool),
            "duplicate_score": 1.0 - dup["near_duplicate_score"].to_numpy(dtype=float),
            "is_duplicate": dup["is_near_duplicate_issue"].to_numpy(dtype=bool),
            "duplicate_of": [sorted(int(i) for i in s) for s in dup["near_duplicate_sets"]],
            "outlier_score": 1.0 - out["outlier_score"].to_numpy(dtype=float),
            "is_outlier": out["is_outlier_issue"].to_numpy(dtype=bool),
        }
    )
    return Found(images, overlapping_classes(labels, probs, class_names))


def overlapping_classes(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Pairs of classes with at least one image estimated to carry the other's label: class_a, class_b, images (that
    estimate) and score (cleanlab's joint probability: the share of the dataset swapped between the two), most
    overlapping first. None for multi-label data."""
    from cleanlab.dataset import find_overlapping_classes

    if labels.ndim == 2:  # multi-label: classes may rightly share an image, so swapped pairs are not a thing
        return pd.DataFrame(columns=["class_a", "class_b", "images", "score"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = find_overlapping_classes(labels=labels, pred_probs=probs)
    rows = [
        (class_names[int(r["Class Index A"])], class_names[int(r["Class Index B"])],
         int(r["Num Overlapping Examples"]), float(r["Joint Probability"]))
        for _, r in table.iterrows()
        if int(r["Num Overlapping Examples"]) > 0
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["class_a", "class_b", "images", "score"])
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
