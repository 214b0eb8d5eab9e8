"""Evaluate: a completed run's (or a saved ensemble's) validation metrics, curves, calibration and worst mistakes
(a multi-label run's view is `ui.multilabel.evaluate_view`)."""

from pathlib import Path

import pandas as pd
import streamlit as st

from classifier import figures
from classifier.errors import ClassifierError
from classifier.metrics import compute_metrics, loss_gallery, most_confused, pr_curves, reliability_bins, roc_curves
from classifier.task import MULTI
from ui import state
from ui.cache import run_predictions, thumbnail, val_predictions
from ui.ensemble import apply_pending_pick, ensemble_builder, is_ensemble
from ui.multilabel import evaluate_view
from ui.widgets import metric_cards, report_button, run_picker, user_errors

state.init_state()
st.title("Evaluate")
apply_pending_pick()
job = run_picker("Completed run or saved ensemble", ensembles=True)
ensemble_builder()
if job is None:
    st.stop()
m = None
with user_errors("Cannot read this run's validation predictions", also=(OSError, KeyError, ValueError)):
    if run_predictions(job.run_dir).task == MULTI:
        evaluate_view(job, run_predictions(job.run_dir), is_ensemble(job))
        st.stop()
    table, y_true, probs, names, root = val_predictions(job.run_dir)
    m = compute_metrics(y_true, probs, names)  # ValueError for labels outside the run's classes, or no rows
if m is None:
    st.stop()
members = f" · ensemble of {len(job.members)} runs (mean probability)" if is_ensemble(job) else ""
st.caption(f"{len(y_true)} validation images · {len(names)} classes · computed from val_predictions.csv{members}")
metric_cards(m)
report_button(
    job.run_dir,
    job.run_id,
    help="One self-contained page: settings, dataset, metrics, per-class table and these figures (works offline).",
)

st.subheader("Per class")
per_class = pd.DataFrame(m["per_class"]).rename(
    columns={"name": "class", "f1": "F1", "roc_auc": "ROC AUC", "average_precision": "AP"}
)
st.dataframe(per_class, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in (
    "precision", "recall", "F1", "ROC AUC", "AP")})  # fmt: skip

ANY = "any"
ss = st.session_state
# A clicked cell (the chart's state from the click's rerun, read before the chart is drawn so that the cell is
# outlined at once): applied once, so the pickers below stay the user's to change afterwards.
points = ((ss.get("cm_chart") or {}).get("selection") or {}).get("points") or []
clicked = [p for p in points if p.get("x") in names and p.get("y") in names]
if clicked and (cell := (job.run_id, clicked[0]["y"], clicked[0]["x"])) != ss[state.CM_PICK]:
    ss[state.CM_PICK] = cell
    ss["w_true"], ss["w_pred"], ss["w_only_wrong"] = cell[1], cell[2], cell[1] != cell[2]
for key in ("w_true", "w_pred"):
    if ss.get(key) not in (ANY, *names):
        ss[key] = ANY
ss.setdefault("w_only_wrong", True)
picked_cell = None if ANY in (ss["w_true"], ss["w_pred"]) else (names.index(ss["w_true"]), names.index(ss["w_pred"]))

left, right = st.columns(2)
with left:
    normalise = st.toggle("Normalise rows", value=True, help="Share of each true class (recall on the diagonal).")
    cm_figure = figures.confusion_matrix_figure(
        m["confusion_matrix"], names, normalize=normalise, clickable=True, selected=picked_cell
    )
    st.plotly_chart(cm_figure, on_select="rerun", selection_mode="points", key="cm_chart")
    st.caption("Click a cell to see its images below, worst first" + (" (outlined)." if picked_cell else "."))
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

st.subheader("Images by true and predicted class, worst first")
f1, f2, f3, f4 = st.columns([2, 2, 1, 1])
true_pick = f1.selectbox("True class", [ANY, *names], key="w_true")
pred_pick = f2.selectbox("Predicted class", [ANY, *names], key="w_pred")
limit = f3.number_input("Show", 4, 96, 12, step=4, key="w_limit")
only_wrong = f4.toggle("Only mistakes", key="w_only_wrong")
pairs = most_confused(m["confusion_matrix"], names)[:3]
if pairs:
    st.caption("Most confused (true → predicted): " + "; ".join(f"{t} → {p} ({n})" for t, p, n in pairs))
shown = loss_gallery(
    y_true,
    probs,
    true=None if true_pick == ANY else names.index(true_pick),
    pred=None if pred_pick == ANY else names.index(pred_pick),
    outcome="incorrect" if only_wrong else "all",
)
if not shown:
    st.success("No misclassified validation images for this selection." if only_wrong else "No images here.")
st.caption(
    f"{len(shown)} images"
    + ("" if is_ensemble(job) else "; open any of them in **Explain** to see why the model decided as it did")
    + "."
)
cols = st.columns(4)
for n, r in enumerate(shown[: int(limit)]):
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
        if not is_ensemble(job) and st.button("Explain", key=f"explain_{rel}", icon=":material/visibility:"):
            ss[state.EXPLAIN_REQUEST] = {"run_id": job.run_id, "path": rel}
            st.switch_page("app_pages/explain.py")
