"""Explain: why did the model say that? Attribution maps side by side for a validation image or an upload (a
multi-label run: any label as the target, images picked by label and outcome, `ui.multilabel`)."""

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from classifier import rundir
from classifier.data.images import IMAGE_EXTENSIONS, load_image
from classifier.explain import BASELINES, METHODS, crop_box
from classifier.metrics import OUTCOMES, loss_gallery
from classifier.task import MULTI
from ui import state
from ui.cache import file_mtime, loaded_run, run_predictions, val_predictions
from ui.explain import baseline_help, colour_legend, maps_grid, method_help, used_by
from ui.multilabel import pick_val_image
from ui.multilabel import targets as ml_targets
from ui.widgets import run_picker, user_errors

state.init_state()
ss = st.session_state
st.title("Explain")
request = ss[state.EXPLAIN_REQUEST]
if request:  # sent here from Evaluate: select that run and image before the widgets are drawn
    ss[state.RUN_ID] = request["run_id"]
    ss.pop("w_run_picker", None)
job = run_picker("Model (a completed run)")
if job is None:
    st.stop()
run = table = None
with user_errors("Cannot load this run", also=(OSError, KeyError, ValueError)):
    run = loaded_run(job.run_dir)
    table, y_true, probs, names, root = val_predictions(job.run_dir)
    vp = run_predictions(job.run_dir)
if run is None or table is None:
    st.stop()
multi = vp.task == MULTI

# ------------------------------------------------------------------------------------------- the image
VAL, UPLOAD = "Validation image", "Upload"
if request and request.get("run_id") == job.run_id:
    ss["x_source"], ss["x_class"], ss["x_outcome"], ss["x_sort"] = VAL, "any", "all", "highest loss"
    ss["x_ml_label"], ss["x_ml_outcome"] = "any", "all"
    ss["x_image"] = request["path"]
    if request.get("label"):  # a multi-label gallery asks for one label's map
        ss["ml_target_request"] = request["label"]
    ss[state.EXPLAIN_REQUEST] = None
ss.setdefault("x_source", VAL)
source = st.segmented_control("Image", [VAL, UPLOAD], key="x_source") or VAL
image = true_idx = None
image_key: tuple = ()
if source == VAL and multi:
    rel, true_labels = pick_val_image(vp)
    if rel is None:
        st.stop()
    path = Path(root) / rel
    with user_errors("Cannot open this image"):
        image, image_key, stem = load_image(path), ("val", str(path), file_mtime(path)), Path(rel).stem
elif source == VAL:
    c1, c2, c3 = st.columns(3)
    cls = c1.selectbox("True class", ["any", *names], key="x_class")
    outcome = c2.selectbox("Outcome", list(OUTCOMES), key="x_outcome")
    order = c3.selectbox("Order", ["highest loss", "file name"], key="x_sort")
    true = None if cls == "any" else names.index(cls)
    rows = loss_gallery(y_true, probs, true=true, outcome=outcome) if len(y_true) else []
    if order == "file name":
        rows.sort(key=lambda r: table["path"].iloc[r["index"]])
    if not rows:
        st.info("No validation images match these filters.")
        st.stop()
    by_path = {table["path"].iloc[r["index"]]: r for r in rows}
    if ss.get("x_image") not in by_path:
        ss["x_image"] = next(iter(by_path))
    rel = st.selectbox(
        f"Validation image ({len(by_path)})",
        list(by_path),
        key="x_image",
        format_func=lambda p: (
            f"{p} · true {names[by_path[p]['true']]} · predicted {names[by_path[p]['pred']]} "
            f"({by_path[p]['prob_pred']:.0%}) · loss {by_path[p]['loss']:.2f}"
        ),
    )
    path = Path(root) / rel
    with user_errors("Cannot open this image"):
        image = load_image(path)
        true_idx = by_path[rel]["true"]
        image_key = ("val", str(path), file_mtime(path))
        stem = Path(rel).stem
else:
    up = st.file_uploader("Image", type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), key="u_explain_upload")
    if up is not None:
        data = up.getvalue()
        with user_errors(up.name):
            image = load_image(data, name=up.name)
            image_key = ("upload", hashlib.sha1(data).hexdigest())
            stem = Path(up.name).stem
