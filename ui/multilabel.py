"""The multi-label side of the Data, Evaluate, Explain and Predict pages: each page branches once on the task and
calls these, so a page is never a second copy of itself.

- Data: images per label, labels per image, co-occurrence, images with no label (`label_overview`).
- Evaluate: headline metrics, per-label table with the tuned thresholds beside 0.5 (and a warning where a label has
  too few validation positives for its tuned value to mean much), PR and ROC curves per label, a 2x2 confusion grid
  per label, which label is predicted in place of which, and per label a gallery of false positives and false
  negatives, worst loss first, each with Explain (`evaluate_view`).
- Explain: validation images by label and outcome, and every label as a target (`pick_val_image`, `targets`).
- Predict: labels above their thresholds, per-label bars, a CSV for a batch (`predict_view`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from classifier import figures
from classifier.errors import ClassifierError
from classifier.io import spreadsheet_safe
from classifier.metrics import (
    MIN_TUNE_POSITIVES,
    ML_OUTCOMES,
    compute_metrics,
    multilabel_gallery,
    pr_curves,
    roc_curves,
)
from classifier.predict import format_prediction
from classifier.rundir import ValPredictions
from ui import state
from ui.cache import thumbnail
from ui.widgets import fmt, literal, report_button

ANY = "any"
CARDS = (
    ("mAP", "map", "{:.3f}", "Mean average precision: each label's precision-recall area, averaged (no threshold)."),
    ("Micro F1", "micro_f1", "{:.3f}", "F1 over every (image, label) decision at the thresholds."),
    ("Macro F1", "macro_f1", "{:.3f}", "F1 per label at its threshold, averaged with each label counting equally."),
    ("Subset accuracy", "subset_accuracy", "{:.1%}", "Share of images whose predicted label set is exactly right."),
    ("Hamming loss", "hamming_loss", "{:.3f}", "Share of (image, label) decisions that are wrong."),
    ("Validation images", "n_val", "{:d}", "Images the metrics were computed on."),
)


def names_of(indices: list[int], names: list[str]) -> str:
    return ", ".join(names[i] for i in indices) or "no label"


# --- Data ------------------------------------------------------------------------------------------------------------


def label_overview(summary: dict[str, Any]) -> None:
    """Labels per image and co-occurrence of a multi-label dataset, and how many images have no label."""
    labels = summary["labels"]
    st.caption(
        f"Multi-label: {labels['mean_labels']:.2f} labels per image on average; {labels['no_label']} images have no "
        "label (a negative for every label; allowed)."
    )
    left, right = st.columns(2)
    left.plotly_chart(figures.labels_per_image_bar(labels["labels_per_image"]))
    right.plotly_chart(figures.cooccurrence_heatmap(labels["cooccurrence"], summary["classes"]))


# --- Evaluate --------------------------------------------------------------------------------------------------


def evaluate_view(job: Any, vp: ValPredictions, ensemble: bool) -> None:
    """The multi-label Evaluate page below the run picker (see the module docstring)."""
    names, y, p = vp.class_names, vp.y_true, vp.probs
    m = compute_metrics(y, p, names, thresholds=vp.thresholds)
    tuned = any(t != 0.5 for t in m["thresholds"])
    st.caption(
        f"{len(y)} validation images · {len(names)} labels (multi-label: any number per image) · thresholds "
        + ("tuned per label on validation" if tuned else "0.5 for every label")
        + (" · ensemble: mean of its runs' probabilities" if ensemble else "")
    )
    for col, (label, key, pattern, help_text) in zip(st.columns(len(CARDS)), CARDS):
        col.metric(label, fmt(m.get(key), pattern), help=help_text, border=True)
    report_button(job.run_dir, job.run_id, help="One self-contained page: settings, dataset, metrics, per-label table "
                  "and these figures (works offline).")  # fmt: skip
    st.subheader("Per label")
    number = st.column_config.NumberColumn(format="%.3f")
    columns = ("AP", "ROC AUC", "threshold", "precision", "recall", "F1", "F1 at 0.5")
    st.dataframe(label_table(m), hide_index=True, column_config=dict.fromkeys(columns, number))
    few = [r["name"] for r in m["per_label"] if r["support"] < MIN_TUNE_POSITIVES]
    if tuned and few:
        st.warning(
            f"{', '.join(few)}: fewer than {MIN_TUNE_POSITIVES} validation positives each, so their tuned thresholds "
            "rest on one or two images and may not carry over to new images; compare with the F1 at 0.5."
        )
    roc_tab, pr_tab, grid_tab, swap_tab = st.tabs(["ROC curves", "Precision-recall", "Per label 2x2", "Confused with"])
    roc_tab.plotly_chart(figures.roc_figure(roc_curves(y, p, names)))
    pr_tab.plotly_chart(figures.pr_figure(pr_curves(y, p, names)))
    grid_tab.plotly_chart(figures.binary_confusion_grid(m["per_label"]))
    swap_tab.plotly_chart(figures.label_confusion_figure(m["label_confusion"], names))
    swap_tab.caption(swap_caption(m["label_confusion"], names))
    gallery(job, vp, ensemble)


def label_table(m: dict[str, Any]) -> pd.DataFrame:
    """One row per label: support, AP, ROC AUC, its threshold with precision/recall/F1 there, and F1 at 0.5."""
    at_default = {r["name"]: r for r in (m.get("at_default") or {"per_label": m["per_label"]})["per_label"]}
    return pd.DataFrame(
        [
            {"label": r["name"], "support": r["support"], "AP": r["average_precision"], "ROC AUC": r["roc_auc"],
             "threshold": r["threshold"], "precision": r["precision"], "recall": r["recall"], "F1": r["f1"],
             "F1 at 0.5": at_default[r["name"]]["f1"], "TP": r["tp"], "FP": r["fp"], "FN": r["fn"], "TN": r["tn"]}
            for r in m["per_label"]
        ]
    )  # fmt: skip


def swap_caption(matrix: list[list[int]], names: list[str]) -> str:
    pairs = sorted(((int(v), a, b) for a, row in enumerate(matrix) for b, v in enumerate(row) if v), reverse=True)
    if not pairs:
        return "No image had one label missed while another was predicted wrongly."
    top = "; ".join(f"{names[a]} → {names[b]} ({n})" for n, a, b in pairs[:3])
    return f"Most often missed → predicted instead on the same image: {top}."


def gallery(job: Any, vp: ValPredictions, ensemble: bool) -> None:
    """Per label, its false positives or false negatives (or all its images), worst loss first, each with Explain."""
    names, ss = vp.class_names, st.session_state
    st.subheader("Images by label, worst first")
    g1, g2, g3 = st.columns([2, 2, 1])
    label = g1.selectbox("Label", names, key="w_ml_label")
    outcome = g2.selectbox("Images", ML_OUTCOMES[1:3] + ML_OUTCOMES[:1], key="w_ml_outcome")
    limit = g3.number_input("How many", 4, 96, 12, step=4, key="w_ml_limit")
    c = names.index(label)
    rows = multilabel_gallery(vp.y_true, vp.probs, vp.thresholds, label=c, outcome=outcome)
    st.caption(f"{len(rows)} images" + ("" if ensemble else "; **Explain** shows why the model scored this label so"))
    if not rows:
        st.success(f"No {outcome} for {label}.")
    cols = st.columns(4)
    for n, r in enumerate(rows[: int(limit)]):
        rel = vp.table["path"].iloc[r["index"]]
        with cols[n % 4]:
            try:
                st.image(thumbnail(Path(vp.root) / rel, 224), width="stretch")
            except ClassifierError as e:  # a moved or deleted image must not hide the rest of the gallery
                st.warning(f"image not available: {e}")
            st.caption(
                f"p({literal(label)}) {r['prob']:.0%} · threshold {vp.thresholds[c]:.2f} · loss {r['loss']:.2f}  \n"
                f"**true** {literal(names_of(r['true'], names))}  \n**predicted** "
                f"{literal(names_of(r['predicted'], names))} · `{rel}`"
            )
            if not ensemble and st.button("Explain", key=f"explain_{rel}", icon=":material/visibility:"):
                ss[state.EXPLAIN_REQUEST] = {"run_id": job.run_id, "path": rel, "label": label}
                st.switch_page("app_pages/explain.py")


# --- Explain ---------------------------------------------------------------------------------------------------


def pick_val_image(vp: ValPredictions) -> tuple[str | None, list[int]]:
    """Filters (label, outcome, order) and the validation image picker; (relative path or None, its true labels)."""
    names = vp.class_names
    c1, c2, c3 = st.columns(3)
    label = c1.selectbox("Label", [ANY, *names], key="x_ml_label")
    outcome = c2.selectbox("Outcome", list(ML_OUTCOMES), key="x_ml_outcome")
    order = c3.selectbox("Order", ["highest loss", "file name"], key="x_sort")
    c = None if label == ANY else names.index(label)
    rows = multilabel_gallery(vp.y_true, vp.probs, vp.thresholds, label=c, outcome=outcome)
    if order == "file name":
        rows.sort(key=lambda r: vp.table["path"].iloc[r["index"]])
    if not rows:
        st.info("No validation images match these filters.")
        return None, []
    by_path = {vp.table["path"].iloc[r["index"]]: r for r in rows}
    ss = st.session_state
    if ss.get("x_image") not in by_path:
        ss["x_image"] = next(iter(by_path))
    rel = st.selectbox(
        f"Validation image ({len(by_path)})", list(by_path), key="x_image",
        format_func=lambda q: f"{q} · true {names_of(by_path[q]['true'], names)} · predicted "
        f"{names_of(by_path[q]['predicted'], names)} · loss {by_path[q]['loss']:.2f}",
    )  # fmt: skip
    return rel, by_path[rel]["true"]


def targets(probs: np.ndarray, names: list[str], thresholds: list[float], true: list[int]) -> dict[str, int]:
    """Every label as a target, the predicted ones first (most probable first), then the rest; true ones marked."""
    order = sorted(range(len(names)), key=lambda i: (probs[i] < thresholds[i], -probs[i]))
    out = {}
    for i in order:
        tags = [t for t, on in (("predicted", probs[i] >= thresholds[i]), ("true", i in true)) if on]
        out[f"label {names[i]} ({probs[i]:.0%}{', ' + ', '.join(tags) if tags else ''})"] = i
    return out


# --- Predict ---------------------------------------------------------------------------------------------------


def predict_view(images: list[Any], files: list[str], probs: np.ndarray, run: Any, tag: str) -> None:
    """Labels at or above their thresholds with their probabilities per image, per-label bars, a CSV for a batch."""
    names, thresholds = run.class_names, run.thresholds
    results = [format_prediction(f, p, names, thresholds=thresholds) for f, p in zip(files, probs)]
    if len(results) > 1:
        st.subheader(f"{len(results)} images")
        table = pd.DataFrame(
            [{"file": r["path"], "labels": "; ".join(c for c, _ in r["labels"])} | {f"p_{c}": v for c, v in
             r["probabilities"].items()} for r in results]
        )  # fmt: skip
        st.dataframe(table, hide_index=True)
        st.download_button(
            "Download predictions (CSV)", table.map(spreadsheet_safe).to_csv(index=False).encode(),
            file_name=f"predictions-{tag}.csv", mime="text/csv", on_click="ignore", icon=":material/download:",
        )  # fmt: skip
    for n, (image, r, p) in enumerate(zip(images, results, probs)):
        left, right = st.columns([1, 2])
        left.image(image, caption=r["path"], width="stretch")
        found = ", ".join(f"**{literal(c)}** {v:.1%}" for c, v in r["labels"]) or "no label above its threshold"
        right.markdown(found)
        right.plotly_chart(figures.label_bars(names, list(p), thresholds), key=f"labels_{n}")
