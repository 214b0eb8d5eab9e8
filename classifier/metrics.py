"""Validation metrics for a trained classifier, as plain JSON-serialisable data.

Every single-label function takes integer class indices `y_true` (n,) and class probabilities `probs` (n, C) and
returns
python floats, ints, lists and dicts, so results can go straight into a run's `metrics.json` and into the
figure builders in `classifier.figures`. Metrics come from scikit-learn wherever it has them; the expected
calibration error is the one computed here. Undefined values (a class with no positives has no ROC AUC) are
`None`, never NaN, so `json.dumps(..., allow_nan=False)` always succeeds.

Multi-label sets (`y_true` a 0/1 matrix, images x labels; `probs` each label's sigmoid) are scored by
`multilabel_metrics`; `compute_metrics`, `roc_curves` and `pr_curves` take either, telling them apart by the shape
of `y_true`, so a caller passes what its run has and never branches itself.
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
    hamming_loss,
    label_ranking_average_precision_score,
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


def compute_metrics(
    y_true: Any, probs: Any, class_names: list[str], *, top_k: int = 5, thresholds: Any = None, tuned: bool = False
) -> dict[str, Any]:
    """All summary metrics for one validation set, as a JSON-serialisable dict (see module docstring). A 0/1
    matrix `y_true` (images x labels) is a multi-label set: `multilabel_metrics` with `thresholds` (None: 0.5).

    `top_k_accuracy` uses k = min(top_k, C - 1), at least 1 (k >= C would be trivially 1.0); the k used is
    stored as `top_k`. For binary problems ROC AUC and average precision are those of the positive class
    (index 1); for more classes they are one-vs-rest macro averages over the classes present in y_true.
    F1 averages use labels=range(C), so the macro average equals the mean of `per_class` F1.
    """
    if np.ndim(y_true) == 2:
        return multilabel_metrics(y_true, probs, class_names, thresholds, tuned=tuned)
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


def _positives(y_true: Any, probs: Any, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(positives (n, C) bool, probs): one-vs-rest for class indices, the 0/1 matrix itself for multi-label."""
    if np.ndim(y_true) == 2:
        y, p = _validate_multi(y_true, probs, class_names)
        return y == 1, p
    y, p = _validate(y_true, probs, class_names)
    return y[:, None] == np.arange(p.shape[1])[None, :], p


