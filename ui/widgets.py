"""Shared widgets: the error box for user errors, the run picker, metric cards and run tables."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from classifier.errors import ClassifierError
from classifier.jobs.catalogue import ensemble_entries, table
from ui import state
from ui.cache import executor

STATUS_ICONS = {
    "queued": "⏳",
    "running": "🏃",
    "completed": "✅",
    "failed": "❌",
    "cancelled": "⏹️",
    "interrupted": "⚠️",
}


# What makes Streamlit markdown format text: emphasis, code, links, HTML, headings, tables, strikethrough, math,
# colour and emoji directives (":red[", ":smile:"), and a list marker at the start. Other punctuation stays as is,
# so messages read the same in the page source and in tests.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|~$]|:(?=\w)|^[-+](?=\s))")


def literal(text: object) -> str:
    """`text` as it is inside markdown (st.markdown, captions, alerts): the characters that would format it
    backslash-escaped and control characters shown as escapes, so a run, class or file name such as `**x**` or
    `:red[x]` is printed, not rendered."""
    shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
    return _MARKDOWN.sub(r"\\\1", shown)


@contextmanager
def user_errors(prefix: str = "", also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Show a `ClassifierError` (and the `also` types) as an `st.error` box instead of a traceback.

    >>> with user_errors("Could not read the dataset"):  # doctest: +SKIP
    ...     index = dataset_index(path)
    """
    try:
        yield
    except (ClassifierError, *also) as e:
        st.error(literal(f"{prefix}: {e}" if prefix else str(e)), icon="🚫")


def fmt(value: Any, pattern: str = "{:.3f}") -> str:
    """A metric for display: formatted number, or an em dash when it is missing/undefined."""
    return "—" if value is None else pattern.format(value)


def metric_cards(metrics: dict[str, Any] | None) -> None:
    """Headline validation metrics as a row of `st.metric` cards."""
    metrics = metrics or {}
    cards = [
        ("Accuracy", metrics.get("accuracy"), "{:.1%}", "Share of validation images classified correctly."),
        ("Macro F1", metrics.get("macro_f1"), "{:.3f}", "F1 averaged over classes, each class counting equally."),
        ("ROC AUC", metrics.get("roc_auc_macro"), "{:.3f}", "One-vs-rest ROC AUC, macro-averaged."),
        ("ECE", metrics.get("ece"), "{:.3f}", "Expected calibration error: how far confidence is from accuracy."),
        ("Validation images", metrics.get("n_val"), "{:d}", "Images the metrics were computed on."),
    ]
    for col, (label, value, pattern, help_text) in zip(st.columns(len(cards)), cards):
        col.metric(label, fmt(value, pattern), help=help_text, border=True)


def dataset_problems(summary: dict[str, Any], per_class: pd.Series, max_ratio: float = 3.0) -> None:
    """Warnings for a dataset summary: class imbalance (with what to do), duplicates, leakage, skipped files."""
    totals = per_class[per_class > 0]
    if len(totals) > 1 and totals.max() / totals.min() > max_ratio:
        what, fix = ("Labels", "set *Positive weight* to *auto* or the multi-label loss to *asl*") if summary.get(
            "task") == "multilabel" else ("Classes", "set imbalance handling to *weights* or *sampler*")  # fmt: skip
        st.warning(
            f"{what} are imbalanced: {totals.idxmax()} has {totals.max()} images, {totals.idxmin()} only "
            f"{totals.min()} ({totals.max() / totals.min():.1f}×). On **Train**, {fix}, or collect more images of the "
            f"small {what.lower()}."
        )
    if summary["duplicates"]:
        st.warning(f"{len(summary['duplicates'])} groups of identical images (same bytes): they count twice.")
        st.dataframe(pd.DataFrame({"identical files": [", ".join(g) for g in summary["duplicates"]]}), hide_index=True)
    if summary["leakage"]:
        st.error(f"{len(summary['leakage'])} validation/test images also appear in train: scores would be inflated.")
        st.dataframe(pd.DataFrame(summary["leakage"], columns=["train", "val/test"]), hide_index=True)
    if summary["skipped"]:
        with st.expander(f"Skipped files ({len(summary['skipped'])})"):
            st.dataframe(pd.DataFrame(summary["skipped"]), hide_index=True)


