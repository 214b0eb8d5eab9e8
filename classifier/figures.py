"""Plotly figure builders for the workbench's charts, from the plain data `classifier.metrics` returns.

Each builder takes lists/dicts/DataFrames and returns a `plotly.graph_objects.Figure`; none of them touches
Streamlit, so the same figures render in the app, in notebooks, and in exported HTML reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

TEMPLATE = "plotly_white"
# Plotly's toolbar (modebar) takes the top ~30 px of a chart, at its right; titles start below it, so a long title in
# a narrow column is never drawn under the buttons.
MODEBAR_PX = 34
TOP_MARGIN_PX = 86
# Fixed colours so train/val keep the same look across the loss and accuracy panels.
TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"
SELECTED_COLOR = "#d62728"  # red: stands out on the Blues of a confusion matrix


def _style(fig: go.Figure, title: str, x_title: str | None = None, y_title: str | None = None) -> go.Figure:
    """Apply the shared template, title and axis titles; the title sits in its own row under the toolbar."""
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.02, "xanchor": "left", "y": 1, "yref": "container", "yanchor": "top",
               "pad": {"t": MODEBAR_PX}},
        margin={"t": TOP_MARGIN_PX, "l": 60, "r": 20, "b": 50},
    )  # fmt: skip
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig


def class_histogram(counts: Mapping[str, Mapping[str, int]] | pd.DataFrame, *, stacked: bool = False) -> go.Figure:
    """Images per class, one bar series per split.

    `counts` is {split: {class: count}} or a DataFrame with classes as index and splits as columns (what
    `pd.DataFrame(counts)` gives); a long DataFrame with `class`, `split`, `count` columns is accepted too.
    """
    if isinstance(counts, pd.DataFrame):
        df = counts
        if {"class", "split", "count"} <= set(df.columns):
            df = df.pivot_table(index="class", columns="split", values="count", aggfunc="sum", sort=False)
    else:
        df = pd.DataFrame({split: dict(per_class) for split, per_class in counts.items()})
    df = df.fillna(0)
    classes = [str(c) for c in df.index]
    fig = go.Figure([go.Bar(name=str(split), x=classes, y=df[split].astype(int).tolist()) for split in df.columns])
    fig.update_layout(barmode="stack" if stacked else "group", legend_title_text="split")
    return _style(fig, "Images per class", "class", "images")


def history_curves(history: pd.DataFrame, best_epoch: int | None = None) -> go.Figure:
    """Loss and accuracy per epoch side by side; train solid, validation dashed; `best_epoch` (the weights the run
    kept) marked with a dotted line and a star on the validation accuracy.

    Missing columns are skipped and NaN cells (a running history, or val metrics not yet computed) are dropped
    per series, so the figure can be redrawn after every epoch.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    if "epoch" in history.columns:
        epochs = history["epoch"]
    else:
        epochs = pd.Series(np.arange(1, len(history) + 1), index=history.index)
    in_legend: set[str] = set()  # one legend entry per split, shared by both panels via legendgroup
    for col, metric in ((1, "loss"), (2, "acc")):
        for split, color, dash in (("train", TRAIN_COLOR, "solid"), ("val", VAL_COLOR, "dash")):
            name = f"{split}_{metric}"
            if name not in history.columns:
                continue
            values = pd.to_numeric(history[name], errors="coerce")
            keep = values.notna() & epochs.notna()
            if not keep.any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=epochs[keep].tolist(),
                    y=values[keep].tolist(),
                    mode="lines+markers",
                    name=split,
                    legendgroup=split,
                    showlegend=split not in in_legend,
                    line={"color": color, "dash": dash},
                ),
                row=1,
                col=col,
            )
            in_legend.add(split)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=2)
    if best_epoch and "val_acc" in history.columns and (epochs == best_epoch).any():
        acc = float(pd.to_numeric(history.loc[epochs == best_epoch, "val_acc"], errors="coerce").iloc[0])
        for col in (1, 2):
            fig.add_vline(x=best_epoch, line_dash="dot", line_color="#2ca02c", row=1, col=col)
        fig.add_trace(
            go.Scatter(x=[best_epoch], y=[acc], mode="markers", name=f"best epoch ({best_epoch})",
                       marker={"symbol": "star", "size": 14, "color": "#2ca02c"}),
            row=1, col=2,
        )  # fmt: skip
    return _style(fig, "Training history")


