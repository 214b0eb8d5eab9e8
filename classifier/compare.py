"""Compare two or more runs side by side, also while they train: headline metrics, curves, differing settings,
per-class F1, winners.

A run is read as it is stored right now: `config.json` (or the run store's train config while the run is still
queued), `history.csv` (rewritten after every epoch; the store's epoch rows when the file is not there yet) and
`metrics.json` (written when the run finishes). A run without metrics is listed in `no_metrics` and left out of
the per-class comparison rather than counted as a zero.

    >>> runs = load_runs(["runs/a", "runs/b"])  # doctest: +SKIP
    >>> compare_summary(runs)["differing_settings"]  # doctest: +SKIP
    {'train.lr': {'a': 0.001, 'b': 0.0003}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from classifier import figures, rundir
from classifier.errors import RunError

# Not settings: they differ between any two runs and would drown the real differences.
IGNORED_KEYS = ("created_at", "runtime")  # when it ran; how its data path ran (cache file, workers)
TIE_TOLERANCE = 1e-9
COLORS = qualitative.Plotly
# Statuses a comparison is offered for: a failed run has no trustworthy curve or metric to set beside another's.
COMPARABLE = ("queued", "running", "completed", "cancelled", "interrupted")
# The headline metrics table: (column, metrics.json key); validation loss comes from the history.
METRIC_COLUMNS = (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("ROC AUC", "roc_auc_macro"), ("ECE", "ece"))
# A multi-label run's headline (its accuracy and ECE are not defined: None); the columns join when a run has them.
MULTILABEL_COLUMNS = (("mAP", "map"), ("micro F1", "micro_f1"), ("subset accuracy", "subset_accuracy"))


@dataclass
class ComparedRun:
    """One run as stored so far. `key` is a unique short label (the run id, or the dir name)."""

    key: str
    run_dir: Path
    name: str
    status: str
    config: dict[str, Any]
    history: pd.DataFrame
    metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and other values stay as they are.

    >>> flatten({"train": {"lr": 0.1, "aug": {"p": 1}}, "backbone": "resnet18"})
    {'train.lr': 0.1, 'train.aug.p': 1, 'backbone': 'resnet18'}
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def format_setting(value: Any) -> str:
    """A setting as people read it: floats to 3 significant figures (inside lists and dicts too), None as "—".

    >>> [format_setting(v) for v in (0.00031622776601683794, 3e-3, 224, [0.485, 0.456], None, True, "light")]
    ['0.000316', '0.003', '224', '[0.485, 0.456]', '—', 'true', 'light']
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_setting(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {format_setting(v)}" for k, v in value.items()) + "}"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    # Values come from JSON: == compares lists and dicts deeply and 3 with 3.0; a bool only equals a bool.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def differing_settings(
    configs: Mapping[str, Mapping[str, Any]], ignore: Sequence[str] = IGNORED_KEYS
) -> dict[str, dict[str, Any]]:
    """The flattened keys whose values are not the same in every run, sorted: {key: {run: value}}.

    A key that some runs lack differs; the runs that lack it are absent from its inner dict.
    """
    flat = {run: flatten(cfg) for run, cfg in configs.items()}

    def ignored(key: str) -> bool:  # the key itself, its top-level section or its last part
        parts = key.split(".")
        return key in ignore or parts[0] in ignore or parts[-1] in ignore

    keys = sorted({k for f in flat.values() for k in f if not ignored(k)})
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        present = {run: f[key] for run, f in flat.items() if key in f}
        values = list(present.values())
        if len(present) < len(flat) or any(not _same(values[0], v) for v in values[1:]):
            out[key] = present
    return out


def per_class_f1(runs: Sequence[ComparedRun]) -> dict[str, Any]:
    """{"classes": [...], "f1": {class: {run: F1}}, "no_metrics": [run, ...]}.

    Classes are the union over runs, in the order first seen; a run that lacks a class has no entry for it.
    """
    classes: list[str] = []
    table: dict[str, dict[str, float]] = {}
    no_metrics = []
    for run in runs:
        rows = (run.metrics or {}).get("per_class") or (run.metrics or {}).get("per_label")  # multi-label: per label
        if not rows:
            no_metrics.append(run.key)
            continue
        for row in rows:
            name = str(row["name"])
            if name not in table:
                classes.append(name)
                table[name] = {}
            table[name][run.key] = float(row["f1"])
    return {"classes": classes, "f1": table, "no_metrics": no_metrics}


