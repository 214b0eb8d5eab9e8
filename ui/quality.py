"""The Data page's Issues tab: scan the dataset version, rank what it finds, fix it image by image, save a version.

The scan runs in the script with a progress bar and ETA (the LR finder does the same): one feature pass, then
seconds; its result is kept in the session (`state.SCAN`) and in the scan cache, so a rescan of the same images
with the same model is read back. Every action (relabel, exclude, reviewed) goes to the dataset's draft
(`DatasetVersions.edit`, a file: a reload loses nothing) and "Save as version N" turns the draft into a version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from classifier.data.dataset import DatasetIndex, save_version
from classifier.data.versions import DatasetVersions, Edits
from classifier.jobs.progress import duration
from classifier.models import list_backbones
from classifier.quality import ISSUE_TYPES, SCAN_BACKBONE, ScanResult, scan_dataset
from classifier.training import TrainConfig
from ui import state
from ui.cache import dataset_index, thumbnail
from ui.widgets import literal, user_errors

PER_PAGE = 8  # images per issue type shown at once (most likely first); "Show more" adds as many again
TITLES = {"label": "Likely label errors", "duplicate": "Near duplicates", "outlier": "Outliers"}
PHASES = {"cache": "Decoding images", "features": "Computing features (once)", "probe": "Training the probe's "
          "heads", "issues": "Running cleanlab"}  # fmt: skip


def issues_tab(path: str, index: DatasetIndex) -> None:
    """Scan settings and button, then the result of this dataset's last scan in this session, with the actions."""
    ss = st.session_state
    versions = DatasetVersions(path)
    if ss[state.VERSION_SAVED] is not None:
        st.success(
            f"Saved version {ss[state.VERSION_SAVED]}. The Train page trains on it (the latest) by default; Compare "
            "shows runs before and after by their dataset.version. Scan again to check it.",
            icon="✅",
        )
        ss[state.VERSION_SAVED] = None
    st.caption(
        "Frozen-backbone features of every image (computed once and cached), a linear probe cross-validated over "
        "K folds so every image is judged by heads that never saw it, then cleanlab: likely label errors with the "
        "suggested label, near duplicates (also across train and validation), outliers and overlapping classes. "
        "Edits become a new dataset version; the image files are never changed."
    )
    backbones = [b.name for b in list_backbones()]  # simple_cnn's are random weights: a quick check at best
    c1, c2, c3 = st.columns([2, 1, 1])
    backbone = c1.selectbox(
        "Backbone for the features",
        backbones,
        index=backbones.index(SCAN_BACKBONE),
        key="w_scan_backbone",
        help="EfficientNet-Lite0/1/2 weights ship with the tool (offline); Lite2, the default, finds more of the "
        "wrong labels than Lite0 (docs/benchmarks.md).",
    )
    folds = int(c2.number_input("Folds", 2, 20, 5, key="w_scan_folds"))
    c3.write("")
    if c3.button("Scan", type="primary", icon=":material/troubleshoot:", key="b_scan"):
        config = TrainConfig(data=path, data_version=index.version, backbone=backbone, val_split=ss[state.VAL_SPLIT],
                             test_split=ss[state.TEST_SPLIT], seed=ss[state.SPLIT_SEED])  # fmt: skip
        with user_errors("Cannot scan the dataset", also=(ValueError,)):
            ss[state.SCAN] = {"path": path, "result": _scan(config, folds).to_dict()}
    shown = ss[state.SCAN]
    if not shown or shown["path"] != path:
        st.info("Scan the dataset to see its likely problems.", icon="ℹ️")
        return
    result = ScanResult.from_dict(shown["result"])
    _draft_bar(path, versions, index)
    _results(result, versions, index)


def _scan(config: TrainConfig, folds: int) -> ScanResult:
    bar = st.progress(0.0, text="Preparing…")
    t0 = {"phase": None, "start": time.time()}

    def progress(phase: str, done: int, total: int) -> None:
        if phase != t0["phase"]:
            t0.update(phase=phase, start=time.time())
        frac = done / max(1, total)
        eta = (time.time() - t0["start"]) / frac * (1 - frac) if frac > 0 else None
        bar.progress(min(1.0, frac), text=f"{PHASES.get(phase, phase)} {done}/{total} · ETA {duration(eta)}")

    result = scan_dataset(config, folds, progress=progress)
    bar.empty()
    return result


