"""Ensembles in the app: saved ensembles as run-like entries for the pickers, the cached ensemble model, and the
"combine runs" builder on the Evaluate page."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from classifier.ensemble import Ensemble, build_ensemble, ensembles_dir, list_ensembles, read_ensemble
from classifier.jobs import new_run_id
from ui import state
from ui.cache import loaded_run
from ui.widgets import jobs, run_label, user_errors

PREFIX = "ens-"  # picker ids of saved ensembles, so they never collide with run ids
PICK_NEXT = "_ensemble_pick_next"  # an entry a page wants selected in the run picker on its next run


@dataclass
class EnsembleEntry:
    """A saved ensemble shaped like `classifier.jobs.JobStatus`, so the run pickers and labels take it."""

    run_id: str
    name: str
    run_dir: Path
    created_at: float | None
    metrics: dict | None
    config: dict = field(default_factory=lambda: {"backbone": "ensemble"})
    status: str = "completed"
    error: str | None = None
    progress: dict = field(default_factory=dict)
    members: list[dict] = field(default_factory=list)


def is_ensemble(job: Any) -> bool:
    return isinstance(job, EnsembleEntry)


def ensemble_entries() -> list[EnsembleEntry]:
    """Saved ensembles of the workspace, newest first."""
    import json

    out = []
    for d, info in list_ensembles():
        try:
            metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = None
        out.append(
            EnsembleEntry(
                run_id=PREFIX + d.name,
                name=f"{info.get('name') or d.name} (ensemble of {len(info['members'])})",
                run_dir=d,
                created_at=(d / "ensemble.json").stat().st_mtime,
                metrics=metrics,
                members=list(info["members"]),
            )
        )
    return out


def loaded_ensemble(entry: EnsembleEntry) -> Ensemble:
    """The ensemble with its members' cached models (RunError when a member is gone)."""
    info = read_ensemble(entry.run_dir)
    return Ensemble([loaded_run(m["run_dir"]) for m in info["members"]], name=entry.name, ensemble_dir=entry.run_dir)


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
        if st.button("Evaluate and save the ensemble", disabled=len(picked) < 2, key="w_ens_save",
                     icon=":material/join:"):  # fmt: skip
            with user_errors("Cannot build this ensemble"):
                bar = st.progress(0.0, text="Loading the models…")
                runs = [loaded_run(done[i].run_dir) for i in picked]

                def progress(k: int, total: int, eta: float | None) -> None:
                    left = f" · about {eta:.0f} s left" if eta else ""
                    bar.progress(k / total, text=f"Predicting the validation images: run {k}/{total} done{left}")

                folder = new_run_id()
                t0 = time.monotonic()
                m = build_ensemble(
                    [done[i].run_dir for i in picked], ensembles_dir() / folder, name=name.strip() or None,
                    progress=progress, runs=runs,
                )  # fmt: skip
                st.session_state[PICK_NEXT] = PREFIX + folder
                st.toast(f"Ensemble saved: accuracy {m['accuracy']:.1%} ({time.monotonic() - t0:.1f} s)")
                st.rerun()