if image is None:
    if source == UPLOAD:
        st.info("Drop an image (JPEG, PNG, WebP, BMP, GIF, TIFF) to explain the model's prediction on it.")
    st.stop()

# ------------------------------------------------------------------------------------- what to explain
from classifier.predict import predict_images  # noqa: E402  (after the early stops: torch work starts here)

p = predict_images(run, [image])[0]
pred = int(np.argmax(p))
if multi:
    targets = ml_targets(p, names, run.thresholds, true_labels if source == VAL else [])
    wanted = ss.pop("ml_target_request", None)  # the label a gallery's Explain asked for, whatever its probability
    if wanted in names:
        ss["x_target"] = next(k for k, i in targets.items() if i == names.index(wanted))
else:
    targets = {f"predicted: {names[pred]} ({p[pred]:.0%})": pred}
    if true_idx is not None:
        targets[f"true: {names[true_idx]} ({p[true_idx]:.0%})"] = true_idx
    targets |= {f"class {c} ({p[i]:.0%})": i for i, c in enumerate(names)}
if ss.get("x_target") not in targets:
    ss["x_target"] = next(iter(targets))
t1, t2 = st.columns([1, 2])
target_label = t1.selectbox("Explain the score of", list(targets), key="x_target", help="The class logit explained.")
methods = t2.multiselect(
    "Methods",
    list(METHODS),
    default=["gradcam", "ig", "saliency"],
    format_func=lambda m: METHODS[m].label,
    key="x_methods",
    help=method_help(),
)
with st.expander("Settings"):
    s1, s2, s3, s4 = st.columns(4)
    baseline = s1.selectbox(
        "Baseline",
        ["auto", *BASELINES],
        key="x_baseline",
        help=baseline_help(),
    )
    n_steps = s2.slider("IG steps", 8, 128, 32, step=8, key="x_steps", help="Path steps of integrated gradients.")
    nt_samples = s3.slider("Noise samples", 4, 32, 8, step=4, key="x_samples", help=used_by("nt_samples"))
    window = s4.slider(
        "Occlusion window (% of input)", 5, 40, 14, key="x_window", help="Side of the occluding square; stride is half."
    )
    v1, v2, v3, v4 = st.columns(4)
    shift_average = v4.toggle(
        "Shifted Grad-CAM",
        value=True,
        key="x_shift",
        help="The mean Grad-CAM of the image moved a quarter of a feature cell each way: twice as fine as one pass, "
        "at several times its cost. Off: the plain one-pass map.",
    )
    cmap = v1.selectbox("Colour map", ["jet", "inferno", "viridis", "magma", "turbo", "Reds"], key="x_cmap")
    alpha = v2.slider("Opacity", 0.0, 1.0, 0.5, step=0.05, key="x_alpha")
    crop = v3.toggle("Show only what the model sees", value=True, key="x_crop", help="Crop to the evaluation crop.")

target = targets[target_label]
size = int(run.config["data_config"]["input_size"][-1])
options = {
    "baseline": None if baseline == "auto" else baseline,
    "n_steps": int(n_steps),
    "nt_samples": int(nt_samples),
    "occlusion_window": max(1, round(size * window / 100)),
    "shift_average": bool(shift_average),
}
said = ", ".join(f"**{names[i]}** ({p[i]:.1%})" for i in np.flatnonzero(p >= run.thresholds)) if multi else ""
st.caption(
    (f"Labels predicted: {said or 'none'}." if multi else f"Prediction **{names[pred]}** ({p[pred]:.1%}).")
    + f" Maps are computed on the {size} px input the model sees and drawn over the original image."
)

# ------------------------------------------------------------------------------------------ the overlays
if not methods:
    st.info("Choose one or more methods above.")
    st.stop()
colour_legend(cmap)
weights_key = (job.run_dir, file_mtime(rundir.weights_path(job.run_dir)))
keys = {  # the cache key holds only what each method's map depends on
    m: (weights_key, image_key, m, target, tuple(sorted(METHODS[m].used_options(options).items()))) for m in methods
}
box = crop_box(image.size, run.config["data_config"]) if crop else None
maps_grid(run, image, keys, {"target": target, "options": options, "side": size},
          {"cmap": cmap, "alpha": alpha, "crop": crop, "box": box}, stem)  # fmt: skip
