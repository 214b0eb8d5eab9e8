"""Predict: run a trained model on uploaded images or a camera photo; top-k per image and a CSV for a batch."""

import pandas as pd
import streamlit as st

from classifier.data.images import IMAGE_EXTENSIONS, load_image
from classifier.errors import ImageError
from classifier.figures import topk_bar
from classifier.predict import format_prediction, predict_images
from ui import state
from ui.cache import loaded_run
from ui.widgets import run_picker, user_errors

state.init_state()
st.title("Predict")
job = run_picker("Model (a completed run)")
if job is None:
    st.stop()
run = None
with user_errors("Cannot load this run's model"):
    run = loaded_run(job.run_dir)
if run is None:
    st.stop()
classes = run.class_names
st.caption(f"{len(classes)} classes: {', '.join(classes)}. Images go through the run's exact evaluation transform.")

top_k = st.slider("Classes to show per image", 1, min(10, len(classes)), min(3, len(classes)), key="w_topk")
files = st.file_uploader(
    "Images", type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), accept_multiple_files=True, key="w_pred_files"
)
files = list(files or [])
if st.toggle("Take a photo with the camera", key="w_camera_on"):
    photo = st.camera_input("Photo", key="w_camera")
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
        st.error(f"{f.name}: {e.reason} — skipped; the other images are still predicted.", icon="🚫")
if not images:
    st.stop()
with st.spinner(f"Predicting {len(images)} image(s)…"):
    probs = predict_images(run, images)
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
        table.to_csv(index=False).encode(),
        file_name=f"predictions-{job.run_id}.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )

for n, (image, r) in enumerate(zip(images, results)):
    left, right = st.columns([1, 2])
    left.image(image, caption=r["path"], width="stretch")
    right.markdown(f"**{r['label']}** — {r['probability']:.1%}")
    right.plotly_chart(topk_bar([label for label, _ in r["top_k"]], [p for _, p in r["top_k"]]), key=f"topk_{n}")
