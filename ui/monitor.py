"""Live view of background training runs: progress bar, loss/accuracy curves, cancel and resume, run list.

The run's process writes progress into the run store; this view only reads it. While a run is queued or
running, `runs_section` draws inside an `st.fragment(run_every=...)` so only this part of the page re-runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from classifier.figures import history_curves
from classifier.jobs import resumable, resume_info
from classifier.store import ACTIVE
from ui import state
from ui.cache import executor
from ui.widgets import STATUS_ICONS, jobs, metric_cards, run_label, runs_table, sticky_select, user_errors

POLL_SECONDS = 1.0
LOG_LINES = 200  # the end of the log the Train page shows


def duration(seconds: float | None) -> str:
    """'1h 02m', '3m 05s', '12s'; '—' when unknown."""
    if seconds is None or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_text(p: dict[str, Any]) -> str:
    """One line: phase, epoch, step, speed and time left."""
    parts = []
    if p.get("phase") in ("setup", "cache", "features", "val"):
        label = {"setup": "Preparing", "cache": "Decoding images (once; later epochs and runs read the cache)",
                 "features": "Computing features", "val": "Validating"}[p["phase"]]  # fmt: skip
        done, total = p.get("phase_done"), p.get("phase_total")
        parts.append(f"{label} {done}/{total}" if total else label)
    if p.get("epochs"):
        parts.append(f"epoch {p.get('epoch', 0)}/{p['epochs']}")
    if p.get("total_steps"):
        parts.append(f"step {p.get('step', 0)}/{p['total_steps']}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.3f}")
    if p.get("images_per_sec"):
        parts.append(f"{p['images_per_sec']:.0f} images/s")
    if p.get("eta_seconds") is not None:
        parts.append(f"ETA {duration(p['eta_seconds'])}")
    return " · ".join(parts) or "Waiting to start…"


def history(run_id: str) -> pd.DataFrame:
    """Per-epoch rows the run has reported so far."""
    return pd.DataFrame(executor().history(run_id))


def _draw(job: Any) -> None:
    st.markdown(f"**{job.name or job.run_id}** — {STATUS_ICONS.get(job.status, '')} {job.status}")
    p = job.progress or {}
    if job.status in ACTIVE:
        fraction = float(p.get("fraction") or 0.0)
        if p.get("phase") in ("cache", "features") and p.get("phase_total"):
            # A linear probe spends most of its time here, before the first optimizer step.
            fraction = float(p.get("phase_done") or 0) / float(p["phase_total"])
        st.progress(min(1.0, max(0.0, fraction)), text=progress_text(p))
    elif job.status == "failed":
        st.error(f"The run failed: {job.error or 'no error message was recorded'}")
    elif job.status in ("cancelled", "interrupted"):
        st.warning(f"The run was {job.status}. " + (job.error or "The best checkpoint so far, if any, was kept."))
    elif job.status == "completed":
        metric_cards(job.metrics)
    if resumable(job):
        at = resume_info(job)
        where = f"epoch {at['epoch']}, step {at['step']}" if at else "the start (no checkpoint was written yet)"
        st.caption(f"**Resume** continues this run from its last checkpoint: {where}.")
    hist = history(job.run_id)
    if not hist.empty:
        st.plotly_chart(history_curves(hist), key=f"history_{job.run_id}")
    if st.toggle("Show the log", key=f"log_{job.run_id}", help="The run's output (every process, resumes included)"):
        text = executor().logs(job.run_id)
        st.code("".join(text.splitlines(keepends=True)[-LOG_LINES:]) or "(nothing yet)", language=None)


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
        _draw(job)
        if job.status in ACTIVE and st.button("Cancel run", icon=":material/stop_circle:", key=f"cancel_{job.run_id}"):
            executor().cancel(job.run_id)
            st.toast("Cancelling after the current batch…")
        if resumable(job) and st.button("Resume", icon=":material/replay:", key=f"resume_{job.run_id}"):
            with user_errors("Cannot resume the run"):
                executor().resume(job.run_id)
                st.rerun()  # the whole page, so that it starts polling the run again
        table = runs_table(list(all_jobs.values()))
        st.dataframe(
            table[["name", "status", "backbone", "mode", "accuracy", "created", "error"]],
            hide_index=True,
            column_config={"accuracy": st.column_config.NumberColumn(format="percent")},
        )

    section()
