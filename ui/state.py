"""Every session-state key the app uses, in one place, with set-if-missing initialisation.

Pages call `init_state()` first and then read `st.session_state[KEY]` through the names below, so a typo is
an ImportError rather than a silent new key.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

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
