"""Streamlit entry point: page config and the navigation router, nothing else (pages live in pages/)."""

import streamlit as st

st.set_page_config(page_title="Image classifier workbench", page_icon="🖼️", layout="wide")
st.navigation(
    {
        "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
        "Data": [st.Page("pages/data.py", title="Data", icon=":material/photo_library:")],
        "Model": [st.Page("pages/train.py", title="Train", icon=":material/model_training:")],
        "Results": [
            st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
            st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
            st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
        ],
    }
).run()
