"""Ensembles in the app: the cached ensemble model of a saved ensemble (a catalogue entry of kind "ensemble"), and
the "combine runs" builder on the Evaluate page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from classifier.device import heavy_work
from classifier.ensemble import Ensemble, build_ensemble, ensembles_dir, read_ensemble
from classifier.jobs import JobStatus, new_run_id
from classifier.jobs.catalogue import ENSEMBLE_PREFIX
from ui import state
from ui.access import current_user
from ui.cache import loaded_run
from ui.widgets import jobs, run_label, server_busy_notice, user_errors

PICK_NEXT = "_ensemble_pick_next"  # an entry a page wants selected in the run picker on its next run


def is_ensemble(job: Any) -> bool:
    return getattr(job, "kind", "run") == "ensemble"


def loaded_ensemble(entry: JobStatus) -> Ensemble:
    """The ensemble with its members' cached models (RunError when a member is gone)."""
    return loaded_ensemble_dir(entry.run_dir, entry.name)


def loaded_ensemble_dir(folder: str | Path, name: str) -> Ensemble:
    """A saved ensemble's folder as an Ensemble of cached member models."""
    info = read_ensemble(folder)
    return Ensemble([loaded_run(m["run_dir"]) for m in info["members"]], name=name, ensemble_dir=Path(folder))


def apply_pending_pick(widget_key: str = "w_run_picker") -> None:
    """Select the entry `ensemble_builder` just saved; call before the run picker is drawn."""
    ss = st.session_state
    if ss.get(PICK_NEXT):
        ss[state.RUN_ID] = ss[widget_key] = ss.pop(PICK_NEXT)


def ensemble_builder() -> None:
    """Pick completed runs, evaluate their average on the shared validation images and save it as an ensemble."""
    done = {j.run_id: j for j in jobs() if j.status == "completed"}
    with st.expander("Combine runs into an ensemble"):
        if len(done) < 2:
            st.caption("An ensemble needs two or more completed runs trained on the same classes.")
            return
        picked = st.multiselect(
            "Runs to combine",
            list(done),
            format_func=lambda i: run_label(done[i], with_accuracy=True),
            key="w_ens_runs",
            help="Runs trained on the same classes (same names, same order) and validated on the same images. "
            "Their probabilities are averaged; each run keeps its own preprocessing.",
        )
        name = st.text_input("Ensemble name (optional)", key="w_ens_name")
        if st.button("Evaluate and save the ensemble", disabled=len(picked) < 2, key="b_ens_save",
                     icon=":material/join:"):  # fmt: skip
            with user_errors("Cannot build this ensemble"):
                bar = st.progress(0.0, text="Loading the models…")
                runs = [loaded_run(done[i].run_dir) for i in picked]

                def progress(k: int, total: int, eta: float | None) -> None:
                    left = f" · about {eta:.0f} s left" if eta else ""
                    bar.progress(k / total, text=f"Predicting the validation images: run {k}/{total} done{left}")

                folder = new_run_id()
                t0 = time.monotonic()
                with heavy_work("building the ensemble", waiting=server_busy_notice):  # one model job at a time
                    m = build_ensemble(
                        [done[i].run_dir for i in picked], ensembles_dir() / folder, name=name.strip() or None,
                        progress=progress, runs=runs, owner=current_user().name or None,
                    )  # fmt: skip
                st.session_state[PICK_NEXT] = ENSEMBLE_PREFIX + folder
                st.toast(f"Ensemble saved: accuracy {m['accuracy']:.1%} ({time.monotonic() - t0:.1f} s)")
                st.rerun()