def confusion_matrix_figure(
    cm: Any,
    class_names: Sequence[str],
    normalize: bool = False,
    clickable: bool = False,
    selected: tuple[int, int] | None = None,
) -> go.Figure:
    """Heatmap of the confusion matrix, rows = true class, columns = predicted class.

    `selected` (true index, predicted index) outlines that cell: the one whose images the page lists.

    With `normalize`, cells are shares of their row (recall on the diagonal), annotated "share (count)";
    rows with no samples stay 0. With `clickable`, an invisible marker sits on every cell (trace 1,
    `customdata` = [true index, predicted index]): heatmap cells emit no click selections in Plotly, markers do,
    so a Streamlit chart with `on_select` reports the clicked cell.
    """
    counts = np.asarray(cm, dtype=np.int64)
    names = [str(n) for n in class_names]
    if normalize:
        row_sums = counts.sum(axis=1, keepdims=True)
        z = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)
        text = [
            [f"{share:.0%}<br>({count})" for share, count in zip(zr, cr, strict=True)]
            for zr, cr in zip(z, counts, strict=True)
        ]
    else:
        z = counts
        text = [[str(count) for count in row] for row in counts]
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(),
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalize else None,
            colorbar={"title": "share" if normalize else "count"},
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    if clickable:
        n = len(names)
        fig.add_trace(
            go.Scatter(
                x=[names[j] for i in range(n) for j in range(n)],
                y=[names[i] for i in range(n) for j in range(n)],
                customdata=[[i, j] for i in range(n) for j in range(n)],
                text=[t.replace("<br>", " ") for row in text for t in row],
                mode="markers",
                marker={"size": min(60, max(12, 240 // max(n, 1))), "symbol": "square", "color": "rgba(0,0,0,0)"},
                hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<br>click to see these images<extra></extra>",
                showlegend=False,
                name="cells",
            )
        )
    if selected is not None:
        i, j = (int(v) for v in selected)
        if not (0 <= i < len(names) and 0 <= j < len(names)):
            raise ValueError(f"selected cell {selected} is outside a {len(names)}-class matrix")
        # Category axes place class k at k, so the cell spans k - 0.5 .. k + 0.5 on both axes.
        line = {"color": SELECTED_COLOR, "width": 4}
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, xref="x", yref="y", line=line,
                      fillcolor="rgba(0,0,0,0)", name="selected cell")  # fmt: skip
    # Category axes; reversed y so the first class is on top like a printed matrix.
    fig.update_xaxes(type="category", side="bottom")
    fig.update_yaxes(type="category", autorange="reversed")
    title = "Confusion matrix (row-normalised)" if normalize else "Confusion matrix"
    return _style(fig, title, "predicted class", "true class")


def roc_figure(curves: Sequence[Mapping[str, Any]]) -> go.Figure:
    """One-vs-rest ROC curve per class (classes without a curve are skipped) and the chance diagonal."""
    fig = go.Figure()
    for curve in curves:
        if curve.get("fpr") is None or curve.get("tpr") is None:
            continue
        auc = curve.get("auc")
        label = f"{curve['name']} (AUC {auc:.3f})" if auc is not None else str(curve["name"])
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash", "color": "grey"}))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _style(fig, "ROC curves (one-vs-rest)", "false positive rate", "true positive rate")


def pr_figure(curves: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Precision-recall curve per class (classes without positives are skipped)."""
    fig = go.Figure()
    for curve in curves:
        if curve.get("precision") is None or curve.get("recall") is None:
            continue
        ap = curve.get("average_precision")
        label = f"{curve['name']} (AP {ap:.3f})" if ap is not None else str(curve["name"])
        fig.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", name=label))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _style(fig, "Precision-recall curves (one-vs-rest)", "recall", "precision")


def reliability_figure(bins: Mapping[str, Any]) -> go.Figure:
    """Reliability diagram: accuracy per confidence bin against the perfect-calibration diagonal, ECE in title."""
    edges = np.asarray(bins["bin_edges"], dtype=np.float64)
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    widths = np.diff(edges).tolist()
    # Empty bins stay None, so they plot as gaps rather than as zero-accuracy bars.
    accuracy = list(bins["bin_accuracy"])
    confidence = ["-" if c is None else f"{c:.3f}" for c in bins["bin_confidence"]]
    fig = go.Figure(
        [
            go.Bar(
                x=centers,
                y=accuracy,
                width=widths,
                name="accuracy",
                marker_line={"width": 1, "color": "white"},
                customdata=list(zip(bins["bin_count"], confidence, strict=True)),
                hovertemplate="confidence bin %{x:.2f}<br>accuracy %{y:.3f}<br>mean confidence %{customdata[1]}"
                "<br>samples %{customdata[0]}<extra></extra>",
            ),
            go.Scatter(
                x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"dash": "dash", "color": "grey"}
            ),
        ]
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1])
    return _style(fig, f"Reliability diagram (ECE {bins['ece']:.3f})", "confidence", "accuracy")


def per_class_bar(per_class: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Precision, recall and F1 per class as grouped bars."""
    names = [str(row["name"]) for row in per_class]
    fig = go.Figure(
        [
            go.Bar(name=label, x=names, y=[row[key] for row in per_class])
            for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))
        ]
    )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.02])
    return _style(fig, "Per-class precision, recall and F1", "class", "score")


