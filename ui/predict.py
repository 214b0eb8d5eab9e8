"""Predicting on uploaded images or a camera photo: the part the Predict page and the public prediction page share
(top-k per image, a table and a spreadsheet-safe CSV for a batch; multi-label: `ui.multilabel.predict_view`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from classifier.data.images import IMAGE_EXTENSIONS, load_image
from classifier.ensemble import Ensemble
from classifier.errors import ImageError
from classifier.figures import topk_bar
from classifier.io import spreadsheet_safe
from classifier.predict import format_prediction, predict_images
from ui.multilabel import predict_view
from ui.widgets import literal


def predict_section(run: Any, tag: str, before_predict: Callable[[tuple, int], None] | None = None) -> None:
    """Upload or photograph images and show `run`'s (a LoadedRun or an Ensemble) top-k for each.
    `before_predict(files, n)` is called with the uploads' ids and the number of images just before the model runs
    (again on every rerun with the same files); it may raise a ClassifierError (a limit)."""
    classes = run.class_names
    multi = getattr(run, "thresholds", None) is not None  # a multi-label run or ensemble: labels above thresholds
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
        return
    names, images = [], []
    for f in files:
        try:
            images.append(load_image(f.getvalue(), name=f.name))
            names.append(f.name)
        except ImageError as e:
            st.error(f"{literal(f.name)}: {literal(e.reason)} — skipped; the other images are still predicted.",
                     icon="🚫")  # fmt: skip
    if not images:
        return
    if before_predict is not None:
        before_predict(tuple(getattr(f, "file_id", f.name) for f in files), len(images))
    with st.spinner(f"Predicting {len(images)} image(s)…"):
        probs = run.predict_images(images) if isinstance(run, Ensemble) else predict_images(run, images)
    if multi:
        predict_view(images, names, probs, run, tag)
        return
    results = [format_prediction(n, p, classes, top_k) for n, p in zip(names, probs)]
    if len(results) > 1:
        _batch_table(results, probs, classes, tag)
    for n, (image, r) in enumerate(zip(images, results)):
        left, right = st.columns([1, 2])
        left.image(image, caption=r["path"], width="stretch")
        right.markdown(f"**{literal(r['label'])}** — {r['probability']:.1%}")
        right.plotly_chart(topk_bar([label for label, _ in r["top_k"]], [p for _, p in r["top_k"]]), key=f"topk_{n}")


def _batch_table(results: list[dict], probs: Any, classes: list[str], tag: str) -> None:
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