def class_winners(f1: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per class, the run(s) with the highest F1: {"class", "best_f1", "winners", "tie"}; no runs, no winner."""
    out = []
    for name in f1["classes"]:
        scores = f1["f1"][name]
        if not scores:
            out.append({"class": name, "best_f1": None, "winners": [], "tie": False})
            continue
        best = max(scores.values())
        winners = [run for run, v in scores.items() if best - v <= TIE_TOLERANCE]
        out.append({"class": name, "best_f1": best, "winners": winners, "tie": len(winners) > 1})
    return out


def winner_sentence(w: Mapping[str, Any]) -> str:
    """'circle: a (F1 0.91)', 'square: tie between a and b (F1 1.00)', 'cross: no run has metrics yet'."""
    if not w["winners"]:
        return f"{w['class']}: no run has metrics yet"
    who = w["winners"][0] if not w["tie"] else "tie between " + " and ".join(w["winners"])
    return f"{w['class']}: {who} (F1 {w['best_f1']:.2f})"


def read_compared_run(run_dir: str | Path, row: Mapping[str, Any] | None = None, key: str | None = None) -> ComparedRun:
    """Read one run as stored so far. `row` is its run-store row (`RunStore.get`), when there is one."""
    run_dir = Path(run_dir)
    row = dict(row or {})
    if not run_dir.is_dir() and not row:
        raise RunError(f"{run_dir} is not a run dir (it does not exist)")
    config = rundir.read_info_if_any(run_dir)
    notes = []
    if config is None:
        if not row:
            raise RunError(f"{run_dir} is not a run dir: it has no {rundir.CONFIG}")
        config = {"train": row.get("config") or {}}  # queued: only the requested settings exist so far
        notes.append("not started yet")
    history = rundir.read_history(run_dir)
    if history is None:
        history = pd.DataFrame(row.get("history") or [])
    metrics = rundir.read_metrics(run_dir)
    status = row.get("status") or ("completed" if metrics else "no metrics yet")
    if metrics is None:
        notes.append("no metrics yet" if status in ("queued", "running") else f"no metrics ({status})")
    return ComparedRun(
        key=key or row.get("id") or run_dir.name,
        run_dir=run_dir,
        name=row.get("name") or config.get("name") or run_dir.name,
        status=status,
        config=config,
        history=history,
        metrics=metrics,
        notes=notes,
    )


def load_runs(run_dirs: Sequence[str | Path], store: Any = None) -> list[ComparedRun]:
    """Read every run; at least two, each once. `store` (a RunStore) supplies status and epochs of queued runs.

    Without `store`, the workspace's run store is used when it exists and holds a run of the same dir; `False`:
    no store (the run dirs alone).
    """
    if len(run_dirs) < 2:
        raise RunError(f"compare needs at least two runs, got {len(run_dirs)}")
    resolved = [Path(d).resolve() for d in run_dirs]
    dupes = sorted({str(d) for d in resolved if resolved.count(d) > 1})
    if dupes:
        raise RunError(f"run given twice: {', '.join(dupes)}")
    if store is None:
        from classifier.store import RunStore, default_store_path

        store = RunStore() if default_store_path().is_file() else None
    elif store is False:
        store = None
    runs, keys = [], set()
    for d in resolved:
        row = store.get(d.name) if store is not None else None
        if row is not None and Path(row["run_dir"]).resolve() != d:
            row = None  # same id, another workspace
        key = d.name if d.name not in keys else f"{d.parent.name}/{d.name}"
        keys.add(key)
        runs.append(read_compared_run(d, row, key=key))
    return runs


def curves_figure(runs: Sequence[ComparedRun]) -> go.Figure:
    """Loss and accuracy per epoch, one colour per run: train solid, validation dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        h = run.history
        if h.empty:
            continue
        epochs = h["epoch"] if "epoch" in h.columns else pd.Series(range(1, len(h) + 1), index=h.index)
        for col, metric in ((1, "loss"), (2, "acc")):
            for split, dash in (("train", "solid"), ("val", "dash")):
                name = f"{split}_{metric}"
                if name not in h.columns:
                    continue
                values = pd.to_numeric(h[name], errors="coerce")
                keep = values.notna()
                fig.add_trace(
                    go.Scatter(
                        x=epochs[keep].tolist(),
                        y=values[keep].tolist(),
                        mode="lines+markers",
                        name=f"{run.key} {split}",
                        legendgroup=run.key,
                        showlegend=col == 1,
                        line={"color": color, "dash": dash},
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=2)
    return figures._style(fig, "Training curves (train solid, validation dashed)")


def f1_figure(f1: Mapping[str, Any]) -> go.Figure:
    """Per-class F1 as grouped bars, one bar series per run with metrics."""
    runs = list(dict.fromkeys(run for scores in f1["f1"].values() for run in scores))
    fig = go.Figure(
        [
            go.Bar(
                name=run,
                x=f1["classes"],
                y=[f1["f1"][c].get(run) for c in f1["classes"]],
                marker_color=COLORS[i % len(COLORS)],
            )
            for i, run in enumerate(runs)
        ]
    )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.02])
    return figures._style(fig, "Per-class F1", "class", "F1")


