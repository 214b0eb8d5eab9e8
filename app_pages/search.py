"""Search: a hyperparameter search (grid, random, TPE) whose trials are queued runs; live table and chart."""

import streamlit as st

from classifier import search
from classifier.data.dataset import check_trainable
from classifier.models import list_backbones
from classifier.training import TrainConfig
from ui import state
from ui.access import current_user
from ui.cache import dataset_index, executor
from ui.search import searches_section, space_form
from ui.widgets import dataset_picker, user_errors

state.init_state()
ss = st.session_state
st.title("Search")
st.caption(
    "Each trial is a training run in the same queue as the Train page (one per device at a time). Bad trials are "
    "stopped early when their validation accuracy after an epoch is below the median of earlier trials."
)

with st.expander("New search", expanded=not search.list_searches()):
    b = st.columns(5)
    data = dataset_picker(b[0], "Dataset", "w_s_data")
    backbone = b[1].selectbox("Base backbone", [x.name for x in list_backbones()], key="w_s_backbone")
    mode = b[2].radio("Mode", ["linear", "finetune"], key="w_s_mode", help="linear: frozen backbone (fast)")
    img_size = b[3].number_input("Image size", 16, 1024, None, key="w_s_img", placeholder="backbone default")
    weights = b[4].selectbox(
        "Weights", ["default", "none"], key="w_s_weights",
        help="default: each backbone's pretrained weights (bundled, or the Hub); none: train from scratch",
    )  # fmt: skip
    st.markdown("**Search space** — the other settings are the defaults of the chosen mode.")
    raw = None
    with user_errors("Search space"):
        raw = space_form()
    s = st.columns(4)
    sampler = s[0].selectbox(
        "Sampler", search.SAMPLERS, index=2, key="w_s_sampler",
        help="grid: every combination (choices only); random; tpe: Bayesian (Optuna TPE)",
    )  # fmt: skip
    n_trials = s[1].number_input("Trials", 1, 500, 8, key="w_s_trials", help="grid: at most the number of combinations")
    metric = s[2].selectbox("Metric", list(search.METRICS), key="w_s_metric")
    prune = s[3].toggle("Prune bad trials", True, key="w_s_prune")
    name = st.text_input("Search name (optional)", key="w_s_name")
    if st.button("Start search", type="primary", icon=":material/play_arrow:", disabled=raw is None):
        with user_errors("Cannot start the search", also=(ValueError,)):
            base = TrainConfig(data=data, val_split=ss[state.VAL_SPLIT], test_split=ss[state.TEST_SPLIT],
                               backbone=backbone, weights=None if weights == "default" else weights, mode=mode,
                               img_size=int(img_size) if img_size else None)  # fmt: skip
            if data != "demo":
                check_trainable(dataset_index(data))
            executor().check_quota()  # its trials queue as this user's runs
            spec = search.create_search(base, raw, sampler=sampler, n_trials=int(n_trials), metric=metric,
                                        name=name.strip() or None, prune=prune, owner=current_user().name)  # fmt: skip
            search.launch_search(spec["id"])
            ss[state.SEARCH_ID] = ss["w_search_pick"] = spec["id"]

st.subheader("Searches")
searches_section()