def _results(result: ScanResult, versions: DatasetVersions, index: DatasetIndex) -> None:
    m = result.meta
    draft = versions.draft()
    reviewed = versions.get(index.version).reviewed | draft.reviewed
    counts = result.counts(reviewed)
    how = "read back from the scan cache" if m.get("cached") else f"in {duration(m.get('seconds_total'))}"
    st.caption(
        f"Version {m['version']} scanned with {m['backbone']} ({m['weights']}) {how}: {m['n_images']} images, "
        f"{m['folds']} folds, out-of-sample agreement with the labels {m['probe_accuracy']:.1%}. Scores: higher is "
        "more likely a problem. Images marked reviewed are not listed again."
    )
    for col, issue in zip(st.columns(len(ISSUE_TYPES)), ISSUE_TYPES):
        col.metric(TITLES.get(issue, "Overlapping class pairs"), counts[issue], border=True)
    if m["version"] != index.version:
        st.warning(f"This scan is of version {m['version']}; the page shows version {index.version}. Scan again.")
    table = result.issues(reviewed)
    if len(result.overlap):
        st.dataframe(result.overlap.rename(columns={"images": "images swapped (estimate)", "score": "share"}),
                     hide_index=True)  # fmt: skip
    images = result.images.set_index("path")
    for issue in ("label", "duplicate", "outlier"):
        rows = table[table["issue"] == issue]
        if len(rows):
            _gallery(issue, rows, images, versions, index, draft)
    st.download_button("Download issues.csv", table.to_csv(index=False).encode(), "issues.csv", "text/csv",
                       icon=":material/download:", key="b_issues_csv")  # fmt: skip


def _gallery(issue: str, rows: pd.DataFrame, images: pd.DataFrame, versions: DatasetVersions,
             index: DatasetIndex, draft: Edits) -> None:  # fmt: skip
    """Ranked images of one issue type, four a row, each with its actions."""
    ss = st.session_state
    more_key = f"b_more_{issue}"
    limit = ss.get(f"quality_shown_{issue}", PER_PAGE)
    st.subheader(f"{TITLES[issue]} ({len(rows)})")
    shown = rows.head(limit)
    for start in range(0, len(shown), 4):
        for col, r in zip(st.columns(4), shown.iloc[start : start + 4].itertuples()):
            with col.container(border=True):
                _card(issue, r, images.loc[r.path], versions, index, draft)
    if len(rows) > limit and st.button(f"Show more ({len(rows) - limit} left)", key=more_key):
        ss[f"quality_shown_{issue}"] = limit + PER_PAGE
        st.rerun()


def _card(issue: str, r: Any, info: pd.Series, versions: DatasetVersions, index: DatasetIndex, draft: Edits) -> None:
    with user_errors():
        st.image(thumbnail(Path(index.root) / r.path, 200), width=200)
    given, suggested = literal(r.given_label), literal(r.suggested_label)
    what = f"**{given}** → **{suggested}**" if issue == "label" else f"**{given}**"
    st.caption(f"{literal(r.path)} ({info['split']}) · {what} · score {r.score:.3f}")
    if issue == "duplicate":
        leak = " · in another split" if info["cross_split"] else ""
        st.caption("of " + ", ".join(literal(p) for p in info["duplicate_of"][:3]) + leak)
    pending = _pending(r.path, draft)
    if pending:
        st.caption(f"Pending: {literal(pending)}")
        return
    key = f"{issue}_{r.path}"  # one button a line: three side by side do not fit a quarter of the page
    if issue == "label" and st.button(f"Relabel as {suggested}", key=f"b_relabel_{key}", width="stretch"):
        _edit(versions, Edits(relabel={r.path: r.suggested_label}))
    if st.button("Exclude", key=f"b_exclude_{key}", help="Leave this image out of the new version", width="stretch"):
        _edit(versions, Edits(exclude={r.path}))
    if st.button("Reviewed", key=f"b_reviewed_{key}", help="Keep it as it is; stop listing it", width="stretch"):
        _edit(versions, Edits(reviewed={r.path}))


def _pending(path: str, draft: Edits) -> str:
    if path in draft.relabel:
        return f"relabel as {draft.relabel[path]}"
    if path in draft.exclude:
        return "exclude"
    return "reviewed" if path in draft.reviewed else ""


def _edit(versions: DatasetVersions, edits: Edits) -> None:
    versions.edit(edits)
    st.rerun()


def _draft_bar(path: str, versions: DatasetVersions, index: DatasetIndex) -> None:
    """The unsaved edits, and saving them as the next version (or discarding them)."""
    draft = versions.draft()
    if not draft:
        return
    n = versions.latest() + 1
    st.info(
        f"Unsaved edits: {len(draft.relabel)} relabelled, {len(draft.exclude)} excluded, {len(draft.reviewed)} "
        f"marked reviewed. Save them as version {n}; runs train on the latest version unless told otherwise.",
        icon="✏️",
    )
    c1, c2, c3 = st.columns([2, 1, 1])
    note = c1.text_input("Note for the version", key="e_version_note", placeholder="e.g. label fixes from the scan")
    if c2.button(f"Save as version {n}", type="primary", key="b_save_version"):
        with user_errors("Cannot save the version"):
            saved = save_version(path, note=note, index=dataset_index(path, 0))
            st.session_state[state.VERSION_SAVED] = saved
            st.rerun()
    if c3.button("Discard edits", key="b_discard_edits"):
        versions.discard_draft()
        st.rerun()
