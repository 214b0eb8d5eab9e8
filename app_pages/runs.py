"""Runs: every run with its settings and metrics; download a run as a zip or an HTML report, export it (ONNX,
TorchScript), delete it."""

import streamlit as st

from classifier.report import report_html
from classifier.store import ACTIVE
from ui import state
from ui.artifacts import run_zip
from ui.cache import executor
from ui.export import export_section
from ui.widgets import jobs, run_label, runs_table, sticky_select, user_errors

state.init_state()
st.title("Runs")
all_jobs = jobs()
if not all_jobs:
    st.info("No runs yet. Start one on the **Train** page.")
    st.stop()

NUMBER = st.column_config.NumberColumn
st.dataframe(
    runs_table(all_jobs),
    hide_index=True,
    column_config={
        "accuracy": NUMBER(format="percent"),
        "macro F1": NUMBER(format="%.3f"),
        "ROC AUC": NUMBER(format="%.3f"),
        "ECE": NUMBER(format="%.3f"),
        "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    },
)
st.caption("Click a column header to sort.")

by_id = {j.run_id: j for j in all_jobs}
labels = {i: run_label(j) for i, j in by_id.items()}
picked = sticky_select("Run", list(by_id), state.RUN_ID, "w_runs_pick", format_func=labels.get)
job = by_id[picked]
if job.error:
    st.error(job.error)
left, right = st.columns(2)
with left:
    st.markdown("**Download**")
    if (job.run_dir / "model.safetensors").is_file():
        st.download_button(
            "Download run (.zip)",
            data=lambda: run_zip(job.run_dir, job.run_id),
            file_name=f"{job.run_id}.zip",
            mime="application/zip",
            on_click="ignore",
            icon=":material/download:",
            help="model.safetensors, config.json, metrics.json, history.csv, split.csv and val_predictions.csv",
        )
    else:
        st.caption("This run has no saved model to download.")
    if (job.run_dir / "val_predictions.csv").is_file():
        st.download_button(
            "Download report (.html)",
            data=lambda: report_html(job.run_dir).encode(),
            file_name=f"{job.run_id}-report.html",
            mime="text/html",
            on_click="ignore",
            icon=":material/description:",
            help="One self-contained page to share: settings, dataset, metrics, per-class table, training curves, "
            "confusion matrix, ROC/PR and reliability figures. Opens offline.",
        )
with right:
    st.markdown("**Delete**")
    active = job.status in ACTIVE
    confirm = st.checkbox(f"Yes, delete “{job.name}” and all its files", key=f"w_confirm_{job.run_id}", disabled=active)
    if active:
        st.caption("Cancel the run on the Train page and wait until it stops before deleting it.")
    if st.button("Delete run", type="primary", disabled=not confirm or active, icon=":material/delete:"):
        with user_errors("Could not delete the run"):
            executor().delete(job.run_id)
            st.toast(f"Deleted {job.name}")
            st.rerun()

st.divider()
export_section(job)