def confusion_figures(runs: Sequence[ComparedRun], normalize: bool = True) -> list[tuple[str, go.Figure | None]]:
    """(run, row-normalised confusion matrix) per run; None for a run without metrics yet."""
    out = []
    for run in runs:
        m = run.metrics or {}
        if m.get("label_confusion") is not None and m.get("class_names"):  # multi-label: missed vs predicted label
            fig = figures.label_confusion_figure(m["label_confusion"], m["class_names"])
            fig.update_layout(title={"text": run.key})
            out.append((run.key, fig))
            continue
        if m.get("confusion_matrix") is None or not m.get("class_names"):
            out.append((run.key, None))
            continue
        fig = figures.confusion_matrix_figure(m["confusion_matrix"], m["class_names"], normalize=normalize)
        fig.update_layout(title={"text": run.key})
        out.append((run.key, fig))
    return out


def settings_table(diff: Mapping[str, Mapping[str, Any]], runs: Sequence[str]) -> pd.DataFrame:
    """Differing settings as a table: one row per key, one text column per run (`format_setting`: 3 significant
    figures; '(not set)' where a run lacks the key)."""
    rows = []
    for key, values in diff.items():
        row = {"setting": key}
        for run in runs:
            row[run] = format_setting(values[run]) if run in values else "(not set)"
        rows.append(row)
    return pd.DataFrame(rows, columns=["setting", *runs])


def _last(history: pd.DataFrame, column: str, epoch: int | None = None) -> float | None:
    """`column` at `epoch` (the last epoch that has it when None or absent); None when the history has none."""
    if column not in history.columns:
        return None
    values = pd.to_numeric(history[column], errors="coerce")
    if epoch is not None and "epoch" in history.columns:
        at = values[history["epoch"] == epoch].dropna()
        if len(at):
            return float(at.iloc[-1])
    values = values.dropna()
    return float(values.iloc[-1]) if len(values) else None


def headline_metrics(run: ComparedRun) -> dict[str, Any]:
    """Accuracy, macro F1, ROC AUC, ECE and validation loss of one run, and where they come from.

    A finished run: metrics.json (the kept weights) and the validation loss of its best epoch. A run still
    training: its latest epoch's validation accuracy and loss ("so far"); the rest need the final evaluation.
    """
    m = run.metrics
    multi = (m or {}).get("task") == "multilabel" or "val_map" in run.history.columns
    columns = METRIC_COLUMNS + (MULTILABEL_COLUMNS if multi else ())
    if m:
        best = m.get("best_epoch")
        row: dict[str, Any] = {col: m.get(key) for col, key in columns}
        row["val loss"] = _last(run.history, "val_loss", best) if best is not None else m.get("log_loss")
        row["from"] = f"best epoch {best}" if best is not None else "final weights"
        return row
    row = {col: None for col, _ in columns}
    row["accuracy" if not multi else "mAP"] = _last(run.history, "val_map" if multi else "val_acc")
    row["val loss"] = _last(run.history, "val_loss")
    row["from"] = f"epoch {run.epochs_done} so far" if run.epochs_done else "no epoch yet"
    return row


def metrics_table(runs: Sequence[ComparedRun]) -> pd.DataFrame:
    """The headline metrics side by side: one row per run (`headline_metrics`), numbers left as numbers."""
    rows = [{"run": r.key, "status": r.status, "epochs": r.epochs_done, **headline_metrics(r)} for r in runs]
    multi = any("mAP" in row for row in rows)
    metric_cols = [c for c, _ in METRIC_COLUMNS + (MULTILABEL_COLUMNS if multi else ())]
    cols = ["run", "status", "epochs", *metric_cols, "val loss", "from"]
    return pd.DataFrame(rows, columns=cols)


def f1_table(f1: Mapping[str, Any], runs: Sequence[str]) -> pd.DataFrame:
    """Per-class F1 side by side plus the winner column (one row per class)."""
    winners = {w["class"]: w for w in class_winners(f1)}
    rows = []
    for c in f1["classes"]:
        w = winners[c]
        best = ("tie: " + ", ".join(w["winners"])) if w["tie"] else (w["winners"][0] if w["winners"] else "—")
        rows.append({"class": c, **{run: f1["f1"][c].get(run) for run in runs}, "best": best})
    return pd.DataFrame(rows, columns=["class", *runs, "best"])


def compare_summary(runs: Sequence[ComparedRun]) -> dict[str, Any]:
    """Everything the CLI prints: runs, differing settings, per-class F1 and the winner of each class."""
    f1 = per_class_f1(runs)
    return {
        "runs": [
            {
                "key": r.key,
                "name": r.name,
                "run_dir": str(r.run_dir),
                "status": r.status,
                "epochs_done": r.epochs_done,
                "accuracy": (r.metrics or {}).get("accuracy"),
                "macro_f1": (r.metrics or {}).get("macro_f1"),
                "headline": headline_metrics(r),
                "notes": r.notes,
            }
            for r in runs
        ],
        "differing_settings": differing_settings({r.key: r.config for r in runs}),
        "per_class_f1": f1["f1"],
        "no_metrics": f1["no_metrics"],
        "winners": class_winners(f1),
    }
