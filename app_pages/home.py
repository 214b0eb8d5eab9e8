"""Home: what the workbench does, who you are signed in as, a one-click start on the demo dataset, the latest runs."""

import streamlit as st

from classifier.data.demo import ensure_demo_dataset
from classifier.device import pick_device
from classifier.public import published
from ui import state
from ui.access import auth_configured, current_user
from ui.widgets import jobs, literal, runs_table, show_runs_table, user_errors

state.init_state()
user = current_user()
st.title("Image classifier workbench")
st.markdown(
    "Bring a folder of labelled images (a **.zip**, images dropped per class, or the built-in demo set).  \n"
    "Pick a modern backbone and fine-tune it here — training runs in the background while you watch.  \n"
    "Then read honest per-class results, see what it gets wrong, and try it on new images."
)
if not auth_configured():
    st.caption(
        "Single-user local tool: sign-in is not configured, so whoever can open this address may do everything. "
        "To share it, configure sign-in (`[auth]` in `.streamlit/secrets.toml`) and an access file; see "
        "docs/deploy.md."
    )
elif user.role == "visitor":
    public = published()
    if public is not None:
        st.info(f"**{literal(public['name'])}** is published: anyone may try it on their own images.")
        st.page_link("app_pages/public_predict.py", label="Try the model", icon=":material/image_search:")
    st.markdown("Sign in to train, evaluate and explain models.")
    if st.button("Sign in", type="primary", icon=":material/login:", key="b_home_sign_in"):
        st.login()
    st.stop()
elif user.role not in ("viewer", "trainer", "admin"):
    st.warning(f"You are signed in as {literal(user.name)}, which has no access to this workbench. Ask an admin to "
               "add your address to the access file.")  # fmt: skip
    st.stop()

if user.can("train"):
    if st.button("Try it on the demo dataset", type="primary", icon=":material/rocket_launch:"):
        with user_errors("Could not prepare the demo dataset"), st.spinner("Generating the demo dataset (once)…"):
            state.use_dataset(str(ensure_demo_dataset()))
            if pick_device("auto").type == "cpu":  # a fine-tune takes many minutes on a CPU; a linear probe ~a minute
                st.session_state["w_mode"] = "linear"
            st.switch_page("app_pages/train.py")
    st.caption("Five shape classes on cluttered backgrounds, generated on the spot; nothing is downloaded.")

st.subheader("Recent runs")
with user_errors("Could not list runs"):
    recent = jobs(limit=5)
    if recent:
        show_runs_table(runs_table(recent), ["name", "status", "progress", "backbone", "mode", "accuracy", "created"])
        if user.can("export"):
            st.page_link("app_pages/runs.py", label="All runs", icon=":material/history:")
    else:
        st.info("No runs yet. Prepare a dataset on **Data**, or try the demo above.")
