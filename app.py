"""Streamlit entry point: page config and the navigation router, nothing else (pages live in app_pages/).

The pages listed are the ones the session's user may use (`ui.access.pages_for`): every page without sign-in; with
sign-in, those of the user's role, and for a visitor Home and the published model's page. A page left out is not
reachable by its URL either. `ui.shell.page_run` around the page keeps every page's settings across page switches
and reloads, and shows an unexpected error as a short message with an id in the server log."""

import streamlit as st

from classifier.public import published
from ui.access import account_box, current_user, pages_for
from ui.shell import page_run

st.set_page_config(page_title="Image classifier workbench", page_icon="🖼️", layout="wide")
user = current_user()
page = st.navigation(pages_for(user, public_model=published() is not None))
account_box(user)
with page_run(page.url_path):
    page.run()