def roc_curves(y_true: Any, probs: Any, class_names: list[str]) -> list[dict[str, Any]]:
    """ROC curve per class (one-vs-rest) or per label (multi-label): {name, fpr, tpr, auc}; None where undefined."""
    pos, p = _positives(y_true, probs, class_names)
    curves = []
    for c, name in enumerate(class_names):
        positives = pos[:, c]
        if positives.all() or not positives.any():
            curves.append({"name": str(name), "fpr": None, "tpr": None, "auc": None})
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, c])
        auc = _num(roc_auc_score(positives, p[:, c]))
        curves.append({"name": str(name), "fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc})
    return curves


def pr_curves(y_true: Any, probs: Any, class_names: list[str]) -> list[dict[str, Any]]:
    """Precision-recall curve per class (one-vs-rest) or per label (multi-label): {name, precision, recall,
    average_precision, prevalence}.

    `prevalence` (share of positives) is the precision of a random classifier, the chart's baseline.
    Curves are None for a class with no positives.
    """
    pos, p = _positives(y_true, probs, class_names)
    curves = []
    for c, name in enumerate(class_names):
        positives = pos[:, c]
        prevalence = float(positives.mean())
        if not positives.any():
            curves.append({"name": str(name), "precision": None, "recall": None, "average_precision": None,
                           "prevalence": prevalence})  # fmt: skip
            continue
        precision, recall, _ = precision_recall_curve(positives, p[:, c])
        curves.append({"name": str(name), "precision": precision.tolist(), "recall": recall.tolist(),
                       "average_precision": _num(average_precision_score(positives, p[:, c])),
                       "prevalence": prevalence})  # fmt: skip
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


# --- multi-label -------------------------------------------------------------------------------------------------
# y_true is a 0/1 matrix (n, labels), probs each label's sigmoid probability (rows need not sum to 1). A label is
# predicted when its probability reaches its threshold (0.5 unless tuned on validation by `tune_thresholds`).

DEFAULT_THRESHOLD = 0.5
MIN_TUNE_POSITIVES = 5  # below this many validation positives a tuned threshold rests on one or two images
ML_OUTCOMES = ("all", "false positives", "false negatives", "mistakes", "correct")


def _validate_multi(y_true: Any, probs: Any, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check a multi-label (y, probs) pair; (y as int64 0/1, probs as float64), both (n, labels)."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.size == 0 or p.size == 0:
        raise ValueError("Cannot compute metrics on an empty validation set: y_true and probs have no samples.")
    if y.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"multi-label y_true and probs must both be (n_samples, n_labels), got {y.shape}, {p.shape}.")
    if class_names is not None and len(class_names) != p.shape[1]:
        raise ValueError(f"class_names has {len(class_names)} names but probs has {p.shape[1]} columns.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label y_true must hold only 0 and 1.")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("multi-label probs must be finite and within [0, 1] (each label's sigmoid, not logits).")
    return y.astype(np.int64), p


def _thresholds(thresholds: Any, n_labels: int) -> np.ndarray:
    t = np.full(n_labels, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if t.shape != (n_labels,):
        raise ValueError(f"thresholds must hold one value per label ({n_labels}), got shape {t.shape}.")
    return t


def predict_labels(probs: Any, thresholds: Any = None) -> np.ndarray:
    """0/1 (n, labels): each label whose probability reaches its threshold."""
    p = np.asarray(probs, dtype=np.float64)
    return (p >= _thresholds(thresholds, p.shape[1])[None, :]).astype(np.int64)


def mean_average_precision(y_true: Any, probs: Any) -> float:
    """Macro average precision over the labels with at least one positive (mAP; threshold-free)."""
    y, p = _validate_multi(y_true, probs)
    aps = [average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
    return float(np.mean(aps)) if aps else 0.0


def tune_thresholds(y_true: Any, probs: Any) -> list[float]:
    """Per label, the threshold that maximises its F1 on these images: halfway between the lowest probability
    still predicted positive and the next lower probability (the same decisions here, with the margin split rather
    than sitting on an image), ties resolved towards 0.5. A label without positives keeps 0.5."""
    y, p = _validate_multi(y_true, probs)
    out = []
    for c in range(y.shape[1]):
        if not y[:, c].any():
            out.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(y[:, c], p[:, c])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        below = [p[:, c][p[:, c] < cuts[i]] for i in best]
        cand = [(cuts[i] + b.max()) / 2 if len(b) else cuts[i] / 2 for i, b in zip(best, below)]
        out.append(float(min(cand, key=lambda t: (abs(t - DEFAULT_THRESHOLD), t))))
    return out


def _label_counts(y: np.ndarray, pred: np.ndarray, c: int) -> dict[str, int]:
    return {
        "tp": int(((pred[:, c] == 1) & (y[:, c] == 1)).sum()),
        "fp": int(((pred[:, c] == 1) & (y[:, c] == 0)).sum()),
        "fn": int(((pred[:, c] == 0) & (y[:, c] == 1)).sum()),
        "tn": int(((pred[:, c] == 0) & (y[:, c] == 0)).sum()),
    }


def _decisions(y: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The threshold-dependent figures: headline and per label (precision, recall, F1, confusion counts)."""
    labels = list(range(y.shape[1]))
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y, pred)),
        "hamming_loss": float(hamming_loss(y, pred)),
        "per_label": [
            {
                "name": str(names[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                **_label_counts(y, pred, c),
            }
            for c in labels
        ],
    }


def multilabel_metrics(
    y_true: Any, probs: Any, class_names: list[str], thresholds: Any = None, *, tuned: bool = False
) -> dict[str, Any]:
    """Every multi-label figure of metrics.json: mAP, micro/macro F1, subset accuracy, Hamming loss, label-ranking
    AP, ROC AUC (macro over labels that have positives and negatives), binary log loss, per label (precision,
    recall, F1, AP, ROC AUC, support, tp/fp/fn/tn, threshold), the thresholds used, `label_confusion` (a, b: images
    where a was missed while b was predicted wrongly) and, when the thresholds are not all 0.5, the same decisions
    at 0.5 (`at_default`). `tuned` records that the thresholds came from `tune_thresholds`; a label with fewer than
    `MIN_TUNE_POSITIVES` validation positives is then listed in `threshold_warnings`."""
    y, p = _validate_multi(y_true, probs, class_names)
    names = [str(c) for c in class_names]
    t = _thresholds(thresholds, y.shape[1])
    pred = predict_labels(p, t)
    out = {"task": "multilabel", "n_val": int(len(y)), "n_classes": int(y.shape[1]), "class_names": names}
    decisions = _decisions(y, pred, names)
    aps = [_num(average_precision_score(y[:, c], p[:, c])) if y[:, c].any() else None for c in range(y.shape[1])]
    aucs = [_num(roc_auc_score(y[:, c], p[:, c])) if 0 < y[:, c].sum() < len(y) else None for c in range(y.shape[1])]
    for c, row in enumerate(decisions["per_label"]):
        row.update(average_precision=aps[c], roc_auc=aucs[c], support=int(y[:, c].sum()), threshold=float(t[c]))
    clipped = np.clip(p, _EPS, 1 - _EPS)
    out.update(
        map=_num(_mean_defined(aps)) or 0.0,
        **{k: v for k, v in decisions.items() if k != "per_label"},
        label_ranking_ap=float(label_ranking_average_precision_score(y, p)),
        roc_auc_macro=_num(_mean_defined(aucs)),
        log_loss=float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()),
        per_label=decisions["per_label"],
        thresholds=[float(v) for v in t],
        threshold_source="tuned" if tuned else ("default" if np.all(t == DEFAULT_THRESHOLD) else "given"),
        label_confusion=label_confusion(y, pred).tolist(),
        labels_per_image={"true": float(y.sum(1).mean()), "predicted": float(pred.sum(1).mean())},
    )
    if not np.all(t == DEFAULT_THRESHOLD):
        out["at_default"] = _decisions(y, predict_labels(p), names)
    if tuned:
        out["threshold_warnings"] = [
            f"{names[c]}: {int(y[:, c].sum())} validation positives; its tuned threshold ({t[c]:.2f}) rests on too few "
            "images to mean much"
            for c in range(y.shape[1])
            if y[:, c].sum() < MIN_TUNE_POSITIVES
        ]
    return out


def label_confusion(y_true: Any, pred: Any) -> np.ndarray:
    """(labels, labels) counts: [a, b] = images where label a was missed (false negative) while label b was predicted
    and is not there (false positive): which label the model puts in place of which. The diagonal is 0."""
    y, q = np.asarray(y_true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    fn = ((y == 1) & (q == 0)).astype(np.int64)
    fp = ((y == 0) & (q == 1)).astype(np.int64)
    m = fn.T @ fp
    np.fill_diagonal(m, 0)
    return m


def label_losses(y_true: Any, probs: Any) -> np.ndarray:
    """Binary cross-entropy of every (image, label) decision, (n, labels)."""
    y, p = _validate_multi(y_true, probs)
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def multilabel_gallery(
    y_true: Any, probs: Any, thresholds: Any = None, *, label: int | None = None, outcome: str = "all"
) -> list[dict[str, Any]]:
    """Images worst first for one label (or, with `label` None, over all labels: an image's loss is its mean binary
    cross-entropy and its outcome that of its whole label set): {index, label, loss, prob, true, predicted} where
    `true` / `predicted` are label index lists. `outcome`: all, false positives, false negatives, mistakes (either),
    correct. The error-analysis galleries of Evaluate and Explain for multi-label runs."""
    if outcome not in ML_OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(ML_OUTCOMES)}, not {outcome!r}")
    y, p = _validate_multi(y_true, probs)
    pred = predict_labels(p, thresholds)
    losses = label_losses(y, p)
    if label is None:
        loss, t, q, prob = losses.mean(1), y, pred, p.max(1)
        fp, fn = ((q == 1) & (t == 0)).any(1), ((q == 0) & (t == 1)).any(1)
    else:
        loss, prob = losses[:, label], p[:, label]
        fp, fn = (pred[:, label] == 1) & (y[:, label] == 0), (pred[:, label] == 0) & (y[:, label] == 1)
    keep = {"all": np.ones(len(y), bool), "false positives": fp, "false negatives": fn, "mistakes": fp | fn,
            "correct": ~(fp | fn)}[outcome]  # fmt: skip
    order = [i for i in np.argsort(-loss, kind="stable") if keep[i]]
    return [
        {"index": int(i), "label": label, "loss": float(loss[i]), "prob": float(prob[i]),
         "true": np.flatnonzero(y[i]).tolist(), "predicted": np.flatnonzero(pred[i]).tolist()}
        for i in order
    ]  # fmt: skip