def topk_bar(labels: Sequence[str], probs: Sequence[float]) -> go.Figure:
    """Horizontal bars of one prediction's top-k class probabilities, most likely on top."""
    pairs = sorted(zip([str(label) for label in labels], [float(p) for p in probs], strict=True), key=lambda lp: -lp[1])
    fig = go.Figure(
        go.Bar(
            x=[p for _, p in pairs],
            y=[label for label, _ in pairs],
            orientation="h",
            text=[f"{p:.1%}" for _, p in pairs],
            textposition="auto",
            name="probability",
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(type="category", autorange="reversed")
    return _style(fig, "Top predictions", "probability", "class")


def lr_find_figure(result: Any) -> go.Figure:
    """Smoothed loss against learning rate (log x) with the suggestion marked, from an LR finder result
    (`classifier.training.lr_find.LRFindResult`; typed loosely so figures stays below training)."""
    fig = go.Figure(go.Scatter(x=result.lrs, y=result.losses, mode="lines+markers", name="smoothed loss"))
    if result.lrs:
        y_at = float(np.interp(np.log10(result.suggestion), np.log10(result.lrs), result.losses))
        fig.add_trace(
            go.Scatter(
                x=[result.suggestion], y=[y_at], mode="markers", name=f"suggested {result.suggestion:.2g}",
                marker={"size": 14, "symbol": "star", "color": "#d62728"},
            )
        )  # fmt: skip
    fig.add_vline(x=result.suggestion, line_dash="dash", line_color="#d62728")
    fig.update_xaxes(type="log")
    title = "Learning-rate finder" + (f" (stopped early: {result.reason})" if result.stopped_early else "")
    return _style(fig, title, "learning rate (log scale)", "smoothed training loss")


# --- multi-label ---------------------------------------------------------------------------------------------------


def labels_per_image_bar(hist: Sequence[int]) -> go.Figure:
    """How many images have 0, 1, 2, ... labels (`hist[k]` = images with k labels)."""
    fig = go.Figure(go.Bar(x=[str(k) for k in range(len(hist))], y=list(hist), text=list(hist), textposition="auto"))
    fig.update_xaxes(type="category")
    return _style(fig, "Labels per image", "labels on the image", "images")


def cooccurrence_heatmap(matrix: Any, names: Sequence[str]) -> go.Figure:
    """Images that carry both labels (the diagonal: images with the label), annotated with the counts."""
    z = np.asarray(matrix, dtype=np.int64)
    fig = go.Figure(
        go.Heatmap(z=z, x=list(names), y=list(names), colorscale="Blues", text=z.astype(str), texttemplate="%{text}",
                   hovertemplate="%{y} and %{x}: %{z} images<extra></extra>", colorbar={"title": "images"})
    )  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    return _style(fig, "Labels that share images (co-occurrence)", "label", "label")


def label_confusion_figure(matrix: Any, names: Sequence[str]) -> go.Figure:
    """`classifier.metrics.label_confusion`: rows = the label missed, columns = the label predicted wrongly on the
    same image."""
    z = np.asarray(matrix, dtype=np.int64)
    fig = go.Figure(
        go.Heatmap(z=z, x=list(names), y=list(names), colorscale="Reds", text=z.astype(str), texttemplate="%{text}",
                   hovertemplate="missed %{y}, predicted %{x}: %{z} images<extra></extra>",
                   colorbar={"title": "images"})
    )  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    return _style(fig, "Which label is predicted in place of which", "predicted wrongly", "missed")


def binary_confusion_grid(per_label: Sequence[Mapping[str, Any]], columns: int = 4) -> go.Figure:
    """A 2x2 confusion matrix per label (rows: true yes/no, columns: predicted yes/no), small multiples."""
    n = len(per_label)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[str(r["name"]) for r in per_label],
                        horizontal_spacing=0.06, vertical_spacing=0.12)  # fmt: skip
    for i, r in enumerate(per_label):
        z = [[r["tp"], r["fn"]], [r["fp"], r["tn"]]]
        text = [[f"TP {r['tp']}", f"FN {r['fn']}"], [f"FP {r['fp']}", f"TN {r['tn']}"]]
        fig.add_trace(
            go.Heatmap(z=[[r["tp"], -r["fn"]], [-r["fp"], r["tn"]]], x=["yes", "no"], y=["yes", "no"], text=text,
                       texttemplate="%{text}", colorscale="RdBu", zmid=0, showscale=False, customdata=z,
                       hovertemplate="true %{y}, predicted %{x}: %{customdata}<extra></extra>"),
            row=i // cols + 1, col=i % cols + 1,
        )  # fmt: skip
    fig.update_yaxes(autorange="reversed", title_text="")
    fig.update_layout(height=max(260, 220 * rows))
    return _style(fig, "Per label: true (rows) against predicted (columns)")


def label_bars(labels: Sequence[str], probs: Sequence[float], thresholds: Sequence[float]) -> go.Figure:
    """Every label's probability for one image, the bars of predicted labels (at or above their threshold) solid,
    each threshold marked."""
    colours = ["#1f77b4" if p >= t else "#c7d7e8" for p, t in zip(probs, thresholds)]
    fig = go.Figure(
        go.Bar(x=list(probs), y=list(labels), orientation="h", marker={"color": colours},
               text=[f"{p:.1%}" for p in probs], textposition="auto", name="probability")
    )  # fmt: skip
    fig.add_trace(go.Scatter(x=list(thresholds), y=list(labels), mode="markers", name="threshold",
                             marker={"symbol": "line-ns-open", "size": 18, "color": "#d62728"}))  # fmt: skip
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(showlegend=False, height=max(200, 40 * len(labels) + 90))
    return _style(fig, "Labels (solid: predicted; red mark: threshold)", "probability", "label")
