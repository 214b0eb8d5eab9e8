"""Predict: run a trained model (or an ensemble of runs) on uploaded images or a camera photo; top-k per image and a
CSV for a batch (multi-label: the labels above their thresholds and per-label bars, `ui.multilabel`)."""

from typing import Any

import streamlit as st

from classifier.ensemble import Ensemble
from ui import state
from ui.cache import loaded_run
from ui.ensemble import is_ensemble, loaded_ensemble
from ui.predict import predict_section
from ui.widgets import jobs, literal, run_label, run_picker, user_errors

state.init_state()
st.title("Predict")
kind = st.radio(
    "Model", ["Run", "Ensemble"], horizontal=True, key="w_pred_kind",
    help="Ensemble: average the class probabilities of several runs trained on the same classes.",
)  # fmt: skip
run: Any = None
if kind == "Run":
    job = run_picker("Model (a completed run or a saved ensemble)", ensembles=True)
    if job is None:
        st.stop()
    tag = job.run_id
    with user_errors("Cannot load this model"):
        run = loaded_ensemble(job) if is_ensemble(job) else loaded_run(job.run_dir)
else:
    done = {j.run_id: j for j in jobs() if j.status == "completed"}
    picked = st.multiselect(
        "Runs to combine", list(done), format_func=lambda i: run_label(done[i], with_accuracy=True), key="w_pred_ens",
        help="Runs trained on the same classes in the same order; each keeps its own preprocessing.",
    )  # fmt: skip
    if len(picked) < 2:
        st.info("Pick two or more completed runs trained on the same classes to average their predictions.")
        st.stop()
    tag = "ensemble"
    with user_errors("Cannot combine these runs"):
        run = Ensemble([loaded_run(done[i].run_dir) for i in picked])
if run is None:
    st.stop()
classes = run.class_names
multi = run.thresholds is not None  # a multi-label run or ensemble
how = (
    f"the mean of {len(run.members)} runs' probabilities, each through its own evaluation transform"
    if isinstance(run, Ensemble)
    else "the run's exact evaluation transform"
)
unit = (
    "labels (multi-label: each image gets every label whose probability reaches its threshold)" if multi else "classes"
)
st.caption(f"{len(classes)} {unit}: {literal(', '.join(classes))}. Predictions use {how}.")

predict_section(run, tag)
