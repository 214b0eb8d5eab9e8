"""Tests for classifier.metrics against values worked out by hand on tiny examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from classifier.metrics import (
    compute_metrics,
    loss_gallery,
    most_confused,
    pr_curves,
    reliability_bins,
    roc_curves,
    top_losses,
)

NAMES3 = ["cat", "dog", "fox"]

# 6 samples, 3 classes. Predictions (argmax) are [0, 1, 1, 1, 2, 0]; samples 1 and 5 are wrong.
Y6 = np.array([0, 0, 1, 1, 2, 2])
P6 = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0, pred 0
        [0.3, 0.6, 0.1],  # true 0, pred 1 (true class is 2nd -> top-2 hit)
        [0.1, 0.8, 0.1],  # true 1, pred 1
        [0.2, 0.5, 0.3],  # true 1, pred 1
        [0.1, 0.15, 0.75],  # true 2, pred 2
        [0.5, 0.3, 0.2],  # true 2, pred 0 (true class is 3rd -> top-2 miss)
    ]
)

# Binary example with a known ROC AUC: positive-class scores [0.1, 0.4, 0.35, 0.8] for y = [0, 0, 1, 1].
Y_BIN = np.array([0, 0, 1, 1])
P_BIN = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])


def test_accuracy_f1_topk_logloss_by_hand() -> None:
    m = compute_metrics(Y6, P6, NAMES3)
    assert m["n_val"] == 6
    assert m["class_names"] == NAMES3
    # 4 of 6 correct.
    assert m["accuracy"] == pytest.approx(4 / 6)
    # C = 3 so k = min(5, C - 1) = 2; only sample 5 has its true class outside the top 2 -> 5/6.
    assert m["top_k"] == 2
    assert m["top_k_accuracy"] == pytest.approx(5 / 6)
    # cat: tp=1 fp=1 (sample 5) fn=1 -> P=0.5 R=0.5 F1=0.5
    # dog: tp=2 fp=1 (sample 1) fn=0 -> P=2/3 R=1 F1=2*(2/3)*1/(2/3+1)=0.8
    # fox: tp=1 fp=0 fn=1 -> P=1 R=0.5 F1=2*1*0.5/1.5=2/3
    # macro F1 = (0.5 + 0.8 + 0.6667) / 3 = 0.65556; every support is 2, so weighted F1 is the same.
    assert m["macro_f1"] == pytest.approx(0.655556, abs=1e-6)
    assert m["weighted_f1"] == pytest.approx(0.655556, abs=1e-6)
    per_class = {row["name"]: row for row in m["per_class"]}
    assert per_class["cat"]["precision"] == pytest.approx(0.5)
    assert per_class["dog"]["precision"] == pytest.approx(0.666667, abs=1e-6)
    assert per_class["dog"]["recall"] == pytest.approx(1.0)
    assert per_class["fox"]["f1"] == pytest.approx(0.666667, abs=1e-6)
    assert [row["support"] for row in m["per_class"]] == [2, 2, 2]
    # Log loss = mean of -ln p(true): p(true) = 0.7, 0.3, 0.8, 0.5, 0.75, 0.2
    # = (0.356675 + 1.203973 + 0.223144 + 0.693147 + 0.287682 + 1.609438) / 6 = 4.374059 / 6 = 0.729010
    assert m["log_loss"] == pytest.approx(0.729010, abs=1e-6)


def test_confusion_matrix_exact() -> None:
    m = compute_metrics(Y6, P6, NAMES3)
    # Rows are true classes, columns predictions.
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_binary_roc_auc_and_average_precision() -> None:
    m = compute_metrics(Y_BIN, P_BIN, ["neg", "pos"])
    # Positive-negative pairs: 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> AUC = 3/4.
    assert m["roc_auc_macro"] == pytest.approx(0.75)
    assert [row["roc_auc"] for row in m["per_class"]] == pytest.approx([0.75, 0.75])
    # Ranked by score: 0.8 (pos, P=1, R=0.5), 0.4 (neg), 0.35 (pos, P=2/3, R=1) -> AP = 0.5*1 + 0.5*2/3 = 0.8333.
    assert m["average_precision_macro"] == pytest.approx(0.833333, abs=1e-6)
    # Binary: k is capped at C - 1 = 1, so top-k accuracy is plain accuracy (3 of 4 correct).
    assert m["top_k"] == 1
    assert m["top_k_accuracy"] == pytest.approx(m["accuracy"]) == pytest.approx(0.75)


def test_ece_by_hand() -> None:
    y = np.array([0, 1, 1, 0])
    probs = np.array(
        [
            [0.95, 0.05],  # conf 0.95, correct
            [0.97, 0.03],  # conf 0.97, wrong
            [0.15, 0.85],  # conf 0.85, correct
            [0.45, 0.55],  # conf 0.55, wrong
        ]
    )
    bins = reliability_bins(y, probs)
    # 15 bins of width 1/15: 0.95 and 0.97 -> bin 14 (0.933, 1]; 0.85 -> bin 12 (0.8, 0.867]; 0.55 -> bin 8.
    assert bins["bin_count"] == [0] * 8 + [1, 0, 0, 0, 1, 0, 2]
    assert bins["bin_accuracy"][14] == pytest.approx(0.5)
    assert bins["bin_confidence"][14] == pytest.approx(0.96)
    assert bins["bin_confidence"][0] is None and bins["bin_accuracy"][0] is None
    assert len(bins["bin_edges"]) == 16
    # ECE = |0.5 - 0.96| * 2/4 + |1 - 0.85| * 1/4 + |0 - 0.55| * 1/4 = 0.23 + 0.0375 + 0.1375 = 0.405
    assert bins["ece"] == pytest.approx(0.405)
    assert compute_metrics(y, probs, ["a", "b"])["ece"] == pytest.approx(0.405)


def test_class_absent_from_y_true() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    m = compute_metrics(y, probs, NAMES3)
    fox = m["per_class"][2]
    assert fox["roc_auc"] is None and fox["support"] == 0
    # cat scores: positives 0.8, 0.3 vs negatives 0.6, 0.1 -> 3 of 4 pairs ranked right -> 0.75.
    # dog scores: positives 0.3, 0.8 vs negatives 0.1, 0.6 -> 0.75. Macro over the two defined classes = 0.75.
    assert m["per_class"][0]["roc_auc"] == pytest.approx(0.75)
    assert m["roc_auc_macro"] == pytest.approx(0.75)
    assert m["average_precision_macro"] is not None
    json.dumps(m, allow_nan=False)
    curves = roc_curves(y, probs, NAMES3)
    assert [c["auc"] for c in curves] == pytest.approx([0.75, 0.75, None])
    assert curves[2]["fpr"] is None
    pr = pr_curves(y, probs, NAMES3)
    assert pr[2]["precision"] is None and pr[2]["prevalence"] == 0.0
    assert pr[0]["prevalence"] == pytest.approx(0.5)


def test_single_class_present() -> None:
    y = np.zeros(3, dtype=int)
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    m = compute_metrics(y, probs, ["a", "b"])
    assert m["roc_auc_macro"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)
    assert all(c["auc"] is None for c in roc_curves(y, probs, ["a", "b"]))


def test_json_serialisable_with_plain_types() -> None:
    m = compute_metrics(Y6, P6.astype(np.float32), NAMES3)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    for name in ("roc_auc_macro", "average_precision_macro", "ece", "log_loss", "accuracy"):
        assert isinstance(m[name], float)
    json.dumps(roc_curves(Y6, P6, NAMES3), allow_nan=False)
    json.dumps(pr_curves(Y6, P6, NAMES3), allow_nan=False)
    json.dumps(reliability_bins(Y6, P6), allow_nan=False)


def test_top_losses_order() -> None:
    losses = top_losses(Y6, P6)
    # -ln p(true): s5 1.609, s1 1.204, s3 0.693, s0 0.357, s4 0.288, s2 0.223
    assert [row["index"] for row in losses] == [5, 1, 3, 0, 4, 2]
    assert losses[0] == {
        "index": 5,
        "true": 2,
        "pred": 0,
        "loss": pytest.approx(-math.log(0.2)),
        "prob_true": pytest.approx(0.2),
        "prob_pred": pytest.approx(0.5),
    }
    assert [row["index"] for row in top_losses(Y6, P6, k=2)] == [5, 1]


def test_most_confused_order() -> None:
    cm = [[5, 1, 0], [3, 4, 2], [0, 0, 6]]
    assert most_confused(cm, NAMES3) == [("dog", "cat", 3), ("dog", "fox", 2), ("cat", "dog", 1)]
    assert most_confused(cm, NAMES3, min_count=2) == [("dog", "cat", 3), ("dog", "fox", 2)]
    # Equal counts keep row-major order.
    assert most_confused(compute_metrics(Y6, P6, NAMES3)["confusion_matrix"], NAMES3) == [
        ("cat", "dog", 1),
        ("fox", "cat", 1),
    ]


def test_loss_gallery_filters_and_sorts_by_loss() -> None:
    y = np.array([0, 0, 0, 1, 0])
    probs = np.array([[0.4, 0.6], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    # True 0 predicted 1: samples 0 (p_true 0.4), 1 (0.1), 4 (0.45) -> highest loss = lowest p_true first.
    assert [r["index"] for r in loss_gallery(y, probs, true=0, pred=1)] == [1, 0, 4]
    assert loss_gallery(y, probs, true=1, pred=0) == []
    wrong = loss_gallery(y, probs, outcome="incorrect")
    assert wrong and all(r["true"] != r["pred"] for r in wrong)
    assert [r["loss"] for r in wrong] == sorted((r["loss"] for r in wrong), reverse=True)
    right = loss_gallery(y, probs, outcome="correct")
    assert len(right) + len(wrong) == len(y) and all(r["true"] == r["pred"] for r in right)
    with pytest.raises(ValueError):
        loss_gallery(y, probs, outcome="maybe")


def test_unnormalised_probs_are_renormalised() -> None:
    scaled, ref = compute_metrics(Y6, P6 * 3.0, NAMES3), compute_metrics(Y6, P6, NAMES3)
    scalars = ("accuracy", "top_k_accuracy", "macro_f1", "roc_auc_macro", "average_precision_macro", "ece", "log_loss")
    assert {k: scaled[k] for k in scalars} == pytest.approx({k: ref[k] for k in scalars})
    assert scaled["confusion_matrix"] == ref["confusion_matrix"]
    # Float32 softmax drift (rows off by ~1e-7) must not trip sklearn's log_loss check.
    drift = (P6 + 1e-7).astype(np.float32)
    assert compute_metrics(Y6, drift, NAMES3)["log_loss"] == pytest.approx(0.729010, abs=1e-5)


@pytest.mark.parametrize(
    ("y", "probs", "names", "message"),
    [
        (np.array([], dtype=int), np.zeros((0, 3)), NAMES3, "empty"),
        (np.array([0, 1]), np.array([[0.5, 0.6, -0.1], [0.2, 0.3, 0.5]]), NAMES3, "negative"),
        (np.array([0, 1]), np.array([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]]), NAMES3, "sum to 0"),
        (np.array([0, 3]), np.full((2, 3), 1 / 3), NAMES3, "outside"),
        (np.array([0, 1]), np.full((2, 3), 1 / 3), ["a", "b"], "class_names"),
        (np.array([0, 1, 2]), np.full((2, 3), 1 / 3), NAMES3, "rows"),
        (np.array([0, 1]), np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), NAMES3, "NaN"),
    ],
)
def test_invalid_input_raises(y: np.ndarray, probs: np.ndarray, names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, probs, names)


def test_top_k_capped_for_many_classes() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=40)
    y = rng.integers(0, 10, size=40)
    m = compute_metrics(y, probs, [f"c{i}" for i in range(10)], top_k=5)
    assert m["top_k"] == 5
    # Cross-check the sklearn result against a direct count of true classes in the 5 highest scores.
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert m["top_k_accuracy"] == pytest.approx(np.mean([y[i] in top5[i] for i in range(40)]))
    assert len(m["confusion_matrix"]) == 10
