"""The Search page's pieces: the space form, and the live view of one search (table, chart, actions).

The search itself runs in its own process (`classifier.search.launch_search`); this view only reads
`search.json`, so it keeps working across reruns, page switches and server restarts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from classifier import search
from classifier.access import check_owner, visible
from classifier.data.presets import AUGMENT_PRESETS
from classifier.errors import ClassifierError
from classifier.models import list_backbones
from ui import state
from ui.access import current_user
from ui.cache import executor
from ui.widgets import literal, sticky_select, user_errors

POLL_SECONDS = 1.0
ICONS = {"queued": "⏳", "running": "🏃", "completed": "✅", "pruned": "✂️", "failed": "❌", "cancelled": "⏹️",
         "interrupted": "⚠️"}  # fmt: skip
# Numeric parameters typed as "a, b, c" (choices) or "low..high" (a range; log-uniform for the learning rate).
NUMERIC = {
    "lr": ("Learning rate", "1e-4..1e-1", True),
    "batch_size": ("Batch size", "16, 32", False),
    "weight_decay": ("Weight decay", "", False),
    "epochs": ("Epochs", "", False),
}


def parse_numbers(name: str, text: str) -> Any:
    """'1e-4..1e-1' -> a range (log for lr), '16, 32' -> choices, '' -> None (not searched)."""
    text = text.strip()
    if not text:
        return None
    kind = search.PARAMS[name]
    try:
        if ".." in text:
            low, high = (kind(float(v)) for v in text.split("..", 1))
            return {"low": low, "high": high, "log": NUMERIC[name][2]}
        return [kind(float(v)) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ClassifierError(f"{NUMERIC[name][0]}: {text!r} is not 'a, b, c' or 'low..high'") from None


def space_form() -> dict[str, Any]:
    """Widgets for the six searchable parameters; returns the raw space (only the ones given)."""
    raw: dict[str, Any] = {}
    cols = st.columns(len(NUMERIC))
    for col, (name, (label, default, log)) in zip(cols, NUMERIC.items()):
        hint = "Choices 'a, b, c' or a range 'low..high'" + (" (log-uniform)" if log else "")
        text = col.text_input(
            label, default, key=f"w_space_{name}", placeholder="not searched", help=hint + "; empty: not searched."
        )
        value = parse_numbers(name, text)
        if value is not None:
            raw[name] = value
    c1, c2 = st.columns(2)
    backbones = c1.multiselect("Backbones", [b.name for b in list_backbones()], key="w_space_backbone",
                               help="Empty: the base backbone only.")  # fmt: skip
    augments = c2.multiselect("Augmentation presets", list(AUGMENT_PRESETS), key="w_space_augment",
                              help="Empty: the base setting only.")  # fmt: skip
    if backbones:
        raw["backbone"] = backbones
    if augments:
        raw["augment"] = augments
    return raw


def trials_frame(spec: dict[str, Any]) -> pd.DataFrame:
    """The ranked trials with state icons; running trials show their run's epoch and latest validation value."""
    live = (
        search.live_trials(spec, executor()) if any(t["state"] in search.ACTIVE_TRIAL for t in spec["trials"]) else {}
    )
    rows = search.trials_table(spec, live)
    for r in rows:
        r["state"] = f"{ICONS.get(r['state'], '')} {r['state']}"
    return pd.DataFrame(rows)


def _trials(spec: dict[str, Any]) -> None:
    """The trials table, and their chart once a trial has finished (before that it would be axes without data)."""
    number = st.column_config.NumberColumn
    latest = f"latest {search.METRICS[spec['metric']][1]}"
    fmt = {c: number(format="%.4f" if c.endswith("loss") else "%.3f") for c in (spec["metric"], latest)}
    fmt |= {k: number(format="%.3g") for k, p in spec["space"].items() if "choices" not in p}
    st.dataframe(trials_frame(spec), hide_index=True, column_config=fmt, placeholder="—")
    if search.finished_trials(spec):
        st.plotly_chart(search.trials_figure(spec), key=f"search_chart_{spec['id']}")
    else:
        st.caption("The chart of trials appears when the first trial finishes.")


def search_label(spec: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(spec["created_at"]).strftime("%b %d %H:%M")
    return f"{spec['name']} · {spec['sampler']} · {when} · #{spec['id'][-6:]}"


def _draw(spec: dict[str, Any]) -> None:
    done = sum(t["state"] not in search.ACTIVE_TRIAL for t in spec["trials"])
    st.markdown(f"**{literal(spec['name'])}** — {ICONS.get(spec['status'], '')} {spec['status']}")
    st.progress(done / max(1, spec["n_trials"]), text=f"{done} of {spec['n_trials']} trials finished "
                f"({spec['sampler']} sampler, {spec['metric']}, pruning {spec['pruner']['kind']})")  # fmt: skip
    if spec.get("error"):
        st.error(spec["error"])
    if spec["trials"]:
        _trials(spec)
    best = search.best_trial(spec)
    c1, c2 = st.columns(2)
    label = f"Open best in Evaluate (trial {best['number']}, {spec['metric']} {best['value']:.3f})" if best else ""
    if best is not None and c1.button(label, icon=":material/analytics:", type="primary", key="b_search_best"):
        st.session_state[state.RUN_ID] = best["run_id"]
        st.session_state.pop("w_run_picker", None)  # Evaluate's picker then takes RUN_ID
        st.switch_page("app_pages/evaluate.py")
    if spec["status"] in ("queued", "running") and c2.button("Cancel search", icon=":material/stop_circle:"):
        with user_errors("Cannot cancel the search"):
            search.cancel_search(spec["id"], user=current_user())
            st.toast("Cancelling the search and its running trials…")
    if spec["status"] == "interrupted" and c2.button("Resume search", icon=":material/replay:"):
        with user_errors("Cannot resume the search"):
            check_owner(current_user(), spec.get("owner"), "resume", f"search {spec['name']!r}")
            search.launch_search(spec["id"])
            st.rerun()


def searches_section() -> None:
    """Pick a search (default: the newest) and draw it; polls every second while it is queued or running."""
    specs = visible(current_user(), search.list_searches())
    if not specs:
        st.info("No searches yet. Define a space above and start one.", icon="ℹ️")
        return
    polling = any(s["status"] in ("queued", "running") for s in specs)

    @st.fragment(run_every=POLL_SECONDS if polling else None)
    def section() -> None:
        by_id = {s["id"]: s for s in visible(current_user(), search.list_searches())}
        if polling and not any(s["status"] in ("queued", "running") for s in by_id.values()):
            st.rerun()
        labels = {i: search_label(s) for i, s in by_id.items()}
        picked = sticky_select("Show search", list(by_id), state.SEARCH_ID, "w_search_pick", format_func=labels.get)
        _draw(by_id[picked])

    section()