DEMO_LABEL = "Built-in demo dataset (shapes)"


def dataset_picker(where: Any, label: str, key: str, help: str | None = None) -> str:
    """A selectbox of the workspace's datasets (newest first; the demo listed once, by name) that starts on and
    follows the session's dataset (`state.DATASET`): picking one here makes it the Data page's too."""
    from classifier.data.demo import demo_dataset_path
    from classifier.data.ingest import visible_datasets
    from ui.access import current_user

    ss = st.session_state
    demo = str(demo_dataset_path())
    options = [str(d) for d in visible_datasets(current_user())]
    if demo not in options:
        options.append("demo")  # generated into the workspace on first use
    current = ss[state.DATASET]
    if current and current not in options:
        options.append(current)  # a folder on the server
    if ss.get(key) not in options:
        ss[key] = current if current in options else options[0]
    value = where.selectbox(
        label, options, key=key, help=help, format_func=lambda d: DEMO_LABEL if d in ("demo", demo) else Path(d).name
    )
    if value != "demo" and value != current:
        ss[state.DATASET] = value
    return value


def jobs(limit: int | None = None) -> list[Any]:
    """All runs the executor knows, newest first."""
    return list(executor().list(limit=limit))


def runs_table(job_list: Sequence[Any]) -> pd.DataFrame:
    """One row per catalogue entry (run, ensemble, search): `classifier.jobs.catalogue.table` with status icons;
    the app's executor supplies the latest validation accuracy of runs still training."""
    df = table(job_list, executor=executor())
    if not df.empty:
        df["status"] = [f"{STATUS_ICONS.get(s, '')} {s}" for s in df["status"]]
    return df


