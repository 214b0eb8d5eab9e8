"""Widgets for TrainConfig fields, drawn from the field metadata (label, help, choices, bounds, format, unit), so a
page restates none of it. The Train page draws its model settings and hyperparameters with these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from classifier.training.config import (
    TrainConfig,
    config_field,
    describe,
    field_choices,
    field_type,
    per_mode_fields,
)

HYPERPARAMETERS = {  # TrainConfig field -> the Train page's widget key (tests and open sessions use them)
    "epochs": "w_epochs",
    "batch_size": "w_batch",
    "lr": "w_lr",
    "optimizer": "w_opt",
    "scheduler": "w_sched",
    "weight_decay": "w_wd",
    "label_smoothing": "w_ls",
    "augment": "w_aug",
    "imbalance": "w_imb",
    "early_stopping": "w_es",
    "time_budget": "w_budget",
    "img_size": "w_img",
    "seed": "w_train_seed",
    "nproc": "w_nproc",
}
MULTILABEL_HYPERPARAMETERS = {  # shown (and applied) only for a multi-label dataset, where they mean something
    "multilabel_loss": "w_ml_loss",
    "pos_weight": "w_pos_weight",
    "tune_thresholds": "w_tune_thresholds",
}
_FIELD_DEFAULT = object()  # field_input's `default` when the caller gives none: the field's own default


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def field_input(
    where: Any,
    name: str,
    key: str,
    default: Any = _FIELD_DEFAULT,
    *,
    options: Sequence[Any] | None = None,
    format_func: Callable[[Any], str] | None = None,
    radio: bool = False,
) -> Any:
    """Draw the widget for TrainConfig field `name` in `where` (`st` or a column); return its value as the field's
    type (None for an empty optional number).

    The value is seeded once through session state under `key`, not with `value=`, so other code (the LR finder's
    "Use this learning rate") can set it before the page draws the widget again. A field with choices, or with
    `options` given, is a selectbox, or with `radio` radio buttons labelled by the choices' descriptions; a number
    is a number_input within the metadata's bounds and format; a switch a checkbox; other text a text_input.
    """
    f = config_field(name)
    meta, kind = f.metadata, field_type(f)
    st.session_state.setdefault(key, f.default if default is _FIELD_DEFAULT else default)
    label, help_text = meta.get("label", name), _sentence(describe(f))
    choices = field_choices(f) if options is None else options
    if choices is not None and radio:
        described = meta.get("choices")
        if format_func is None and isinstance(described, dict):
            format_func = lambda c: _sentence(described[c]).rstrip(".")  # the choices described
        return where.radio(label, choices, key=key, format_func=format_func or str, help=_sentence(meta["help"]))
    if choices is not None:
        return where.selectbox(label, choices, key=key, format_func=format_func or str, help=help_text)
    if kind is bool:
        return where.checkbox(label, key=key, help=help_text)
    if kind is str:
        return where.text_input(label, key=key, help=help_text, placeholder=meta.get("auto"))
    low, high = (kind(meta[b]) if b in meta else None for b in ("min", "max"))
    value = where.number_input(
        label,
        low,
        high,
        step=1 if kind is int else None,  # without it an int field with no bounds would be a float widget
        format=meta.get("format"),
        key=key,
        help=help_text,
        placeholder=meta.get("auto"),
    )
    return None if value is None else kind(value)


def widget_key(name: str, key: str, mode: str) -> str:
    """`key`, with `_<mode>` for a field whose default depends on the mode: a widget per mode, so switching the mode
    shows that mode's defaults (and what was typed for it)."""
    return f"{key}_{mode}" if name in per_mode_fields() else key


def config_inputs(columns: Sequence[Any], keys: dict[str, str], mode: str) -> dict[str, Any]:
    """The widgets of `keys` (field -> widget key) across `columns` in reading order, each seeded with the mode's
    default; returns field -> value, ready for `TrainConfig(**values)`."""
    defaults = TrainConfig(mode=mode).resolved()
    return {
        name: field_input(columns[i % len(columns)], name, widget_key(name, key, mode), getattr(defaults, name))
        for i, (name, key) in enumerate(keys.items())
    }


def apply_config(train: dict[str, Any]) -> None:
    """Put a run's settings (its TrainConfig dict) into the Train page's widgets: "Train again with these settings".
    The page draws them on its next run."""
    from ui import state

    ss = st.session_state
    cfg = TrainConfig.from_dict(train)
    mode = cfg.mode
    if cfg.data and cfg.data != "demo":
        state.use_dataset(cfg.data)
    ss["w_backbone"], ss["w_mode"] = cfg.backbone, mode
    if cfg.weights in (None, "bundled", "hub", "none"):
        if cfg.weights:
            ss[f"w_weights_{cfg.backbone}"] = cfg.weights
    else:
        ss[f"w_weights_{cfg.backbone}"], ss["w_weights_path"] = "file", cfg.weights
    defaults = TrainConfig(mode=mode).resolved()
    for name, key in (HYPERPARAMETERS | MULTILABEL_HYPERPARAMETERS).items():
        value = getattr(cfg, name)
        ss[widget_key(name, key, mode)] = getattr(defaults, name) if value is None and name != "img_size" else value
    ss[state.VAL_SPLIT] = ss["w_val"] = cfg.val_split
    ss[state.TEST_SPLIT] = ss["w_test"] = cfg.test_split
