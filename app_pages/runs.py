"""Runs: every run, saved ensemble and search with its settings and metrics; download a run as a zip or an HTML
report, export it (ONNX, TorchScript), delete it; saved ensembles, deletable too."""

from datetime import datetime

import streamlit as st

from classifier import rundir
from classifier.access import may_act, owner_of, visible
from classifier.ensemble import delete_ensemble
from classifier.jobs.catalogue import ensemble_entries, entries
from classifier.rundir import run_zip
from classifier.store import ACTIVE
from ui import state
from ui.access import current_user
from ui.cache import executor
from ui.config_form import apply_config
from ui.export import export_section
from ui.widgets import (
    literal,
    publish_section,
    report_button,
    run_label,
    runs_table,
    show_runs_table,
    sticky_select,
    user_errors,
)

state.init_state()
st.title("Runs")
user = current_user()
listing = entries(executor=executor(), user=user)  # runs, saved ensembles and searches this user may see
all_jobs = [j for j in listing if j.kind == "run"]
if not listing:
    st.info("No runs yet. Start one on the **Train** page.")
    st.stop()

show_runs_table(runs_table(listing))
st.caption(
    "Runs, saved ensembles and searches, and the settings that differ between the runs. A run still training shows "
    "its latest epoch's accuracy. Click a column header to sort."
)
if not all_jobs:
    st.stop()

by_id = {j.run_id: j for j in all_jobs}
labels = {i: run_label(j) for i, j in by_id.items()}
picked = sticky_select("Run", list(by_id), state.RUN_ID, "w_runs_pick", format_func=labels.get)
job = by_id[picked]
if job.error:
    st.error(job.error)
left, right = st.columns(2)
with left:
    if job.status not in ACTIVE and st.button(
        "Train again with these settings", key=f"b_again_{job.run_id}", icon=":material/content_copy:",
        help="Puts this run's settings into the Train page's fields.",
    ):  # fmt: skip
        apply_config(job.config)
        st.switch_page("app_pages/train.py")
    st.markdown("**Download**")
    if rundir.has_weights(job.run_dir):
        st.download_button(
            "Download run (.zip)",
            data=lambda: run_zip(job.run_dir, job.run_id),
            file_name=f"{job.run_id}.zip",
            mime="application/zip",
            on_click="ignore",
            icon=":material/download:",
            help=", ".join(rundir.DOWNLOAD_FILES),
        )
    else:
        st.caption("This run has no saved model to download.")
    if rundir.path(job.run_dir, rundir.VAL_PREDICTIONS).is_file():
        report_button(
            job.run_dir,
            job.run_id,
            help="One self-contained page to share: settings, dataset, metrics, per-class table, training curves, "
            "confusion matrix, ROC/PR and reliability figures. Opens offline.",
        )
with right:
    st.markdown("**Delete**")
    active, mine = job.status in ACTIVE, may_act(user, job.owner)
    confirm = st.checkbox(f"Yes, delete “{job.name}” and all its files", key=f"c_confirm_{job.run_id}",
                          disabled=active or not mine)  # fmt: skip
    if not mine:
        st.caption(f"Only its owner ({literal(owner_of(job))}) or an admin may delete, cancel or publish this run.")
    elif active:
        st.caption("Cancel the run on the Train page and wait until it stops before deleting it.")
    if st.button("Delete run", type="primary", disabled=not confirm or active or not mine, icon=":material/delete:"):
        with user_errors("Could not delete the run"):
            executor().delete(job.run_id)
            st.toast(f"Deleted {job.name}")
            st.rerun()

st.divider()
publish_section(job, user)
st.divider()
export_section(job)

saved = {e.run_id: e for e in visible(user, ensemble_entries())}
if saved:
    st.divider()
    st.subheader("Saved ensembles")
    NUMBER = st.column_config.NumberColumn
    st.dataframe(
        [
            {
                "ensemble": e.name,
                "members": ", ".join(m.get("run_id", "?") for m in e.members),
                "accuracy": (e.metrics or {}).get("accuracy"),
                "macro F1": (e.metrics or {}).get("macro_f1"),
                "created": e.created_at and datetime.fromtimestamp(e.created_at),
            }
            for e in saved.values()
        ],
        hide_index=True,
        placeholder="—",
        column_config={
            "accuracy": NUMBER(format="percent"),
            "macro F1": NUMBER(format="%.3f"),
            "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        },
    )
    ens = saved[st.selectbox("Ensemble", list(saved), format_func=lambda i: saved[i].name, key="w_runs_ens")]
    e_left, e_right = st.columns(2)
    with e_left:
        st.caption("Evaluate and Predict pick saved ensembles like runs. Deleting one keeps its member runs.")
        publish_section(ens, user)
    with e_right:
        sure = st.checkbox(f"Yes, delete the ensemble “{ens.name}”", key=f"c_confirm_{ens.run_id}")
        if st.button("Delete ensemble", type="primary", disabled=not sure, icon=":material/delete:"):
            with user_errors("Could not delete the ensemble"):
                delete_ensemble(ens.run_dir, user)
                st.toast(f"Deleted {ens.name}")
                st.rerun()
