"""Data: bring a dataset into the workspace (zip, images per class, demo, server folder), then check it."""

from pathlib import Path

import pandas as pd
import streamlit as st

from classifier.data.dataset import check_trainable
from classifier.data.demo import ensure_demo_dataset
from classifier.data.images import IMAGE_EXTENSIONS, load_image
from classifier.data.ingest import (
    DATA_ROOT_ENV,
    allowed_data_root,
    build_dataset,
    ingest_zip,
    resolve_server_folder,
    visible_datasets,
)
from classifier.data.splits import assign_splits
from classifier.data.transforms import AUGMENT_PRESETS, augment_preview
from classifier.errors import ClassifierError
from classifier.figures import class_histogram
from classifier.task import MULTI
from ui import state
from ui.access import check_upload, current_user
from ui.cache import dataset_index, thumbnail
from ui.multilabel import label_overview
from ui.quality import issues_tab
from ui.widgets import dataset_problems, delete_dataset_box, literal, user_errors

state.init_state()
ss = st.session_state
st.title("Data")
SOURCES = ["Workspace datasets", "Upload a .zip", "Images per class", "Demo dataset", "Folder on the server"]
user = current_user()
saved = visible_datasets(user)
source = st.radio("Where is the dataset?", SOURCES, index=0 if saved else 1, horizontal=True, key="w_source")
max_mb = int(st.get_option("server.maxUploadSize"))
image_types = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)

if source == "Workspace datasets":
    names = {d.name: d for d in saved}
    current = Path(ss[state.DATASET]).name if ss[state.DATASET] else None
    picked = st.selectbox("Datasets saved in the workspace", list(names), index=None, placeholder=current or "Choose…")
    if picked:
        state.use_dataset(str(names[picked]))
elif source == "Upload a .zip":
    up = st.file_uploader(
        f"A .zip of class folders (or train/ and val/ folders), up to {max_mb} MB",
        type=["zip"],
        help="One subfolder per class with images inside; a wrapping top folder is fine.",
    )
    if up is not None and up.file_id not in ss[state.DONE_UPLOADS]:
        with st.spinner(f"Extracting {up.name}…"):
            try:
                check_upload(user, up.size)  # this session's uploads and the user's disk, before anything is written
                root, report = ingest_zip(up.getvalue(), up.name, max_mb * 1024 * 1024, owner=user.name)
            except ClassifierError as e:  # named by the upload; the previous dataset is not shown as if it were this
                st.error(literal(f"{up.name}: {e}" if up.name not in str(e) else str(e)), icon="🚫")
                st.stop()
            ss[state.DONE_UPLOADS][up.file_id] = str(root)
            state.use_dataset(str(root))
            if report and report.refused:
                st.warning(f"{len(report.refused)} archive entries were refused (unsafe names or links).")
                st.dataframe(pd.DataFrame(report.refused, columns=["entry", "reason"]), hide_index=True)
elif source == "Images per class":
    name = st.text_input("Dataset name", value="my-dataset")
    groups = []
    for i in range(ss[state.CLASS_ROWS]):
        left, right = st.columns([1, 3])
        cls = left.text_input(f"Class {i + 1}", key=f"w_class_{i}", placeholder="e.g. cats")
        files = right.file_uploader(
            f"Images of class {i + 1}", type=image_types, accept_multiple_files=True, key=f"u_files_{i}"
        )
        if cls.strip() and files:
            groups.append((cls.strip(), [(f.name, f.getvalue()) for f in files]))
    left, right = st.columns(2)
    if left.button("Add another class", icon=":material/add:"):
        ss[state.CLASS_ROWS] += 1
        st.rerun()
    if right.button("Save dataset", type="primary", disabled=len(groups) < 2, help="Needs two named classes"):
        with user_errors("Could not save the dataset"):
            check_upload(user, sum(len(data) for _, files in groups for _, data in files))
            root, saved, bad = build_dataset(name, groups, owner=user.name)
            state.use_dataset(str(root))
            st.success(f"Saved {saved} images to {root.name}.")
            if bad:
                st.warning(f"{len(bad)} files are not usable images and were left out:")
                st.dataframe(pd.DataFrame(bad, columns=["class", "file", "reason"]), hide_index=True)
