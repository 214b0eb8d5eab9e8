"""Sign-in and roles in the app: who is using this session, which pages they get, and the sign-in widgets.

Sign-in is Streamlit's own OIDC (`st.login`, `st.user`, `st.logout`, with Authlib), on when `.streamlit/secrets.toml`
has an `[auth]` section; the rules (roles from the access file, owners, quotas) are `classifier.access`. Without
`[auth]` the one user is "local", an admin, and nothing changes from the single-user tool.

`app.py` builds `st.navigation` from `pages_for(user)`, so a page the role may not use is neither listed nor found by
typing its URL (Streamlit answers an unknown page with the default one).
"""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from classifier.access import LOCAL_USER, NO_ACCESS, VISITOR, AccessError, User, read_access

log = logging.getLogger("classifier.app")

HOME = ("app_pages/home.py", "Home", ":material/home:")
PUBLIC = ("app_pages/public_predict.py", "Try the model", ":material/image_search:")
SECTIONS: dict[str, list[tuple[str, str, str, str]]] = {  # section -> (file, title, icon, capability)
    "Data": [("app_pages/data.py", "Data", ":material/photo_library:", "data")],
    "Model": [
        ("app_pages/train.py", "Train", ":material/model_training:", "train"),
        ("app_pages/search.py", "Search", ":material/tune:", "search"),
    ],
    "Results": [
        ("app_pages/evaluate.py", "Evaluate", ":material/analytics:", "evaluate"),
        ("app_pages/compare.py", "Compare", ":material/compare_arrows:", "compare"),
        ("app_pages/explain.py", "Explain", ":material/visibility:", "explain"),
        ("app_pages/predict.py", "Predict", ":material/image_search:", "predict"),
        ("app_pages/runs.py", "Runs", ":material/history:", "export"),
    ],
    "Server": [("app_pages/access.py", "Access", ":material/admin_panel_settings:", "access_list")],
}


def auth_configured() -> bool:
    """Whether sign-in is on: an `[auth]` section in the app's secrets."""
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, OSError):  # no secrets file at all (StreamlitSecretNotFoundError is one)
        return False


def current_user() -> User:
    """This session's user: the local admin without sign-in; the visitor when signed out; else the signed-in
    address with its role from the access file (no access at all when the file cannot be read, and the error is
    logged, so a broken file never opens the server up)."""
    if not auth_configured():
        return LOCAL_USER
    if not st.user.get("is_logged_in"):
        return VISITOR
    email = str(st.user.get("email") or "")
    if not email:
        return User("", NO_ACCESS)
    try:
        return read_access().user(email)
    except AccessError:
        log.exception("the access file cannot be read; %s gets no access until it is fixed", email)
        return User(email.strip().lower(), NO_ACCESS)


def pages_for(user: User, public_model: bool) -> dict[str, list[Any]]:
    """`st.navigation`'s pages for `user`: Home, then every page their role may use. A visitor gets Home and, when a
    model is published, its prediction page; the Access page needs sign-in to mean anything, so only then."""
    home = st.Page(HOME[0], title=HOME[1], icon=HOME[2], default=True)
    if user.role == "visitor":
        extra = [st.Page(PUBLIC[0], title=PUBLIC[1], icon=PUBLIC[2])] if public_model else []
        return {"": [home, *extra]}
    out: dict[str, list[Any]] = {"": [home]}
    for section, pages in SECTIONS.items():
        allowed = [
            st.Page(path, title=title, icon=icon)
            for path, title, icon, capability in pages
            if user.can(capability) and (capability != "access_list" or auth_configured())
        ]
        if allowed:
            out[section] = allowed
    return out


def account_box(user: User) -> None:
    """The sidebar's account line: who is signed in with which role, and Sign out (a visitor signs in on Home)."""
    if not auth_configured() or user.role == "visitor":
        return
    with st.sidebar:
        st.text(f"Signed in as {user.name or 'an account without an e-mail address'} ({user.role})")  # plain text
        if st.button("Sign out", icon=":material/logout:", key="b_sign_out"):
            st.logout()


UPLOADED = "_uploaded_bytes"  # bytes this browser session has uploaded (the per-session upload quota)


def check_upload(user: User, nbytes: int) -> None:
    """Before an upload is written into the workspace: this session's upload total and the user's disk quota
    (AccessError naming the quota). Streamlit has the bytes in memory by then; its own `server.maxUploadSize` caps
    one file. The plain local tool has no quotas."""
    from classifier.access import check_disk_quota, check_upload_quota, enforced
    from classifier.jobs import default_executor
    from classifier.jobs.guard import disk_used

    rules = read_access()
    if not enforced(rules, user):
        return
    check_upload_quota(int(st.session_state.get(UPLOADED, 0)), nbytes, rules.quotas)
    check_disk_quota(user.name, disk_used(user.name, default_executor()), nbytes, rules.quotas)
    st.session_state[UPLOADED] = int(st.session_state.get(UPLOADED, 0)) + nbytes
