"""A one-page, self-contained HTML report of a run (or a saved ensemble) to download and share.

Titled with the run's name (as the app lists it). Settings (the ones a reader needs first in a table, the rest
folded), dataset summary, headline metrics, the per-class table and the Evaluate page's figures (training
curves, confusion matrix, ROC and precision-recall curves, reliability diagram). Metrics are computed from the
run's `val_predictions.csv`, as on the Evaluate page. plotly.js is inlined once, in the first figure, so the file
opens offline; nothing is fetched from the network.

    >>> write_report("runs/r1", "r1-report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from classifier import figures, rundir
from classifier.compare import flatten, format_setting
from classifier.io import atomic_write_text
from classifier.metrics import compute_metrics, pr_curves, reliability_bins, roc_curves
from classifier.task import MULTI

HEADLINE = (
    ("accuracy", "Accuracy", "{:.1%}"),
    ("top_k_accuracy", "Top-k accuracy", "{:.1%}"),
    ("macro_f1", "Macro F1", "{:.3f}"),
    ("weighted_f1", "Weighted F1", "{:.3f}"),
    ("roc_auc_macro", "ROC AUC (macro)", "{:.3f}"),
    ("average_precision_macro", "Average precision (macro)", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("log_loss", "Log loss", "{:.3f}"),
    ("n_val", "Validation images", "{:d}"),
)
MULTILABEL_HEADLINE = (
    ("map", "mAP (macro AP)", "{:.3f}"),
    ("micro_f1", "Micro F1", "{:.3f}"),
    ("macro_f1", "Macro F1", "{:.3f}"),
    ("subset_accuracy", "Subset accuracy", "{:.1%}"),
    ("hamming_loss", "Hamming loss", "{:.3f}"),
    ("label_ranking_ap", "Label-ranking AP", "{:.3f}"),
    ("roc_auc_macro", "ROC AUC (macro)", "{:.3f}"),
    ("n_val", "Validation images", "{:d}"),
)
SECTIONS = ("Settings", "Dataset", "Metrics", "Per class", "Figures")
# What a reader needs first to know what was trained, as (flattened config key, label); everything else is folded.
# An ensemble has its own: its members.
FIRST_SETTINGS = (
    ("task", "Task"),
    ("backbone", "Backbone"),
    ("weights", "Weights"),
    ("train.mode", "Mode"),
    ("data_config.input_size", "Input size"),
    ("train.epochs", "Epochs"),
    ("train.lr", "Learning rate"),
    ("train.batch_size", "Batch size"),
    ("train.optimizer", "Optimizer"),
    ("train.scheduler", "Schedule"),
    ("train.weight_decay", "Weight decay"),
    ("train.augment", "Augmentation"),
    ("train.label_smoothing", "Label smoothing"),
    ("train.imbalance", "Imbalance"),
    ("train.seed", "Seed"),
    ("members", "Members"),
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; }
th { background: #f5f5f5; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; } .card { border: 1px solid #ddd; border-radius: 6px;
padding: 0.5rem 0.9rem; } .card b { display: block; font-size: 1.3rem; } .muted { color: #777; }
details { margin-top: 0.8rem; } summary { cursor: pointer; color: #555; }
"""


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f'<td class="num">{_fmt(v)}</td>')
            elif isinstance(v, int):
                cells.append(f'<td class="num">{v}</td>')
            else:
                cells.append(f"<td>{html.escape('—' if v is None else str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _dataset_section(run_dir: Path, info: dict[str, Any], vp: Any, fig_html: Callable[[go.Figure], str]) -> str:
    names = [str(c) for c in info["class_names"]]
    root = html.escape(str(info.get("dataset", {}).get("root", "?")))
    rows = rundir.read_split(run_dir)
    if rows:
        counts = Counter((c, r["split"]) for r in rows for c in (r["labels"] if "labels" in r else [r["label"]]))
        splits = sorted({s for _, s in counts}, key=lambda s: ("train", "val", "test").index(s) if s in
                        ("train", "val", "test") else 9)  # fmt: skip
        df = pd.DataFrame(
            [{"class": c, **{s: counts.get((c, s), 0) for s in splits}} for c in names], columns=["class", *splits]
        )
        total = sum(counts.values())
    else:  # an ensemble: only its validation images are known
        per = Counter(vp.table["label"]) if vp.y_true.ndim == 1 else dict(zip(names, vp.y_true.sum(axis=0).tolist()))
        df = pd.DataFrame([{"class": c, "val": per.get(c, 0)} for c in names], columns=["class", "val"])
        total = len(vp.table)
    unit = "labels (multi-label; an image counts once per label)" if vp.task == MULTI else "classes"
    return (
        f"<p>{total} images, {len(names)} {unit}; dataset folder <code>{root}</code>.</p>"
        + _table(df)
        + f"<div>{fig_html(figures.class_histogram({c: df.set_index('class')[c].to_dict() for c in df.columns[1:]}))}"
        "</div>"
    )


def _task_parts(m: dict[str, Any], vp: Any) -> tuple[tuple, list[go.Figure], str]:
    """The task's headline cards, figures and the note under the cards."""
    args = (vp.y_true, vp.probs, vp.class_names)
    if vp.task == MULTI:
        t = m["thresholds"]
        figs = [figures.per_class_bar(m["per_label"]), figures.binary_confusion_grid(m["per_label"]),
                figures.label_confusion_figure(m["label_confusion"], vp.class_names),
                figures.roc_figure(roc_curves(*args)), figures.pr_figure(pr_curves(*args))]  # fmt: skip
        where = "tuned per label on validation" if m["threshold_source"] != "default" else "0.5 for every label"
        note = f"Multi-label: a label is predicted when its sigmoid probability reaches its threshold ({where}: " + (
            ", ".join(f"{c} {v:.2f}" for c, v in zip(vp.class_names, t)) + ")."
        )
        return MULTILABEL_HEADLINE, figs, note
    bins = reliability_bins(vp.y_true, vp.probs)
    figs = [figures.confusion_matrix_figure(m["confusion_matrix"], vp.class_names, normalize=True),
            figures.per_class_bar(m["per_class"]), figures.roc_figure(roc_curves(*args)),
            figures.pr_figure(pr_curves(*args)), figures.reliability_figure(bins)]  # fmt: skip
    note = f"Top-k uses k = {m['top_k']}. ECE: expected calibration error over {len(bins['bin_count'])} confidence "
    note += "bins."
    return HEADLINE, figs, note


def run_name(run_dir: Path, info: dict[str, Any]) -> str:
    """The name people know the run by: an ensemble's own, the run store's (what the Runs page lists), else the
    backbone and folder."""
    if info.get("name"):
        return str(info["name"])
    from classifier.store import RunStore, default_store_path

    if default_store_path().is_file():
        row = RunStore().get(run_dir.name)
        if row and row.get("name") and Path(row["run_dir"]).resolve() == run_dir.resolve():
            return str(row["name"])
    return f"{info.get('backbone', 'run')} · {run_dir.name}"


def _settings_section(info: dict[str, Any]) -> str:
    """FIRST_SETTINGS in a table (label, value to 3 significant figures, key); the others folded under it."""
    flat = {k: v for k, v in flatten(info).items() if k not in ("class_names", "created_at", "name")}
    if isinstance(flat.get("members"), list):  # an ensemble's members: their runs, not their file paths
        flat["members"] = ", ".join(str(m.get("run_id") or m.get("run_dir")) for m in flat["members"])
    first = [(k, label) for k, label in FIRST_SETTINGS if k in flat]
    head = pd.DataFrame([{"setting": label, "value": format_setting(flat[k]), "key": k} for k, label in first])
    rest = {k: v for k, v in flat.items() if k not in dict(first)}
    folded = pd.DataFrame([{"setting": k, "value": format_setting(v)} for k, v in rest.items()])
    return (
        _table(head) if first else ""
    ) + f"<details><summary>All other settings ({len(rest)})</summary>{_table(folded)}</details>"


def report_html(run_dir: str | Path, title: str | None = None) -> str:
    """The report as one HTML string (about 4 MB, most of it plotly.js)."""
    run_dir = Path(run_dir)
    info = rundir.read_info(run_dir)
    vp = rundir.read_val_predictions(run_dir)
    m = compute_metrics(vp.y_true, vp.probs, vp.class_names, thresholds=vp.thresholds)
    first = [True]

    def fig_html(fig: go.Figure) -> str:
        # Figures are rendered in document order: the first inlines plotly.js, the later ones use it.
        out = fig.to_html(full_html=False, include_plotlyjs=first[0], default_height="420px")
        first[0] = False
        return out

    dataset = _dataset_section(run_dir, info, vp, fig_html)
    is_ensemble = info.get("format") == "ensemble"
    name = title or run_name(run_dir, info)
    headline, task_figs, note = _task_parts(m, vp)
    cards = "".join(
        f'<div class="card">{label}<b>{_fmt(m.get(key), pattern)}</b></div>' for key, label, pattern in headline
    )
    per_class = pd.DataFrame(m.get("per_class") or m["per_label"]).rename(
        columns={"name": "class", "f1": "F1", "roc_auc": "ROC AUC", "average_precision": "AP"}
    )
    figs = []
    history = rundir.read_history(run_dir)
    if history is not None and not history.empty:
        figs.append(figures.history_curves(history))
    figs += task_figs
    body = [
        f"<h1>{html.escape(name)}</h1>",
        f'<p class="muted">{"Ensemble" if is_ensemble else "Run"} <code>{html.escape(str(run_dir))}</code>; '
        f"report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from val_predictions.csv.</p>",
        "<h2>Settings</h2>",
        _settings_section(info),
        "<h2>Dataset</h2>",
        dataset,
        "<h2>Metrics</h2>",
        f'<div class="cards">{cards}</div>',
        f'<p class="muted">{note}</p>',
        "<h2>Per class</h2>",
        _table(per_class),
        "<h2>Figures</h2>",
        *(f"<div>{fig_html(f)}</div>" for f in figs),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(name)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path) -> Path:
    """Write the report of `run_dir` to `out` (an .html file) atomically; returns the path."""
    return atomic_write_text(Path(out), report_html(run_dir))
