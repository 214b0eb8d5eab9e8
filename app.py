"""Streamlit entry point: page config and the navigation router, nothing else (pages live in app_pages/).

`state.begin_run` / `state.end_run` around the page keep every page's settings across page switches and reloads."""

import streamlit as st

from ui import state

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
state.begin_run()
try:
    page.run()
finally:
    state.end_run()
