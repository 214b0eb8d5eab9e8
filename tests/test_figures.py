"""Tests for classifier.figures: each builder returns a Figure with the expected traces, data and axis titles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from classifier import figures
from classifier.metrics import compute_metrics, pr_curves, reliability_bins, roc_curves

NAMES = ["cat", "dog", "fox"]
# Class "fox" never appears in y, so it has no ROC or PR curve.
Y = np.array([0, 0, 1, 1])
P = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])


def _check(fig: go.Figure, n_traces: int) -> None:
    """Common checks: a Figure, the shared template, a title, the trace count, and that it serialises."""
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == n_traces
    assert fig.layout.title.text
    assert fig.layout.template.layout.plot_bgcolor == pio.templates[figures.TEMPLATE].layout.plot_bgcolor == "white"
    fig.to_json()


def test_class_histogram_from_dict_and_dataframe() -> None:
    counts = {"train": {"cat": 3, "dog": 5}, "val": {"cat": 1}}
    fig = figures.class_histogram(counts)
    _check(fig, 2)
    assert [t.name for t in fig.data] == ["train", "val"]
    assert list(fig.data[1].y) == [1, 0]  # a class missing from a split counts 0
    assert fig.layout.xaxis.title.text == "class" and fig.layout.yaxis.title.text == "images"
    assert fig.layout.barmode == "group"
    _check(figures.class_histogram(pd.DataFrame(counts)), 2)
    long = pd.DataFrame({"class": ["cat", "dog", "cat"], "split": ["train", "train", "val"], "count": [3, 5, 1]})
    _check(figures.class_histogram(long), 2)
    assert figures.class_histogram(counts, stacked=True).layout.barmode == "stack"


def test_history_curves_full_partial_and_missing_columns() -> None:
    full = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.7, 0.5],
            "val_loss": [1.1, 0.8, 0.6],
            "train_acc": [0.5, 0.6, 0.7],
            "val_acc": [0.4, 0.55, 0.65],
        }
    )
    fig = figures.history_curves(full)
    _check(fig, 4)
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis.title.text == "loss"
    assert fig.layout.yaxis2.title.text == "accuracy"
    dashes = {(t.name, t.line.dash) for t in fig.data}
    assert dashes == {("train", "solid"), ("val", "dash")}
    # A running history: the last epoch has no validation numbers yet, and there is no accuracy at all.
    running = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.7], "val_loss": [1.1, np.nan]})
    fig = figures.history_curves(running)
    _check(fig, 2)
    assert list(fig.data[1].x) == [1]
    assert [t.showlegend for t in fig.data] == [True, True]
    # Accuracy-only history: the accuracy traces carry the legend.
    acc_only = figures.history_curves(pd.DataFrame({"train_acc": [0.5, 0.6], "val_acc": [0.4, 0.5]}))
    _check(acc_only, 2)
    assert [t.showlegend for t in acc_only.data] == [True, True] and list(acc_only.data[0].x) == [1, 2]
    assert [t.showlegend for t in figures.history_curves(full).data] == [True, True, False, False]
    _check(figures.history_curves(pd.DataFrame(columns=["epoch", "train_loss"])), 0)


def test_confusion_matrix_counts_and_normalised() -> None:
    cm = [[5, 1, 0], [3, 4, 2], [0, 0, 0]]
    fig = figures.confusion_matrix_figure(cm, NAMES)
    _check(fig, 1)
    heat = fig.data[0]
    assert [list(row) for row in heat.z] == cm
    assert fig.layout.xaxis.title.text == "predicted class" and fig.layout.yaxis.title.text == "true class"
    assert heat.text[1][0] == "3"
    norm = figures.confusion_matrix_figure(cm, NAMES, normalize=True).data[0]
    sums = np.asarray(norm.z).sum(axis=1)
    assert sums[:2] == pytest.approx([1.0, 1.0])
    assert sums[2] == 0  # an empty row stays zero instead of dividing by zero
    assert norm.text[1][0] == "33%<br>(3)"


def test_roc_and_pr_figures_skip_undefined_classes() -> None:
    fig = figures.roc_figure(roc_curves(Y, P, NAMES))
    _check(fig, 3)  # cat, dog and the chance diagonal
    assert fig.data[0].name == "cat (AUC 0.750)"
    assert fig.layout.xaxis.title.text == "false positive rate"
    assert fig.layout.yaxis.title.text == "true positive rate"
    fig = figures.pr_figure(pr_curves(Y, P, NAMES))
    _check(fig, 2)
    assert fig.layout.xaxis.title.text == "recall" and fig.layout.yaxis.title.text == "precision"


def test_reliability_figure() -> None:
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.95, 0.05], [0.97, 0.03], [0.15, 0.85], [0.45, 0.55]])
    fig = figures.reliability_figure(reliability_bins(y, probs))
    _check(fig, 2)
    assert "ECE 0.405" in fig.layout.title.text
    assert len(fig.data[0].x) == 15
    assert fig.data[0].y[14] == pytest.approx(0.5)
    assert fig.layout.xaxis.title.text == "confidence" and fig.layout.yaxis.title.text == "accuracy"


def test_per_class_bar() -> None:
    fig = figures.per_class_bar(compute_metrics(Y, P, NAMES)["per_class"])
    _check(fig, 3)
    assert [t.name for t in fig.data] == ["precision", "recall", "F1"]
    assert list(fig.data[0].x) == NAMES


def test_topk_bar_sorted_most_likely_first() -> None:
    fig = figures.topk_bar(["dog", "cat", "fox"], [0.2, 0.7, 0.1])
    _check(fig, 1)
    bar = fig.data[0]
    assert bar.orientation == "h"
    assert list(bar.y) == ["cat", "dog", "fox"] and list(bar.x) == [0.7, 0.2, 0.1]
    assert fig.layout.xaxis.title.text == "probability"


def test_selected_confusion_cell_is_outlined() -> None:
    cm = [[5, 1, 0], [3, 4, 2], [0, 0, 0]]
    assert not figures.confusion_matrix_figure(cm, NAMES, clickable=True).layout.shapes
    fig = figures.confusion_matrix_figure(cm, NAMES, normalize=True, clickable=True, selected=(1, 2))  # dog -> fox
    [shape] = fig.layout.shapes
    # Category axes put class k at k: the outline spans the "fox" column and the "dog" row exactly.
    assert (shape.x0, shape.x1, shape.y0, shape.y1) == (1.5, 2.5, 0.5, 1.5)
    assert (shape.xref, shape.yref, shape.line.color) == ("x", "y", figures.SELECTED_COLOR)
    assert list(fig.data[0].x)[2] == "fox" and list(fig.data[0].y)[1] == "dog"
    with pytest.raises(ValueError, match="outside a 3-class matrix"):
        figures.confusion_matrix_figure(cm, NAMES, selected=(3, 0))


def _every_figure() -> list[go.Figure]:
    m = compute_metrics(Y, P, NAMES)
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9],
                            "train_acc": [0.5, 0.6], "val_acc": [0.4, 0.55]})  # fmt: skip
    return [
        figures.class_histogram({"train": {"cat": 3}}),
        figures.history_curves(history, best_epoch=2),
        figures.confusion_matrix_figure(m["confusion_matrix"], NAMES, normalize=True, clickable=True),
        figures.roc_figure(roc_curves(Y, P, NAMES)),
        figures.pr_figure(pr_curves(Y, P, NAMES)),
        figures.reliability_figure(reliability_bins(Y, P)),
        figures.per_class_bar(m["per_class"]),
        figures.topk_bar(NAMES, [0.5, 0.3, 0.2]),
    ]


@pytest.mark.parametrize("index", range(8))
def test_titles_sit_below_the_chart_toolbar(index: int) -> None:
    """Plotly's toolbar takes the top ~30 px of a chart at its right: a title pinned to the top of the chart
    (container coordinates) starts below that row, and the plot starts below the title, whatever the width."""
    fig = _every_figure()[index]
    title = fig.layout.title
    assert (title.yref, title.y, title.yanchor) == ("container", 1, "top")
    assert title.pad.t >= figures.MODEBAR_PX >= 30
    assert fig.layout.margin.t >= title.pad.t + 40  # room for the title line (about 20 px) and the subplot titles
