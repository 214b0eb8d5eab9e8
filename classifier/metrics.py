"""Validation metrics for a trained classifier, as plain JSON-serialisable data.

Every function takes integer class indices `y_true` (n,) and class probabilities `probs` (n, C) and returns
python floats, ints, lists and dicts, so results can go straight into a run's `metrics.json` and into the
figure builders in `classifier.figures`. Metrics come from scikit-learn wherever it has them; the expected
calibration error is the one computed here. Undefined values (a class with no positives has no ROC AUC) are
`None`, never NaN, so `json.dumps(..., allow_nan=False)` always succeeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

ECE_BINS = 15
# Probabilities are clipped here before taking logs so a confidently wrong prediction has a finite loss.
_EPS = 1e-15


def _validate(y_true: Any, probs: Any, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values; return (y_true as int64, probs as float64 with rows summing to 1)."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.size == 0 or p.size == 0:
        raise ValueError("Cannot compute metrics on an empty validation set: y_true and probs have no samples.")
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices, got shape {y.shape}.")
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n_samples, n_classes), got shape {p.shape}.")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} samples but probs has {p.shape[0]} rows.")
    n_classes = p.shape[1]
    if n_classes < 2:
        raise ValueError(f"probs must have at least 2 class columns, got {n_classes}.")
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"class_names has {len(class_names)} names but probs has {n_classes} columns.")
    if not np.issubdtype(y.dtype, np.number) or (
        not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0)
    ):
        raise ValueError("y_true must hold integer class indices.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true holds class indices outside 0..{n_classes - 1}: {sorted(set(y.tolist()))[:10]}.")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values.")
    if np.any(p < 0):
        raise ValueError("probs contains negative values; pass probabilities (softmax output), not logits.")
    sums = p.sum(axis=1)
    if np.any(sums <= 0):
        raise ValueError("probs has rows that sum to 0; each row must be a probability distribution.")
    # Always renormalise: float32 softmax rows drift from 1 and sklearn's log_loss rejects that drift.
    return y, p / sums[:, None]


def _num(value: Any) -> float | None:
    """A plain python float, or None for NaN/inf/None, so the result survives `json.dumps(allow_nan=False)`."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean_defined(values: list[float | None]) -> float | None:
    """Mean over the defined (non-None) values; None if there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _per_sample_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample: -log p(true class)."""
    return -np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))


def _class_auc(y: np.ndarray, p: np.ndarray, c: int) -> float | None:
    """One-vs-rest ROC AUC of class c; None when class c has no positives or no negatives."""
    positives = y == c
    if positives.all() or not positives.any():
        return None
    return _num(roc_auc_score(positives, p[:, c]))


def _class_ap(y: np.ndarray, p: np.ndarray, c: int) -> float | None:
    """One-vs-rest average precision of class c; None when class c has no positives (AP is then undefined)."""
    positives = y == c
    if not positives.any():
        return None
    return _num(average_precision_score(positives, p[:, c]))


