"""The Train page's checks before Start: each problem beside its setting with a one-click fix, and the time estimate.

The checks themselves are `classifier.training.preflight`; this module only places them and remembers measured
speeds per settings for the session (measuring takes seconds, so it runs when asked)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from classifier.jobs.progress import duration
from classifier.rundir import read_info_if_any
from classifier.training import TrainConfig
from classifier.training.config import config_field
from classifier.training.preflight import Problem, estimate_from_runs, estimate_seconds, measure_speed

SPEEDS = "_measured_speeds"  # session: settings key -> classifier.training.preflight.Speed


def show_problems(where: Any, problems: list[Problem], fields: tuple[str, ...], keys: dict[str, str]) -> None:
    """The problems about `fields`, in `where`, each with a button that applies its fix to the widgets in `keys`
    (field -> widget key)."""
    for i, p in enumerate(x for x in problems if x.field in fields):
        label = config_field(p.field).metadata.get("label", p.field) if p.field != "config" else "Settings"
        where.warning(f"**{label}**: {p.message}", icon="⚠️")
        fix = {keys[k]: v for k, v in p.fix.items() if k in keys}
        if fix:  # on_click: it runs before the widgets are drawn again, so it may set their values
            where.button(_fix_label(p.fix), key=f"b_fix_{p.field}_{i}", icon=":material/build:",
                         on_click=st.session_state.update, args=(fix,))  # fmt: skip


def _fix_label(fix: dict[str, Any]) -> str:
    parts = [f"{config_field(k).metadata.get('label', k).lower()} {v}" for k, v in fix.items()]
    return "Use " + ", ".join(parts)


def estimate(config: TrainConfig, n_train: int, n_val: int, n_classes: int, jobs: list[Any]) -> None:
    """'About 2 min on this machine' from a finished run with the same settings, or from a measured probe."""
    runs = []
    for j in jobs:
        if j.status == "completed" and j.metrics:
            info = read_info_if_any(j.run_dir) or {}
            runs.append({"train": j.config, "metrics": j.metrics, "runtime": info.get("runtime")})
    seconds = estimate_from_runs(config, n_train, n_val, runs)
    if seconds is not None:
        st.caption(f"⏱️ About {duration(seconds)} on this machine (scaled from an earlier run with these settings).")
        return
    cfg = config.resolved()
    key = (cfg.backbone, cfg.mode, cfg.img_size, cfg.batch_size, cfg.augment, cfg.device, n_classes)
    speeds = st.session_state.setdefault(SPEEDS, {})
    if key in speeds:
        s = speeds[key]
        what = f"{s.eval_images_per_s:.0f} images/s for features" if s.train_images_per_s != s.train_images_per_s else (
            f"{s.train_images_per_s:.1f} images/s training, {s.eval_images_per_s:.0f} validating"
        )  # fmt: skip
        st.caption(f"⏱️ About {duration(estimate_seconds(config, s, n_train, n_val))} on this machine "
                   f"(measured: {what}).")  # fmt: skip
    elif st.button("Estimate the time", key="b_estimate", icon=":material/timer:",
                   help="Times a few steps of this model on this machine (a few seconds)."):  # fmt: skip
        with st.spinner("Measuring a few steps…"):
            speeds[key] = measure_speed(config, n_classes)
        st.rerun()
