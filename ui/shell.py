"""What wraps every page (the router `app.py` runs each page inside `page_run`): settings kept across pages and
sessions (`ui.state`), and an unexpected error shown as one short line with an id that is in the server log,
never a traceback or a server path (`client.showErrorDetails = "none"` in .streamlit/config.toml does the same for
anything that escapes)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from ui import state

log = logging.getLogger("classifier.app")


@contextmanager
def page_run(page: str = "") -> Iterator[None]:
    state.begin_run()
    try:
        yield
    except Exception:  # noqa: BLE001 - st.stop / st.rerun / st.switch_page are BaseExceptions and pass through
        error_id = secrets.token_hex(4)
        log.exception("unexpected error %s on page %s", error_id, page or "?")
        st.error(
            f"Something went wrong on this page (error {error_id}). It is recorded in the server log under that id; "
            "reloading the page or going back one step usually helps.",
            icon="🚫",
        )
    finally:
        state.end_run()
