"""Train: pick a backbone and hyperparameters, start a background run, watch it live, see every run's status."""

from pathlib import Path

import streamlit as st

from classifier.data.dataset import check_trainable
from classifier.data.ingest import workspace_datasets
from classifier.errors import WeightsError
from classifier.models import default_weights, list_backbones, weight_sources
from classifier.training import TrainConfig
from ui import state
from ui.cache import dataset_index, executor, weights_offline
from ui.config_form import config_inputs, field_input, widget_key
from ui.lr_find import lr_finder_section
from ui.monitor import runs_section
from ui.widgets import user_errors

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
HYPERPARAMETERS = {  # TrainConfig field -> widget key (kept: tests and open sessions use them), in reading order
    "epochs": "w_epochs",
    "batch_size": "w_batch",
    "lr": "w_lr",
    "optimizer": "w_opt",
    "scheduler": "w_sched",
    "weight_decay": "w_wd",
    "label_smoothing": "w_ls",
    "augment": "w_aug",
    "imbalance": "w_imb",
    "early_stopping": "w_es",
    "time_budget": "w_budget",
    "img_size": "w_img",
    "seed": "w_train_seed",
}

datasets = ["demo"] + [str(d) for d in workspace_datasets()]
if ss[state.DATASET] and ss[state.DATASET] not in datasets:
    datasets.append(ss[state.DATASET])
data = st.selectbox(
    "Dataset",
    datasets,
    index=datasets.index(ss[state.DATASET]) if ss[state.DATASET] in datasets else 0,
    format_func=lambda d: "Built-in demo dataset (shapes)" if d == "demo" else Path(d).name,
    help="Prepare datasets on the Data page; its split settings (validation/test fraction, seed) are used here.",
    key="w_data",
)
if data != "demo":
    ss[state.DATASET] = data  # the Data page shows the same dataset

infos = {b.name: b for b in list_backbones()}
c1, c2, c3 = st.columns(3)
backbone = field_input(c1, "backbone", "w_backbone", options=list(infos))
info = infos[backbone]
c1.caption(
    f"{info.description}. {info.params_m:.1f} M parameters. "
    f"Pretrained weights offline: {OFFLINE[weights_offline(backbone)]}."
)
weights = field_input(c2, "weights", f"w_weights_{backbone}", default_weights(backbone),
                      options=weight_sources(backbone), format_func=WEIGHTS.get)  # fmt: skip
if weights == "file":
    weights = c2.text_input("Path to the .safetensors file", key="w_weights_path").strip()
mode = field_input(c3, "mode", "w_mode", "finetune", radio=True)  # the page always names a mode

with st.expander("Hyperparameters", expanded=True):
    settings = config_inputs(st.columns(4), HYPERPARAMETERS, mode)
lr_key = widget_key("lr", HYPERPARAMETERS["lr"], mode)  # the LR finder's "Use" button sets this widget
name = st.text_input("Run name (optional)", key="w_run_name", placeholder="e.g. shapes-resnet18")


def current_config() -> TrainConfig:
    """The settings on this page as a TrainConfig (checked: bad settings and untrainable data raise here)."""
    config = TrainConfig(data=data, val_split=ss[state.VAL_SPLIT], test_split=ss[state.TEST_SPLIT],
                         backbone=backbone, weights=weights, mode=mode, **settings)  # fmt: skip
    if not weights:
        raise WeightsError("give the path of a .safetensors weights file, or choose another weight source")
    config.resolved()  # bad settings and untrainable data fail here, in the page, not in the background
    if data != "demo":
        check_trainable(dataset_index(data))
    return config


lr_finder_section(current_config, lr_key)
if st.button("Start training", type="primary", icon=":material/play_arrow:"):
    with user_errors("Cannot start the run", also=(ValueError,)):  # ValueError: TrainConfig.resolved()
        run_id = executor().submit(current_config(), name=name.strip() or None)
        ss[state.WATCH_RUN] = ss[state.RUN_ID] = ss["w_watch"] = run_id

runs_section()
