"""The Runs page's Export section: build an ONNX/TorchScript bundle, show its parity and speed figures, download it.

All the work is `classifier.export.export_run`; this draws its report. The bundle and its report (JSON) are kept
in `<workspace>/exports/<run>/`, so the last export of each format stays on the page across reruns and reloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from classifier import rundir
from classifier.device import heavy_work
from classifier.export import default_export_path, export_run
from classifier.io import atomic_write_json
from ui.cache import file_mtime
from ui.widgets import server_busy_notice, user_errors

FORMATS = {"ONNX": "onnx", "TorchScript": "torchscript"}


def export_section(job: Any) -> None:
    """Format and int8 choice, a build button, the last export's figures (with a warning when flagged), download."""
    st.subheader("Export")
    weights = rundir.weights_path(job.run_dir)
    if job.status != "completed" or not weights.is_file():
        st.caption("Export needs a completed run with a saved model.")
        return
    left, right = st.columns(2)
    label = left.radio(
        "Format",
        list(FORMATS),
        horizontal=True,
        key=f"w_export_format_{job.run_id}",
        help="ONNX runs in ONNX Runtime (CPU, GPU, mobile, browsers); TorchScript needs PyTorch and is deprecated "
        "in PyTorch 2.15.",
    )
    fmt = FORMATS[label]
    int8 = right.checkbox(
        "int8 quantization",
        key=f"w_export_int8_{job.run_id}",
        disabled=fmt != "onnx",
        help="ONNX only: static int8 calibrated on the run's training images (dynamic int8 only as a fallback, with "
        "its reason), about 4x smaller; size, accuracy and speed of both are shown next to the float model's.",
    )
    quantize = "int8" if int8 and fmt == "onnx" else None
    bundle = default_export_path(job.run_dir, fmt, quantize)
    report_path = bundle.with_suffix(".json")
    if st.button("Build export", key=f"b_export_build_{job.run_id}", icon=":material/package_2:"):
        # user_errors outside the status box: a failure shows as an error box, not inside a collapsed status
        with user_errors("Export failed"), st.status("Exporting…", expanded=False) as box:
            with heavy_work("the export", waiting=server_busy_notice):  # one model job in the server at a time
                report = export_run(job.run_dir, fmt, bundle, quantize=quantize,
                                    progress=lambda msg: box.update(label=msg))  # fmt: skip
            atomic_write_json(report_path, report.to_dict())
            box.update(label=f"Exported in {report.seconds:.0f} s", state="complete")
    saved = _saved_report(report_path, bundle, weights)
    if saved is None:
        st.caption(
            "Builds the model file, checks it against the PyTorch model on the run's validation images (top-1 "
            "agreement, largest probability difference), times both, and packs a zip with config.json, a model "
            "card and a predict script."
        )
        return
    show_report(saved)
    st.download_button(
        f"Download {label}{' int8' if quantize else ''} bundle (.zip)",
        data=bundle.read_bytes(),
        file_name=f"{job.run_id}-{bundle.stem}.zip",
        mime="application/zip",
        on_click="ignore",
        icon=":material/download:",
        key=f"b_export_download_{job.run_id}",
        help="The model file, config.json (classes, preprocessing), MODEL_CARD.md and a predict script",
    )


def _saved_report(report_path: Path, bundle: Path, weights: Path) -> dict[str, Any] | None:
    """The last report for this choice, if its bundle exists and is newer than the run's weights."""
    if not bundle.is_file() or file_mtime(report_path) < file_mtime(weights):
        return None
    try:
        return json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def accuracy_help(r: dict[str, Any], ref: float | None, change: float | None) -> str:
    """What the accuracy card was measured on, and how it relates to PyTorch and to the run's headline."""
    if ref is None:
        return f"Not measured: the check ran on {r['inputs']}."
    text = f"PyTorch: {ref:.1%} on the same {r['n_images']} {r['inputs']}" + ("" if change else " (no change)")
    head = r.get("headline_accuracy")
    if head is not None:
        text += f"; these are all the run's validation images, on which its headline accuracy is {head:.1%}"
    else:
        text += "; a part of the run's validation images (the headline uses all of them)"
    return text + "."


def show_report(r: dict[str, Any]) -> None:
    """Headline parity and speed cards, a table of every model compared, and a warning when the check flagged it."""
    check = r["checks"][-1]
    cards = st.columns(4)
    cards[0].metric("Top-1 agreement", f"{check['top1_agreement']:.1%}", border=True,
                    help=f"{check['name']} vs PyTorch on {r['n_images']} {r['inputs']}")  # fmt: skip
    cards[1].metric("Max prob. difference", f"{check['max_prob_diff']:.2g}", border=True,
                    help="Largest |p_export − p_pytorch| over all images and classes")  # fmt: skip
    ratio = r.get("speed_ratio")
    cards[2].metric("Speed vs PyTorch", "—" if ratio is None else f"{ratio:.2f}×", border=True,
                    help=f"{check['images_per_s']} vs {r['pytorch_images_per_s']} images/s, batch of "
                    f"{r['speed_batch']}, {r['threads']} CPU threads, measured side by side")  # fmt: skip
    acc, ref = check.get("accuracy"), r["pytorch_accuracy"]
    change = None if acc is None or ref is None else round((acc - ref) * 100, 1)
    cards[3].metric(f"Accuracy ({check['name']})", "—" if acc is None else f"{acc:.1%}", border=True,
                    delta=f"{change:+.1f} pts vs PyTorch" if change else None,  # no arrow for no change
                    help=accuracy_help(r, ref, change))  # fmt: skip
    rows = [{"model": "PyTorch", "accuracy": r["pytorch_accuracy"], "top-1 agreement": 1.0, "max prob. diff": 0.0,
             "images/s": r["pytorch_images_per_s"], "size (MB)": None, "check": ""}]  # fmt: skip
    rows += [{"model": c["name"], "accuracy": c["accuracy"], "top-1 agreement": c["top1_agreement"],
              "max prob. diff": c["max_prob_diff"], "images/s": c["images_per_s"], "size (MB)": c["size_mb"],
              "check": c["status"]} for c in r["checks"]]  # fmt: skip
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="percent"),
            "top-1 agreement": st.column_config.NumberColumn(format="percent"),
            "max prob. diff": st.column_config.NumberColumn(format="%.2e"),
            "images/s": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    if r["status"] != "ok":
        st.warning("The export check flagged this model: " + "; ".join(r["reasons"]), icon="⚠️")
    else:
        st.success(f"The export matches the PyTorch model on {r['n_images']} {r['inputs']}.", icon="✅")
    st.caption(" · ".join(r.get("notes", [])))
