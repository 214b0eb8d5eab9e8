"""Every session-state key the app uses, in one place, with set-if-missing initialisation, and settings that stay.

Pages call `init_state()` first and then read `st.session_state[KEY]` through the names below, so a typo is
an ImportError rather than a silent new key.

Settings that stay where the user left them (the router `app.py` calls `begin_run` and `end_run` around every page):
- across page switches: widgets whose key starts with `w_` or `x_` are re-saved at the start of every run, which
  stops Streamlit from dropping a widget's value while its page is not shown (buttons, uploads and one-off
  confirmations use other prefixes: `b_`, `u_`, `c_`);
- across reloads and new sessions: those values are written to the user's file in the workspace
  (`workspace/settings/<user>.json`) when they change and read back when a session starts; the dataset and the
  run also go into the URL (`?dataset=...&run=...`), which wins over the file, so a shared link opens them.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

from classifier.workspace import datasets_dir, read_user_settings, write_user_settings

DATASET = "dataset_path"  # str | None: the dataset the Data page shows and the Train page trains on
RUN_ID = "run_id"  # str | None: the run selected on the Evaluate, Predict and Runs pages
WATCH_RUN = "watch_run_id"  # str | None: the run whose progress the Train page shows
VAL_SPLIT = "val_split"  # float: validation fraction per class (Data page -> Train page)
TEST_SPLIT = "test_split"  # float: test fraction per class
SPLIT_SEED = "split_seed"  # int: seed of the split
CLASS_ROWS = "class_rows"  # int: how many class rows the "build from images" form shows
DONE_UPLOADS = "done_uploads"  # dict[str, str]: upload file id -> dataset path, so a zip is extracted once
EXPLAIN_REQUEST = "explain_request"  # dict | None: {"run_id", "path"} a page asks the Explain page to open
EXPLAIN_CACHE = "explain_cache"  # OrderedDict | None: attribution maps of this session (ui.explain)
CM_PICK = "cm_pick"  # tuple | None: the confusion-matrix cell last clicked on Evaluate (applied once)
LR_FIND = "lr_find_result"  # dict | None: the Train page's last LR finder result (LRFindResult.to_dict())
SEARCH_ID = "search_id"  # str | None: the search the Search page shows
SCAN = "quality_scan"  # dict | None: {"path", "result": ScanResult.to_dict()}, the Issues tab's last scan
VERSION_SAVED = "version_saved"  # int | None: the dataset version the Issues tab just saved (shown once)

DEFAULTS: dict[str, Any] = {
    DATASET: None,
    RUN_ID: None,
    WATCH_RUN: None,
    VAL_SPLIT: 0.2,
    TEST_SPLIT: 0.0,
    SPLIT_SEED: 0,
    CLASS_ROWS: 2,
    DONE_UPLOADS: {},
    EXPLAIN_REQUEST: None,
    EXPLAIN_CACHE: None,
    CM_PICK: None,
    LR_FIND: None,
    SEARCH_ID: None,
    SCAN: None,
    VERSION_SAVED: None,
}


def init_state() -> None:
    """Set every key that is missing to its default (mutable defaults are copied per session)."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value.copy() if isinstance(value, (dict, list)) else value


PERSISTED = ("w_", "x_")  # widget keys that keep their values (see the module docstring)
_RUN_SPECIFIC = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # keys of one run's widgets are not worth saving to a file
_STARTED = "_session_started"
_SAVED = "_settings_saved"  # what was last written to the user's file


def use_dataset(path: str) -> None:
    """Make `path` the dataset of this session: the Data page shows it, Train and Search train on it."""
    ss = st.session_state
    ss[DATASET] = ss["w_data"] = ss["w_s_data"] = str(path)


def current_user() -> str:
    """Whose settings file this session reads and writes: the signed-in e-mail address, "local" without sign-in
    (a single-user local tool), "" for a visitor who is not signed in (nothing is saved for visitors)."""
    from ui.access import current_user as user

    return user().name


def begin_run() -> None:
    """Before a page: defaults, a new session's saved settings and URL, and widget values kept alive."""
    init_state()
    ss = st.session_state
    if _STARTED not in ss:
        ss[_STARTED] = True
        name = current_user()
        saved = read_user_settings(name) if name else {}
        ss[_SAVED] = dict(saved)
        for key, value in saved.items():
            if key.startswith(PERSISTED) and key not in ss:
                ss[key] = value
        _apply_query_params()
    for key in list(ss.keys()):
        if isinstance(key, str) and key.startswith(PERSISTED):
            ss[key] = ss[key]  # re-saved: Streamlit keeps it while its widget is not on the page


def end_run() -> None:
    """After a page (also when it stopped or switched): save changed settings and put dataset and run in the URL."""
    ss = st.session_state
    current = {
        k: v
        for k, v in ss.items()
        if isinstance(k, str) and k.startswith(PERSISTED) and not _RUN_SPECIFIC.search(k) and _plain(v)
    }
    name = current_user()
    if name and current != ss.get(_SAVED):
        try:
            write_user_settings(name, current)
            ss[_SAVED] = current
        except OSError:
            pass  # a full disk must not break the page; the settings stay in this session
    params = {"dataset": _dataset_name(ss.get(DATASET)), "run": ss.get(RUN_ID)}
    for name, value in params.items():
        if value and st.query_params.get(name) != value:
            st.query_params[name] = value


def _apply_query_params() -> None:
    ss = st.session_state
    name = st.query_params.get("dataset")
    if name:
        path = datasets_dir() / name
        if "/" not in name and not name.startswith(".") and path.is_dir():
            use_dataset(str(path))
    run = st.query_params.get("run")
    if run:
        ss[RUN_ID] = run


def _dataset_name(path: str | None) -> str | None:
    if not path:
        return None
    from pathlib import Path

    p = Path(path)
    return p.name if p.parent.resolve() == datasets_dir().resolve() else None


def _plain(value: Any) -> bool:
    """JSON-safe scalars and lists of them (what a settings file can hold)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    return isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (str, int, float, bool)) for v in value)
