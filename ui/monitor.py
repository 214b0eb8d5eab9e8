"""Live view of background training runs: progress per phase with time left, loss/accuracy curves with the best
epoch, cancel and resume, next steps (open the run on another page, train again, retry), the run list.

The run's process writes progress into the run store; this view only reads it. While a run is queued or
running, `runs_section` draws inside an `st.fragment(run_every=...)` so only this part of the page re-runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from classifier.figures import history_curves
from classifier.jobs import resumable, resume_info
from classifier.jobs.progress import describe as progress_text
from classifier.jobs.progress import duration
from classifier.store import ACTIVE
from classifier.training import TrainConfig
from classifier.training.preflight import retry_fix
from ui import state
from ui.cache import executor
from ui.config_form import apply_config
from ui.widgets import (
    STATUS_ICONS,
    jobs,
    literal,
    metric_cards,
    run_label,
    runs_table,
    show_runs_table,
    sticky_select,
    user_errors,
)

POLL_SECONDS = 1.0
LOG_LINES = 200  # the end of the log the Train page shows


def history(run_id: str) -> pd.DataFrame:
    """Per-epoch rows the run has reported so far."""
    return pd.DataFrame(executor().history(run_id))


def _progress(job: Any, others: list[Any]) -> None:
    p = job.progress or {}
    if job.status == "queued":
        ahead = [o for o in others if o.status == "running"]
        etas = [o.progress.get("eta_seconds") for o in ahead if (o.progress or {}).get("eta_seconds") is not None]
        when = f"; starts in about {duration(max(etas))}" if etas else ""
        st.progress(0.0, text=f"Queued: waiting for the device ({len(ahead)} run ahead{when})")
        return
    fraction = float(p.get("fraction") or 0.0)
    if p.get("phase") in ("cache", "features") and p.get("phase_total"):
        # A linear probe spends most of its time here, before the first optimizer step.
        fraction = float(p.get("phase_done") or 0) / float(p["phase_total"])
    st.progress(min(1.0, max(0.0, fraction)), text=progress_text(p))


def _draw(job: Any, others: list[Any]) -> None:
    st.markdown(f"**{literal(job.name or job.run_id)}** — {STATUS_ICONS.get(job.status, '')} {job.status}")
    if job.status in ACTIVE:
        _progress(job, others)
    elif job.status == "failed":
        st.error(f"The run failed: {literal(job.error or 'no error message was recorded')}")
    elif job.status in ("cancelled", "interrupted"):
        kept = literal(job.error or "The best checkpoint so far, if any, was kept.")
        st.warning(f"The run was {job.status}. {kept}")
    elif job.status == "completed":
        metric_cards(job.metrics)
    if resumable(job):
        at = resume_info(job)
        where = f"epoch {at['epoch']}, step {at['step']}" if at else "the start (no checkpoint was written yet)"
        st.caption(f"**Resume** continues this run from its last checkpoint: {where}.")
    next_steps(job)
    hist = history(job.run_id)
    if not hist.empty:
        best = (job.metrics or {}).get("best_epoch")
        st.plotly_chart(history_curves(hist, best_epoch=best), key=f"history_{job.run_id}")
    if st.toggle("Show the log", key=f"log_{job.run_id}", help="The run's output (every process, resumes included)"):
        text = executor().logs(job.run_id)
        st.code("".join(text.splitlines(keepends=True)[-LOG_LINES:]) or "(nothing yet)", language=None)


NEXT_PAGES = {  # button -> (page, what it opens)
    "Evaluate": ("app_pages/evaluate.py", ":material/analytics:"),
    "Explain": ("app_pages/explain.py", ":material/visibility:"),
    "Predict": ("app_pages/predict.py", ":material/image_search:"),
    "Export": ("app_pages/runs.py", ":material/package_2:"),
}


def next_steps(job: Any) -> None:
    """What to do with a run now: open it on another page, train again with its settings, retry a failed one."""
    cols = st.columns(6)
    i = 0
    if job.status == "completed":
        for i, (label, (page, icon)) in enumerate(NEXT_PAGES.items()):
            if cols[i].button(label, key=f"b_next_{label}_{job.run_id}", icon=icon, width="stretch"):
                st.session_state[state.RUN_ID] = job.run_id
                st.switch_page(page)
        i += 1
    if job.status == "failed" and (fix := retry_fix(job.config, job.error)) is not None:
        what, changes = fix
        if cols[i].button(f"Retry with {what}", key=f"b_retry_{job.run_id}", icon=":material/replay:"):
            with user_errors("Cannot start the retry"):
                new_id = executor().submit(TrainConfig.from_dict({**job.config, **changes}), name=f"{job.name} (retry)")
                st.session_state[state.WATCH_RUN] = new_id
                st.rerun()
        i += 1
    if job.status not in ACTIVE and cols[i].button(
        "Train again" if job.status == "completed" else "Edit settings and retry", key=f"b_again_{job.run_id}",
        icon=":material/content_copy:", help="Puts this run's settings into the Train page's fields.",
    ):  # fmt: skip
        apply_config(job.config)
        st.switch_page("app_pages/train.py")


def runs_section() -> None:
    """Pick a run to follow (default: the one running), draw it, and list every run with its status.

    While any run is queued or running this re-draws itself every second (an `st.fragment(run_every=...)`),
    so the page's settings above are not re-run; once nothing is active it re-runs the page and stops polling.
    """
    polling = any(j.status in ACTIVE for j in jobs())

    @st.fragment(run_every=POLL_SECONDS if polling else None)
    def section() -> None:
        ss = st.session_state
        all_jobs = {j.run_id: j for j in jobs()}
        if polling and not any(j.status in ACTIVE for j in all_jobs.values()):
            st.rerun()  # the whole page: draw the finished state once, without the poller
        if not all_jobs:
            return
        if ss[state.WATCH_RUN] not in all_jobs:  # e.g. a new browser session: follow whatever is running
            ss[state.WATCH_RUN] = next((i for i, j in all_jobs.items() if j.status in ACTIVE), None)
        st.subheader("Runs")
        labels = {i: run_label(j) for i, j in all_jobs.items()}
        job = all_jobs[sticky_select("Show run", list(all_jobs), state.WATCH_RUN, "w_watch", format_func=labels.get)]
        _draw(job, [j for j in all_jobs.values() if j.run_id != job.run_id])
        if job.status in ACTIVE and st.button("Cancel run", icon=":material/stop_circle:", key=f"cancel_{job.run_id}"):
            executor().cancel(job.run_id)
            st.toast("Cancelling after the current batch…")
        if resumable(job) and st.button("Resume", icon=":material/replay:", key=f"resume_{job.run_id}"):
            with user_errors("Cannot resume the run"):
                executor().resume(job.run_id)
                st.rerun()  # the whole page, so that it starts polling the run again
        columns = ["name", "status", "progress", "backbone", "mode", "accuracy", "created", "error"]
        show_runs_table(runs_table(list(all_jobs.values())), columns)

    section()
