"""The Train page's LR finder: run the range test with the page's settings, plot it, apply the suggestion.

The test takes seconds to a minute (a few dozen steps, plus one pass of the frozen backbone for a linear probe),
so it runs in the script with a progress bar. "Use this learning rate" is an `on_click` callback: it sets the
learning-rate widget's session-state key before the page draws that widget again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from classifier.device import heavy_work
from classifier.figures import lr_find_figure
from classifier.jobs.progress import duration
from classifier.training import TrainConfig
from classifier.training.config import config_field
from classifier.training.lr_find import LRFindResult, lr_find
from ui import state
from ui.widgets import server_busy_notice, user_errors


def _apply(lr_key: str, value: float) -> None:
    bounds = config_field("lr").metadata  # the Train page's learning-rate input offers this range
    st.session_state[lr_key] = min(bounds["max"], max(bounds["min"], float(value)))


def lr_finder_section(make_config: Callable[[], TrainConfig], lr_key: str) -> None:
    """An expander with the range test for the config `make_config()` returns; `lr_key` is the lr widget's key."""
    ss = st.session_state
    with st.expander("LR finder", icon=":material/insights:", expanded=ss[state.LR_FIND] is not None):
        st.caption(
            "A short range test on a copy of the model these settings build: the learning rate rises exponentially "
            "for a few dozen steps while the training loss is recorded. The suggestion is where the smoothed loss "
            "falls fastest; it stops early once the loss diverges. Nothing is saved."
        )
        c = st.columns(3)
        start = c[0].number_input("Start learning rate", 1e-9, 1.0, 1e-7, format="%.1e", key="w_lrf_start")
        end = c[1].number_input("End learning rate", 1e-6, 100.0, 10.0, format="%.1e", key="w_lrf_end")
        steps = c[2].number_input("Steps", 5, 300, None, key="w_lrf_steps", placeholder="auto (30 or 60)")
        if st.button("Run LR finder", icon=":material/insights:", key="b_lrf_run"):
            with user_errors("Cannot run the LR finder", also=(ValueError,)):
                config = make_config()
                bar = st.progress(0.0, text="Preparing…")
                t0 = time.time()

                def progress(phase: str, done: int, total: int) -> None:
                    frac = done / max(1, total)
                    eta = (time.time() - t0) / frac * (1 - frac) if frac > 0 else None
                    label = "Computing features" if phase == "features" else "Step"
                    bar.progress(min(1.0, frac), text=f"{label} {done}/{total} · ETA {duration(eta)}")

                with heavy_work("the LR finder", waiting=server_busy_notice):  # one model job in the server at a time
                    result = lr_find(config, start_lr=float(start), end_lr=float(end),
                                     steps=int(steps) if steps else None, progress=progress)  # fmt: skip
                bar.empty()
                ss[state.LR_FIND] = result.to_dict()
        shown = ss[state.LR_FIND]
        if shown is None:
            return
        result = LRFindResult(**{**shown, "raw_losses": [v if v is not None else float("nan")
                                                          for v in shown["raw_losses"]]})  # fmt: skip
        cfg = result.config
        st.plotly_chart(lr_find_figure(result), key="lr_find_chart")
        st.caption(
            f"{cfg.get('backbone')} · {cfg.get('mode')} · batch {cfg.get('batch_size')} · {len(result.lrs)} of "
            f"{result.steps} steps in {result.seconds:.1f} s. Rule: {result.rule}."
        )
        if result.stopped_early:
            st.info(f"Stopped early: {result.reason}", icon="ℹ️")
        st.button(
            f"Use this learning rate ({result.suggestion:.2g})",
            icon=":material/check:",
            key="b_lrf_use",
            on_click=_apply,
            args=(lr_key, result.suggestion),
            help="Sets the Learning rate field above.",
        )
