"""Home: what the workbench does, a one-click start on the demo dataset, and the latest runs."""

import streamlit as st

from classifier.data.demo import ensure_demo_dataset
from classifier.device import pick_device
from ui import state
from ui.widgets import jobs, runs_table, show_runs_table, user_errors

state.init_state()
st.title("Image classifier workbench")
st.markdown(
    "Bring a folder of labelled images (a **.zip**, images dropped per class, or the built-in demo set).  \n"
    "Pick a modern backbone and fine-tune it here — training runs in the background while you watch.  \n"
    "Then read honest per-class results, see what it gets wrong, and try it on new images."
)

if st.button("Try it on the demo dataset", type="primary", icon=":material/rocket_launch:"):
    with user_errors("Could not prepare the demo dataset"), st.spinner("Generating the demo dataset (once)…"):
        state.use_dataset(str(ensure_demo_dataset()))
        if pick_device("auto").type == "cpu":  # a fine-tune takes many minutes on a CPU; a linear probe about a minute
            st.session_state["w_mode"] = "linear"
        st.switch_page("app_pages/train.py")
st.caption("Five shape classes on cluttered backgrounds, generated on the spot; nothing is downloaded.")

st.subheader("Recent runs")
with user_errors("Could not list runs"):
    recent = jobs(limit=5)
    if recent:
        show_runs_table(runs_table(recent), ["name", "status", "progress", "backbone", "mode", "accuracy", "created"])
        st.page_link("app_pages/runs.py", label="All runs", icon=":material/history:")
    else:
        st.info("No runs yet. Prepare a dataset on **Data**, or try the demo above.")