elif source == "Demo dataset":
    st.write(
        "Five shape classes (circle, square, triangle, star, cross) on cluttered backgrounds, 60 images each; "
        "or the multi-label variant: 400 scenes with one to three of the shapes, labelled with those present."
    )
    left, right = st.columns(2)
    for col, multi, label in ((left, False, "Use the demo dataset"), (right, True, "Use the multi-label demo")):
        if col.button(label, type="primary" if not multi else "secondary"):
            with user_errors("Could not prepare the demo dataset"), st.spinner("Generating (once)…"):
                state.use_dataset(str(ensure_demo_dataset(multilabel=multi)))
else:
    root = allowed_data_root()
    if root is None:
        st.info(f"Reading folders on the server is off. Set `{DATA_ROOT_ENV}` to the folder the app may read.")
    else:
        folder = st.text_input(f"Folder or CSV under `{root}`", placeholder="e.g. hymenoptera")
        if st.button("Use this folder", disabled=not folder):
            with user_errors():
                state.use_dataset(str(resolve_server_folder(folder)))

if not ss[state.DATASET]:
    st.stop()
path = ss[state.DATASET]
st.divider()
st.header(f"Dataset: {literal(Path(path).name)}")
st.caption(literal(path))
delete_dataset_box(path, user)
index = None
with user_errors("Could not read the dataset"):
    index = dataset_index(path)
if index is None:
    st.stop()
if index.version:  # the latest dataset version (Issues tab); the files themselves are never changed
    st.caption(f"Version {index.version}: {len(index.relabelled)} relabelled, {len(index.excluded)} excluded")
for warning in index.warnings:
    st.warning(warning)
with user_errors("This dataset cannot be trained on yet"):
    check_trainable(index)
if not index.samples:
    st.dataframe(pd.DataFrame([vars(s) for s in index.skipped], columns=["path", "reason"]), hide_index=True)
    st.stop()

if st.radio("View", ["Overview", "Issues"], horizontal=True, key="w_data_view") == "Issues":
    issues_tab(path, index)  # likely label errors, duplicates, outliers; fixes become a new dataset version
    st.stop()
st.subheader("Split")
c1, c2, c3 = st.columns(3)
own = index.has_splits  # train/val folders or a split column: used as given, the fractions do not apply
ss[state.VAL_SPLIT] = c1.slider("Validation fraction", 0.05, 0.5, ss[state.VAL_SPLIT], 0.05, key="w_val", disabled=own)
ss[state.TEST_SPLIT] = c2.slider("Test fraction", 0.0, 0.4, ss[state.TEST_SPLIT], 0.05, key="w_test", disabled=own)
ss[state.SPLIT_SEED] = int(c3.number_input("Split seed", 0, 2**31 - 1, ss[state.SPLIT_SEED], key="w_seed"))
if own:
    st.caption("This dataset has its own train/val folders or split column; those are used as given.")
splits = []
with user_errors():
    splits = assign_splits(index, ss[state.VAL_SPLIT], ss[state.TEST_SPLIT], ss[state.SPLIT_SEED])
summary = index.summary(splits or None)
counts = pd.DataFrame(summary["counts"]).reindex(index.classes).fillna(0).astype(int)
counts["total"] = counts.sum(axis=1)
multi = index.task == MULTI
m1, m2, m3 = st.columns(3)
m1.metric("Images", summary["n_images"], border=True)
m2.metric("Labels (multi-label)" if multi else "Classes", len(index.classes), border=True)
m3.metric("Skipped files", len(summary["skipped"]), border=True)
st.plotly_chart(class_histogram(summary["counts"]))
st.dataframe(counts)
if multi:
    label_overview(summary)
dataset_problems(summary, counts["total"])

st.subheader("Samples")
for label, cls in enumerate(index.classes):
    paths = [index.path_of(s) for s in index.samples if label in index.label_indices(s)][:6]
    st.caption(f"**{literal(cls)}** — {int(counts.loc[cls, 'total'])} images")
    with user_errors():
        st.image([thumbnail(p, 128) for p in paths], caption=[p.name for p in paths], width=128)

st.subheader("Augmentation preview")
a1, a2 = st.columns(2)
by_path = {s.path: s for s in index.samples}  # options are this dataset's paths: a stale pick falls back
pick = a1.selectbox("Image", list(by_path), key="w_aug_img")
preset = a2.selectbox(
    "Preset", list(AUGMENT_PRESETS), index=1, format_func=lambda p: f"{p}: {AUGMENT_PRESETS[p]}", key="w_preset"
)
with user_errors():
    image = load_image(index.path_of(by_path[pick]))
    views = augment_preview(image, preset, n=8, size=160, multilabel=multi)
    st.image(views, width=110, clamp=True)
