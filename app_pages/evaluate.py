"""Evaluate: a completed run's validation metrics, curves, calibration and its worst mistakes."""

from pathlib import Path

import pandas as pd
import streamlit as st

from classifier import figures
from classifier.errors import ClassifierError
from classifier.metrics import compute_metrics, most_confused, pr_curves, reliability_bins, roc_curves, top_losses
from ui import state
from ui.cache import thumbnail, val_predictions
from ui.widgets import metric_cards, run_picker, user_errors

state.init_state()
st.title("Evaluate")
job = run_picker("Completed run")
if job is None:
    st.stop()
m = None
with user_errors("Cannot read this run's validation predictions", also=(OSError, KeyError, ValueError)):
    table, y_true, probs, names, root = val_predictions(job.run_dir)
    m = compute_metrics(y_true, probs, names)  # ValueError for labels outside the run's classes, or no rows
if m is None:
    st.stop()
st.caption(f"{len(y_true)} validation images · {len(names)} classes · computed from val_predictions.csv")
metric_cards(m)

st.subheader("Per class")
per_class = pd.DataFrame(m["per_class"]).rename(
    columns={"name": "class", "f1": "F1", "roc_auc": "ROC AUC", "average_precision": "AP"}
)
st.dataframe(per_class, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in (
    "precision", "recall", "F1", "ROC AUC", "AP")})  # fmt: skip

left, right = st.columns(2)
with left:
    normalise = st.toggle("Normalise rows", value=True, help="Share of each true class (recall on the diagonal).")
    st.plotly_chart(figures.confusion_matrix_figure(m["confusion_matrix"], names, normalize=normalise))
with right:
    st.plotly_chart(figures.per_class_bar(m["per_class"]))
roc_tab, pr_tab, cal_tab = st.tabs(["ROC curves", "Precision-recall", "Calibration"])
roc_tab.plotly_chart(figures.roc_figure(roc_curves(y_true, probs, names)))
pr_tab.plotly_chart(figures.pr_figure(pr_curves(y_true, probs, names)))
bins = reliability_bins(y_true, probs)
cal_tab.plotly_chart(figures.reliability_figure(bins))
cal_tab.caption(
    f"ECE {bins['ece']:.3f}: on average, confidence differs from accuracy by this much. Bars below the diagonal "
    "mean over-confidence."
)

st.subheader("Mistakes, worst first")
ANY = "any"
f1, f2, f3 = st.columns([2, 2, 1])
true_pick = f1.selectbox("True class", [ANY, *names], key="w_true")
pred_pick = f2.selectbox("Predicted class", [ANY, *names], key="w_pred")
limit = f3.number_input("Show", 4, 96, 12, step=4, key="w_limit")
pairs = most_confused(m["confusion_matrix"], names)[:3]
if pairs:
    st.caption("Most confused (true → predicted): " + "; ".join(f"{t} → {p} ({n})" for t, p, n in pairs))
wrong = [r for r in top_losses(y_true, probs) if r["true"] != r["pred"]]
wrong = [
    r
    for r in wrong
    if (true_pick == ANY or names[r["true"]] == true_pick) and (pred_pick == ANY or names[r["pred"]] == pred_pick)
]
if not wrong:
    st.success("No misclassified validation images for this selection.")
cols = st.columns(4)
for n, r in enumerate(wrong[: int(limit)]):
    rel = table["path"].iloc[r["index"]]
    with cols[n % 4]:
        try:
            st.image(thumbnail(Path(root) / rel, 224), width="stretch")
        except ClassifierError as e:  # a moved or deleted image must not hide the rest of the gallery
            st.warning(f"image not available: {e}")
        st.caption(
            f"**true** {names[r['true']]} · **predicted** {names[r['pred']]} ({r['prob_pred']:.0%})  \n"
            f"p(true) {r['prob_true']:.0%} · loss {r['loss']:.2f} · `{rel}`"
        )
