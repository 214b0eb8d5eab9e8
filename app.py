"""Streamlit entry point: page config and the navigation router, nothing else (pages live in app_pages/).

`ui.shell.page_run` around the page keeps every page's settings across page switches and reloads, and shows an
unexpected error as a short message with an id in the server log."""

import streamlit as st

from ui.shell import page_run

st.set_page_config(page_title="Image classifier workbench", page_icon="🖼️", layout="wide")
page = st.navigation(
    {
        "": [st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True)],
        "Data": [st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:")],
        "Model": [
            st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
            st.Page("app_pages/search.py", title="Search", icon=":material/tune:"),
        ],
        "Results": [
            st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
            st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page("app_pages/explain.py", title="Explain", icon=":material/visibility:"),
            st.Page("app_pages/predict.py", title="Predict", icon=":material/image_search:"),
            st.Page("app_pages/runs.py", title="Runs", icon=":material/history:"),
        ],
    }
)
with page_run(page.url_path):
    page.run()
