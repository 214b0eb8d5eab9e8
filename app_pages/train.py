"""Train: pick a backbone and hyperparameters, start a background run, watch it live, see every run's status."""

from pathlib import Path

import streamlit as st

from classifier.data.dataset import check_trainable
from classifier.data.transforms import AUGMENT_PRESETS
from classifier.errors import WeightsError
from classifier.models import default_weights, list_backbones, weight_sources
from classifier.training import TrainConfig
from classifier.training.config import config_field, field_choices
from ui import state
from ui.cache import dataset_index, executor, weights_offline
from ui.datasets import workspace_datasets
from ui.lr_find import lr_finder_section
from ui.monitor import runs_section
from ui.widgets import user_errors

IMBALANCE, OPTIMIZERS, SCHEDULERS = (field_choices(config_field(n)) for n in ("imbalance", "optimizer", "scheduler"))
state.init_state()
ss = st.session_state
st.title("Train")
WEIGHTS = {
    "bundled": "ImageNet, bundled (offline)",
    "hub": "ImageNet from the Hugging Face Hub",
    "none": "None (train from scratch)",
    "file": "A local .safetensors file",
}
MODES = {"linear": "Linear probe (frozen backbone, fast)", "finetune": "Fine-tune everything"}

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
backbone = c1.selectbox("Backbone", list(infos), key="w_backbone")
info = infos[backbone]
offline = {None: "not needed", True: "yes", False: "no (needs internet)"}[weights_offline(backbone)]
c1.caption(f"{info.description}. {info.params_m:.1f} M parameters. Pretrained weights offline: {offline}.")
choices = list(weight_sources(backbone))
weights = c2.selectbox(
    "Weights",
    choices,
    index=choices.index(default_weights(backbone)),
    format_func=WEIGHTS.get,
    key=f"w_weights_{backbone}",
    help="Hub weights need internet unless already cached; 'none' trains from random initialisation.",
)
if weights == "file":
    weights = c2.text_input("Path to the .safetensors file", key="w_weights_path").strip()
mode = c3.radio("Mode", list(MODES), index=1, format_func=MODES.get, key="w_mode")
default = TrainConfig(mode=mode).resolved()

with st.expander("Hyperparameters", expanded=True):
    h = st.columns(4)
    epochs = h[0].number_input("Epochs", 1, 500, default.epochs, key=f"w_epochs_{mode}", help="Passes over the data.")
    batch = h[1].number_input("Batch size", 1, 1024, default.batch_size, key="w_batch", help="Images per step.")
    lr_key = f"w_lr_{mode}"
    ss.setdefault(lr_key, default.lr)  # seeded here, not via value=, so the LR finder's button can set it
    lr = h[2].number_input(
        "Learning rate", 1e-6, 1.0, format="%.6f", key=lr_key, help="Peak rate after warm-up; try the LR finder."
    )
    optimizer = h[3].selectbox("Optimizer", OPTIMIZERS, key="w_opt", help="AdamW, or SGD with Nesterov momentum.")
    scheduler = h[0].selectbox("Schedule", SCHEDULERS, key="w_sched", help="Learning-rate schedule after warm-up.")
    wd = h[1].number_input("Weight decay", 0.0, 1.0, default.weight_decay, format="%.3f", key="w_wd")
    smoothing = h[2].number_input(
        "Label smoothing",
        0.0,
        0.5,
        default.label_smoothing,
        format="%.2f",
        key=f"w_ls_{mode}",
        help="0 = hard targets.",
    )
    presets = list(AUGMENT_PRESETS)
    augment = h[3].selectbox(
        "Augmentation",
        presets,
        index=presets.index(default.augment),
        key=f"w_aug_{mode}",
        help="; ".join(f"{k}: {v}" for k, v in AUGMENT_PRESETS.items()) + ". Preview it on the Data page.",
    )
    imbalance = h[0].selectbox(
        "Imbalance", IMBALANCE, key="w_imb", help="weights: class-weighted loss; sampler: balanced batches."
    )
    patience = h[1].number_input(
        "Early stopping", 0, 100, 0, key="w_es", help="Stop after this many epochs without improvement; 0 = off."
    )
    img_size = h[2].number_input(
        "Image size", 16, 1024, None, key="w_img", placeholder="backbone default", help="Square input side in px."
    )
    seed = h[3].number_input("Seed", 0, 2**31 - 1, 0, key="w_train_seed", help="Same seed, same run.")
name = st.text_input("Run name (optional)", key="w_run_name", placeholder="e.g. shapes-resnet18")


def current_config() -> TrainConfig:
    """The settings on this page as a TrainConfig (checked: bad settings and untrainable data raise here)."""
    config = TrainConfig(
        data=data,
        val_split=ss[state.VAL_SPLIT],
        test_split=ss[state.TEST_SPLIT],
        backbone=backbone,
        weights=weights,
        mode=mode,
        epochs=int(epochs),
        batch_size=int(batch),
        lr=float(lr),
        optimizer=optimizer,
        scheduler=scheduler,
        weight_decay=float(wd),
        label_smoothing=float(smoothing),
        augment=augment,
        imbalance=imbalance,
        early_stopping=int(patience),
        img_size=int(img_size) if img_size else None,
        seed=int(seed),
    )
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
