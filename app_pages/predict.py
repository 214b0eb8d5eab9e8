"""Predict: run a trained model (or an ensemble of runs) on uploaded images or a camera photo; top-k per image and a
CSV for a batch (multi-label: the labels above their thresholds and per-label bars, `ui.multilabel`)."""

from typing import Any

import pandas as pd
import streamlit as st

from classifier.data.images import IMAGE_EXTENSIONS, load_image
from classifier.ensemble import Ensemble
from classifier.errors import ImageError
from classifier.figures import topk_bar
from classifier.io import spreadsheet_safe
from classifier.predict import format_prediction, predict_images
from ui import state
from ui.cache import loaded_run
from ui.ensemble import is_ensemble, loaded_ensemble
from ui.multilabel import predict_view
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

top_k = 0 if multi else st.slider("Classes to show per image", 1, min(10, len(classes)), min(3, len(classes)),
                                  key="w_topk")  # fmt: skip
files = st.file_uploader(
    "Images", type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), accept_multiple_files=True, key="u_pred_files"
)
files = list(files or [])
if st.toggle("Take a photo with the camera", key="w_camera_on"):
    photo = st.camera_input("Photo", key="u_camera")
    if photo is not None:
        files.append(photo)
if not files:
    st.info("Drop one or more images above (JPEG, PNG, WebP, BMP, GIF, TIFF), or take a photo.")
    st.stop()

names, images = [], []
for f in files:
    try:
        images.append(load_image(f.getvalue(), name=f.name))
        names.append(f.name)
    except ImageError as e:
        st.error(f"{literal(f.name)}: {literal(e.reason)} — skipped; the other images are still predicted.", icon="🚫")
if not images:
    st.stop()
with st.spinner(f"Predicting {len(images)} image(s)…"):
    probs = run.predict_images(images) if isinstance(run, Ensemble) else predict_images(run, images)
if multi:
    predict_view(images, names, probs, run, tag)
    st.stop()
results = [format_prediction(n, p, classes, top_k) for n, p in zip(names, probs)]

if len(results) > 1:
    st.subheader(f"{len(results)} images")
    table = pd.DataFrame(
        [
            {"file": r["path"], "label": r["label"], "probability": r["probability"]}
            | {f"p_{c}": round(float(v), 6) for c, v in zip(classes, p)}
            for r, p in zip(results, probs)
        ]
    )
    st.dataframe(table, hide_index=True)
    st.download_button(
        "Download predictions (CSV)",
        table.map(spreadsheet_safe).to_csv(index=False).encode(),  # file and class names never run as formulas
        file_name=f"predictions-{tag}.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )

for n, (image, r) in enumerate(zip(images, results)):
    left, right = st.columns([1, 2])
    left.image(image, caption=r["path"], width="stretch")
    right.markdown(f"**{literal(r['label'])}** — {r['probability']:.1%}")
    right.plotly_chart(topk_bar([label for label, _ in r["top_k"]], [p for _, p in r["top_k"]]), key=f"topk_{n}")