def reliability_bins(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Bin samples by confidence (max probability) into `n_bins` equal-width bins and compare with accuracy.

    Bin i holds confidences in (edge[i], edge[i+1]]. The expected calibration error is
    ECE = sum over bins of |accuracy_bin - mean_confidence_bin| * n_bin / n  (Guo et al., 2017).
    scikit-learn has no ECE, hence the hand computation. Empty bins have None confidence/accuracy.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}.")
    y, p = _validate(y_true, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" puts a confidence equal to an edge into the bin that edge closes, i.e. (lo, hi].
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    n = len(y)
    bin_conf: list[float | None] = []
    bin_acc: list[float | None] = []
    bin_count: list[int] = []
    ece = 0.0
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        bin_count.append(count)
        if count == 0:
            bin_conf.append(None)
            bin_acc.append(None)
            continue
        conf_b = float(confidence[mask].mean())
        acc_b = float(correct[mask].mean())
        bin_conf.append(conf_b)
        bin_acc.append(acc_b)
        ece += abs(acc_b - conf_b) * count / n
    return {
        "bin_edges": [float(e) for e in edges],
        "bin_confidence": bin_conf,
        "bin_accuracy": bin_acc,
        "bin_count": bin_count,
        "ece": float(ece),
    }


def compute_metrics(y_true: Any, probs: Any, class_names: list[str], *, top_k: int = 5) -> dict[str, Any]:
    """All summary metrics for one validation set, as a JSON-serialisable dict (see module docstring).

    `top_k_accuracy` uses k = min(top_k, C - 1), at least 1 (k >= C would be trivially 1.0); the k used is
    stored as `top_k`. For binary problems ROC AUC and average precision are those of the positive class
    (index 1); for more classes they are one-vs-rest macro averages over the classes present in y_true.
    F1 averages use labels=range(C), so the macro average equals the mean of `per_class` F1.
    """
    y, p = _validate(y_true, probs, class_names)
    n, n_classes = p.shape
    labels = list(range(n_classes))
    pred = p.argmax(axis=1)

    k = max(1, min(int(top_k), n_classes - 1))
    # sklearn reads a binary problem's scores as the positive-class column.
    score = p[:, 1] if n_classes == 2 else p
    top_k_acc = top_k_accuracy_score(y, score, k=k, labels=labels)

    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aucs = [_class_auc(y, p, c) for c in labels]
    aps = [_class_ap(y, p, c) for c in labels]
    if n_classes == 2:
        roc_auc_macro, ap_macro = aucs[1], aps[1]
    else:
        roc_auc_macro, ap_macro = _mean_defined(aucs), _mean_defined(aps)

    per_class = [
        {
            "name": str(class_names[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
            "roc_auc": aucs[c],
            "average_precision": aps[c],
        }
        for c in labels
    ]
    cm = confusion_matrix(y, pred, labels=labels)
    return {
        "n_val": int(n),
        "n_classes": int(n_classes),
        "class_names": [str(c) for c in class_names],
        "accuracy": float(accuracy_score(y, pred)),
        "top_k": int(k),
        "top_k_accuracy": float(top_k_acc),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "roc_auc_macro": _num(roc_auc_macro),
        "average_precision_macro": _num(ap_macro),
        "ece": reliability_bins(y, p)["ece"],
        "log_loss": _num(log_loss(y, p, labels=labels)),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def roc_curves(y_true: Any, probs: Any, class_names: list[str]) -> list[dict[str, Any]]:
    """One-vs-rest ROC curve per class: {name, fpr, tpr, auc}; fpr/tpr/auc are None where undefined."""
    y, p = _validate(y_true, probs, class_names)
    curves = []
    for c, name in enumerate(class_names):
        positives = y == c
        if positives.all() or not positives.any():
            curves.append({"name": str(name), "fpr": None, "tpr": None, "auc": None})
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, c])
        curves.append({"name": str(name), "fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": _class_auc(y, p, c)})
    return curves


def pr_curves(y_true: Any, probs: Any, class_names: list[str]) -> list[dict[str, Any]]:
    """One-vs-rest precision-recall curve per class: {name, precision, recall, average_precision, prevalence}.

    `prevalence` (share of positives) is the precision of a random classifier, the chart's baseline.
    Curves are None for a class with no positives.
    """
    y, p = _validate(y_true, probs, class_names)
    curves = []
    for c, name in enumerate(class_names):
        positives = y == c
        prevalence = float(positives.mean())
        if not positives.any():
            curves.append(
                {
                    "name": str(name),
                    "precision": None,
                    "recall": None,
                    "average_precision": None,
                    "prevalence": prevalence,
                }
            )
            continue
        precision, recall, _ = precision_recall_curve(positives, p[:, c])
        curves.append(
            {
                "name": str(name),
                "precision": precision.tolist(),
                "recall": recall.tolist(),
                "average_precision": _class_ap(y, p, c),
                "prevalence": prevalence,
            }
        )
    return curves


def top_losses(y_true: Any, probs: Any, k: int | None = None) -> list[dict[str, Any]]:
    """Samples sorted by cross-entropy loss, worst first: {index, true, pred, loss, prob_true, prob_pred}.

    `k` limits the list to the k worst samples; None returns all. Ties keep sample order.
    """
    y, p = _validate(y_true, probs)
    loss = _per_sample_loss(y, p)
    pred = p.argmax(axis=1)
    order = np.argsort(-loss, kind="stable")
    if k is not None:
        order = order[: max(0, int(k))]
    return [
        {
            "index": int(i),
            "true": int(y[i]),
            "pred": int(pred[i]),
            "loss": float(loss[i]),
            "prob_true": float(p[i, y[i]]),
            "prob_pred": float(p[i, pred[i]]),
        }
        for i in order
    ]


def most_confused(confusion_matrix: Any, class_names: list[str], min_count: int = 1) -> list[tuple[str, str, int]]:
    """Off-diagonal (true, predicted, count) pairs with count >= min_count (never 0), most frequent first.

    Ties keep row-major order (true class, then predicted class).
    """
    cm = np.asarray(confusion_matrix)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion_matrix must be square with {len(class_names)} rows, got shape {cm.shape}.")
    pairs = [
        (str(class_names[t]), str(class_names[q]), int(cm[t, q]))
        for t in range(cm.shape[0])
        for q in range(cm.shape[1])
        if t != q and cm[t, q] >= min_count and cm[t, q] > 0
    ]
    # sorted() is stable, so equal counts stay in row-major order.
    return sorted(pairs, key=lambda pair: -pair[2])


OUTCOMES = ("all", "correct", "incorrect")


def loss_gallery(
    y_true: Any, probs: Any, *, true: int | None = None, pred: int | None = None, outcome: str = "all"
) -> list[dict[str, Any]]:
    """`top_losses` rows (worst first) of the samples with true class `true` and predicted class `pred` (None: any)
    and the given outcome ("all", "correct", "incorrect"): the error-analysis galleries of Evaluate and Explain."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    rows = top_losses(y_true, probs)
    return [
        r
        for r in rows
        if (true is None or r["true"] == true)
        and (pred is None or r["pred"] == pred)
        and (outcome == "all" or (r["true"] == r["pred"]) == (outcome == "correct"))
    ]