def show_runs_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> None:
    """Draw a `runs_table` (optionally only `columns`): percentages, progress bars, 3 significant figures for the
    settings that differ, and "—" for what is missing rather than "None"."""
    number = st.column_config.NumberColumn
    config: dict[str, Any] = {
        "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        "accuracy": number(format="percent"),
        "macro F1": number(format="%.3f"),
        "ROC AUC": number(format="%.3f"),
        "ECE": number(format="%.3f"),
        "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    }
    config |= {c: number(format="%.3g") for c in df.attrs.get("settings", []) if pd.api.types.is_float_dtype(df[c])}
    st.dataframe(df[list(columns)] if columns else df, hide_index=True, column_config=config, placeholder="—")


def run_label(j: Any, with_accuracy: bool = False) -> str:
    """How a run reads in a picker: name, backbone, start time (and accuracy). Only values that do not change
    while the run goes on: a selectbox remembers its choice by this text."""
    when = time.strftime("%b %d %H:%M", time.localtime(j.created_at)) if j.created_at else ""
    acc = (j.metrics or {}).get("accuracy") if with_accuracy else None
    acc_text = f" · acc {acc:.1%}" if acc is not None else ""
    if with_accuracy and (j.metrics or {}).get("map") is not None:  # a multi-label run: its mean average precision
        acc_text = f" · mAP {j.metrics['map']:.3f}"
    return f"{j.name or j.run_id} · {(j.config or {}).get('backbone', '?')}{acc_text} · {when} · #{j.run_id[-6:]}"


def sticky_select(label: str, ids: list[str], state_key: str, widget_key: str, **kwargs: Any) -> str:
    """A selectbox whose choice lives in `st.session_state[state_key]`, shared by every page that shows one (the run
    picked on Evaluate is the one on Runs and Predict, and a next-step button can set it for the page it opens)."""
    ss = st.session_state
    seen = ss.setdefault("_sticky_seen", {})  # widget key -> the shared choice it last showed
    shared = ss.get(state_key)
    if shared in ids and shared != seen.get(widget_key):  # chosen elsewhere since: follow it
        ss[widget_key] = shared
    elif ss.get(widget_key) not in ids:
        ss[widget_key] = shared if shared in ids else ids[0]
    ss[state_key] = seen[widget_key] = st.selectbox(label, ids, key=widget_key, **kwargs)
    return ss[state_key]


def run_picker(
    label: str = "Run", *, completed_only: bool = True, key: str = "w_run_picker", ensembles: bool = False
) -> Any | None:
    """Select a run (completed ones by default); the choice is kept in session state across pages.

    `ensembles` adds the saved ensembles (catalogue entries of kind "ensemble", shaped like a run) after the runs.
    """
    state.init_state()
    choices = {j.run_id: j for j in jobs() if j.status == "completed" or not completed_only}
    if ensembles:
        from classifier.access import visible
        from ui.access import current_user

        choices.update({e.run_id: e for e in visible(current_user(), ensemble_entries())})
    if not choices:
        st.info("No completed runs yet. Start one on the **Train** page.", icon="ℹ️")
        return None
    labels = {i: run_label(j, with_accuracy=completed_only) for i, j in choices.items()}
    picked = sticky_select(label, list(choices), state.RUN_ID, key, format_func=labels.get)
    return choices[picked]


def report_button(run_dir, run_id: str, help: str) -> None:
    """Download button for the run's (or saved ensemble's) one-page HTML report, built only when clicked."""
    from classifier.report import report_html

    st.download_button(
        "Download report (.html)",
        data=lambda: report_html(run_dir).encode(),
        file_name=f"{run_id}-report.html",
        mime="text/html",
        on_click="ignore",
        icon=":material/description:",
        help=help,
    )


def server_busy_notice() -> None:
    """What a session sees while `classifier.device.heavy_work` waits for another session's model work."""
    st.toast("Waiting for another session's model work on this server to finish…", icon="⏳")


def publish_section(entry: Any, user: Any) -> None:
    """Publish a completed run or saved ensemble on the public prediction page (or take it down): its owner, if a
    trainer, or an admin. Visitors then see Home and that model's Predict page only."""
    from classifier.access import may_act
    from classifier.public import publish, published, unpublish
    from ui.access import auth_configured

    if not auth_configured():
        return  # no visitors without sign-in: the local tool has nothing to publish to
    if not user.can("train") or entry.status != "completed" or not may_act(user, entry.owner):
        return
    current = published()
    if current is not None and current.get("id") == entry.run_id:
        st.caption("This model is on the public prediction page.")
        if st.button("Unpublish", icon=":material/public_off:", key=f"b_unpublish_{entry.run_id}"):
            with user_errors("Cannot unpublish"):
                unpublish(user)
                st.rerun()
        return
    replaces = f" (it replaces {literal(current['name'])})" if current else ""
    if st.button(
        f"Publish on the public page{replaces}", icon=":material/public:", key=f"b_publish_{entry.run_id}",
        help="Visitors who are not signed in can then predict with this model, and see nothing else.",
    ):  # fmt: skip
        with user_errors("Cannot publish"):
            publish(entry, user)
            st.toast(f"Published {entry.name}")
            st.rerun()


def delete_dataset_box(path: str, user: Any) -> None:
    """Delete the shown dataset: workspace datasets only, for their owner or an admin, after a confirmation."""

    from classifier.access import may_act
    from classifier.data.ingest import dataset_owner, delete_dataset
    from classifier.workspace import datasets_dir

    p = Path(path)
    if p.parent.resolve() != datasets_dir().resolve() or not may_act(user, dataset_owner(p)):
        return
    with st.expander("Delete this dataset"):
        sure = st.checkbox(f"Yes, delete the dataset {literal(p.name)} and all its images", key=f"c_del_data_{p.name}")
        st.caption("Runs trained on it keep their models and metrics; Explain and Evaluate galleries lose its images.")
        if st.button("Delete dataset", type="primary", disabled=not sure, icon=":material/delete:", key="b_del_data"):
            with user_errors("Could not delete the dataset"):
                delete_dataset(p, user)
                st.session_state[state.DATASET] = None
                st.toast(f"Deleted {p.name}")
                st.rerun()
