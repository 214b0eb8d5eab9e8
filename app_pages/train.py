"""Train: pick a backbone and hyperparameters, start a background run, watch it live, see every run's status."""

import streamlit as st

from classifier.data.splits import assign_splits
from classifier.models import list_backbones, weight_sources
from classifier.task import MULTI
from classifier.training import TrainConfig
from classifier.training.preflight import Problem, preflight, working_weights
from ui import state
from ui.cache import dataset_index, executor, weights_offline
from ui.config_form import HYPERPARAMETERS, MULTILABEL_HYPERPARAMETERS, config_inputs, field_input, widget_key
from ui.lr_find import lr_finder_section
from ui.monitor import runs_section
from ui.preflight import estimate, show_problems
from ui.widgets import dataset_picker, jobs, user_errors

state.init_state()
ss = st.session_state
st.title("Train")
WEIGHTS = {
    "bundled": "ImageNet, bundled (offline)",
    "hub": "ImageNet from the Hugging Face Hub",
    "none": "None (train from scratch)",
    "file": "A local .safetensors file",
}
OFFLINE = {True: "yes", False: "no (needs internet)", None: "not needed"}  # pretrained_offline's answers

data = dataset_picker(
    st, "Dataset", "w_data",
    help="Prepare datasets on the Data page; its split settings (validation/test fraction, seed) are used here.",
)  # fmt: skip
data_slot = st.container()
index = None
if data != "demo":
    with user_errors("Cannot read the dataset"):
        index = dataset_index(data)  # the latest dataset version: what a run trains on by default
    if index is not None and index.version:
        data_slot.caption(f"Trains on dataset version {index.version}, the latest (edits from the Data page's Issues).")

infos = {b.name: b for b in list_backbones()}
c1, c2, c3 = st.columns(3)
backbone = field_input(c1, "backbone", "w_backbone", options=list(infos))
info = infos[backbone]
c1.caption(
    f"{info.description}. {info.params_m:.1f} M parameters. "
    f"Pretrained weights offline: {OFFLINE[weights_offline(backbone)]}."
)
weights_key = f"w_weights_{backbone}"
weights = field_input(c2, "weights", weights_key, working_weights(backbone),
                      options=weight_sources(backbone), format_func=WEIGHTS.get)  # fmt: skip
if weights == "file":
    weights = c2.text_input("Path to the .safetensors file", key="w_weights_path").strip()
mode = field_input(c3, "mode", "w_mode", "finetune", radio=True)  # the page always names a mode

with st.expander("Hyperparameters", expanded=True):
    settings_slot = st.container()
    settings = config_inputs(st.columns(4), HYPERPARAMETERS, mode)
    if index is not None and index.task == MULTI:  # sigmoid per label: its loss, rare-label weight, thresholds
        st.caption("Multi-label dataset: one sigmoid per label.")
        settings |= config_inputs(st.columns(3), MULTILABEL_HYPERPARAMETERS, mode)
lr_key = widget_key("lr", HYPERPARAMETERS["lr"], mode)  # the LR finder's "Use" button sets this widget
name = st.text_input("Run name (optional)", key="w_run_name", placeholder="e.g. shapes-resnet18")

config = TrainConfig(data=data, val_split=ss[state.VAL_SPLIT], test_split=ss[state.TEST_SPLIT],
                     backbone=backbone, weights=weights or "", mode=mode, **settings)  # fmt: skip
problems = preflight(config, index, check_data=data != "demo")
if not weights:
    problems.insert(0, Problem("weights", "give the path of a .safetensors weights file, or choose another source"))
keys = {"weights": weights_key, **{f: widget_key(f, k, mode) for f, k in HYPERPARAMETERS.items()}}
show_problems(data_slot, problems, ("data",), keys)
show_problems(c2, problems, ("weights", "backbone"), keys)
show_problems(settings_slot, problems, ("img_size", "batch_size", "config"), keys)
if index is not None and not problems:
    splits = assign_splits(index, config.val_split, config.test_split, config.seed)
    estimate(config, splits.count("train"), splits.count("val"), len(index.classes), jobs())


def current_config() -> TrainConfig:
    """The settings on this page as a TrainConfig (the LR finder's; bad settings raise here)."""
    if problems:
        raise ValueError(problems[0].message)
    return config


lr_finder_section(current_config, lr_key)
blocked = "Start is off until the settings marked above are fixed." if problems else None
if st.button("Start training", type="primary", icon=":material/play_arrow:", disabled=bool(problems), help=blocked):
    with user_errors("Cannot start the run", also=(ValueError,)):  # ValueError: TrainConfig.resolved()
        run_id = executor().submit(config, name=name.strip() or None)
        ss[state.WATCH_RUN] = ss[state.RUN_ID] = ss["w_watch"] = run_id

runs_section()
